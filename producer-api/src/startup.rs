//! Building and running the application: the ledger pool, the HTTP server and the relay.

use std::sync::Arc;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::{self, auth::Tokens, AppState};
use crate::ledger::session::SessionSetup;
use crate::ledger::MIGRATOR;
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::relay::{BrokerHealth, Relay, RelayConfig};

/// A built application: listening, migrated, ready to run.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    relay: Option<Relay>,
    recorder: Option<Recorder>,
    retention: crate::ledger::retention::Retention,
    /// `SCHEDULES_FILE`, and the SIGHUPs that apply it again (listened to before the file
    /// is first applied: a SIGHUP at any moment after that applies it, never kills).
    schedules_file: Option<(std::path::PathBuf, tokio::signal::unix::Signal)>,
}

/// How this process's ledger sessions are set up. One may sit idle inside a transaction
/// for the relay's publish timeout (the longest such wait of this process) and a margin
/// before PostgreSQL ends it and releases its locks.
fn session_setup(config: &Config) -> SessionSetup {
    SessionSetup {
        idle_in_transaction_limit: config.relay_publish_timeout
            + std::time::Duration::from_secs(10),
        relay_here: config.relay_enabled,
    }
}

/// How long a stop waits for the relay, the recorder, the scheduler and the sweepers,
/// after the HTTP server drained (each stops within seconds when its peers answer).
const BACKGROUND_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

impl Application {
    /// Validate the config, connect to and migrate the ledger, bind the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let session = session_setup(&config);
        let pool = PgPoolOptions::new()
            .max_connections(config.database_max_connections)
            .acquire_timeout(config.database_acquire_timeout)
            .after_connect(move |conn, _| Box::pin(session.apply(conn)))
            .connect(&config.database_url)
            .await
            .with_context(|| {
                format!(
                    "failed to connect to the ledger database at {}",
                    shared::runtime::config::redact_url(&config.database_url)
                )
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .context("failed to migrate the ledger database")?;
        Self::build_with_pool(config, pool).await
    }

    /// Like [`build`](Self::build) with a pool the caller made (and migrated).
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen_addr))?;
        let port = listener.local_addr()?.port();
        let metrics = Arc::new(Metrics::new());
        let outbox_written = Arc::new(tokio::sync::Notify::new());
        let broker = BrokerHealth::default();
        let topology = config.amqp.topology().map_err(anyhow::Error::msg)?;
        let trust = config.signing.trust().map_err(anyhow::Error::msg)?;
        let recorder = config.recorder_enabled.then(|| {
            Recorder::new(
                pool.clone(),
                config.amqp.amqp_url.clone(),
                topology.clone(),
                metrics.clone(),
            )
        });
        let relay = config.relay_enabled.then(|| {
            Relay::new(
                pool.clone(),
                RelayConfig {
                    amqp_url: config.amqp.amqp_url.clone(),
                    topology,
                    batch_size: config.relay_batch_size,
                    poll_interval: config.relay_poll_interval,
                    publish_timeout: config.relay_publish_timeout,
                    signing: trust.keys.clone(),
                },
                broker.clone(),
                metrics.clone(),
            )
            .woken_by(outbox_written.clone())
        });
        let state = AppState {
            intake: crate::intake::Intake::start(
                crate::intake::Connections::new(
                    pool.clone(),
                    session_setup(&config),
                    config.enqueue_statement_timeout,
                    config.database_acquire_timeout,
                    metrics.enqueue_sessions_given_up.clone(),
                ),
                metrics.clone(),
                outbox_written.clone(),
            ),
            pool,
            rules: Arc::new(config.validation_rules()?),
            max_attempts: config.max_attempts,
            max_body_bytes: config.max_body_bytes,
            tokens: Tokens::parse(&config.tokens(), config.auth_disabled)?,
            metrics,
            broker,
            relay_enabled: config.relay_enabled,
            outbox_written,
            topology: config.amqp.topology().map_err(anyhow::Error::msg)?,
        };
        match &trust.keys {
            Some(keys) => tracing::info!(
                signing_key_id = keys.signing_key_id(),
                "task messages are signed"
            ),
            None => tracing::warn!(
                "ALLOW_UNSIGNED_TASKS without TASK_SIGNING_KEYS: task messages are published \
                 unsigned, and workers that require signatures will refuse them"
            ),
        }
        if config.auth_disabled {
            tracing::warn!(
                "authentication is disabled: anyone who reaches the API can enqueue tasks"
            );
        }
        // A schedules file that does not apply stops the start: nothing half-applied runs.
        let schedules_file = match &config.schedules_file {
            Some(path) => {
                use tokio::signal::unix::{signal, SignalKind};
                let hangups = signal(SignalKind::hangup())
                    .context("cannot listen for SIGHUP (to apply SCHEDULES_FILE again)")?;
                crate::schedules::file::sync(&state.pool, path, &state.rules).await?;
                Some((path.clone(), hangups))
            }
            None => None,
        };
        Ok(Self {
            listener,
            port,
            state,
            relay,
            recorder,
            retention: config.retention(),
            schedules_file,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serve until `shutdown` is cancelled, then drain requests and stop the relay.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        if let Some(relay) = self.relay {
            tracker.spawn(relay.run(shutdown.clone()));
        }
        if let Some(recorder) = self.recorder {
            tracker.spawn(recorder.run(shutdown.clone()));
            tracker.spawn(crate::ledger::workers::run_sweeper(
                self.state.pool.clone(),
                shutdown.clone(),
            ));
        }
        // Every replica runs the scheduler (claims make it safe) and the retention (one
        // replica at a time by an advisory lock).
        if let Some((path, hangups)) = self.schedules_file {
            tracker.spawn(crate::schedules::reload_on_sighup(
                self.state.pool.clone(),
                path,
                hangups,
                self.state.rules.clone(),
                shutdown.clone(),
            ));
        }
        tracker.spawn(crate::schedules::run(
            self.state.pool.clone(),
            self.state.rules.clone(),
            self.state.max_attempts,
            self.state.metrics.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(crate::ledger::retention::run(
            self.state.pool.clone(),
            self.retention.clone(),
            self.state.metrics.clone(),
            shutdown.clone(),
        ));
        tracing::info!(port = self.port, "producer-api listening");
        let pool = self.state.pool.clone();
        let app = http::router(self.state);
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .context("HTTP server failed");
        shutdown.cancel();
        tracker.close();
        // Each of them stops at once on its own; one stuck on a peer that keeps its
        // connection open and says nothing does not hold the exit.
        if tokio::time::timeout(BACKGROUND_STOP_LIMIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                limit = ?BACKGROUND_STOP_LIMIT,
                still_running = tracker.len(),
                "background tasks did not stop in time; exiting without them"
            );
        }
        use shared::runtime::db;
        db::close(&pool, "ledger", db::CLOSE_LIMIT).await;
        tracing::info!("producer-api stopped");
        result
    }
}
