//! producer-api settings: every flag is also an environment variable, listed by `--help`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use shared::runtime::config::{split_list, AmqpArgs, SigningArgs};
use shared::runtime::telemetry::LogArgs;
use shared::tasks::ValidationRules;

/// The smallest ledger pool the API runs with: the relay's listener, and one each for the
/// relay, the recorder, the scheduler and the requests. (The intake's enqueue statements
/// have connections of their own besides.)
pub const MIN_DATABASE_CONNECTIONS: usize = 5;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "producer-api",
    version,
    about = "Control plane of the cleanup service: HTTP API, task ledger and outbox relay",
    args_override_self = true
)]
pub struct Config {
    /// PostgreSQL URL of the task ledger; migrations run at start-up.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/cleanup",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Connections in the ledger pool (enqueues without an idempotency key use at most 4,
    /// several tasks per statement under load).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// How long a request waits for a ledger connection before answering 503.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub database_acquire_timeout: Duration,

    /// The `statement_timeout` of the enqueue statements: the server cancels one that runs
    /// longer (nothing is stored, the client hears 503). One whose answer does not come
    /// within this and a second (a network path gone silent) is tried once more on a new
    /// connection, which finds the task if the first try committed after all.
    #[arg(long, env = "ENQUEUE_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub enqueue_statement_timeout: Duration,

    /// Address the HTTP API listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// Bearer tokens accepted by the API, comma-separated. Required unless --auth-disabled.
    #[arg(
        long,
        env = "API_TOKENS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub api_tokens: Vec<String>,

    /// Serve the API without authentication (local experiments only).
    #[arg(long, env = "AUTH_DISABLED", default_value_t = false)]
    pub auth_disabled: bool,

    /// Minimum age floor in hours: requests asking to delete anything younger are refused.
    #[arg(long, env = "MIN_AGE_HOURS", default_value_t = 1.0)]
    pub min_age_hours: f64,

    /// Statuses of the runs table that mean "finished"; must match the workers' setting.
    /// Requests may narrow this list, never widen it.
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

