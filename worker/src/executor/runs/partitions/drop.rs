//! Dropping a partition that a removal detached, in a transaction of its own.
//!
//! PostgreSQL gives a dropped table's files back to the filesystem when the drop commits,
//! with every lock of the transaction still held: tens of milliseconds a gigabyte or more
//! on common disks. Dropped in the detach's transaction, the runs table would stay locked
//! `ACCESS EXCLUSIVE` (every query of it waiting) for that long. So the detach commits
//! first, with the partition recorded as pending in the task's progress row (the same
//! transaction that commits its count), and the drop follows; it locks the detached table
//! (and, as any drop, the tables its foreign keys reference), not the runs table. A worker
//! that dies in between leaves the record: the task's next attempt drops the table first.
//!
//! The record names the table by oid, by the `xmin` of its catalog row as the detach wrote
//! it, and by name. The drop goes ahead only while all three still match one plain table
//! that is not a partition and has the runs table's columns, checked under its lock: a
//! table renamed, attached again, altered or replaced since is left alone, and so is any
//! table a stale or forged record could name. Only with `RUNS_PARTITIONS=drop`.

use super::super::progress::PendingDrop;
use super::super::Run;
use super::PartitionMode;
use crate::executor::runs::batches::begin_sql;

/// `$1` oid, `$2` xmin, `$3` name, `$4` runs table: the table is the one the record names,
/// as the detach left it, with the runs table's columns.
const SAME_TABLE: &str = "
    SELECT EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = $1::int8::oid AND c.xmin::text = $2
          AND format('%I.%I', n.nspname, c.relname) = $3
          AND c.relkind = 'r' AND NOT c.relispartition
          AND c.oid <> to_regclass($4)
          AND (SELECT array_agg((a.attname, a.atttypid) ORDER BY a.attname)
               FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                 AND NOT a.attisdropped)
            = (SELECT array_agg((a.attname, a.atttypid) ORDER BY a.attname)
               FROM pg_attribute a WHERE a.attrelid = to_regclass($4) AND a.attnum > 0
                 AND NOT a.attisdropped))";

/// Whether [`SAME_TABLE`] holds for `pending` and the runs table `runs`.
async fn same_table(
    tx: &mut sqlx::PgConnection,
    pending: &PendingDrop,
    runs: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(SAME_TABLE)
        .bind(pending.oid)
        .bind(&pending.xmin)
        .bind(&pending.name)
        .bind(runs)
        .fetch_one(tx)
        .await
}

impl Run<'_> {
    /// Drop the table a removal detached, and clear the task's record of it.
    /// `Some(reason)` when it was not dropped and never will be by this task (the record
    /// is cleared too); an error leaves the record. Tried again on a transient error: a
    /// try that did not commit changed nothing, and one whose answer was lost finds the
    /// table gone (it says so, and clears the record).
    pub(in crate::executor::runs) async fn drop_detached(
        &self,
        pending: &PendingDrop,
    ) -> Result<Option<String>, sqlx::Error> {
        self.retry(|| self.try_drop_detached(pending)).await
    }

    async fn try_drop_detached(
        &self,
        pending: &PendingDrop,
    ) -> Result<Option<String>, sqlx::Error> {
        let executor = self.executor;
        let name = &pending.name;
        let mut tx = executor
            .pool
            .begin_with(begin_sql(executor.timeouts))
            .await?;
        let runs = &executor.table.table;
        let kept = if !same_table(&mut tx, pending, runs).await? {
            Some("it is gone, or changed since it was detached".to_owned())
        } else {
            // The name was printed by the catalog (`format('%I.%I')`) and matches it.
            sqlx::query(&format!("LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
                .execute(&mut *tx)
                .await?;
            // Under the lock: still that table, as the detach left it.
            if same_table(&mut tx, pending, runs).await? {
                sqlx::query(&format!("DROP TABLE {name}"))
                    .execute(&mut *tx)
                    .await?;
                None
            } else {
                Some("it changed before it was locked".to_owned())
            }
        };
        sqlx::query(&executor.progress.dropped_sql())
            .bind(self.task_id)
            .bind(pending.record())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(kept)
    }

    /// Drop the partition `pending` that an earlier attempt (or turn) of the task
    /// detached and did not drop; only logged, whatever happens. Nothing with a mode
    /// other than `drop`: a table left detached then stays.
    pub(in crate::executor::runs) async fn finish_pending_drop(&self, pending: &PendingDrop) {
        if self.executor.partitions != PartitionMode::Drop {
            return;
        }
        let name = &pending.name;
        match self.drop_detached(pending).await {
            Ok(None) => {
                tracing::info!(partition = %name, "dropped a partition an earlier attempt detached")
            }
            Ok(Some(reason)) => {
                tracing::warn!(partition = %name, %reason, "a partition an earlier attempt detached was not dropped")
            }
            Err(error) => {
                tracing::warn!(partition = %name, %error, "cannot drop a partition an earlier attempt detached")
            }
        }
    }
}
