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

/// How many of `runs_deleted` are estimates (partitions dropped without being read),
/// committed with them. Added to a table created before it existed.
const ESTIMATED_COLUMN: &str =
    "runs_estimated bigint NOT NULL DEFAULT 0 CHECK (runs_estimated >= 0)";

/// Add the estimates' column to a table made before it existed, waiting at most a second
/// for the table's lock.
async fn add_estimated_column(pool: &PgPool, table: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN; SET LOCAL lock_timeout = '1s'; SET LOCAL statement_timeout = '5s'")
        .await?;
    sqlx::query(&format!(
        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {ESTIMATED_COLUMN}"
    ))
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
    {ESTIMATED_COLUMN},
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
)"
    )
}

/// What the table says about one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub runs_deleted: u64,
    /// Of `runs_deleted`, how many are estimates.
    pub runs_estimated: u64,
    pub finished: bool,
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
    /// Whether the table has the `runs_estimated` column (else nothing is estimated).
    estimates: AtomicBool,
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
            estimates: AtomicBool::new(false),
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
        self.estimates
            .store(self.ensure_estimated(pool).await?, Ordering::Release);
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the table can record estimated rows: it has the column, or the worker
    /// adds it now (to a table made before the column existed). Where it cannot, every
    /// partition dropped whole is counted.
    async fn ensure_estimated(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        let table = &self.name();
        let has = || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1)
                                AND attname = 'runs_estimated' AND NOT attisdropped)",
            )
            .bind(table)
            .fetch_one(pool)
            .await
        };
        if has().await? {
            return Ok(true);
        }
        // Briefly: every batch queues behind a waiting ALTER TABLE. A table busy for
        // longer keeps counting partitions until the worker starts again.
        match add_estimated_column(pool, table).await {
            Ok(()) => tracing::info!(%table, "added runs_estimated to the runs progress table"),
            Err(e) if shared::runtime::db::is_transient(&e) && !is_timeout(&e) => return Err(e),
            Err(error) => {
                // Another worker may have added it meanwhile.
                if has().await? {
                    return Ok(true);
                }
                tracing::warn!(
                    %table, %error,
                    "cannot add the runs_estimated column to the runs progress table; \
                     partitions dropped whole are counted row by row (ALTER TABLE {table} \
                     ADD COLUMN {ESTIMATED_COLUMN}, then restart the workers)"
                );
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether a removal may record estimated rows (the table has the column).
    pub fn records_estimates(&self) -> bool {
        self.estimates.load(Ordering::Acquire)
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
        let row: Option<(i64, i64, bool)> = sqlx::query_as(&format!(
            "SELECT runs_deleted, {}, finished_at IS NOT NULL FROM {} WHERE task_id = $1",
            self.estimated_column(),
            self.name()
        ))
        .bind(task_id)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|(n, estimated, finished)| Count {
            runs_deleted: n.max(0) as u64,
            runs_estimated: estimated.max(0) as u64,
            finished,
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
