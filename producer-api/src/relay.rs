//! The outbox relay: moves due messages from `cleanup_outbox` to RabbitMQ.
//!
//! Each batch is claimed with `FOR UPDATE SKIP LOCKED` inside a transaction
//! ([`crate::ledger::outbox`]), published with `mandatory` and publisher confirms
//! (pipelined), and the confirmed messages are deleted in the same transaction, so several replicas can relay at once and each
//! message is published once (at least once if a relay dies between confirm and commit).
//! The HTTP handlers of the same process wake the relay in-process (their connections
//! send no NOTIFY: see the `outbox_wakeup` migration); a `LISTEN cleanup_outbox` wakes it
//! for rows other processes write (API-only replicas); polling covers missed notifications,
//! the process's scheduler and retries that fall due later. While RabbitMQ is down,
//! messages simply wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use lapin::{Channel, Connection};
use shared::cancel::CANCEL_MESSAGE_TYPE;
use shared::envelope::TASK_MESSAGE_TYPE;
use shared::runtime::amqp::{self, OutgoingMessage, PublishError, SessionEnd};
use shared::signing::KeyRing;
use shared::topology::Topology;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::ledger::outbox::{self, OutboxRow};
use crate::metrics::Metrics;

mod health;

use health::watch_blocked;
pub use health::BrokerHealth;

/// The notification channel the outbox trigger signals.
pub const NOTIFY_CHANNEL: &str = "cleanup_outbox";
/// A message the broker refused is tried again after this long.
const REFUSED_RETRY_DELAY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct RelayConfig {
    pub amqp_url: String,
    pub topology: Topology,
    pub batch_size: u32,
    pub poll_interval: Duration,
    /// Longest wait for a batch to be published and confirmed.
    pub publish_timeout: Duration,
    /// Signs every task message (the first key); `None` only with ALLOW_UNSIGNED_TASKS.
    pub signing: Option<KeyRing>,
}

pub struct Relay {
    pool: PgPool,
    config: RelayConfig,
    health: BrokerHealth,
    metrics: Arc<Metrics>,
    /// Woken by this process's writes to the outbox (theirs send no NOTIFY).
    wakeup: Arc<tokio::sync::Notify>,
}

/// Why a relay round stopped: the broker needs a new connection, or the ledger failed.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("ledger error: {0}")]
    Ledger(#[from] sqlx::Error),
    /// Publishing and confirming the batch took longer than the publish timeout (the broker
    /// blocks publishers, or does not answer): the batch was rolled back.
    #[error("the batch was not confirmed within {0:?}")]
    Timeout(Duration),
}

impl Relay {
    pub fn new(
        pool: PgPool,
        config: RelayConfig,
        health: BrokerHealth,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            config,
            health,
            metrics,
            wakeup: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Wake on `wakeup` too: the process's own writes to the outbox.
    pub fn woken_by(mut self, wakeup: Arc<tokio::sync::Notify>) -> Self {
        self.wakeup = wakeup;
        self
    }

    /// The supervisor: connect, relay until the connection is lost for good, reconnect
    /// with backoff; return when `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = &self;
        let connect = || this.connect();
        let session = |(connection, channel, inspect): (Connection, Channel, Channel)| {
            let shutdown = &shutdown;
            async move {
                this.health
                    .set(Some((connection.status().clone(), inspect)));
                this.metrics.amqp_connected.set(1);
                let watch_blocked = tokio::spawn(watch_blocked(
                    connection.events_listener(),
                    this.health.clone(),
                    this.metrics.clone(),
                ));
                tracing::info!(url = %shared::runtime::config::redact_url(&this.config.amqp_url), "relay connected to RabbitMQ");
                let outcome = this.pump(&channel, shutdown).await;
                watch_blocked.abort();
                this.metrics.amqp_connected.set(0);
                this.metrics.amqp_blocked.set(0);
                this.health.set(None);
                amqp::retire(connection, "relay stopping").await;
                outcome
            }
        };
        amqp::supervise("relay", &shutdown, connect, session).await;
    }

