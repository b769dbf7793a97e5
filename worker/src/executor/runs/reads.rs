//! A run's statements outside the batches: the dry run (count, sample, oldest), the task's
//! committed count in the progress table, the age of the oldest row left, and the brief
//! retry of a statement whose error is transient.

use shared::results::RunsResult;
use shared::retry::RetryPolicy;
use tokio_util::sync::CancellationToken;

use super::schema::SchemaError;
use super::{batches, progress, Run, SAMPLE_SIZE};
use crate::executor::ExecError;

impl Run<'_> {
    pub(super) async fn dry_run(
        &self,
        max_rows: Option<u64>,
        result: &mut RunsResult,
    ) -> Result<(), ExecError> {
        let (count, sample, oldest): (i64, Vec<String>, Option<f64>) = self
            .retry(|| {
                sqlx::query_as(&self.statements.dry_run)
                    .bind(self.statuses)
                    .bind(self.cutoff)
                    .bind(SAMPLE_SIZE as i64)
                    .bind(self.scope)
                    .fetch_one(&self.executor.pool)
            })
            .await
            .map_err(|e| ExecError::from_sqlx("failed to count eligible runs", &e))?;
        let count = count.max(0) as u64;
        result.runs_matched = max_rows.map_or(count, |cap| count.min(cap));
        result.capped = max_rows.is_some_and(|cap| count > cap);
        result.sample_ids = sample;
        result.oldest_remaining_age_seconds = oldest;
        Ok(())
    }

    /// The task's committed count (made sure the progress table exists first; expired
    /// rows of other tasks are pruned now and then).
    pub(super) async fn committed(&self) -> Result<Option<progress::Count>, ExecError> {
        let progress = &self.executor.progress;
        let pool = &self.executor.pool;
        let ensured = retry_in_turn(self.cancel, SchemaError::passes, || progress.ensure(pool));
        ensured.await.map_err(|e| match e {
            SchemaError::Database(db) => {
                ExecError::from_sqlx("cannot check the runs progress table", &db)
            }
            other => ExecError::permanent(other.to_string()),
        })?;
        progress.prune(pool).await;
        self.retry(|| progress.read(pool, self.task_id))
            .await
            .map_err(|e| ExecError::from_sqlx("failed to read the task's progress", &e))
    }

    /// Mark the task finished and return its final count.
    pub(super) async fn finish(&self, known: u64) -> Result<progress::Count, ExecError> {
        let (progress, pool) = (&self.executor.progress, &self.executor.pool);
        self.retry(|| progress.finish(pool, self.task_id, (known, self.estimated)))
            .await
            .map_err(|e| ExecError::from_sqlx("failed to record the task's count", &e))
    }

    /// Age of the oldest eligible row still present (in a dry run: all of them are).
    pub(super) async fn oldest_remaining(&self) -> Result<Option<f64>, ExecError> {
        self.retry(|| {
            sqlx::query_scalar::<_, Option<f64>>(&self.statements.oldest)
                .bind(self.statuses)
                .bind(self.cutoff)
                .bind(0i64)
                .bind(self.scope)
                .fetch_one(&self.executor.pool)
        })
        .await
        .map_err(|e| ExecError::from_sqlx("failed to measure remaining runs", &e))
    }

    /// Retry a statement briefly while its error is transient (connection blips, lock
    /// timeouts, serialization failures) and the turn goes on; a permanent error, or any
    /// error once the turn is stopped, returns at once, and no try starts after a stop.
    pub(super) async fn retry<T, F, Fut>(&self, op: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        retry_in_turn(self.cancel, passes, op).await
    }
}

/// Whether a statement's error may pass when it is tried again within the turn: it is
/// transient, and not a statement timeout (a batch that timed out is tried again smaller,
/// by its caller).
pub(super) fn passes(error: &sqlx::Error) -> bool {
    shared::runtime::db::is_transient(error) && !batches::is_timeout(error)
}

impl SchemaError {
    /// [`passes`], for a reading of the catalog.
    pub(super) fn passes(&self) -> bool {
        matches!(self, SchemaError::Database(error) if passes(error))
    }
}

/// Try `op` again briefly while `retryable` says its error passes and `cancel` (the turn's
/// stop) is not set. Whatever a turn runs on a connection it takes from the pool goes
/// through it: the runs pool hands out a connection given back moments ago without a ping
/// (`shared::runtime::db::pool_options`), so the first statement after the database
/// restarted, or after its session was killed, fails on a dead connection and must be
/// tried again on another. (The hourly pruning of old progress rows only waits for its
/// next round.)
pub(super) async fn retry_in_turn<T, E, F, Fut>(
    cancel: &CancellationToken,
    retryable: impl Fn(&E) -> bool,
    op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    RetryPolicy::in_attempt()
        .retry_until(
            || cancel.is_cancelled(),
            |e| retryable(e) && !cancel.is_cancelled(),
            op,
        )
        .await
}
