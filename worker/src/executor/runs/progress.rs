//! The durable count of each real `cleanup_runs` task, kept in the runs database and
//! committed in the same transaction as the rows it counts.
//!
//! Delivery is at least once: the relay publishes a message again when the ledger failed
//! between the broker's confirm and its own commit, so two copies of one task can run,
//! one after the other or at once. Deleting is idempotent, but a cap is not, and each copy
//! would count only its own rows. So every batch first locks its task's row here (copies
//! of one task take turns; other tasks never wait on it), limits itself to what the cap
//! leaves of the committed count, and adds what it deleted before it commits. Whichever
//! copy finishes first marks the row finished and reports the count; a copy that finds it
//! finished deletes nothing more and reports the same count. A commit whose answer was lost
//! needs no guessing either: the next batch reads what was committed.
//!
//! The table is the authority: the count a message carries only seeds a task's row when
//! it has none (a continuation written before the table existed), so rows that a database
//! crash brought back (`RUNS_SYNCHRONOUS_COMMIT=false`) are not counted twice over. Rows
//! untouched for [`RETENTION`] are removed; a copy of a task arriving later than that
//! starts over from the count its message carries.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::OnceLock;

use sqlx::PgPool;
use uuid::Uuid;

use super::batches::is_timeout;
use super::schema::SchemaError;

/// The table's name when RUNS_PROGRESS_TABLE is not set.
pub const DEFAULT_TABLE: &str = "cleanup_runs_progress";
/// How long the row of a task nobody touches any more is kept.
pub const RETENTION: &str = "30 days";
/// How often one worker removes expired rows.
const PRUNE_EVERY_SECONDS: i64 = 3600;

/// Columns the table gained after its first version, added to a table made before them:
/// how many of `runs_deleted` are estimates (partitions dropped without being read), and
/// the partition a removal detached and has yet to drop (`<oid> <xmin> <name>`), both
/// committed with the count.
const LATER_COLUMNS: [(&str, &str); 2] = [
    (
        "runs_estimated",
        "runs_estimated bigint NOT NULL DEFAULT 0 CHECK (runs_estimated >= 0)",
    ),
    ("pending_drop", "pending_drop text"),
];

/// Add [`LATER_COLUMNS`] to a table made before them, waiting at most a second for the
/// table's lock.
async fn add_later_columns(pool: &PgPool, table: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN; SET LOCAL lock_timeout = '1s'; SET LOCAL statement_timeout = '5s'")
        .await?;
    let columns: Vec<String> = LATER_COLUMNS
        .iter()
        .map(|(_, column)| format!("ADD COLUMN IF NOT EXISTS {column}"))
        .collect();
    sqlx::query(&format!("ALTER TABLE {table} {}", columns.join(", ")))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The table, as the worker creates it when it is missing.
pub fn ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    task_id      uuid PRIMARY KEY,
    runs_deleted bigint NOT NULL DEFAULT 0 CHECK (runs_deleted >= 0),
    {estimated},
    {pending},
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
)",
        estimated = LATER_COLUMNS[0].1,
        pending = LATER_COLUMNS[1].1
    )
}

/// What the table says about one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Count {
    pub runs_deleted: u64,
    /// Of `runs_deleted`, how many are estimates.
    pub runs_estimated: u64,
    pub finished: bool,
    /// A partition the task detached and has yet to drop.
    pub pending_drop: Option<PendingDrop>,
}

/// The task's record of a partition it detached and has yet to drop: the table by oid,
/// by the `xmin` of its catalog row as the detach wrote it, and by name (as the catalog
/// prints it). Kept as `<oid> <xmin> <name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDrop {
    pub oid: i64,
    pub xmin: String,
    pub name: String,
}

