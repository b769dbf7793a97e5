//! Classifying database errors (the one place that knows which failures pass), and
//! closing a pool on the way out.

use std::time::Duration;

/// How long a stopping process waits for its pool's connections to come back.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Close `pool` gracefully, but give up after `limit` ([`CLOSE_LIMIT`] on the way out): a
/// connection still held (a statement the database does not answer) must not keep the
/// process from exiting. The process ends either way; the database ends the sessions it
/// leaves behind. False when it gave up.
pub async fn close(pool: &sqlx::PgPool, what: &str, limit: Duration) -> bool {
    let closed = tokio::time::timeout(limit, pool.close()).await.is_ok();
    if !closed {
        tracing::warn!(
            pool = what,
            ?limit,
            "database connections still in use at exit; leaving them"
        );
    }
    closed
}

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
