//! How every pool of the service is set up, classifying database errors (the one place
//! that knows which failures pass), and closing a pool on the way out.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;

/// A pooled connection idle for less than this is handed out without a ping first.
pub const PING_IDLE_AFTER: Duration = Duration::from_millis(500);

/// The options every pool starts from. sqlx pings a connection as it goes back to the
/// pool, and by default pings it again as it is taken out: one statement on a connection
/// of its own (a dry run, an enqueue batch) cost three round trips, each a wake-up of the
/// backend and of this process (`deploy/bench/pool.sh`: 98-104 µs of the backend's CPU
/// and 90-94 µs of the client's per statement, against 68 and 63 without the second
/// ping). Here a connection is pinged as it is taken out only if it sat idle for
/// [`PING_IDLE_AFTER`] or more, as HikariCP does by default; one given back less than
/// that ago passed its ping on release just then. A connection that broke in between (its
/// session killed, the database restarted within that half second) fails its next
/// statement instead, as a transient error that every caller handles (a retry, or a 503
/// to a client), and is then discarded.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    // An error discards the connection; the pool takes or opens another.
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

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
