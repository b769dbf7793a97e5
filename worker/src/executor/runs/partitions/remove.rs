//! Removing one partition, in one transaction: writes held off while its rows are
//! counted, then the table and the partition locked exclusively for the detach (and the
//! drop, where the progress table cannot keep a drop pending: see [`super::drop`]).

use shared::results::{RunsPartition, RunsResult};
use shared::tasks::CleanupRunsParams;

use super::super::progress::{PendingDrop, ProgressTable};
use super::super::{Run, RunsTable};
use super::{census, estimate, obstacle, proof, Candidate, PartitionCount, PartitionMode, Proof};
use crate::executor::{Checkpoint, ExecError};

/// What removing one partition did.
pub enum Removal {
    /// Removed: its rows (`estimated` from statistics, or counted), the task's committed
    /// count after it, what became of it (`dropped`, `detached`) and how long the
    /// transaction that locked the runs table took.
    Removed {
        rows: u64,
        estimated: bool,
        total: u64,
        action: &'static str,
        held: std::time::Duration,
    },
    /// Left to the batches: why.
    Kept(String),
    /// Another copy of the task finished it.
    Finished,
}

/// The statements of one removal, in one transaction already holding the task's
/// progress row.
pub struct RemoveSql {
    /// Holds off every write to the partition while its rows are counted; reads go on.
    pub hold: String,
    /// `$1` oid, `$2` runs table, `$3` bound, `$4` name: the partition is still attached
    /// with the same bounds, under the same name.
    pub still_attached: String,
    /// Wait no longer than this for the exclusive locks (every query of the table queues
    /// behind a waiting exclusive lock).
    pub short_wait: String,
    /// In the order the application's queries take them: the table, then the partition.
    pub exclusive: String,
    /// `$1` runs table, `$2` oid: other partitions that stay attached.
    pub others: String,
    pub detach: String,
    /// The drop in the same transaction, where it cannot be left to a second one.
    pub drop: Option<String>,
    /// `$1` task, `$2` rows (and where `estimates`, `$3` of them estimated and `$4` the
    /// partition to drop next): added to the committed count.
    pub count: String,
    /// Whether the progress table records estimated rows and a pending drop.
    pub estimates: bool,
    /// Whether the partition is dropped in a transaction of its own after the detach.
    pub drop_after: bool,
    /// `$1` task: the partition it detached and has yet to drop, if any.
    pub pending: String,
    /// `$1` oid: the `xmin` of the table's catalog row.
    pub xmin: String,
}

/// The longest wait for the exclusive locks of a removal.
const EXCLUSIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl RemoveSql {
    pub fn new(
        table: &RunsTable,
        progress: &ProgressTable,
        c: &Candidate,
        mode: PartitionMode,
        lock_timeout: std::time::Duration,
    ) -> Self {
        let estimates = progress.records_estimates();
        let drop = mode == PartitionMode::Drop;
        Self {
            hold: format!("LOCK TABLE {} IN SHARE MODE", c.name),
            still_attached: "SELECT EXISTS (
                 SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE c.oid = $1::int8::oid AND i.inhparent = to_regclass($2)
                   AND NOT i.inhdetachpending
                   AND pg_get_expr(c.relpartbound, c.oid) = $3
                   AND to_regclass($4) = c.oid)"
                .to_owned(),
            short_wait: format!(
                "SET LOCAL lock_timeout = '{}ms'",
                lock_timeout.min(EXCLUSIVE_WAIT).as_millis()
            ),
            exclusive: format!(
                "LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE",
                table.table, c.name
            ),
            others: "SELECT count(*) FROM pg_inherits
                     WHERE inhparent = to_regclass($1) AND inhrelid <> $2::int8::oid
                       AND NOT inhdetachpending"
                .to_owned(),
            detach: format!("ALTER TABLE {} DETACH PARTITION {}", table.table, c.name),
            drop: (drop && !estimates).then(|| format!("DROP TABLE {}", c.name)),
            count: format!(
                "UPDATE {} SET runs_deleted = runs_deleted + $2{} WHERE task_id = $1
                 RETURNING runs_deleted",
                progress.name(),
                if estimates {
                    ", runs_estimated = runs_estimated + $3, pending_drop = $4"
                } else {
                    ""
                }
            ),
            estimates,
            drop_after: drop && estimates,
            pending: progress.pending_sql(),
            xmin: "SELECT xmin::text FROM pg_class WHERE oid = $1::int8::oid".to_owned(),
        }
    }
}

/// Whether a partition's rows may be taken from its statistics: only while every row
/// counted so far went with a whole partition. Once batches (of any turn, attempt or copy
/// of the task) deleted rows, a partition's statistics may still count rows that are gone,
/// and they would be counted twice.
fn may_estimate(result: &RunsResult) -> bool {
    let by_partitions: u64 = result.partitions.iter().map(|p| p.rows).sum();
    result.batches == 0 && result.cursor.is_none() && result.runs_deleted <= by_partitions
}

