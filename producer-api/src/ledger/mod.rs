//! The task ledger in PostgreSQL. Every statement that reads or writes `cleanup_tasks`,
//! `cleanup_outbox` or `workers` lives in this module:
//!
//! - [`tasks`]: the task row with its typed status and kind, enqueue (task and first
//!   outbox message in one statement), reads and the counts health and metrics show;
//! - [`transitions`]: how worker events and dead-lettered messages move a task, every
//!   move under one guard rule, applied in batches by the recorder;
//! - [`cancel`]: cancelling a task (at once, or at its worker's next batch boundary);
//! - [`copies`]: new tasks made from stored ones (a retry, a dry run run for real);
//! - [`console`]: the operator console's sessions, and what its pages read;
//! - [`outbox`]: what the relay claims, and what it records once RabbitMQ confirmed;
//! - [`workers`]: the worker registry, fed by heartbeats;
//! - [`schedules`]: schedules, and firing their windows (claim, task, advance: one
//!   transaction);
//! - [`retention`]: what leaves the ledger: finished tasks past their status's retention
//!   and departed workers.
//!
//! The HTTP handlers, the relay and the recorder call these functions; none of them
//! writes SQL of its own.

pub mod cancel;
pub mod console;
pub mod copies;
pub mod outbox;
pub mod retention;
pub mod schedules;
pub mod session;
pub mod tasks;
pub mod transitions;
pub mod workers;

pub use tasks::{
    enqueue, get_task, last_successes, list_tasks, task_counts, Enqueued, ListQuery, TaskRow,
    TaskStatus,
};

/// Lock these tasks' rows for the transaction, in id order. Every transaction that
/// changes several task rows (the relay stamping `published_at`, the recorder applying a
/// batch) takes their locks in this one order, so that two of them never wait for each
/// other (a deadlock, which PostgreSQL breaks only after `deadlock_timeout`, 1 s by
/// default, by aborting one of them). The lock is the one their `UPDATE`s take (`FOR NO
/// KEY UPDATE`: an outbox row inserted meanwhile still finds its task); one row needs none
/// taken ahead.
pub(crate) async fn lock_tasks(
    conn: &mut sqlx::PgConnection,
    ids: &[uuid::Uuid],
) -> Result<(), sqlx::Error> {
    if ids.len() < 2 {
        return Ok(());
    }
    sqlx::query("SELECT FROM cleanup_tasks WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// The migrations of the ledger, run at start-up by every replica (sqlx takes a lock).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
