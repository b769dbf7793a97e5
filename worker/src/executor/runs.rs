//! `cleanup_runs`: delete finished runs older than the cutoff, in batches.
//!
//! Only rows whose status is one of the terminal statuses and whose timestamp is older
//! than the cutoff fixed at enqueue time are deleted. Table and column names come from
//! configuration, are validated as identifiers and quoted; every value is a bound
//! parameter. Each batch locks its rows with `FOR UPDATE SKIP LOCKED`, so workers running
//! at once never wait on each other's rows. Child rows go with their run through the
//! schema's `ON DELETE CASCADE` foreign keys (see `deploy/sql/runs-schema.sql`).

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::envelope::TaskEnvelope;
use shared::retry::RetryPolicy;
use shared::tasks::{CleanupRunsParams, DEFAULT_BATCH_SIZE};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{ExecError, Execution};

/// Ids shown in a result, as a sample of what was (or would be) deleted.
const SAMPLE_SIZE: usize = 10;

/// The runs table as configured, with every identifier validated and quoted.
#[derive(Debug, Clone)]
pub struct RunsTable {
    table: String,
    id: String,
    status: String,
    timestamp: String,
    terminal_statuses: Vec<String>,
}

impl RunsTable {
    pub fn new(
        table: &str,
        id: &str,
        status: &str,
        timestamp: &str,
        terminal_statuses: Vec<String>,
    ) -> anyhow::Result<Self> {
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 {
            anyhow::bail!("RUNS_TABLE `{table}` must be `table` or `schema.table`");
        }
        let table = parts
            .iter()
            .map(|p| quote_ident(p, "RUNS_TABLE"))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(".");
        if terminal_statuses.is_empty() {
            anyhow::bail!("RUNS_TERMINAL_STATUSES must name at least one status");
        }
        Ok(Self {
            table,
            id: quote_ident(id, "RUNS_ID_COLUMN")?,
            status: quote_ident(status, "RUNS_STATUS_COLUMN")?,
            timestamp: quote_ident(timestamp, "RUNS_TIMESTAMP_COLUMN")?,
            terminal_statuses,
        })
    }

    pub fn terminal_statuses(&self) -> &[String] {
        &self.terminal_statuses
    }

    /// The eligibility condition; `$1` = statuses (text[]), `$2` = cutoff.
    fn eligible(&self) -> String {
        format!(
            "{status}::text = ANY($1) AND {ts} < $2",
            status = self.status,
            ts = self.timestamp
        )
    }
}

/// A plain SQL identifier (letters, digits, `_`, not starting with a digit, at most 63
/// bytes), returned double-quoted.
pub fn quote_ident(name: &str, setting: &str) -> anyhow::Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        anyhow::bail!(
            "{setting} `{name}` is not a valid SQL identifier (letters, digits and `_`, \
             not starting with a digit, at most 63 characters)"
        );
    }
    Ok(format!("\"{name}\""))
}

/// The result of a `cleanup_runs` task (contract; see README). It is also the progress a
/// continuation carries from one turn to the next.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunsResult {
    pub dry_run: bool,
    /// Rows that matched: in a dry run, what a real run would delete now; else = deleted.
    pub runs_matched: u64,
    pub runs_deleted: u64,
    pub batches: u64,
    /// A few ids of matched rows (dry run) or deleted rows (first batch).
    pub sample_ids: Vec<String>,
    pub cutoff: DateTime<Utc>,
    pub statuses: Vec<String>,
    /// True when `max_rows` stopped the run before every eligible row was gone.
    pub capped: bool,
    /// Age in seconds of the oldest row still eligible after the run (null when none).
    pub oldest_remaining_age_seconds: Option<f64>,
    /// Working time over every turn.
    pub duration_ms: u64,
    /// Turns the task took: more than one when a shutdown or the turn budget handed it on.
    #[serde(default)]
    pub turns: u32,
}

pub struct RunsExecutor {
    pool: PgPool,
    table: RunsTable,
}

impl RunsExecutor {
    pub fn new(pool: PgPool, table: RunsTable) -> Self {
        Self { pool, table }
    }

    pub async fn execute(
        &self,
        envelope: &TaskEnvelope,
        params: &CleanupRunsParams,
        cancel: &CancellationToken,
    ) -> Result<Execution, ExecError> {
        let started = Instant::now();
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
        // A continuation resumes the counts of the earlier turns (real runs only: a dry
        // run is one statement and never interrupted).
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
        if params.dry_run {
            self.dry_run(&statuses, envelope.cutoff, params.max_rows, &mut result)
                .await?;
        } else {
            let deleted = self
                .delete(&statuses, envelope.cutoff, params, &mut result, cancel)
                .await;
            let finished = match deleted {
                Ok(finished) => finished,
                // Rows deleted before the failure are gone: the next attempt counts on.
                Err(error) => {
                    result.duration_ms += started.elapsed().as_millis() as u64;
                    let progress = serde_json::to_value(&result).expect("progress serializes");
                    return Err(error.with_progress(progress));
                }
            };
            result.runs_matched = result.runs_deleted;
            if !finished {
                result.duration_ms += started.elapsed().as_millis() as u64;
                let progress = serde_json::to_value(&result).expect("progress serializes");
                return Ok(Execution::Interrupted { progress });
            }
        }
        result.oldest_remaining_age_seconds =
            self.oldest_remaining(&statuses, envelope.cutoff).await?;
        result.duration_ms += started.elapsed().as_millis() as u64;
        Ok(Execution::Done(
            serde_json::to_value(result).expect("result serializes"),
        ))
    }