impl Run<'_> {
    /// Remove every partition that may go whole, oldest first, each in its own
    /// transaction; what cannot go is left to the batches. Returns true when another copy
    /// of the task had finished it.
    pub(in crate::executor::runs) async fn remove_partitions(
        &self,
        params: &CleanupRunsParams,
        result: &mut RunsResult,
        checkpoint: &Checkpoint,
    ) -> Result<bool, ExecError> {
        let found = self
            .retry(|| self.fast_path(params))
            .await
            .map_err(|e| ExecError::from_sqlx("failed to read the runs partitions", &e))?;
        for candidate in found {
            if self.cancel.is_cancelled() {
                break;
            }
            let began = std::time::Instant::now();
            let removal =
                self.remove_partition(&candidate, result.runs_deleted, may_estimate(result));
            let removal = match removal.await {
                Ok(removal) => removal,
                Err(error) => Removal::Kept(error.to_string()),
            };
            let took = match &removal {
                // The drop's own transaction locks only the detached table.
                Removal::Removed { held, .. } => *held,
                _ => began.elapsed(),
            };
            result.longest_batch_ms = result.longest_batch_ms.max(took.as_millis() as u64);
            match removal {
                Removal::Finished => return Ok(true),
                Removal::Kept(reason) => {
                    tracing::info!(partition = %candidate.name, %reason, "partition left to the batches");
                }
                Removal::Removed {
                    rows,
                    estimated,
                    total,
                    action,
                    ..
                } => {
                    tracing::info!(partition = %candidate.name, rows, estimated, action, "removed a whole partition of runs");
                    result.runs_deleted = result.runs_deleted.max(total);
                    if estimated {
                        result.runs_estimated += rows;
                    }
                    result.partitions.push(RunsPartition {
                        name: candidate.name.clone(),
                        rows,
                        action: action.to_owned(),
                        estimated,
                    });
                    checkpoint.record(serde_json::to_value(&*result).expect("progress serializes"));
                }
            }
        }
        Ok(false)
    }

    /// Remove one partition if it still may go, in one transaction: its writes held off
    /// while its rows are counted, then the table and the partition locked exclusively
    /// (briefly) for the detach and the drop.
    async fn remove_partition(
        &self,
        candidate: &Candidate,
        known: u64,
        may_estimate: bool,
    ) -> Result<Removal, sqlx::Error> {
        let executor = self.executor;
        let sql = RemoveSql::new(
            &executor.table,
            &executor.progress,
            candidate,
            executor.partitions,
            executor.timeouts.lock,
        );
        // READ COMMITTED (whatever the database's default): each statement sees what was
        // committed before it, so the count below sees every row once the lock is held.
        // Row security off: a policy that would hide rows makes the count fail instead.
        let began = std::time::Instant::now();
        // Opening it reads and locks only: a try that failed (a dead connection) did
        // nothing, and another takes a new connection.
        let opened = self
            .retry(|| self.open_task_tx("; SET LOCAL row_security = off", known))
            .await?;
        let Some((mut tx, committed, finished)) = opened else {
            return Ok(Removal::Kept("the turn was stopped".to_owned()));
        };
        if finished {
            return Ok(Removal::Finished);
        }
        if sql.estimates {
            // One pending drop at a time: a record is never overwritten.
            let pending: Option<String> = sqlx::query_scalar(&sql.pending)
                .bind(self.task_id)
                .fetch_one(&mut *tx)
                .await?;
            if let Some(pending) = pending {
                return Ok(Removal::Kept(format!(
                    "the partition detached before ({pending}) is still to be dropped"
                )));
            }
        }
        sqlx::query(&sql.hold).execute(&mut *tx).await?;
        let attached: bool = sqlx::query_scalar(&sql.still_attached)
            .bind(candidate.oid)
            .bind(&executor.table.table)
            .bind(&candidate.bound)
            .bind(&candidate.name)
            .fetch_one(&mut *tx)
            .await?;
        if !attached {
            return Ok(Removal::Kept(
                "detached, renamed or changed meanwhile".to_owned(),
            ));
        }
        // Chosen under the lock, which holds the column types as they are now (the
        // status column may have changed type since the partitions were listed).
        let proof = proof(&mut *tx, &executor.table, candidate.oid).await?;
        // Where the indexes prove the rows eligible without reading them, counting them
        // would be the one read of the whole partition: its statistics say how many.
        // The estimate is committed with the count (`runs_estimated`), so that a report
        // rebuilt from the table still says which rows were estimated.
        let estimated = match (executor.partition_count, proof) {
            // A copy of the task may have deleted rows by batch since this one looked.
            (PartitionCount::Estimate, Proof::Indexes { .. })
                if may_estimate && committed == known && sql.estimates =>
            {
                estimate(&mut *tx, candidate.oid).await?
            }
            _ => None,
        };
        tracing::debug!(partition = %candidate.name, ?proof, ?estimated, "checking a partition");
        let found = census(
            &mut *tx,
            &executor.table,
            &self.statements.schema,
            &candidate.name,
            proof,
            estimated.is_none(),
            self.statuses,
            self.cutoff,
        )
        .await?;
        if let Some(reason) = found.blocking {
            return Ok(Removal::Kept(reason));
        }
        let Some(counted) = estimated.or(found.rows) else {
            return Ok(Removal::Kept("its rows were not counted".to_owned()));
        };
        let rows = i64::try_from(counted).unwrap_or(i64::MAX);
        // The count can take a while on a large partition: a stop (a cancel, shutdown, the
        // turn's budget) that came meanwhile is honoured before anything goes.
        if self.cancel.is_cancelled() {
            return Ok(Removal::Kept("the turn was stopped".to_owned()));
        }
        sqlx::query(&sql.short_wait).execute(&mut *tx).await?;
        sqlx::query(&sql.exclusive).execute(&mut *tx).await?;
        if self.cancel.is_cancelled() {
            return Ok(Removal::Kept("the turn was stopped".to_owned()));
        }
        // What may have changed before the first lock: triggers, keys, policies, the
        // partitions that stay.
        if let Some(reason) = obstacle(&mut *tx, &executor.table).await? {
            return Ok(Removal::Kept(reason));
        }
        let others: i64 = sqlx::query_scalar(&sql.others)
            .bind(&executor.table.table)
            .bind(candidate.oid)
            .fetch_one(&mut *tx)
            .await?;
        if others == 0 {
            return Ok(Removal::Kept("it is the last partition".to_owned()));
        }
        sqlx::query(&sql.detach).execute(&mut *tx).await?;
        if let Some(drop) = &sql.drop {
            sqlx::query(drop).execute(&mut *tx).await?;
        }
        // The detached table's catalog row as this transaction wrote it: a drop goes ahead
        // only while nothing changed the table since (renamed, attached, replaced).
        let pending = if sql.drop_after {
            let xmin = sqlx::query_scalar(&sql.xmin)
                .bind(candidate.oid)
                .fetch_one(&mut *tx)
                .await?;
            Some(PendingDrop {
                oid: candidate.oid,
                xmin,
                name: candidate.name.clone(),
            })
        } else {
            None
        };
        let mut count = sqlx::query_scalar(&sql.count).bind(self.task_id).bind(rows);
        if sql.estimates {
            count = count
                .bind(if estimated.is_some() { rows } else { 0 })
                .bind(pending.as_ref().map(PendingDrop::record));
        }
        let total: i64 = count.fetch_one(&mut *tx).await?;
        tx.commit().await?;
        let held = began.elapsed();
        // Dropped apart: the files go back to the filesystem when the drop commits, and
        // its transaction holds no lock on the runs table meanwhile.
        let action = if let Some(pending) = &pending {
            match self.drop_detached(pending).await {
                Ok(None) => PartitionMode::Drop.action(),
                Ok(Some(reason)) => {
                    tracing::warn!(partition = %candidate.name, %reason, "detached partition not dropped");
                    PartitionMode::Detach.action()
                }
                Err(error) => {
                    tracing::warn!(partition = %candidate.name, %error, "detached partition not dropped yet; tried again when the task's batches are done");
                    PartitionMode::Detach.action()
                }
            }
        } else {
            executor.partitions.action()
        };
        Ok(Removal::Removed {
            rows: counted,
            estimated: estimated.is_some(),
            total: total.max(0) as u64,
            action,
            held,
        })
    }
}

#[cfg(test)]
mod tests {
    use shared::results::{RunsCursor, RunsPartition, RunsResult};

    use super::may_estimate;

    #[test]
    fn statistics_are_used_only_before_any_row_went_by_batch() {
        let mut result = RunsResult::default();
        assert!(may_estimate(&result), "nothing deleted yet");
        result.partitions.push(RunsPartition {
            name: "public.runs_2020_01".into(),
            rows: 90,
            action: "dropped".into(),
            estimated: true,
        });
        result.runs_deleted = 90;
        assert!(may_estimate(&result), "only a partition went");
        // A copy of the task (or a lost report) committed rows that no partition explains.
        result.runs_deleted = 91;
        assert!(!may_estimate(&result));
        result.runs_deleted = 90;
        result.batches = 1;
        assert!(!may_estimate(&result), "an earlier turn deleted by batch");
        result.batches = 0;
        result.cursor = Some(RunsCursor::default());
        assert!(!may_estimate(&result), "an earlier turn walked by batch");
    }
}
