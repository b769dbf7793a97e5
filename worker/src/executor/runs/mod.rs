//! `cleanup_runs`: delete finished runs older than the cutoff, in batches.
//!
//! Only rows whose status is one of the terminal statuses and whose timestamp is older
//! than the cutoff fixed at enqueue time are deleted. Table and column names come from
//! configuration, are validated as identifiers and quoted; every value is a bound
//! parameter. Before every task the catalog is read again ([`schema`]): the id column
//! must identify one row, no cascade may lead back into the table, and the timestamp
//! column's type decides how the cutoff is compared. Each batch locks its rows with
//! `FOR UPDATE SKIP LOCKED`, so workers running at once never wait on each other's rows,
//! and the `DELETE` checks the eligibility condition again on the rows it removes. Each
//! batch is its own transaction with `statement_timeout` and `lock_timeout` set locally
//! (so a connection pooler that drops session settings cannot lift them), and it starts
//! only if the turn has not been stopped once its connection is in hand: no batch
//! outlives the attempt that issued it. Child rows go with their run through the schema's
//! `ON DELETE CASCADE` foreign keys (see `deploy/sql/runs-schema.sql`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shared::envelope::TaskEnvelope;
pub use shared::results::{RunsCursor, RunsResult};
use shared::tasks::CleanupRunsParams;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Checkpoint, ExecError, Execution, Report};

mod batches;
pub mod partitions;
mod progress;
mod reads;
pub mod schema;
mod table;

pub use table::{quote_ident, ColumnNames, RunsTable};

use partitions::{PartitionCount, PartitionMode};
use progress::{Count, ProgressTable};
use schema::{Schema, SchemaError};

/// Ids shown in a result, as a sample of what was (or would be) deleted.
const SAMPLE_SIZE: usize = 10;

/// The statements of a checked table for one task. Every one takes `$1` = statuses
/// (text[]), `$2` = cutoff (timestamptz), `$3` = a row limit (0 where none is used), `$4`
/// = the task's scope values (text[], in column-name order). The batches' own are built
/// per batch ([`batches`]), since they carry the cursor.
#[derive(Debug)]
struct Statements {
    table: RunsTable,
    schema: Schema,
    eligible: String,
    /// A dry run in one statement (one snapshot, one round trip): the count, a sample
    /// (`$3` rows, oldest first) and the age of the oldest.
    dry_run: String,
    threshold: String,
    oldest: String,
}

impl Statements {
    /// `scope`: the columns this task narrows by (names, sorted), all checked against the
    /// catalog; each value is compared as its column's type.
    fn new(t: &RunsTable, schema: &Schema, scope: &[&String]) -> Self {
        let mut eligible = eligible_sql(t, schema);
        for (i, name) in scope.iter().enumerate() {
            eligible.push_str(&format!(
                " AND {column} = ($4::text[])[{n}]::{ty}",
                column = t.scope[*name],
                n = i + 1,
                ty = schema.scope_types[*name]
            ));
        }
        let (table, id, ts) = (&t.table, &t.id, &t.timestamp);
        let oldest = format!(
            "SELECT EXTRACT(EPOCH FROM (now() - {oldest}))::float8 FROM {table} WHERE {eligible}",
            oldest = schema.instant(&format!("min({ts})"))
        );
        Self {
            // Each text output is named apart from its column: `ORDER BY id` would sort by
            // an output column of that name, in text order (1, 10, 2, ...).
            dry_run: format!(
                "SELECT (SELECT count(*) FROM {table} WHERE {eligible}),
                        ARRAY(SELECT {id}::text AS sample_id FROM {table} WHERE {eligible}
                              ORDER BY {ts}, {id} LIMIT $3),
                        ({oldest})"
            ),
            threshold: batches::threshold_sql(t, &eligible),
            oldest,
            table: t.clone(),
            schema: schema.clone(),
            eligible,
        }
    }
}

