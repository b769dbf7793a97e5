//! The partition fast path: when the runs table is range-partitioned on its timestamp
//! column, a partition whose whole range is older than the cutoff and whose every row is
//! eligible goes whole (detached and dropped, or only detached with
//! `RUNS_PARTITIONS=detach`) instead of row by row.
//!
//! It is taken only when dropping a partition does exactly what deleting its rows would:
//! no scope and no `max_rows` on the task (a partition holds other scopes' rows, and a cap
//! takes rows one by one), no foreign key referencing the table (a cascade would not run),
//! no `DELETE` trigger (the application's triggers would not fire), no row-level security
//! (the worker might not see every row), no logical replication (subscribers would keep
//! the rows). One removal is one READ COMMITTED transaction: writes to the partition held
//! off (`SHARE`) while the worker checks that it is still attached under its name with the
//! same bounds and that every row in it is eligible; then the table and the partition
//! locked `ACCESS EXCLUSIVE`, in the order queries lock them, waiting at most a second;
//! the conditions checked again; detach, and the rows added to the task's committed count
//! (with the partition recorded as still to drop). The drop follows in a transaction of
//! its own that locks only the detached table ([`drop`]). The last partition is never
//! removed (the table would accept no row). A partition that fails any of this is left to
//! the row-by-row batches.

use shared::results::{RunsPartition, RunsResult};
use shared::tasks::CleanupRunsParams;
use sqlx::PgPool;

use super::schema::Schema;
use super::{Run, RunsTable};
use crate::executor::ExecError;

mod census;
mod drop;
mod remove;

pub use census::{census, estimate, proof, Census, Proof};

/// RUNS_PARTITIONS: what happens to a partition that may go whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PartitionMode {
    /// Detach it and drop it.
    Drop,
    /// Detach it and keep it as a table of its own (to archive it, say).
    Detach,
    /// Never: every row goes by batches.
    Off,
}

impl PartitionMode {
    /// What the result says happened to a partition.
    pub fn action(self) -> &'static str {
        match self {
            PartitionMode::Drop | PartitionMode::Off => "dropped",
            PartitionMode::Detach => "detached",
        }
    }
}

/// RUNS_PARTITION_COUNT: how a real run counts the rows of a partition that goes whole
/// when the indexes prove it eligible without reading it (a dry run always counts, and so
/// does a proof that reads every row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PartitionCount {
    /// From PostgreSQL's statistics, without reading the partition: the drop costs the
    /// same whatever its size. Marked `estimated` in the result.
    Estimate,
    /// Count every row (a parallel scan of the whole partition).
    Exact,
}

/// A partition whose range ends at or before the cutoff.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub oid: i64,
    /// Schema-qualified, each part quoted where needed (`format('%I.%I')`).
    pub name: String,
    /// Its bound as the catalog prints it, to see that it did not change.
    pub bound: String,
}

/// Why the fast path is not taken for a table, if it is not. Asked before listing the
/// partitions and again under the locks of each removal.
pub async fn obstacle<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    table: &RunsTable,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(bool, bool, bool, bool, bool)> = sqlx::query_as(
        "WITH tree AS (SELECT relid FROM pg_partition_tree(to_regclass($1)))
         SELECT pt.partstrat = 'r' AND pt.partnatts = 1
                    AND pt.partattrs[0] = a.attnum AND pt.partexprs IS NULL,
                EXISTS (SELECT 1 FROM pg_constraint k
                        WHERE k.contype = 'f' AND k.confrelid IN (SELECT relid FROM tree)),
                EXISTS (SELECT 1 FROM pg_trigger tg
                        WHERE tg.tgrelid IN (SELECT relid FROM tree)
                          AND NOT tg.tgisinternal AND (tg.tgtype & 8) <> 0),
                EXISTS (SELECT 1 FROM pg_class c
                        WHERE c.oid IN (SELECT relid FROM tree) AND c.relrowsecurity),
                EXISTS (SELECT 1 FROM pg_publication_tables p
                        JOIN pg_namespace n ON n.nspname = p.schemaname
                        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
                        WHERE c.oid IN (SELECT relid FROM tree))
                    OR EXISTS (SELECT 1 FROM pg_publication WHERE puballtables)
         FROM pg_partitioned_table pt
         JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attname = $2
         WHERE pt.partrelid = to_regclass($1)",
    )
    .bind(&table.table)
    .bind(&table.names.timestamp)
    .fetch_optional(executor)
    .await?;
    Ok(match row {
        None => Some("not a partitioned table".to_owned()),
        Some((false, ..)) => Some(format!(
            "not range-partitioned on {} alone",
            table.timestamp
        )),
        Some((_, true, ..)) => {
            Some("a foreign key references it (dropping would skip the cascade)".to_owned())
        }
        Some((_, _, true, ..)) => {
            Some("it has a DELETE trigger (dropping would not fire it)".to_owned())
        }
        Some((_, _, _, true, _)) => Some(
            "row-level security is enabled on it (the worker might not see every row of a \
             partition)"
                .to_owned(),
        ),
        Some((_, _, _, _, true)) => Some(
            "it is published for logical replication (subscribers would not see a drop as \
             deletions)"
                .to_owned(),
        ),
        Some((true, false, false, false, false)) => None,
    })
}

