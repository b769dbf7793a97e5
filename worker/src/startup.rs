//! Building and running a worker: executors, the probe server and the consume loop.

use std::future::IntoFuture;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use shared::tasks::{TaskKind, ValidationRules};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{host_name, Config};
use crate::consumer::{self, ConsumerConfig};
use crate::executor::runs::{RunsExecutor, Timeouts};
use crate::executor::temp_files::TempFilesExecutor;
use crate::executor::Executors;
use crate::http::{self, ProbeState};
use crate::metrics::Metrics;
use crate::process::WorkerContext;

pub struct Application {
    ctx: Arc<WorkerContext>,
    consumer: ConsumerConfig,
    listener: TcpListener,
    port: u16,
    runs_pool: Option<PgPool>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let trust = config.signing.trust().map_err(anyhow::Error::msg)?;
        let kinds = config.kinds()?;
        let table = config.runs_table()?;
        let runs_pool = match (
            &config.runs_database_url,
            kinds.contains(&TaskKind::CleanupRuns),
        ) {
            (Some(url), true) => {
                let options = PgConnectOptions::from_str(url)
                    .with_context(|| {
                        format!(
                            "invalid RUNS_DATABASE_URL {}",
                            shared::runtime::config::redact_url(url)
                        )
                    })?
                    // No statement outlives its attempt, and none queues behind the
                    // application's locks for long.
                    .options([
                        (
                            "statement_timeout",
                            config.runs_statement_timeout.as_millis().to_string(),
                        ),
                        (
                            "lock_timeout",
                            config.runs_lock_timeout.as_millis().to_string(),
                        ),
                    ]);
                Some(
                    shared::runtime::db::pool_options()
                        .max_connections(config.runs_database_max_connections)
                        .acquire_timeout(config.runs_database_acquire_timeout)
                        // Connect on first use: the worker starts (and reports not ready)
                        // while the runs database is down.
                        .connect_lazy_with(options),
                )
            }
            _ => None,
        };
        let temp_files = if kinds.contains(&TaskKind::CleanupTempFiles) {
            let roots = config.temp_roots()?;
            for root in roots.values() {
                tracing::info!(root = %root.name, path = %root.path.display(), age_by = %root.age_by, check_locks = config.temp_check_locks, "temp root");
            }
            Some(TempFilesExecutor::new(
                roots,
                config.temp_walk_threads,
                config.temp_check_locks,
            )?)
        } else {
            None
        };
        let runs = runs_pool.clone().map(|pool| {
            RunsExecutor::new(
                pool,
                table.clone(),
                config.runs_timestamp_timezone.clone(),
                Timeouts {
                    statement: config.runs_statement_timeout,
                    lock: config.runs_lock_timeout,
                    synchronous_commit: config.runs_synchronous_commit,
                },
                config.runs_batch_target,
            )
            .with_partitions(config.runs_partitions, config.runs_partition_count)
            .with_schema_cache(config.runs_schema_cache)
        });
        if let Some(runs) = &runs {
            // A table that exists but is unsafe to clean as configured stops the worker here.
            runs.check_at_start_up().await?;
        }
        let executors = Executors {
            runs,
            temp_files,
            rules: ValidationRules {
                min_age_hours: config.min_age_hours,
                terminal_statuses: table.terminal_statuses().iter().cloned().collect(),
                // The producer bounds attempts; the envelope carries the number.
                max_attempts_limit: u32::MAX,
                scope_columns: table.scope_columns().cloned().collect(),
            },
        };
        let worker_id = config.worker_id();
        let ctx = Arc::new(WorkerContext {
            worker_id: worker_id.clone(),
            topology: config.amqp.topology().map_err(anyhow::Error::msg)?,
            executors,
            // Only the delays matter here: each task carries its own max_attempts.
            retry: config.retry.policy(1).map_err(anyhow::Error::msg)?,
            task_timeout: config.task_timeout,
            turn_budget: config.turn_budget,
            started_event_after: config.started_event_after,
            reports: crate::process::Gathering::new(
                config.results_linger,
                usize::from(config.worker_concurrency),
            ),
            // Long enough for a batch already under way: its lock wait, its statement, its
            // commit.
            stop_grace: std::time::Duration::from_secs(10).max(
                config.runs_lock_timeout
                    + config.runs_statement_timeout
                    + std::time::Duration::from_secs(5),
            ),
            metrics: Metrics::new(),
            processed: AtomicU64::new(0),
            runs_table_label: config.runs_table.clone(),
            trust: trust.clone(),
            cancellations: Default::default(),
            executing: Default::default(),
            blocked: Default::default(),
        });
        let listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("failed to listen on METRICS_ADDR {}", config.metrics_addr))?;
        let port = listener.local_addr()?.port();
        tracing::info!(%worker_id, ?kinds, amqp = %config.amqp.redacted_url(), "worker configured");
        match (&trust.keys, trust.allow_unsigned) {
            (Some(keys), false) => {
                tracing::info!(key_ids = ?keys.key_ids(), "task messages must be signed")
            }
            (keys, _) => tracing::warn!(
                key_ids = ?keys.as_ref().map(|k| k.key_ids()),
                "ALLOW_UNSIGNED_TASKS: this worker accepts UNSIGNED task messages, so anyone \
                 who can publish to the broker can order deletions; set TASK_SIGNING_KEYS and \
                 drop ALLOW_UNSIGNED_TASKS"
            ),
        }
        Ok(Self {
            ctx,
            consumer: ConsumerConfig {
                amqp_url: config.amqp.amqp_url.clone(),
                kinds,
                concurrency: config.worker_concurrency,
                heartbeat_interval: config.worker_heartbeat_interval,
                host: host_name(),
                started_at: Utc::now(),
            },
            listener,
            port,
            runs_pool,
        })
    }

    /// Port of the metrics and probe server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Consume until `shutdown` fires, then finish in-flight tasks and stop.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (connected_tx, connected_rx) = watch::channel(None);
        let probes = http::router(ProbeState {
            ctx: self.ctx.clone(),
            connected: connected_rx,
            runs_pool: self.runs_pool.clone(),
        });
        let server_stop = CancellationToken::new();
        let server = tokio::spawn(
            axum::serve(self.listener, probes)
                .with_graceful_shutdown(server_stop.clone().cancelled_owned())
                .into_future(),
        );
        consumer::run(self.ctx.clone(), self.consumer, connected_tx, shutdown).await;
        server_stop.cancel();
        let _ = server.await;
        if let Some(pool) = self.runs_pool {
            use shared::runtime::db;
            db::close(&pool, "runs", db::CLOSE_LIMIT).await;
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}