/// Whether a row may go, before any scope: a terminal status among `$1` and a timestamp
/// older than the cutoff `$2`.
fn eligible_sql(t: &RunsTable, schema: &Schema) -> String {
    format!(
        "{status}::text = ANY($1) AND {ts} < {cutoff}",
        status = t.status,
        ts = t.timestamp,
        cutoff = schema.cutoff_expr()
    )
}

/// How long one statement on the runs database may run, and wait for a lock.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub statement: Duration,
    pub lock: Duration,
    /// RUNS_SYNCHRONOUS_COMMIT: whether each batch's commit waits for its WAL flush.
    pub synchronous_commit: bool,
}

pub struct RunsExecutor {
    pool: PgPool,
    table: RunsTable,
    /// RUNS_TIMESTAMP_TIMEZONE, when set.
    zone: Option<String>,
    timeouts: Timeouts,
    /// RUNS_BATCH_TARGET: the duration batch sizes move toward.
    batch_target: Duration,
    /// The shape seen by the last inspection and when: logged when it changes, reused by
    /// dry runs for `schema_cache`.
    seen: Mutex<Option<(Schema, Instant)>>,
    /// RUNS_SCHEMA_CACHE: how long a dry run may reuse the last inspection.
    schema_cache: Duration,
    /// Each real task's committed count.
    progress: ProgressTable,
    /// RUNS_PARTITIONS: what the partition fast path does.
    partitions: PartitionMode,
    /// RUNS_PARTITION_COUNT: how it counts a partition that goes whole.
    partition_count: PartitionCount,
}

