//! Classifying database errors: the one place that knows which failures pass.

/// Connection trouble, restarts, exhausted resources, serialization failures, deadlocks,
/// lock and statement timeouts pass with time; anything else (a missing table, a type
/// mismatch, a constraint, a value the database cannot store) fails again.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") // connection exception
                || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || code.starts_with("53") // insufficient resources
                || code.starts_with("40") // serialization failure, deadlock
                || code == "55P03" // lock not available
                || code == "57014" // statement timeout / query canceled
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_timeouts_pass_and_missing_rows_do_not() {
        assert!(super::is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!super::is_transient(&sqlx::Error::RowNotFound));
    }
}
