//! How the worker's runs pool is set up, classifying database errors (the one place
//! that knows which failures pass), and closing a pool on the way out.

use std::time::Duration;

use sqlx::postgres::{PgPoolOptions, PgSeverity};
use sqlx::Connection;

/// A pooled connection idle for less than this is handed out without a ping first (the
/// worker's runs pool, [`pool_options`]); the API's intake reuses a connection it keeps
/// only if it used it less than this ago.
pub const PING_IDLE_AFTER: Duration = Duration::from_millis(500);

/// The options of a pool whose every statement is retried when it fails on a dead
/// connection: the worker's runs pool. sqlx pings a connection as it goes back to the
/// pool, and by default pings it again as it is taken out, so one statement on a
/// connection of its own (a dry run) cost three round trips, each a wake-up of the backend
/// and of the worker (`deploy/bench/pool.sh`: 98-104 µs of the backend's CPU and 90-94 µs
/// of the client's per statement, against 68 and 63 without the second ping). These
/// pools ping a connection as it is taken only if it sat idle for [`PING_IDLE_AFTER`] or
/// more, as HikariCP does by default: one given back less than that ago passed its ping
/// on release just then (or sqlx's idle reaper, every few minutes, put it back without
/// one). A connection that broke in between (its session killed, the database
/// restarting) fails its next statement instead, as a transient error, and is discarded;
/// the caller's retry takes another connection. A runs cleanup tries again whatever it
/// starts on a connection taken from the pool (`worker/src/executor/runs/reads.rs`,
/// `retry_in_turn`); the hourly pruning of old progress rows waits for its next round,
/// and the worker's `/readyz` answers `503` once.
///
/// The API's ledger pool keeps sqlx's ping: its requests do not retry a statement. (Its
/// intake keeps its own connections between batches instead, and does retry; see
/// `producer-api/src/intake.rs`.)
pub fn pool_options() -> PgPoolOptions {
    pool_options_with(PING_IDLE_AFTER)
}

/// [`pool_options`] with another idle time before a ping (tests).
pub fn pool_options_with(ping_after: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= ping_after {
                    // An error closes the connection; the pool opens another.
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

/// The connection itself failed (it broke, or the server ended the session): it is of no
/// further use, and a statement that was under way on it may or may not have committed.
/// A statement that failed on its own (a constraint, a timeout, a deadlock) leaves its
/// connection usable.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // FATAL or PANIC: the server ended the session (an idle-session timeout among
            // them, 57P05); 08: connection exception; 57P: shutdown, session ended.
            matches!(
                severity(db.as_ref()),
                Some(PgSeverity::Fatal | PgSeverity::Panic)
            ) || db
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P"))
        }
        _ => false,
    }
}

/// The severity PostgreSQL gave an error it sent (none for another database's).
pub fn severity(error: &dyn sqlx::error::DatabaseError) -> Option<PgSeverity> {
    error
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .map(|pg| pg.severity())
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

    #[test]
    fn a_broken_connection_is_lost_and_an_exhausted_pool_is_not() {
        let broken = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(super::connection_lost(&sqlx::Error::Io(broken)));
        // No connection was taken, so none was lost.
        assert!(!super::connection_lost(&sqlx::Error::PoolTimedOut));
        assert!(!super::connection_lost(&sqlx::Error::RowNotFound));
    }
}