impl PendingDrop {
    /// From the column's text; `None` when it is not a record.
    pub fn parse(record: &str) -> Option<Self> {
        let mut parts = record.splitn(3, ' ');
        let (oid, xmin, name) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Self {
            oid: oid.parse().ok()?,
            xmin: xmin.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The column's text.
    pub fn record(&self) -> String {
        format!("{} {} {}", self.oid, self.xmin, self.name)
    }
}

/// The progress table of one executor: made sure of once, pruned now and then.
#[derive(Debug)]
pub struct ProgressTable {
    /// The runs table, whose schema holds the progress table unless one is configured.
    runs: String,
    /// Quoted, qualified name; known from the settings, or once the runs table's schema
    /// was read.
    name: OnceLock<String>,
    ready: AtomicBool,
    /// Whether the table has [`LATER_COLUMNS`] (else nothing is estimated, and a partition
    /// is detached and dropped in one transaction).
    extended: AtomicBool,
    pruned_at: AtomicI64,
}

impl ProgressTable {
    /// `configured`: RUNS_PROGRESS_TABLE, quoted.
    pub fn new(runs: &str, configured: Option<&str>) -> Self {
        let name = OnceLock::new();
        match (configured, runs.split_once("\".\"")) {
            (Some(configured), _) => {
                let _ = name.set(configured.to_owned());
            }
            (None, Some((schema, _))) => {
                let _ = name.set(format!("{schema}\".\"{DEFAULT_TABLE}\""));
            }
            // In the schema the runs table resolves to, read by `ensure`.
            (None, None) => {}
        }
        Self {
            runs: runs.to_owned(),
            name,
            ready: AtomicBool::new(false),
            extended: AtomicBool::new(false),
            pruned_at: AtomicI64::new(0),
        }
    }

    /// The quoted name (before `ensure` resolved the schema: unqualified).
    pub fn name(&self) -> String {
        self.name
            .get()
            .cloned()
            .unwrap_or_else(|| format!("\"{DEFAULT_TABLE}\""))
    }

    /// Create the table if it is missing, and check that it has the expected columns.
    /// Done at start-up and, until it succeeds, before each real task.
    pub async fn ensure(&self, pool: &PgPool) -> Result<(), SchemaError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.name.get().is_none() {
            let schema: Option<String> = sqlx::query_scalar(
                "SELECT quote_ident(n.nspname) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            )
            .bind(&self.runs)
            .fetch_optional(pool)
            .await?;
            let Some(schema) = schema else {
                return Err(SchemaError::MissingTable(self.runs.clone()));
            };
            let _ = self.name.set(format!("{schema}.\"{DEFAULT_TABLE}\""));
        }
        let table = &self.name();
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(pool)
            .await?;
        if exists.is_none() {
            match sqlx::query(&ddl(table)).execute(pool).await {
                Ok(_) => tracing::info!(%table, "created the runs progress table"),
                // Another worker created it at the same moment.
                Err(sqlx::Error::Database(db))
                    if db.code().is_some_and(|c| c == "42P07" || c == "23505") => {}
                Err(sqlx::Error::Database(db)) if db.code().is_some_and(|c| c == "42501") => {
                    return Err(SchemaError::Unsafe(format!(
                        "the worker keeps each cleanup_runs task's count in {table} (so that \
                         max_rows holds and counts are exact when a task message is delivered \
                         twice), but may not create it ({}); create it once, and grant the \
                         worker SELECT, INSERT, UPDATE, DELETE on it:\n{};",
                        db.message(),
                        ddl(table)
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let probe = format!(
            "SELECT task_id, runs_deleted, finished_at, updated_at FROM {table} WHERE false"
        );
        match sqlx::query(&probe).execute(pool).await {
            Ok(_) => {}
            Err(e) if shared::runtime::db::is_transient(&e) => return Err(e.into()),
            Err(e) => {
                return Err(SchemaError::Unsafe(format!(
                    "RUNS_PROGRESS_TABLE {table} is not a progress table ({e}); expected:\n{};",
                    ddl(table)
                )))
            }
        }
        // What every batch needs: the unique key its upsert relies on, and the rights.
        let (keyed, allowed): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_index i
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                            WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid
                              AND i.indnatts = 1 AND i.indpred IS NULL AND a.attname = 'task_id'),
                    has_table_privilege($1, 'SELECT, INSERT, UPDATE, DELETE')",
        )
        .bind(table)
        .fetch_one(pool)
        .await?;
        if !keyed || !allowed {
            return Err(SchemaError::Unsafe(format!(
                "RUNS_PROGRESS_TABLE {table} {}; expected (with SELECT, INSERT, UPDATE, DELETE \
                 granted to the worker):\n{};",
                if keyed {
                    "is not writable by the worker"
                } else {
                    "has no unique key on task_id alone"
                },
                ddl(table)
            )));
        }
        self.extended
            .store(self.ensure_later_columns(pool).await?, Ordering::Release);
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the table has [`LATER_COLUMNS`], or the worker adds them now (to a table
    /// made before them). Where it cannot, every partition dropped whole is counted, and
    /// detached and dropped in one transaction.
    async fn ensure_later_columns(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        let table = &self.name();
        let names: Vec<&str> = LATER_COLUMNS.iter().map(|(name, _)| *name).collect();
        let has = || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT count(*) = cardinality($2::text[]) FROM pg_attribute
                 WHERE attrelid = to_regclass($1) AND attname = ANY($2) AND NOT attisdropped",
            )
            .bind(table)
            .bind(&names)
            .fetch_one(pool)
            .await
        };
        if has().await? {
            return Ok(true);
        }
        // Briefly: every batch queues behind a waiting ALTER TABLE. A table busy for
        // longer keeps counting partitions until the worker starts again.
        match add_later_columns(pool, table).await {
            Ok(()) => {
                tracing::info!(%table, columns = ?names, "added columns to the runs progress table")
            }
            Err(e) if shared::runtime::db::is_transient(&e) && !is_timeout(&e) => return Err(e),
            Err(error) => {
                // Another worker may have added it meanwhile.
                if has().await? {
                    return Ok(true);
                }
                tracing::warn!(
                    %table, %error, columns = ?names,
                    "cannot add columns to the runs progress table; partitions dropped whole \
                     are counted row by row, and detached and dropped in one transaction (add \
                     them with ALTER TABLE, then restart the workers)"
                );
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether a removal may record estimated rows, and a partition detached and still to
    /// drop (the table has [`LATER_COLUMNS`]).
    pub fn records_estimates(&self) -> bool {
        self.extended.load(Ordering::Acquire)
    }

    /// `$1` task: the partition it detached and has yet to drop (`<oid> <xmin> <name>`), if
    /// any.
    pub fn pending_sql(&self) -> String {
        format!(
            "SELECT pending_drop FROM {} WHERE task_id = $1",
            self.name()
        )
    }

    /// `$1` task, `$2` its record: that partition is settled (a copy's newer record stays).
    pub fn dropped_sql(&self) -> String {
        format!(
            "UPDATE {} SET pending_drop = NULL WHERE task_id = $1 AND pending_drop = $2",
            self.name()
        )
    }

    /// The `runs_estimated` column where the table has it, else 0.
    fn estimated_column(&self) -> &'static str {
        if self.records_estimates() {
            "runs_estimated"
        } else {
            "0::int8"
        }
    }

    /// The task's committed count, if it has one.
    pub async fn read(&self, pool: &PgPool, task_id: Uuid) -> Result<Option<Count>, sqlx::Error> {
        let pending = if self.records_estimates() {
            "pending_drop"
        } else {
            "NULL::text"
        };
        let row: Option<(i64, i64, bool, Option<String>)> = sqlx::query_as(&format!(
            "SELECT runs_deleted, {}, finished_at IS NOT NULL, {pending} FROM {} WHERE task_id = $1",
            self.estimated_column(),
            self.name()
        ))
        .bind(task_id)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|(n, estimated, finished, pending)| Count {
            runs_deleted: n.max(0) as u64,
            runs_estimated: estimated.max(0) as u64,
            finished,
            pending_drop: pending.as_deref().and_then(PendingDrop::parse),
        }))
    }

    /// The first statement of a batch: lock the task's row (made, if it has none, with
    /// `$2`, the count the task's message carries, and where [`Self::records_estimates`]
    /// `$3`, the estimates among it) and say what is committed (`$1`: the task).
    pub fn open_batch_sql(&self) -> String {
        let (column, value) = self.seed();
        format!(
            "INSERT INTO {} AS p (task_id, runs_deleted{column}) VALUES ($1, $2{value})
             ON CONFLICT (task_id) DO UPDATE SET updated_at = now()
             RETURNING runs_deleted, finished_at IS NOT NULL",
            self.name()
        )
    }

    /// The column and the `$3` that seed a new row's estimates, where the table has them.
    fn seed(&self) -> (&'static str, &'static str) {
        if self.records_estimates() {
            (", runs_estimated", ", $3")
        } else {
            ("", "")
        }
    }

    /// Mark the task finished (unless a copy did first) and return its final count;
    /// `known` (its deleted and estimated rows) seeds a row the task does not have yet.
    pub async fn finish(
        &self,
        pool: &PgPool,
        task_id: Uuid,
        known: (u64, u64),
    ) -> Result<Count, sqlx::Error> {
        let (column, value) = self.seed();
        let sql = format!(
            "INSERT INTO {} AS p (task_id, runs_deleted, finished_at{column})
             VALUES ($1, $2, now(){value})
             ON CONFLICT (task_id) DO UPDATE
                 SET finished_at = coalesce(p.finished_at, now()), updated_at = now()
             RETURNING runs_deleted, {}",
            self.name(),
            self.estimated_column()
        );
        let mut query = sqlx::query_as(&sql).bind(task_id).bind(known.0 as i64);
        if self.records_estimates() {
            query = query.bind(known.1 as i64);
        }
        let (n, estimated): (i64, i64) = query.fetch_one(pool).await?;
        Ok(Count {
            runs_deleted: n.max(0) as u64,
            runs_estimated: estimated.max(0) as u64,
            finished: true,
            pending_drop: None,
        })
    }

    /// Remove rows untouched for [`RETENTION`], at most once an hour per worker; a failure
    /// is only logged (the next task tries again).
    pub async fn prune(&self, pool: &PgPool) {
        let now = chrono::Utc::now().timestamp();
        let last = self.pruned_at.load(Ordering::Relaxed);
        if now - last < PRUNE_EVERY_SECONDS
            || self
                .pruned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pruned = sqlx::query(&format!(
            "DELETE FROM {} WHERE updated_at < now() - interval '{RETENTION}'",
            self.name()
        ))
        .execute(pool)
        .await;
        match pruned {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::info!(rows = done.rows_affected(), table = %self.name(), "pruned old runs progress")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not prune the runs progress table"),
        }
    }
}