    async fn dry_run(
        &self,
        statuses: &[String],
        cutoff: DateTime<Utc>,
        max_rows: Option<u64>,
        result: &mut RunsResult,
    ) -> Result<(), ExecError> {
        let t = &self.table;
        let count_sql = format!("SELECT count(*) FROM {} WHERE {}", t.table, t.eligible());
        let count: i64 = retry(|| {
            sqlx::query_scalar(&count_sql)
                .bind(statuses)
                .bind(cutoff)
                .fetch_one(&self.pool)
        })
        .await
        .map_err(|e| ExecError::from_sqlx("failed to count eligible runs", &e))?;
        let count = count.max(0) as u64;
        result.runs_matched = max_rows.map_or(count, |cap| count.min(cap));
        result.capped = max_rows.is_some_and(|cap| count > cap);
        let sample_sql = format!(
            "SELECT {id}::text FROM {table} WHERE {cond} ORDER BY {ts}, {id} LIMIT $3",
            id = t.id,
            table = t.table,
            cond = t.eligible(),
            ts = t.timestamp
        );
        result.sample_ids = retry(|| {
            sqlx::query_scalar(&sample_sql)
                .bind(statuses)
                .bind(cutoff)
                .bind(SAMPLE_SIZE as i64)
                .fetch_all(&self.pool)
        })
        .await
        .map_err(|e| ExecError::from_sqlx("failed to sample eligible runs", &e))?;
        Ok(())
    }

    async fn delete(
        &self,
        statuses: &[String],
        cutoff: DateTime<Utc>,
        params: &CleanupRunsParams,
        result: &mut RunsResult,
        cancel: &CancellationToken,
    ) -> Result<bool, ExecError> {
        let t = &self.table;
        let batch_size = u64::from(params.batch_size.unwrap_or(DEFAULT_BATCH_SIZE));
        // Oldest first, so a capped run removes the oldest rows.
        let sql = format!(
            "DELETE FROM {table} WHERE {id} IN (
                 SELECT {id} FROM {table} WHERE {cond}
                 ORDER BY {ts} LIMIT $3 FOR UPDATE SKIP LOCKED
             ) RETURNING {id}::text",
            table = t.table,
            id = t.id,
            cond = t.eligible(),
            ts = t.timestamp
        );
        loop {
            let remaining = params.max_rows.map(|cap| cap - result.runs_deleted);
            if remaining == Some(0) {
                result.capped = true;
                break;
            }
            if cancel.is_cancelled() {
                // At a batch boundary: everything deleted so far is committed and counted.
                return Ok(false);
            }
            let limit = remaining.map_or(batch_size, |r| r.min(batch_size));
            let deleted: Vec<String> = retry(|| {
                sqlx::query_scalar(&sql)
                    .bind(statuses)
                    .bind(cutoff)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
            })
            .await
            .map_err(|e| ExecError::from_sqlx("failed to delete a batch of runs", &e))?;
            let n = deleted.len() as u64;
            if n == 0 {
                break;
            }
            result.batches += 1;
            result.runs_deleted += n;
            if result.sample_ids.len() < SAMPLE_SIZE {
                let room = SAMPLE_SIZE - result.sample_ids.len();
                result.sample_ids.extend(deleted.into_iter().take(room));
            }
            tracing::debug!(
                batch = result.batches,
                deleted = n,
                "deleted a batch of runs"
            );
            if n < limit {
                // Fewer than asked: nothing else eligible, or the rest is locked by
                // another worker, which will delete it.
                break;
            }
        }
        Ok(true)
    }

    /// Age of the oldest eligible row still present (in a dry run: all of them are).
    async fn oldest_remaining(
        &self,
        statuses: &[String],
        cutoff: DateTime<Utc>,
    ) -> Result<Option<f64>, ExecError> {
        let t = &self.table;
        let sql = format!(
            "SELECT EXTRACT(EPOCH FROM (now() - min({ts})))::float8 FROM {table} WHERE {cond}",
            ts = t.timestamp,
            table = t.table,
            cond = t.eligible()
        );
        retry(|| {
            sqlx::query_scalar::<_, Option<f64>>(&sql)
                .bind(statuses)
                .bind(cutoff)
                .fetch_one(&self.pool)
        })
        .await
        .map_err(|e| ExecError::from_sqlx("failed to measure remaining runs", &e))
    }
}

/// Retry a statement briefly while its error is transient (connection blips, lock
/// timeouts, serialization failures); a permanent error returns at once.
async fn retry<T, F, Fut>(op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    RetryPolicy::in_attempt()
        .retry(shared::db::is_transient, op)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated_and_quoted() {
        assert_eq!(quote_ident("finished_at", "X").unwrap(), "\"finished_at\"");
        for bad in [
            "",
            "1abc",
            "a-b",
            "a\"b",
            "runs; DROP TABLE x",
            &"a".repeat(64),
        ] {
            assert!(quote_ident(bad, "X").is_err(), "{bad}");
        }
        let t = RunsTable::new(
            "app.runs",
            "id",
            "status",
            "finished_at",
            vec!["done".into()],
        )
        .unwrap();
        assert_eq!(t.table, "\"app\".\"runs\"");
        assert!(RunsTable::new("a.b.c", "id", "s", "t", vec!["x".into()]).is_err());
        assert!(RunsTable::new("runs", "id", "s", "t", vec![]).is_err());
    }
}
