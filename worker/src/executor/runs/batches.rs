//! The batches of a real `cleanup_runs` run: which rows one batch takes, where the next
//! one starts, and how big it is.
//!
//! Each batch continues where the previous one stopped (a cursor on the last row it
//! passed), so a whole run reads the table about once: the `keyset` strategy follows an
//! index on (timestamp, id), oldest first; `key_range` follows the key's own index. Under `max_rows`, a
//! `key_range` run first fixes the age of the `max_rows`-th oldest eligible row and takes
//! only rows at least that old, so the cap still takes the oldest rows.
//!
//! A batch locks its rows with `FOR UPDATE SKIP LOCKED` and its `DELETE` repeats the
//! eligibility test: the cursor and the age threshold only narrow what a batch may take.
//! Batch sizes adapt toward a target duration, never above `batch_size`; a batch that
//! hits a lock or statement timeout is retried smaller.

use std::time::{Duration, Instant};

use shared::results::{RunsCursor, RunsResult};
use shared::tasks::{CleanupRunsParams, DEFAULT_BATCH_SIZE};

use super::schema::{Schema, Strategy};
use super::table::RunsTable;
use super::{Run, Timeouts, SAMPLE_SIZE};
use crate::executor::{Checkpoint, ExecError};

/// A batch's SQL and its text parameters after the fixed ones (`$1` statuses, `$2`
/// cutoff, `$3` limit, `$4` scope values, `$5` task id).
pub struct BatchSql {
    pub sql: String,
    pub params: Vec<String>,
}

/// What one batch did.
#[derive(Debug)]
pub struct BatchOutcome {
    pub deleted: u64,
    /// Rows the batch locked (deleted or found no longer eligible).
    pub taken: u64,
    pub sample: Vec<String>,
    pub last: Option<RunsCursor>,
    /// The limit the batch ran with (0: it did not run).
    pub limit: u64,
    /// The task's committed count after the batch, whoever deleted them.
    pub total: u64,
    /// Another copy of the task had finished it: nothing was deleted.
    pub finished: bool,
}

/// The statement of one batch. `eligible` is the eligibility condition on `$1`/`$2`.
/// It adds what it deleted to the task's row in `progress` (locked by the batch's
/// first statement), in the same transaction.
pub fn delete_sql(
    t: &RunsTable,
    progress: &str,
    schema: &Schema,
    eligible: &str,
    cursor: Option<&RunsCursor>,
    threshold: Option<&str>,
) -> BatchSql {
    let (table, id, ts) = (&t.table, &t.id, &t.timestamp);
    let (id_type, ts_type) = (&schema.id_type, &schema.ts_type);
    let mut params = Vec::new();
    let mut param = |value: &str, ty: &str| {
        params.push(value.to_owned());
        format!("${}::text::{ty}", params.len() + 5)
    };
    // The walk order, and the columns a cursor compares, in that order.
    let order: Vec<&String> = match (schema.strategy, schema.key.len()) {
        (Strategy::Keyset, _) => vec![ts, id],
        (Strategy::KeyRange, 1) => vec![id],
        (Strategy::KeyRange, _) => vec![id, ts],
    };
    let mut condition = eligible.to_owned();
    if let Some(cursor) = cursor {
        let values: Vec<String> = order
            .iter()
            .map(|column| {
                if *column == ts {
                    param(&cursor.ts, ts_type)
                } else {
                    param(&cursor.id, id_type)
                }
            })
            .collect();
        let columns: Vec<&str> = order.iter().map(|c| c.as_str()).collect();
        condition.push_str(&format!(
            " AND ({}) > ({})",
            columns.join(", "),
            values.join(", ")
        ));
    }
    if let Some(threshold) = threshold {
        condition.push_str(&format!(" AND {ts} <= {}", param(threshold, ts_type)));
    }
    let ascending: Vec<String> = order.iter().map(|c| c.to_string()).collect();
    let descending: Vec<String> = order.iter().map(|c| format!("{c} DESC")).collect();
    // The rows the batch locked, by their physical address (a TID scan: no second walk
    // of the key's index); in a partitioned table an address names a row only within its
    // partition, so by key there.
    let target = if schema.partitioned {
        let (key, key_columns) = (schema.key_expr(), schema.key.join(", "));
        format!("{key} IN (SELECT {key_columns} FROM batch)")
    } else {
        "ctid = ANY(ARRAY(SELECT ctid FROM batch))".to_owned()
    };
    let sql = format!(
        "WITH batch AS MATERIALIZED (
             SELECT ctid, {id}, {ts} FROM {table} WHERE {condition}
             ORDER BY {asc} LIMIT $3 FOR UPDATE SKIP LOCKED
         ), gone AS (
             DELETE FROM {table} WHERE {target} AND {eligible}
             RETURNING {id}
         ), last AS (
             SELECT {ts}::text AS last_ts, {id}::text AS last_id FROM batch
             ORDER BY {desc} LIMIT 1
         ), counted AS (
             UPDATE {progress} SET runs_deleted = runs_deleted + (SELECT count(*) FROM gone)
             WHERE task_id = $5 RETURNING runs_deleted
         )
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM batch),
                ARRAY(SELECT {id}::text FROM gone LIMIT {sample}),
                (SELECT last_ts FROM last), (SELECT last_id FROM last),
                (SELECT runs_deleted FROM counted)",
        asc = ascending.join(", "),
        desc = descending.join(", "),
        sample = SAMPLE_SIZE,
    );
    BatchSql { sql, params }
}