    /// Largest accepted request body in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Outbox messages the relay publishes per batch (one transaction, pipelined confirms).
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500)]
    pub relay_batch_size: u32,

    /// How often the relay polls the outbox when no notification wakes it.
    #[arg(long, env = "RELAY_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub relay_poll_interval: Duration,

    /// Longest wait for one relay batch to be published and confirmed (e.g. while RabbitMQ
    /// blocks publishers on a memory or disk alarm); past it the batch is rolled back, to be
    /// published again later, and the relay reconnects.
    #[arg(long, env = "RELAY_PUBLISH_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub relay_publish_timeout: Duration,

    /// Run the outbox relay in this process (turn off to run API-only replicas).
    #[arg(long, env = "RELAY_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay_enabled: bool,

    /// How long a `succeeded` task stays in the ledger after it finished.
    #[arg(long, env = "LEDGER_RETENTION_SUCCEEDED", default_value = "7d", value_parser = humantime::parse_duration)]
    pub ledger_retention_succeeded: Duration,

    /// How long a `failed` task stays in the ledger after it finished.
    #[arg(long, env = "LEDGER_RETENTION_FAILED", default_value = "30d", value_parser = humantime::parse_duration)]
    pub ledger_retention_failed: Duration,

    /// How long a `dead` task stays in the ledger after it finished.
    #[arg(long, env = "LEDGER_RETENTION_DEAD", default_value = "30d", value_parser = humantime::parse_duration)]
    pub ledger_retention_dead: Duration,

    /// How long a `cancelled` task stays in the ledger after it finished.
    #[arg(long, env = "LEDGER_RETENTION_CANCELLED", default_value = "30d", value_parser = humantime::parse_duration)]
    pub ledger_retention_cancelled: Duration,

    /// How long a worker `stopped` or `lost` stays in the registry after it was last seen.
    #[arg(long, env = "WORKER_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub worker_retention: Duration,

    /// Tasks deleted per retention batch (one transaction, at most 30 s).
    #[arg(long, env = "LEDGER_PRUNE_BATCH", default_value_t = 10_000)]
    pub ledger_prune_batch: u32,

    /// Time between retention rounds (one replica prunes at a time).
    #[arg(long, env = "LEDGER_PRUNE_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub ledger_prune_interval: Duration,

    /// A YAML file of schedules, applied at start-up and on SIGHUP (see README).
    #[arg(long, env = "SCHEDULES_FILE")]
    pub schedules_file: Option<std::path::PathBuf>,

    /// Run the ledger recorder (applies worker events) and the worker sweeper in this process.
    #[arg(long, env = "RECORDER_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub recorder_enabled: bool,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(flatten)]
    pub signing: SigningArgs,

    /// Attempts per task, the first included; transient failures are retried until then.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// The most attempts a request may ask for with `max_attempts`.
    #[arg(long, env = "MAX_ATTEMPTS_LIMIT", default_value_t = 10)]
    pub max_attempts_limit: u32,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// Check the settings hang together; the message says which one is wrong.
    /// The ledger's retention (LEDGER_RETENTION_*, WORKER_RETENTION, LEDGER_PRUNE_*).
    pub fn retention(&self) -> crate::ledger::retention::Retention {
        use crate::ledger::tasks::TaskStatus;
        crate::ledger::retention::Retention {
            tasks: TaskStatus::ALL
                .into_iter()
                .filter_map(|status| {
                    let keep = match status {
                        TaskStatus::Succeeded => self.ledger_retention_succeeded,
                        TaskStatus::Failed => self.ledger_retention_failed,
                        TaskStatus::Dead => self.ledger_retention_dead,
                        TaskStatus::Cancelled => self.ledger_retention_cancelled,
                        TaskStatus::Queued | TaskStatus::Running | TaskStatus::Retrying => {
                            return None
                        }
                    };
                    Some((status, keep))
                })
                .collect(),
            workers: self.worker_retention,
            batch: self.ledger_prune_batch,
            every: self.ledger_prune_interval,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.api_tokens.iter().all(|t| t.trim().is_empty()) && !self.auth_disabled {
            anyhow::bail!(
                "no API tokens configured: set API_TOKENS (comma-separated) or pass \
                 --auth-disabled to serve without authentication"
            );
        }
        // Named by position only: no part of a secret goes to the logs.
        crate::http::auth::Tokens::parse(&self.tokens(), self.auth_disabled)?;
        if !(self.min_age_hours.is_finite() && self.min_age_hours > 0.0) {
            anyhow::bail!("MIN_AGE_HOURS must be a number greater than 0");
        }
        if self.validation_rules()?.terminal_statuses.is_empty() {
            anyhow::bail!("RUNS_TERMINAL_STATUSES must name at least one status");
        }
        if (self.database_max_connections as usize) < MIN_DATABASE_CONNECTIONS {
            anyhow::bail!(
                "DATABASE_MAX_CONNECTIONS must be at least {MIN_DATABASE_CONNECTIONS}: the relay's listener keeps one, and the relay, the recorder, the scheduler and the requests need the rest"
            );
        }
        self.check_enqueue_waits()?;
        if self.relay_batch_size == 0 {
            anyhow::bail!("RELAY_BATCH_SIZE must be at least 1");
        }
        if self.ledger_prune_batch == 0 {
            anyhow::bail!("LEDGER_PRUNE_BATCH must be at least 1");
        }
        if self.ledger_prune_interval.is_zero() {
            anyhow::bail!("LEDGER_PRUNE_INTERVAL must be longer than 0");
        }
        if self.relay_publish_timeout.is_zero() {
            anyhow::bail!("RELAY_PUBLISH_TIMEOUT must be longer than 0");
        }
        self.signing.trust().map_err(anyhow::Error::msg)?;
        self.amqp.topology().map_err(anyhow::Error::msg)?;
        if !(1..=100).contains(&self.max_attempts_limit) {
            anyhow::bail!("MAX_ATTEMPTS_LIMIT must be between 1 and 100");
        }
        if !(1..=self.max_attempts_limit).contains(&self.max_attempts) {
            anyhow::bail!("MAX_ATTEMPTS must be between 1 and MAX_ATTEMPTS_LIMIT");
        }
        Ok(())
    }

    /// The longest an enqueue can wait on the ledger must stay under the time a request may
    /// take (past it the client is answered 408 while its statement may still commit): the
    /// check of a kept connection, a new one, the statement, a new connection again, the
    /// end of the first's session, the statement again and a read of the stored tasks.
    fn check_enqueue_waits(&self) -> anyhow::Result<()> {
        use crate::intake::{ANSWER_GRACE, END_WAIT, PING_TIMEOUT};
        let (statement, connect) = (
            self.enqueue_statement_timeout,
            self.database_acquire_timeout,
        );
        let longest = statement
            .checked_add(ANSWER_GRACE)
            .and_then(|answer| answer.checked_mul(3))
            .and_then(|answers| answers.checked_add(connect.checked_mul(2)?))
            .and_then(|waits| waits.checked_add(PING_TIMEOUT + END_WAIT + ANSWER_GRACE));
        let limit = crate::http::REQUEST_TIMEOUT - crate::intake::ANSWER_MARGIN;
        if statement < Duration::from_secs(1) || longest.is_none_or(|longest| longest >= limit) {
            anyhow::bail!(
                "ENQUEUE_STATEMENT_TIMEOUT ({}) must be at least 1s, and an enqueue whose connection fails must be answered within {} (2s before the limit of a request): a check of its connection ({}), two new connections (DATABASE_ACQUIRE_TIMEOUT, {} each), ending the first's session ({}) and three statements (ENQUEUE_STATEMENT_TIMEOUT and {} each)",
                humantime::format_duration(statement),
                humantime::format_duration(limit),
                humantime::format_duration(PING_TIMEOUT),
                humantime::format_duration(connect),
                humantime::format_duration(END_WAIT + ANSWER_GRACE),
                humantime::format_duration(ANSWER_GRACE),
            );
        }
        Ok(())
    }

    pub fn tokens(&self) -> Vec<String> {
        self.api_tokens
            .iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    }

    pub fn validation_rules(&self) -> anyhow::Result<ValidationRules> {
        Ok(ValidationRules {
            min_age_hours: self.min_age_hours,
            terminal_statuses: split_list(&self.runs_terminal_statuses)
                .into_iter()
                .collect::<BTreeSet<_>>(),
            max_attempts_limit: self.max_attempts_limit,
            scope_columns: shared::runtime::config::scope_columns(&self.runs_scope_columns)
                .map_err(anyhow::Error::msg)?,
        })
    }
}