/// The upper bound of a single-column range partition's `FOR VALUES FROM (..) TO (..)`,
/// as the literal's text; `None` for `MAXVALUE`, a default partition or anything else.
pub fn upper_bound(bound: &str) -> Option<String> {
    let upper = bound
        .strip_prefix("FOR VALUES FROM (")?
        .rsplit_once(") TO (")?
        .1
        .strip_suffix(')')?;
    let inner = upper.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// The partitions whose whole range is older than the cutoff (`$2`), oldest first; never
/// every partition of the table.
pub async fn candidates(
    pool: &PgPool,
    table: &RunsTable,
    schema: &Schema,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let partitions: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT c.oid::int8, format('%I.%I', n.nspname, c.relname),
                pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE i.inhparent = to_regclass($1) AND NOT i.inhdetachpending",
    )
    .bind(&table.table)
    .fetch_all(pool)
    .await?;
    let bounded: Vec<(usize, String)> = partitions
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, bound))| upper_bound(bound).map(|u| (i, u)))
        .collect();
    let uppers: Vec<&str> = bounded.iter().map(|(_, u)| u.as_str()).collect();
    // 1-based positions in `uppers` of the bounds at or before the cutoff, oldest first.
    let older: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT b.i FROM unnest($1::text[]) WITH ORDINALITY AS b(u, i)
         WHERE b.u::{ts} <= {cutoff} ORDER BY b.u::{ts}",
        ts = schema.ts_type,
        cutoff = schema.cutoff_expr()
    ))
    .bind(&uppers)
    .bind(cutoff)
    .fetch_all(pool)
    .await?;
    let mut chosen: Vec<Candidate> = older
        .into_iter()
        .filter_map(|i| bounded.get(usize::try_from(i).ok()? - 1))
        .map(|(at, _)| {
            let (oid, name, bound) = &partitions[*at];
            Candidate {
                oid: *oid,
                name: name.clone(),
                bound: bound.clone(),
            }
        })
        .collect();
    if chosen.len() >= partitions.len() {
        // Keep the newest attached: a table with no partition accepts no row.
        chosen.pop();
    }
    Ok(chosen)
}

impl Run<'_> {
    /// Whether this task may take the fast path, and the partitions it would take: none
    /// (logged once per reason) when the table or the task does not allow it.
    async fn fast_path(&self, params: &CleanupRunsParams) -> Result<Vec<Candidate>, sqlx::Error> {
        let executor = self.executor;
        if executor.partitions == PartitionMode::Off
            || !self.statements.schema.partitioned
            || params.max_rows.is_some()
            || !self.scope.is_empty()
        {
            return Ok(Vec::new());
        }
        if let Some(reason) = obstacle(&executor.pool, &executor.table).await? {
            tracing::debug!(%reason, "no partition fast path");
            return Ok(Vec::new());
        }
        candidates(
            &executor.pool,
            &executor.table,
            &self.statements.schema,
            self.cutoff,
        )
        .await
    }

    /// A dry run: the partitions that would go whole now (every row eligible), with their
    /// rows. They are among `runs_matched` already.
    pub(super) async fn partitions_dry_run(
        &self,
        params: &CleanupRunsParams,
        result: &mut RunsResult,
    ) -> Result<(), ExecError> {
        let found = self
            .retry(|| self.fast_path(params))
            .await
            .map_err(|e| ExecError::from_sqlx("failed to read the runs partitions", &e))?;
        for candidate in found {
            let found = self
                .retry(|| async {
                    let pool = &self.executor.pool;
                    census(
                        pool,
                        &self.executor.table,
                        &self.statements.schema,
                        &candidate.name,
                        proof(pool, &self.executor.table, candidate.oid).await?,
                        true,
                        self.statuses,
                        self.cutoff,
                    )
                    .await
                })
                .await
                .map_err(|e| ExecError::from_sqlx("failed to count a partition's runs", &e))?;
            if found.blocking.is_none() {
                result.partitions.push(RunsPartition {
                    name: candidate.name,
                    rows: found.rows.unwrap_or_default(),
                    action: self.executor.partitions.action().to_owned(),
                    estimated: false,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::upper_bound;

    #[test]
    fn the_upper_bound_is_read_from_the_catalog_text() {
        assert_eq!(
            upper_bound("FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')")
                .as_deref(),
            Some("2026-02-01 00:00:00+00")
        );
        assert_eq!(
            upper_bound("FOR VALUES FROM (MINVALUE) TO ('2026-02-01')").as_deref(),
            Some("2026-02-01")
        );
        assert_eq!(
            upper_bound("FOR VALUES FROM ('2026-02-01') TO (MAXVALUE)"),
            None
        );
        assert_eq!(upper_bound("DEFAULT"), None);
        assert_eq!(upper_bound("FOR VALUES IN ('a')"), None);
        assert_eq!(
            upper_bound("FOR VALUES FROM ('a') TO ('it''s')").as_deref(),
            Some("it's")
        );
    }
}