/// The timestamp of the `$3`-th oldest eligible row (`key_range` under `max_rows`);
/// `$4` as in every statement.
pub fn threshold_sql(t: &RunsTable, eligible: &str) -> String {
    format!(
        "SELECT {ts}::text AS threshold FROM {table} WHERE {eligible} ORDER BY {ts} OFFSET $3 - 1 LIMIT 1",
        ts = t.timestamp,
        table = t.table
    )
}

/// The `BEGIN` of a batch's transaction, with its time limits set locally (one round
/// trip; a connection pooler that drops session settings cannot lift them), in READ
/// COMMITTED whatever the database's default: each statement sees what was committed
/// before it, which the row locks and the re-checks rely on.
pub fn begin_sql(timeouts: Timeouts) -> String {
    format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL statement_timeout = '{}ms'; \
         SET LOCAL lock_timeout = '{}ms'; SET LOCAL synchronous_commit = {}",
        timeouts.statement.as_millis(),
        timeouts.lock.as_millis(),
        // A commit that does not wait for its WAL flush: one flush per batch otherwise
        // doubles the cost of a run (see RUNS_SYNCHRONOUS_COMMIT).
        if timeouts.synchronous_commit {
            "on"
        } else {
            "off"
        }
    )
}

/// Batch sizes that move toward a target duration per batch, within `1..=max`.
#[derive(Debug)]
pub struct Sizer {
    size: u64,
    max: u64,
    target: Duration,
}

/// The first batch of a run: big enough to measure, small enough to be short.
const FIRST_BATCH: u64 = 1_000;

impl Sizer {
    pub fn new(max: u64, target: Duration) -> Self {
        let max = max.max(1);
        Self {
            size: max.min(FIRST_BATCH),
            max,
            target,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// After a batch of the current size took `elapsed`: at most double or halve.
    pub fn record(&mut self, elapsed: Duration) {
        let factor = (self.target.as_secs_f64() / elapsed.as_secs_f64().max(1e-6)).clamp(0.5, 2.0);
        self.size = ((self.size as f64 * factor).round() as u64).clamp(1, self.max);
    }

    /// A batch timed out: a quarter of the size next time. False when it was one row
    /// already, so there is nothing smaller to try.
    pub fn shrink(&mut self) -> bool {
        if self.size <= 1 {
            return false;
        }
        self.size = (self.size / 4).max(1);
        true
    }
}

/// A lock or statement timeout: the batch was too big for the locks it met.
pub fn is_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| code == "55P03" || code == "57014"))
}

