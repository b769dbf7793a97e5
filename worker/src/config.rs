//! Worker settings: every flag is also an environment variable, listed by `--help`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use shared::runtime::config::{split_list, AmqpArgs, RetryArgs};
use shared::runtime::telemetry::LogArgs;
use shared::tasks::TaskKind;

use crate::executor::runs::RunsTable;
pub use crate::executor::temp_files::TempRoot;

/// The longest RESULTS_LINGER: reports wait milliseconds, not seconds.
const MAX_RESULTS_LINGER: Duration = Duration::from_secs(1);

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "worker",
    version,
    about = "Stateless executor of cleanup tasks: consumes RabbitMQ, deletes old runs rows and temp files",
    args_override_self = true
)]
pub struct Config {
    /// PostgreSQL URL of the database holding the runs table. Needed to serve cleanup_runs.
    #[arg(long, env = "RUNS_DATABASE_URL", hide_env_values = true)]
    pub runs_database_url: Option<String>,

    /// The runs table, optionally schema-qualified (`schema.table`).
    #[arg(long, env = "RUNS_TABLE", default_value = "runs")]
    pub runs_table: String,

    /// Primary-key column of the runs table.
    #[arg(long, env = "RUNS_ID_COLUMN", default_value = "id")]
    pub runs_id_column: String,

    /// Status column of the runs table (text or enum).
    #[arg(long, env = "RUNS_STATUS_COLUMN", default_value = "status")]
    pub runs_status_column: String,

    /// Timestamp column compared with the cutoff (when the run finished):
    /// `timestamptz`, or `timestamp` read in RUNS_TIMESTAMP_TIMEZONE.
    #[arg(long, env = "RUNS_TIMESTAMP_COLUMN", default_value = "finished_at")]
    pub runs_timestamp_column: String,

    /// IANA zone in which a `timestamp without time zone` column's values are wall-clock
    /// times (default: the database's `TimeZone` setting). Ignored for `timestamptz`.
    #[arg(long, env = "RUNS_TIMESTAMP_TIMEZONE")]
    pub runs_timestamp_timezone: Option<String>,

    /// Longest a statement on the runs database may run (PostgreSQL `statement_timeout`);
    /// a batch past it fails as transient. It also bounds how long a turn past its hard
    /// TASK_TIMEOUT may take to stop, so no DELETE commits after its attempt is reported.
    #[arg(long, env = "RUNS_STATEMENT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub runs_statement_timeout: Duration,

    /// Longest a statement waits for a lock on the runs table (PostgreSQL `lock_timeout`),
    /// so a cleanup never queues behind (and in front of) the application's own locks.
    #[arg(long, env = "RUNS_LOCK_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub runs_lock_timeout: Duration,

    /// How long one batch of a runs cleanup should take: batch sizes grow and shrink
    /// toward it, never above the task's `batch_size`, so locks stay short.
    #[arg(long, env = "RUNS_BATCH_TARGET", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub runs_batch_target: Duration,

    /// Whether each batch's commit waits for its WAL to reach disk (PostgreSQL
    /// `synchronous_commit`, set per batch). Off by default: a database crash can then undo
    /// the last batches (at most about three `wal_writer_delay`s of work); the rows come
    /// back, nothing else is deleted, and the next cleanup takes them.
    #[arg(long, env = "RUNS_SYNCHRONOUS_COMMIT", default_value_t = false, action = clap::ArgAction::Set)]
    pub runs_synchronous_commit: bool,

    /// The table (in the runs database) where each real cleanup_runs task's count of deleted
    /// rows is kept, committed with the rows it counts; created if missing. Default:
    /// `cleanup_runs_progress` in RUNS_TABLE's schema.
    #[arg(long, env = "RUNS_PROGRESS_TABLE")]
    pub runs_progress_table: Option<String>,

    /// What happens to a partition of a range-partitioned runs table whose whole range is
    /// older than the cutoff and whose every row is eligible: `drop` (detach and drop it),
    /// `detach` (detach it, keep it as a table) or `off` (delete its rows in batches).
    #[arg(long, env = "RUNS_PARTITIONS", value_enum, default_value = "drop")]
    pub runs_partitions: crate::executor::runs::partitions::PartitionMode,