impl RunsExecutor {
    /// The rows a task deleted (and how many of them are estimates), as its committed
    /// count in the progress table says; `None` when the table has no row for it or cannot
    /// be read.
    pub async fn committed(&self, task_id: uuid::Uuid) -> Option<progress::Count> {
        let never_stopped = CancellationToken::new();
        let read = reads::retry_in_turn(&never_stopped, reads::passes, || {
            self.progress.read(&self.pool, task_id)
        });
        match read.await {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(%task_id, %error, "cannot read the task's committed count");
                None
            }
        }
    }

    pub fn new(
        pool: PgPool,
        table: RunsTable,
        zone: Option<String>,
        timeouts: Timeouts,
        batch_target: Duration,
    ) -> Self {
        Self {
            pool,
            progress: ProgressTable::new(&table.table, table.progress.as_deref()),
            table,
            zone,
            timeouts,
            batch_target,
            seen: Mutex::new(None),
            schema_cache: Duration::ZERO,
            partitions: PartitionMode::Drop,
            partition_count: PartitionCount::Estimate,
        }
    }

    /// RUNS_SCHEMA_CACHE (default none: every task inspects the table).
    pub fn with_schema_cache(mut self, cache: Duration) -> Self {
        self.schema_cache = cache;
        self
    }

    /// RUNS_PARTITIONS (default `drop`) and RUNS_PARTITION_COUNT (default `estimate`).
    pub fn with_partitions(mut self, mode: PartitionMode, count: PartitionCount) -> Self {
        self.partitions = mode;
        self.partition_count = count;
        self
    }

    /// Read the table's shape now. A table that exists but is unsafe to clean as
    /// configured is an error; an unreachable database or a missing table is logged
    /// and checked again before the first task.
    pub async fn check_at_start_up(&self) -> anyhow::Result<()> {
        let no_scope = BTreeMap::new();
        let inspect = async {
            self.statements(&no_scope, false).await?;
            self.progress.ensure(&self.pool).await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), inspect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(SchemaError::Unsafe(message))) => Err(anyhow::anyhow!(message)),
            Ok(Err(error)) => {
                tracing::warn!(%error, "runs table not checked at start-up; checking before the first task");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("runs database did not answer at start-up; checking the table before the first task");
                Ok(())
            }
        }
    }

    /// Read the table's shape and build its statements. Done before every real run: a
    /// foreign key, an index or a column type changed since the last task counts. A dry
    /// run (`reuse`), which deletes nothing, may take an inspection younger than
    /// RUNS_SCHEMA_CACHE instead.
    async fn statements(
        &self,
        scope: &BTreeMap<String, String>,
        reuse: bool,
    ) -> Result<Statements, SchemaError> {
        let cached = match &*self.seen.lock().expect("not poisoned") {
            Some((schema, at)) if reuse && at.elapsed() < self.schema_cache => Some(schema.clone()),
            _ => None,
        };
        let schema = match cached {
            Some(schema) => schema,
            None => {
                let schema = schema::inspect(&self.pool, &self.table, self.zone.as_deref()).await?;
                let mut seen = self.seen.lock().expect("not poisoned");
                if seen.as_ref().map(|(s, _)| s) != Some(&schema) {
                    tracing::info!(
                        table = %self.table.table,
                        key = %schema.key_expr(),
                        timestamp = %schema.describe(),
                        "runs table checked"
                    );
                }
                *seen = Some((schema.clone(), Instant::now()));
                schema
            }
        };
        // The worker's own list decides, whatever the producer accepted.
        if let Some(unknown) = scope.keys().find(|c| !self.table.scope.contains_key(*c)) {
            return Err(SchemaError::Unsafe(format!(
                "scope column `{unknown}` is not in this worker's RUNS_SCOPE_COLUMNS"
            )));
        }
        let columns: Vec<&String> = scope.keys().collect();
        Ok(Statements::new(&self.table, &schema, &columns))
    }

    pub async fn execute(
        &self,
        envelope: &TaskEnvelope,
        params: &CleanupRunsParams,
        cancel: &CancellationToken,
        checkpoint: &Checkpoint,
    ) -> Result<Execution, ExecError> {
        let started = Instant::now();
        let no_scope = BTreeMap::new();
        let scope = params.scope.as_ref().unwrap_or(&no_scope);
        let scope_values: Vec<String> = scope.values().cloned().collect();
        let statements = reads::retry_in_turn(cancel, SchemaError::passes, || {
            self.statements(scope, params.dry_run)
        });
        let statements = statements.await.map_err(|e| match e {
            SchemaError::Database(db) => ExecError::from_sqlx("cannot check the runs table", &db),
            other => ExecError::permanent(other.to_string()),
        })?;
        let statuses = match &params.statuses {
            Some(asked) => {
                if let Some(bad) = asked
                    .iter()
                    .find(|s| !self.table.terminal_statuses.contains(s))
                {
                    return Err(ExecError::permanent(format!(
                        "status `{bad}` is not terminal for this worker (RUNS_TERMINAL_STATUSES: {})",
                        self.table.terminal_statuses.join(", ")
                    )));
                }
                asked.clone()
            }
            None => self.table.terminal_statuses.clone(),
        };
        // A continuation or a retry resumes the counts of the earlier turns (real runs
        // only: a dry run is two statements and starts over).
        let mut result = match (&envelope.progress, params.dry_run) {
            (Some(progress), false) => serde_json::from_value::<RunsResult>(progress.clone())
                .map_err(|e| {
                    ExecError::permanent(format!("unreadable continuation progress: {e}"))
                })?,
            _ => RunsResult::default(),
        };
        result.dry_run = params.dry_run;
        result.cutoff = envelope.cutoff;
        result.statuses = statuses.clone();
        result.turns += 1;
        let strategy = statements.schema.strategy.as_str();
        if result.strategy.as_deref() != Some(strategy) {
            // A cursor only means something in the order that made it.
            result.cursor = None;
        }
        result.strategy = Some(strategy.to_owned());
        let run = Run {
            executor: self,
            statements: &statements,
            statuses: &statuses,
            scope: &scope_values,
            cutoff: envelope.cutoff,
            task_id: envelope.task_id,
            estimated: result.runs_estimated,
            cancel,
        };
        // The progress so far, with this turn's working time: what a failure reports (rows
        // deleted before it are gone, and the next attempt counts on from them) and what a
        // stopped turn hands on.
        let so_far = |result: &RunsResult| {
            let mut result = result.clone();
            result.duration_ms += started.elapsed().as_millis() as u64;
            serde_json::to_value(&result).expect("progress serializes")
        };
        let failed = |result: &RunsResult, error: ExecError| error.with_progress(so_far(result));
        if params.dry_run {
            run.dry_run(params.max_rows, &mut result).await?;
            run.partitions_dry_run(params, &mut result).await?;
        } else {
            // The ledger hears of a real run before it writes anything.
            if !checkpoint.announce().await {
                return Err(failed(&result, ExecError::unannounced()));
            }
            if cancel.is_cancelled() {
                // Cancelled (or stopped) while it was announced: still nothing is touched.
                let progress = so_far(&result);
                return Ok(Execution::Interrupted { progress });
            }
            // What every copy of this task committed so far (a message delivered twice).
            let count = match run.committed().await {
                Ok(count) => count,
                Err(error) => return Err(failed(&result, error)),
            };
            // The table is the authority once the task has a row there.
            if let Some(count) = &count {
                result.runs_deleted = count.runs_deleted;
                if self.progress.records_estimates() {
                    result.runs_estimated = count.runs_estimated;
                }
                // A partition an earlier attempt detached but did not live to drop (also
                // when a copy finished the task meanwhile).
                if let Some(pending) = &count.pending_drop {
                    run.finish_pending_drop(pending).await;
                }
            }
            let mut finished = count.is_some_and(|c| c.finished);
            if !finished {
                // Whole partitions first, where that is exactly what deleting would do.
                finished = match run.remove_partitions(params, &mut result, checkpoint).await {
                    Ok(finished) => finished,
                    Err(error) => return Err(failed(&result, error)),
                };
            }
            if finished {
                tracing::info!(task_id = %envelope.task_id, "another copy of this task finished it; deleting nothing more");
            } else {
                finished = match run.delete(params, &mut result, checkpoint).await {
                    Ok(finished) => finished,
                    Err(error) => return Err(failed(&result, error)),
                };
            }
            // A drop that failed right after its detach (the partition says `detached` in
            // drop mode): once more before the task ends (its record stays for a later
            // attempt if this fails too).
            if self.partitions == PartitionMode::Drop
                && result
                    .partitions
                    .iter()
                    .any(|p| p.action == PartitionMode::Detach.action())
            {
                let read = run.retry(|| self.progress.read(&self.pool, envelope.task_id));
                match read.await {
                    Ok(Some(Count {
                        pending_drop: Some(pending),
                        ..
                    })) => run.finish_pending_drop(&pending).await,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the task's pending partition drop")
                    }
                }
            }
            if !finished {
                result.runs_matched = result.runs_deleted;
                let progress = so_far(&result);
                return Ok(Execution::Interrupted { progress });
            }
            // The final count: whichever copy marks the task finished first fixes it.
            match run.finish(result.runs_deleted).await {
                Ok(total) => {
                    result.runs_deleted = total.runs_deleted;
                    // Estimates committed by any copy, even one whose report was lost.
                    if self.progress.records_estimates() {
                        result.runs_estimated = total.runs_estimated;
                    }
                }
                Err(error) => return Err(failed(&result, error)),
            }
            result.runs_matched = result.runs_deleted;
        }
        result.cursor = None;
        let oldest = if params.dry_run {
            // Measured with the dry run's count, in the same snapshot.
            Ok(result.oldest_remaining_age_seconds)
        } else {
            run.oldest_remaining().await
        };
        result.duration_ms += started.elapsed().as_millis() as u64;
        result.oldest_remaining_age_seconds = match oldest {
            Ok(oldest) => oldest,
            Err(error) => {
                let progress = serde_json::to_value(&result).expect("progress serializes");
                return Err(error.with_progress(progress));
            }
        };
        Ok(Execution::Done(Report::Runs(result)))
    }
}

/// One turn of one task.
struct Run<'a> {
    executor: &'a RunsExecutor,
    statements: &'a Statements,
    statuses: &'a [String],
    /// `$4`: the task's scope values.
    scope: &'a [String],
    cutoff: DateTime<Utc>,
    task_id: uuid::Uuid,
    /// The estimated rows among those the task's message says were deleted: seeds the
    /// task's progress row with `runs_deleted` when it has none.
    estimated: u64,
    cancel: &'a CancellationToken,
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