impl Run<'_> {
    /// Delete in batches until nothing eligible is left, the cap is reached (true), or
    /// the turn is stopped at a batch boundary (false).
    pub(super) async fn delete(
        &self,
        params: &CleanupRunsParams,
        result: &mut RunsResult,
        checkpoint: &Checkpoint,
    ) -> Result<bool, ExecError> {
        let max = u64::from(params.batch_size.unwrap_or(DEFAULT_BATCH_SIZE));
        let mut sizer = Sizer::new(max, self.executor.batch_target);
        // key_range under a cap: only rows at least as old as the cap's oldest rows.
        let threshold = match (self.statements.schema.strategy, params.max_rows) {
            (Strategy::KeyRange, Some(cap)) if cap > result.runs_deleted => {
                let nth = (cap - result.runs_deleted) as i64;
                self.retry(|| {
                    sqlx::query_scalar::<_, String>(&self.statements.threshold)
                        .bind(self.statuses)
                        .bind(self.cutoff)
                        .bind(nth)
                        .bind(self.scope)
                        .fetch_optional(&self.executor.pool)
                })
                .await
                .map_err(|e| ExecError::from_sqlx("failed to find the oldest runs", &e))?
            }
            _ => None,
        };
        loop {
            // Saturating: progress that claims more than the cap leaves nothing to delete.
            let remaining = params
                .max_rows
                .map(|cap| cap.saturating_sub(result.runs_deleted));
            if remaining == Some(0) {
                result.capped = true;
                break;
            }
            if self.cancel.is_cancelled() {
                // At a batch boundary: everything deleted so far is committed and counted.
                return Ok(false);
            }
            let limit = remaining.map_or(sizer.size(), |r| r.min(sizer.size()));
            let began = Instant::now();
            let cursor = result.cursor.clone();
            let known = result.runs_deleted;
            let batch = self.retry(|| {
                self.delete_batch(
                    limit,
                    params.max_rows,
                    known,
                    cursor.as_ref(),
                    threshold.as_deref(),
                )
            });
            let batch = match batch.await {
                Ok(Some(batch)) => batch,
                // Stopped before the batch began: nothing of it ran.
                Ok(None) => return Ok(false),
                // Too big for the locks it met: the same rows again, fewer at a time, while
                // the turn lasts (a turn that ends shrinking reports the timeout, so a table
                // locked for good fails the task instead of handing it on forever).
                Err(e) if is_timeout(&e) && !self.cancel.is_cancelled() && sizer.shrink() => {
                    tracing::info!(error = %e, next = sizer.size(), "a batch of runs timed out; retrying smaller");
                    continue;
                }
                Err(e) => return Err(ExecError::from_sqlx("failed to delete a batch of runs", &e)),
            };
            if batch.finished {
                // Another copy of the task finished it: nothing more to do here.
                return Ok(true);
            }
            if batch.limit > 0 {
                let took = began.elapsed();
                sizer.record(took);
                result.longest_batch_ms = result.longest_batch_ms.max(took.as_millis() as u64);
            }
            if batch.last.is_some() {
                result.cursor = batch.last;
            }
            let n = batch.deleted;
            if n > 0 {
                result.batches += 1;
                if result.sample_ids.len() < SAMPLE_SIZE {
                    let room = SAMPLE_SIZE - result.sample_ids.len();
                    result
                        .sample_ids
                        .extend(batch.sample.into_iter().take(room));
                }
            }
            // The committed count: this batch's rows, and any a copy of the task deleted.
            result.runs_deleted = batch.total;
            checkpoint.record(serde_json::to_value(&*result).expect("progress serializes"));
            tracing::debug!(
                batch = result.batches,
                deleted = n,
                next = sizer.size(),
                "deleted a batch of runs"
            );
            if batch.taken < batch.limit {
                // Fewer than asked: nothing else eligible past the cursor, or the rest is
                // locked by another worker, which will delete it.
                break;
            }
        }
        Ok(true)
    }

    /// A transaction of this task under the batch time limits (then the `extra`
    /// statements), holding the task's progress row: copies of the task (a message
    /// delivered twice) take turns on it. `None` when the turn was stopped before the row
    /// was held or while waiting for it (nothing ran); else the transaction, the task's
    /// committed count and whether a copy finished it.
    pub(super) async fn open_task_tx(
        &self,
        extra: &str,
        known: u64,
    ) -> Result<Option<(sqlx::Transaction<'static, sqlx::Postgres>, u64, bool)>, sqlx::Error> {
        let begin = format!("{}{extra}", begin_sql(self.executor.timeouts));
        let mut tx = self.executor.pool.begin_with(begin).await?;
        if self.cancel.is_cancelled() {
            return Ok(None);
        }
        let progress = &self.executor.progress;
        let sql = progress.open_batch_sql();
        let mut open = sqlx::query_as(&sql).bind(self.task_id).bind(known as i64);
        if progress.records_estimates() {
            // Seeds a row the task does not have yet (pruned, or never made).
            open = open.bind(self.estimated as i64);
        }
        let (committed, finished): (i64, bool) = open.fetch_one(&mut *tx).await?;
        if self.cancel.is_cancelled() {
            return Ok(None);
        }
        Ok(Some((tx, committed.max(0) as u64, finished)))
    }

    /// One batch, in its own transaction with the time limits set locally, taking at most
    /// `limit` rows and no more than `cap` leaves of the task's committed count. `None`
    /// when the turn was stopped before the batch began (checked once a connection is in
    /// hand, so a batch that waited for the pool never starts after its attempt ended).
    async fn delete_batch(
        &self,
        limit: u64,
        cap: Option<u64>,
        known: u64,
        cursor: Option<&RunsCursor>,
        threshold: Option<&str>,
    ) -> Result<Option<BatchOutcome>, sqlx::Error> {
        let progress = &self.executor.progress;
        let Some((mut tx, committed, finished)) = self.open_task_tx("", known).await? else {
            return Ok(None);
        };
        let limit = cap.map_or(limit, |cap| limit.min(cap.saturating_sub(committed)));
        if finished || limit == 0 {
            return Ok(Some(BatchOutcome {
                deleted: 0,
                taken: 0,
                sample: Vec::new(),
                last: None,
                limit: 0,
                total: committed,
                finished,
            }));
        }
        let s = self.statements;
        let batch = delete_sql(
            &s.table,
            &progress.name(),
            &s.schema,
            &s.eligible,
            cursor,
            threshold,
        );
        let mut query = sqlx::query_as::<
            _,
            (
                i64,
                i64,
                Vec<String>,
                Option<String>,
                Option<String>,
                Option<i64>,
            ),
        >(&batch.sql)
        .bind(self.statuses)
        .bind(self.cutoff)
        .bind(limit as i64)
        .bind(self.scope)
        .bind(self.task_id);
        for param in &batch.params {
            query = query.bind(param);
        }
        let (deleted, taken, sample, last_ts, last_id, total) = query.fetch_one(&mut *tx).await?;
        let deleted = deleted.max(0) as u64;
        let outcome = BatchOutcome {
            deleted,
            taken: taken.max(0) as u64,
            sample,
            last: last_ts.zip(last_id).map(|(ts, id)| RunsCursor { ts, id }),
            limit,
            total: total.map_or(committed + deleted, |n| n.max(0) as u64),
            finished: false,
        };
        // A COMMIT whose answer is lost is simply tried again as a batch: the next one
        // reads the committed count, so rows of a batch that did commit are still counted.
        tx.commit().await?;
        Ok(Some(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_move_toward_the_target_within_bounds() {
        let mut sizer = Sizer::new(10_000, Duration::from_millis(250));
        assert_eq!(sizer.size(), 1_000);
        sizer.record(Duration::from_millis(50));
        assert_eq!(sizer.size(), 2_000, "at most doubles");
        sizer.record(Duration::from_millis(250));
        assert_eq!(sizer.size(), 2_000, "on target");
        sizer.record(Duration::from_secs(5));
        assert_eq!(sizer.size(), 1_000, "at most halves");
        for _ in 0..20 {
            sizer.record(Duration::from_millis(1));
        }
        assert_eq!(sizer.size(), 10_000, "never above batch_size");
        assert!(sizer.shrink());
        assert_eq!(sizer.size(), 2_500);
        let mut tiny = Sizer::new(1, Duration::from_millis(250));
        assert!(!tiny.shrink(), "nothing smaller than one row");
    }
}