    /// How a real run counts the rows of a partition that goes whole when its indexes
    /// prove every row eligible without reading them: `estimate` (from PostgreSQL's
    /// statistics, marked `estimated` in the result: the drop reads nothing of the
    /// partition, whatever its size) or `exact` (count every row first, a scan of the
    /// whole partition). Dry runs, and partitions proven by reading every row, always
    /// count exactly.
    #[arg(
        long,
        env = "RUNS_PARTITION_COUNT",
        value_enum,
        default_value = "estimate"
    )]
    pub runs_partition_count: crate::executor::runs::partitions::PartitionCount,

    /// How long a dry run may reuse the runs table's last inspection (its key, timestamp
    /// type, foreign keys) instead of reading the catalog again; a real run always reads
    /// it again. `0s`: every task reads it.
    #[arg(long, env = "RUNS_SCHEMA_CACHE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub runs_schema_cache: std::time::Duration,

    /// Statuses that mean a run is finished; only such runs are ever deleted.
    #[arg(
        long,
        env = "RUNS_TERMINAL_STATUSES",
        default_value = "succeeded,failed,cancelled"
    )]
    pub runs_terminal_statuses: String,

    /// Columns of the runs table a task may narrow by equality (`"scope":
    /// {"project_id": "42"}`), comma-separated; must match the workers' setting. Empty:
    /// no scoped cleanups.
    #[arg(long, env = "RUNS_SCOPE_COLUMNS", default_value = "")]
    pub runs_scope_columns: String,

    /// Connections to the runs database.
    #[arg(long, env = "RUNS_DATABASE_MAX_CONNECTIONS", default_value_t = 4)]
    pub runs_database_max_connections: u32,

    /// How long a statement waits for a runs-database connection; past it the attempt's
    /// statement fails as transient (and is retried briefly).
    #[arg(long, env = "RUNS_DATABASE_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub runs_database_acquire_timeout: Duration,

    /// Temp roots this worker may clean, as `name=/path,...`; per root, options after `;`:
    /// `age_by=mtime` (or `atime`, `ctime`, joined with `+`: a file is young if any is
    /// recent) and `allow_system_path` (permit a root in or above `/etc`, `/usr`, `/var/lib`,
    /// `/home/<user>`, ...). Tasks name a root, never a path.
    #[arg(long, env = "TEMP_ROOTS", default_value = "")]
    pub temp_roots: String,

    /// Keep files another process holds a `flock` on (checked without blocking, as
    /// systemd-tmpfiles does) or a record lock (`fcntl`, POSIX or OFD) on. Costs an open
    /// per old file.
    #[arg(long, env = "TEMP_CHECK_LOCKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub temp_check_locks: bool,

    /// Threads that walk directory trees in parallel (per worker).
    #[arg(long, env = "TEMP_WALK_THREADS", default_value_t = 4)]
    pub temp_walk_threads: usize,

    /// Task kinds to consume, comma-separated. Default: every kind this worker is
    /// configured for (cleanup_runs with RUNS_DATABASE_URL, cleanup_temp_files with TEMP_ROOTS).
    #[arg(long, env = "WORKER_KINDS")]
    pub worker_kinds: Option<String>,

    /// Tasks run at once; also the prefetch of each queue.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 2)]
    pub worker_concurrency: u16,

    /// Working time of one turn of a task. Past it the task stops at its next batch
    /// boundary and continues in a new message (a continuation), so no delivery comes near
    /// RabbitMQ's consumer timeout (30 min by default).
    #[arg(long, env = "TURN_BUDGET", default_value = "5m", value_parser = humantime::parse_duration)]
    pub turn_budget: Duration,

    /// How long a task runs before the worker announces it with `task.started` (the ledger
    /// shows it `running`). A real run is announced anyway before it writes anything; a
    /// dry run done sooner reports its start with its result instead, one event fewer
    /// through RabbitMQ and the ledger. `0s`: announce every task before it starts.
    #[arg(long, env = "STARTED_EVENT_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub started_event_after: Duration,

    /// How long a running turn's report (its result, failure, continuation or
    /// cancellation) may wait for the reports of the turns still running, so that they
    /// reach RabbitMQ together: a message arriving alone costs RabbitMQ several times the
    /// CPU of one arriving with others. The wait ends once no other turn is running, or
    /// once half the slots (WORKER_CONCURRENCY) wait: with fewer than 4 slots nothing
    /// waits. The report's time (`at`) is when it goes out. At most 1s; `0s`: each report
    /// goes out as soon as its turn ends.
    #[arg(long, env = "RESULTS_LINGER", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub results_linger: Duration,

    /// Hard limit of one turn (a batch that hangs); past it the attempt fails as transient.
    /// Must exceed TURN_BUDGET.
    #[arg(long, env = "TASK_TIMEOUT", default_value = "15m", value_parser = humantime::parse_duration)]
    pub task_timeout: Duration,

    /// The youngest data any task may delete, in hours; checked again here, whatever the API let through.
    #[arg(long, env = "MIN_AGE_HOURS", default_value_t = 1.0)]
    pub min_age_hours: f64,

    /// Address of the metrics and probe server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// How often the worker announces itself (`worker.heartbeat`); the ledger marks a
    /// worker `lost` after three silent intervals.
    #[arg(long, env = "WORKER_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub worker_heartbeat_interval: Duration,

    /// Identity of this worker in events and the registry (default: host name and a random suffix).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub retry: RetryArgs,

    #[command(flatten)]
    pub signing: shared::runtime::config::SigningArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// Parse `TEMP_ROOTS`: names unique and valid, paths absolute, resolved and safe
    /// (see [`TempRoot::parse`]), roots disjoint.
    pub fn temp_roots(&self) -> anyhow::Result<BTreeMap<String, TempRoot>> {
        let mut roots: BTreeMap<String, TempRoot> = BTreeMap::new();
        for item in split_list(&self.temp_roots) {
            let root = TempRoot::parse(&item)?;
            if roots.contains_key(&root.name) {
                anyhow::bail!("TEMP_ROOTS names `{}` twice", root.name);
            }
            if let Some(other) = roots
                .values()
                .find(|r| r.path.starts_with(&root.path) || root.path.starts_with(&r.path))
            {
                anyhow::bail!(
                    "TEMP_ROOTS: `{}` ({}) and `{}` ({}) overlap; roots must be disjoint",
                    root.name,
                    root.path.display(),
                    other.name,
                    other.path.display()
                );
            }
            roots.insert(root.name.clone(), root);
        }
        Ok(roots)
    }

    pub fn runs_table(&self) -> anyhow::Result<RunsTable> {
        let table = RunsTable::new(
            &self.runs_table,
            &self.runs_id_column,
            &self.runs_status_column,
            &self.runs_timestamp_column,
            split_list(&self.runs_terminal_statuses),
            shared::runtime::config::scope_columns(&self.runs_scope_columns)
                .map_err(anyhow::Error::msg)?,
        )?;
        match &self.runs_progress_table {
            Some(name) => table.with_progress_table(name),
            None => Ok(table),
        }
    }

    /// The kinds to consume, checked against what is configured.
    pub fn kinds(&self) -> anyhow::Result<Vec<TaskKind>> {
        let roots = self.temp_roots()?;
        let kinds: Vec<TaskKind> = match &self.worker_kinds {
            Some(list) => split_list(list)
                .iter()
                .map(|k| k.parse::<TaskKind>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?,
            None => TaskKind::ALL
                .into_iter()
                .filter(|k| match k {
                    TaskKind::CleanupRuns => self.runs_database_url.is_some(),
                    TaskKind::CleanupTempFiles => !roots.is_empty(),
                })
                .collect(),
        };
        if kinds.is_empty() {
            anyhow::bail!(
                "nothing to do: set RUNS_DATABASE_URL to serve cleanup_runs and/or TEMP_ROOTS \
                 to serve cleanup_temp_files"
            );
        }
        if kinds.contains(&TaskKind::CleanupRuns) && self.runs_database_url.is_none() {
            anyhow::bail!("WORKER_KINDS includes cleanup_runs but RUNS_DATABASE_URL is not set");
        }
        if kinds.contains(&TaskKind::CleanupTempFiles) && roots.is_empty() {
            anyhow::bail!("WORKER_KINDS includes cleanup_temp_files but TEMP_ROOTS is empty");
        }
        Ok(kinds)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.kinds()?;
        self.runs_table()?;
        self.amqp.topology().map_err(anyhow::Error::msg)?;
        self.retry.policy(1).map_err(anyhow::Error::msg)?;
        if self.task_timeout <= self.turn_budget {
            anyhow::bail!("TASK_TIMEOUT must be longer than TURN_BUDGET");
        }
        if self.runs_statement_timeout.is_zero() || self.runs_lock_timeout.is_zero() {
            anyhow::bail!("RUNS_STATEMENT_TIMEOUT and RUNS_LOCK_TIMEOUT must be longer than 0");
        }
        if self.runs_batch_target.is_zero() || self.runs_batch_target >= self.runs_statement_timeout
        {
            anyhow::bail!(
                "RUNS_BATCH_TARGET must be longer than 0 and shorter than RUNS_STATEMENT_TIMEOUT"
            );
        }
        if self.results_linger > MAX_RESULTS_LINGER {
            anyhow::bail!(
                "RESULTS_LINGER must be at most {MAX_RESULTS_LINGER:?}: it holds reports for \
                 milliseconds, and a stop waits for them"
            );
        }
        if self.worker_concurrency == 0 {
            anyhow::bail!("WORKER_CONCURRENCY must be at least 1");
        }
        if self.temp_walk_threads == 0 {
            anyhow::bail!("TEMP_WALK_THREADS must be at least 1");
        }
        if !(self.min_age_hours.is_finite() && self.min_age_hours > 0.0) {
            anyhow::bail!("MIN_AGE_HOURS must be a number greater than 0");
        }
        Ok(())
    }

    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = host_name();
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}-{}", &suffix[..6])
        })
    }
}

pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
