//! Dropping a partition that a removal detached, in a transaction of its own.
//!
//! PostgreSQL gives a dropped table's files back to the filesystem when the drop commits,
//! with every lock of the transaction still held: tens of milliseconds a gigabyte or more
//! on common disks. Dropped in the detach's transaction, the runs table would stay locked
//! `ACCESS EXCLUSIVE` (every query of it waiting) for that long. So the detach commits
//! first, with the partition recorded as pending in the task's progress row (the same
//! transaction that commits its count), and the drop follows, locking only the detached
//! table. A worker that dies in between leaves the record: the task's next attempt drops
//! the table before anything else.
//!
//! The record names the table by oid and name; the drop goes ahead only while both still
//! match one table that is not a partition (again), checked under its lock. A table
//! renamed, attached again, or replaced by another of the same name is left alone.

use super::super::Run;
use crate::executor::runs::batches::begin_sql;

impl Run<'_> {
    /// Drop the table a removal detached (`oid`, `name` as the catalog printed it), and
    /// clear the task's record of it. `Some(reason)` when it was not dropped and never
    /// will be by this task (the record is cleared too); an error leaves the record.
    pub(in crate::executor::runs) async fn drop_detached(
        &self,
        oid: i64,
        name: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let executor = self.executor;
        let mut tx = executor
            .pool
            .begin_with(begin_sql(executor.timeouts))
            .await?;
        // The table with this oid as the catalog names it now, if it is a plain table
        // that is not a partition.
        let current: Option<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = $1::int8::oid AND c.relkind = 'r' AND NOT c.relispartition",
        )
        .bind(oid)
        .fetch_optional(&mut *tx)
        .await?;
        let kept = match current {
            None => Some("it is gone, or attached again".to_owned()),
            Some(current) if current != name => Some(format!("it was renamed to {current}")),
            Some(current) => {
                // The name comes from the catalog, quoted by `format('%I')`.
                sqlx::query(&format!("LOCK TABLE {current} IN ACCESS EXCLUSIVE MODE"))
                    .execute(&mut *tx)
                    .await?;
                // Under the lock: still that table, still no partition.
                let same: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_class c
                                    WHERE c.oid = $1::int8::oid AND c.oid = to_regclass($2)
                                      AND c.relkind = 'r' AND NOT c.relispartition)",
                )
                .bind(oid)
                .bind(&current)
                .fetch_one(&mut *tx)
                .await?;
                if same {
                    sqlx::query(&format!("DROP TABLE {current}"))
                        .execute(&mut *tx)
                        .await?;
                    None
                } else {
                    Some("it changed before it was locked".to_owned())
                }
            }
        };
        sqlx::query(&executor.progress.dropped_sql())
            .bind(self.task_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(kept)
    }

    /// Drop the partition an earlier attempt of the task detached and did not drop (it
    /// stopped in between); only logged, whatever happens.
    pub(in crate::executor::runs) async fn finish_pending_drop(&self) {
        let (progress, pool) = (&self.executor.progress, &self.executor.pool);
        let pending = match progress.pending_drop(pool, self.task_id).await {
            Ok(Some(pending)) => pending,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot read the task's pending partition drop");
                return;
            }
        };
        let (oid, name) = pending;
        match self.drop_detached(oid, &name).await {
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
