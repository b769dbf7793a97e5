//! Retention of the service's own ledger: finished tasks are deleted once they are older
//! than their status's retention, and workers `stopped` or `lost` for longer than
//! `WORKER_RETENTION` are pruned, so the ledger does not grow forever.
//!
//! Tasks go in bounded batches (`LEDGER_PRUNE_BATCH` rows, oldest finished first), each
//! its own transaction under a statement time limit, and only while this replica holds the
//! retention advisory lock (one replica prunes at a time; the others skip the round).
//! Unfinished tasks are never deleted, whatever their age, nor the last task of a schedule,
//! nor its latest success.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::tasks::TaskStatus;
use crate::metrics::Metrics;

/// The advisory lock one pruning replica holds (an arbitrary constant: "cleanup_retention").
const LOCK_KEY: i64 = 0x636c_6e72_7465_6e74;
/// The time limit of one batch's statement.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long finished tasks and departed workers are kept.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Per finished status: how long after `finished_at` a task is kept.
    pub tasks: Vec<(TaskStatus, Duration)>,
    /// How long after its last sign of life a `stopped` or `lost` worker is kept.
    pub workers: Duration,
    /// Rows per batch.
    pub batch: u32,
    /// Time between rounds.
    pub every: Duration,
}

/// What one round removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// Tasks deleted, by status.
    pub tasks: Vec<(TaskStatus, u64)>,
    pub batches: u64,
    pub workers: u64,
    /// Another replica held the lock: this one did nothing.
    pub skipped: bool,
}

/// One round: every finished status to its retention, batch by batch, then the workers.
pub async fn prune_once(pool: &PgPool, retention: &Retention) -> Result<Pruned, sqlx::Error> {
    let mut pruned = Pruned::default();
    // A session lock on one connection, held for the round.
    let mut lock = pool.acquire().await?;
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *lock)
        .await?;
    if !held {
        pruned.skipped = true;
        return Ok(pruned);
    }
    let round = async {
        for (status, keep) in &retention.tasks {
            let mut deleted = 0u64;
            loop {
                let n = delete_batch(pool, *status, *keep, retention.batch).await?;
                if n > 0 {
                    pruned.batches += 1;
                    deleted += n;
                }
                if n < u64::from(retention.batch) {
                    break;
                }
            }
            pruned.tasks.push((*status, deleted));
        }
        pruned.workers = sqlx::query(
            "DELETE FROM workers WHERE status IN ('stopped', 'lost')
                 AND last_seen_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.workers.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        Ok::<_, sqlx::Error>(())
    };
    let outcome = round.await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *lock)
        .await;
    outcome.map(|()| pruned)
}

/// Delete up to `batch` tasks of `status` finished more than `keep` ago, oldest first.
async fn delete_batch(
    pool: &PgPool,
    status: TaskStatus,
    keep: Duration,
    batch: u32,
) -> Result<u64, sqlx::Error> {
    debug_assert!(status.is_finished(), "only finished tasks are ever pruned");
    let mut tx = pool
        .begin_with(format!(
            "BEGIN; SET LOCAL statement_timeout = '{}ms'",
            BATCH_TIMEOUT.as_millis()
        ))
        .await?;
    let deleted = sqlx::query(
        // Materialized: a subquery with SKIP LOCKED run again per row would take more
        // than one batch.
        "WITH batch AS MATERIALIZED (
             SELECT id FROM cleanup_tasks
             WHERE status = $1 AND finished_at IS NOT NULL
               AND finished_at < now() - make_interval(secs => $2)
               -- A schedule shows its last task: that one stays, and so does its latest
               -- success (its failing streak counts from there).
               AND NOT EXISTS (SELECT 1 FROM cleanup_schedules s WHERE s.last_task_id = cleanup_tasks.id)
               AND NOT (status = 'succeeded' AND schedule IS NOT NULL AND id = (
                   SELECT u.id FROM cleanup_tasks u
                   WHERE u.schedule = cleanup_tasks.schedule AND u.status = 'succeeded'
                   ORDER BY u.created_at DESC LIMIT 1))
             ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         DELETE FROM cleanup_tasks WHERE id IN (SELECT id FROM batch) AND status = $1",
    )
    .bind(status.as_str())
    .bind(keep.as_secs_f64())
    .bind(i64::from(batch))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

/// Prune every `retention.every` until shutdown; errors are logged and the next round
/// tries again.
pub async fn run(
    pool: PgPool,
    retention: Retention,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        match prune_once(&pool, &retention).await {
            Ok(pruned) if pruned.skipped => {}
            Ok(pruned) => {
                for (status, n) in &pruned.tasks {
                    metrics
                        .ledger_pruned
                        .with_label_values(&[status.as_str()])
                        .inc_by(*n);
                }
                metrics.workers_pruned.inc_by(pruned.workers);
                let tasks: u64 = pruned.tasks.iter().map(|(_, n)| n).sum();
                if tasks > 0 || pruned.workers > 0 {
                    tracing::info!(
                        tasks,
                        batches = pruned.batches,
                        workers = pruned.workers,
                        "pruned the ledger"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "ledger retention round failed; trying again later")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(retention.every) => {}
        }
    }
}