    /// A connection, a confirm channel for publishing (topology declared) and a plain
    /// channel for passive queue inspection (a failed inspection closes only that one).
    async fn connect(&self) -> anyhow::Result<(Connection, Channel, Channel)> {
        let connection = amqp::connect(&self.config.amqp_url, "producer-api relay").await?;
        let channel = amqp::confirm_channel(&connection).await?;
        self.config.topology.declare(&channel).await?;
        let inspect = connection.create_channel().await?;
        Ok((connection, channel, inspect))
    }

    /// Relay until shutdown (`SessionEnd::Shutdown`), or until the channel is unusable and
    /// auto-recovery could not restore it, or a batch timed out (`SessionEnd::Lost`).
    async fn pump(&self, channel: &Channel, shutdown: &CancellationToken) -> SessionEnd {
        let mut listener = self.listen().await;
        let mut watchdog = amqp::RecoveryWatchdog::default();
        loop {
            if shutdown.is_cancelled() {
                return SessionEnd::Shutdown;
            }
            if !watchdog.check(&[channel]) {
                return SessionEnd::Lost;
            }
            // While the broker blocks publishers a batch would only hang: claim nothing.
            if self.health.blocked().is_some() {
                tokio::select! {
                    _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                }
                continue;
            }
            let batch = self.relay_batch(channel);
            tokio::pin!(batch);
            let result = tokio::select! {
                result = &mut batch => result,
                // A batch under way gets a moment to finish; one the broker does not
                // answer is rolled back (its messages go out again from the next relay).
                _ = shutdown.cancelled() => match tokio::time::timeout(amqp::STOP_REQUEST_TIMEOUT, &mut batch).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("relay batch unfinished at shutdown; rolled back");
                        return SessionEnd::Shutdown;
                    }
                },
            };
            match result {
                Ok(sent) if sent as u32 >= self.config.batch_size => continue,
                Ok(_) => {}
                Err(RoundError::Broker(error)) => {
                    tracing::warn!(%error, "publish failed; waiting for the connection to recover");
                    tokio::select! {
                        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                        recovered = amqp::recover(channel, error) => if !recovered {
                            return SessionEnd::Lost;
                        },
                    }
                    continue;
                }
                Err(RoundError::Ledger(error)) => {
                    tracing::warn!(%error, "relay cannot read the outbox; retrying");
                }
                // Publishes left pending on this channel may still go out when the broker
                // unblocks: drop the connection and start afresh, after the supervisor's
                // backoff. The rolled-back messages are published again (at least once).
                Err(error @ RoundError::Timeout(_)) => {
                    self.metrics.outbox_publish_timeouts.inc();
                    tracing::warn!(%error, blocked = ?self.health.blocked(), "relay batch timed out and was rolled back; reconnecting");
                    return SessionEnd::Lost;
                }
            }
            self.wait_for_work(&mut listener, shutdown).await;
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for outbox notifications; polling only");
                return None;
            }
        };
        match listener.listen(NOTIFY_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for outbox notifications; polling only");
                None
            }
        }
    }

    async fn wait_for_work(&self, listener: &mut Option<PgListener>, shutdown: &CancellationToken) {
        let poll = tokio::time::sleep(self.config.poll_interval);
        match listener {
            Some(l) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = poll => {}
                    _ = self.wakeup.notified() => {}
                    notification = l.recv() => {
                        if let Err(error) = notification {
                            // recv() reconnects on the next call; poll meanwhile.
                            tracing::debug!(%error, "outbox listener interrupted");
                            tokio::time::sleep(self.config.poll_interval).await;
                        }
                        // One claim covers every row committed before it: the other
                        // notifications already here would only wake empty claims.
                        while l.next_buffered().is_some() {}
                    }
                }
            }
            None => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = poll => {}
                    _ = self.wakeup.notified() => {}
                }
                *listener = self.listen().await;
            }
        }
    }

    /// Publish one batch of due messages; returns how many were confirmed.
    async fn relay_batch(&self, channel: &Channel) -> Result<usize, RoundError> {
        let mut tx = self.pool.begin().await?;
        let (withdrawn, rows): (Vec<OutboxRow>, Vec<OutboxRow>) =
            outbox::claim_due(&mut tx, self.config.batch_size)
                .await?
                .into_iter()
                .partition(|row| row.withdrawn);
        if !withdrawn.is_empty() {
            // A cancel left them (a relay held them then): they never go out.
            let ids: Vec<i64> = withdrawn.iter().map(|row| row.id).collect();
            outbox::drop_withdrawn(&mut tx, &ids).await?;
            tracing::info!(dropped = ids.len(), "dropped messages of cancelled tasks");
        }
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(withdrawn.len());
        }
        let started = Instant::now();
        let publish_timeout = self.config.publish_timeout;
        let outcomes =
            match tokio::time::timeout(publish_timeout, self.publish(channel, &rows)).await {
                Ok(Ok(outcomes)) => outcomes,
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => {
                    // Nothing is marked published: the rows stay, and go out again later.
                    tx.rollback().await?;
                    return Err(RoundError::Timeout(publish_timeout));
                }
            };

        let mut published_ids = Vec::new();
        // Tasks whose message went out (a cancellation does not stamp `published_at`).
        let mut published_tasks = Vec::new();
        let mut refused_ids = Vec::new();
        let mut refused_error = None;
        let mut broker_error = None;
        for (row, outcome) in rows.iter().zip(outcomes) {
            let task_id = row.task_id;
            match outcome {
                Ok(()) => {
                    published_ids.push(row.id);
                    if !row.is_cancel() {
                        published_tasks.push(task_id);
                    }
                }
                // Unconfirmed: the row stays and is published again after reconnecting.
                // The confirmed ones are still recorded below, so they are not repeated.
                Err(PublishError::Amqp(error)) => {
                    broker_error.get_or_insert(error);
                }
                Err(refused) => {
                    tracing::error!(%task_id, error = %refused, "broker refused a task message; will retry");
                    refused_ids.push(row.id);
                    refused_error = Some(refused.to_string());
                }
            }
        }
        outbox::record_published(&mut tx, &published_ids, &published_tasks).await?;
        if !refused_ids.is_empty() {
            outbox::record_refused(
                &mut tx,
                &refused_ids,
                refused_error.as_deref(),
                REFUSED_RETRY_DELAY,
            )
            .await?;
        }
        tx.commit().await?;

        self.metrics
            .outbox_published
            .inc_by(published_ids.len() as u64);
        self.metrics
            .outbox_publish_errors
            .inc_by(refused_ids.len() as u64);
        self.metrics
            .outbox_publish_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            published = published_ids.len(),
            refused = refused_ids.len(),
            "relayed outbox batch"
        );
        Ok(published_ids.len() + refused_ids.len())
    }

    /// Publish every row (signed), pipelined, and wait for each confirmation: task messages
    /// to the tasks exchange (routing key: the kind), cancellations to the cancellation
    /// stream.
    async fn publish(
        &self,
        channel: &Channel,
        rows: &[OutboxRow],
    ) -> Result<Vec<Result<(), PublishError>>, lapin::Error> {
        let tasks = self.config.topology.tasks_exchange();
        let cancels = self.config.topology.cancels_exchange();
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            let (exchange, routing_key, message_type) = if row.is_cancel() {
                (&cancels, "", CANCEL_MESSAGE_TYPE)
            } else {
                (&tasks, row.kind.as_str(), TASK_MESSAGE_TYPE)
            };
            let message = OutgoingMessage {
                exchange,
                routing_key,
                message_type,
                message_id: row.task_id.to_string(),
                body: row.envelope.clone().into_bytes(),
            };
            // The signature covers the exact bytes published.
            let headers = match &self.config.signing {
                Some(keys) => keys.sign(&message.body).headers().to_vec(),
                None => Vec::new(),
            };
            match amqp::start_publish_with_headers(channel, &message, &headers).await {
                Ok(confirm) => pending.push(confirm),
                Err(PublishError::Amqp(error)) => return Err(error),
                Err(other) => unreachable!("start_publish only fails with AMQP errors: {other}"),
            }
        }
        Ok(join_all(pending).await)
    }
}
