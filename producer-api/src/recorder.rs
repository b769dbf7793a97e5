//! The ledger recorder: applies worker events (`<prefix>.ledger`) and dead-lettered task
//! messages (`<prefix>.ledger.dead`) to `cleanup_tasks` and `workers`.
//!
//! Events are applied idempotently and monotonically, ordered by (attempt, phase) where
//! `started` < `succeeded | failed`: a duplicate or late event matches no row and changes
//! nothing, and a finished task never moves again. Deliveries are applied in batches, one
//! transaction per batch, rows locked in task-id order so that replicas never deadlock;
//! they are acked only after the commit. While the ledger is down the batch is retried and
//! nothing is acked, so no event is lost.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use serde_json::json;
use shared::amqp::{self, SessionEnd};
use shared::envelope::TaskEnvelope;
use shared::events::{Event, TaskDead, TaskFailed, TaskStarted, TaskSucceeded};
use shared::retry::RetryPolicy;
use shared::tasks::{TaskKind, TaskSpec};
use shared::topology::Topology;
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;

/// How long an ack may take before the channel is given up.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How settling a batch ended.
enum Settled {
    Done,
    /// Shutdown came first; nothing was acked and RabbitMQ redelivers.
    Shutdown,
    /// The channel failed while acking; the session must be rebuilt.
    ChannelLost,
}

/// Deliveries applied in one transaction at most.
const MAX_BATCH: usize = 200;

pub struct Recorder {
    pool: PgPool,
    amqp_url: String,
    topology: Topology,
    metrics: Arc<Metrics>,
}

/// What a delivery turned out to be.
#[derive(Debug)]
enum Item {
    Event(Event),
    /// A task message dead-lettered by RabbitMQ: its id and a readable reason.
    DeadLettered {
        task_id: Uuid,
        /// The attempt the message carried, when its body is readable.
        attempt: Option<u32>,
        reason: String,
    },
    /// Nothing for the ledger (an unreadable event, or a dead-lettered event).
    Ignore,
    /// An unreadable event: rejected so it rests in the dead-letter queue.
    Reject(String),
}

impl Recorder {
    pub fn new(pool: PgPool, amqp_url: String, topology: Topology, metrics: Arc<Metrics>) -> Self {
        Self {
            pool,
            amqp_url,
            topology,
            metrics,
        }
    }

    /// The supervisor: consume, reconnect with backoff when the connection is lost for
    /// good, stop on `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = &self;
        let connect = || this.connect();
        let session = |(connection, channel): (Connection, Channel)| {
            let shutdown = &shutdown;
            async move {
                tracing::info!("recorder consuming events");
                let lost = this.consume(&channel, shutdown).await;
                amqp::close(&connection, "recorder stopping").await;
                if lost {
                    SessionEnd::Lost
                } else {
                    SessionEnd::Shutdown
                }
            }
        };
        amqp::supervise("recorder", &shutdown, connect, session).await;
    }

    async fn connect(&self) -> anyhow::Result<(Connection, Channel)> {
        let connection = amqp::connect(&self.amqp_url, "producer-api recorder").await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel
            .basic_qos((MAX_BATCH * 2) as u16, BasicQosOptions::default())
            .await?;
        Ok((connection, channel))
    }

    /// Returns true when the connection was lost, false on shutdown.
    async fn consume(&self, channel: &Channel, shutdown: &CancellationToken) -> bool {
        let mut streams = futures::stream::SelectAll::new();
        for (queue, dead) in [
            (self.topology.ledger_queue(), false),
            (self.topology.dead_ledger_queue(), true),
        ] {
            let consumer = match channel
                .basic_consume(
                    queue.as_str().into(),
                    // An explicit tag: lapin re-registers it on recovery.
                    format!(
                        "recorder-{}-{}",
                        std::process::id(),
                        uuid::Uuid::new_v4().simple()
                    )
                    .into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::warn!(%error, %queue, "cannot consume");
                    return true;
                }
            };
            streams.push(consumer.map(move |d| (d, dead)).boxed());
        }
        let mut watchdog = amqp::RecoveryWatchdog::default();
        let mut watch = tokio::time::interval(Duration::from_secs(2));
        let mut last_delivery = std::time::Instant::now();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = watch.tick() => {
                    if !watchdog.check(&[channel]) || self.stalled(channel, last_delivery).await {
                        return true;
                    }
                    continue;
                }
                next = streams.next() => next,
            };
            last_delivery = std::time::Instant::now();
            let mut batch = Vec::new();
            let mut next = first;
            loop {
                match next {
                    Some((Ok(delivery), dead)) => batch.push((delivery, dead)),
                    // A consumer is not trusted to lapin's recovery (it has been seen to
                    // resume without deliveries after a broker restart): start afresh.
                    // Unacked events are redelivered to the new consumer.
                    Some((Err(error), _)) => {
                        tracing::warn!(%error, "recorder consumer failed; rebuilding the connection");
                        if !batch.is_empty() {
                            break;
                        }
                        return true;
                    }
                    None => return true,
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
                // Take what is already buffered, without waiting.
                match streams.next().now_or_never() {
                    Some(item) => next = item,
                    None => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            match self.settle(batch, shutdown).await {
                Settled::Done => {}
                Settled::Shutdown => return false,
                Settled::ChannelLost => return true,
            }
        }
    }

    /// Events wait in the ledger queue but none has arrived for a while: the consumer did
    /// not survive a recovery. (Checked with a passive declare on the same channel.)
    async fn stalled(&self, channel: &Channel, last_delivery: std::time::Instant) -> bool {
        if last_delivery.elapsed() < amqp::RECOVERY_GRACE {
            return false;
        }
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = self.topology.ledger_queue();
        match channel
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await
        {
            Ok(queue) if queue.message_count() > 0 => {
                tracing::warn!(
                    waiting = queue.message_count(),
                    "events wait but none arrives; rebuilding the recorder's connection"
                );
                true
            }
            Ok(_) => false,
            Err(_) => true,
        }
    }

    /// Apply a batch (retrying while the ledger is unavailable), then ack it.
    /// Returns false if shutdown came first (nothing acked: RabbitMQ redelivers).
    async fn settle(&self, batch: Vec<(Delivery, bool)>, shutdown: &CancellationToken) -> Settled {
        let mut lost = false;
        let mut items: Vec<Item> = batch
            .iter()
            .map(|(delivery, dead)| self.classify(delivery, *dead))
            .collect();
        let policy = RetryPolicy {
            max_delay: Duration::from_secs(10),
            ..RetryPolicy::in_attempt()
        };
        let mut failures = 0;
        loop {
            match apply_batch(&self.pool, &items).await {
                Ok(()) => break,
                // One item the ledger refuses must not hold back the others: apply them one
                // by one and reject the refused ones to the dead-letter queue.
                Err(error) if !shared::db::is_transient(&error) => {
                    tracing::error!(%error, "the ledger refused a batch of events; applying them one by one");
                    match self.isolate(&mut items).await {
                        Ok(()) => break,
                        Err(error) => {
                            failures += 1;
                            tracing::warn!(%error, failures, "cannot apply events to the ledger; retrying");
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Settled::Shutdown,
                        _ = tokio::time::sleep(policy.delay_after(failures.max(1))) => {}
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "cannot apply events to the ledger; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Settled::Shutdown,
                        _ = tokio::time::sleep(policy.delay_after(failures)) => {}
                    }
                }
            }
        }
        let now = Utc::now();
        for ((delivery, _), item) in batch.iter().zip(&items) {
            let settle = async {
                match item {
                    Item::Reject(reason) => {
                        tracing::error!(%reason, "rejecting an unreadable event to the dead-letter queue");
                        delivery.reject(BasicRejectOptions { requeue: false }).await
                    }
                    _ => delivery.ack(BasicAckOptions::default()).await,
                }
            };
            // An ack on a channel caught in a broker restart may never complete: give up on
            // the channel (the events are applied; their redelivery is ignored).
            match tokio::time::timeout(ACK_TIMEOUT, settle).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "ack failed; rebuilding the connection (the event will be redelivered and ignored)");
                    lost = true;
                }
                Err(_) => {
                    tracing::warn!("ack timed out; rebuilding the connection");
                    return Settled::ChannelLost;
                }
            }
            if let Item::Event(event) = item {
                self.metrics
                    .recorder_events
                    .with_label_values(&[event.routing_key()])
                    .inc();
                if let Some(at) = event_time(event) {
                    let lag = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
                    self.metrics.recorder_lag.observe(lag);
                }
            }
        }
        if lost {
            Settled::ChannelLost
        } else {
            Settled::Done
        }
    }

    /// Apply each item alone; an item the ledger refuses becomes a rejection. Stops at the
    /// first transient error (the caller retries; applied items are idempotent).
    async fn isolate(&self, items: &mut [Item]) -> Result<(), sqlx::Error> {
        for item in items.iter_mut() {
            match apply_batch(&self.pool, std::slice::from_ref(item)).await {
                Ok(()) => {}
                Err(error) if !shared::db::is_transient(&error) => {
                    *item = Item::Reject(format!("the ledger refused this event: {error}"));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn classify(&self, delivery: &Delivery, dead_lettered: bool) -> Item {
        if !dead_lettered {
            return match Event::from_json(&delivery.data) {
                Ok(event) => Item::Event(event),
                Err(error) => Item::Reject(format!("unreadable event: {error}")),
            };
        }
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let queue = header_text(&headers, "x-first-death-queue").unwrap_or_default();
        let tasks_prefix = format!("{}.", self.topology.tasks_exchange());
        if !queue.starts_with(&tasks_prefix) {
            return Item::Ignore;
        }
        let Some(task_id) = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok())
        else {
            return Item::Ignore;
        };
        let reason = header_text(&headers, "x-first-death-reason").unwrap_or_default();
        let dead_queue = self.topology.dead_queue();
        let reason = match reason.as_str() {
            "delivery_limit" => format!(
                "dead-lettered by RabbitMQ: delivered too many times without an ack (a worker \
                 crashed or was killed on each delivery); the message is kept in `{dead_queue}`"
            ),
            "rejected" => format!(
                "rejected by a worker as unprocessable; the message is kept in `{dead_queue}`"
            ),
            other => format!(
                "dead-lettered by RabbitMQ ({other}); the message is kept in `{dead_queue}`"
            ),
        };
        // A stale copy of an earlier attempt must not kill a later one.
        let attempt = TaskEnvelope::from_json(&delivery.data)
            .ok()
            .map(|e| e.attempt);
        Item::DeadLettered {
            task_id,
            attempt,
            reason,
        }
    }
}

fn header_text(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn event_time(event: &Event) -> Option<chrono::DateTime<Utc>> {
    Some(match event {
        Event::TaskStarted(e) => e.at,
        Event::TaskSucceeded(e) => e.at,
        Event::TaskFailed(e) => e.at,
        Event::TaskDead(e) => e.at,
        Event::WorkerHeartbeat(e) => e.at,
        Event::WorkerStopped(e) => e.at,
    })
}

/// Sort key: task rows first in id order, then worker rows in id order, so concurrent
/// recorders lock rows in the same order.
fn lock_order(item: &Item) -> (u8, String) {
    match item {
        Item::Event(Event::TaskStarted(e)) => (0, e.task_id.to_string()),
        Item::Event(Event::TaskSucceeded(e)) => (0, e.task_id.to_string()),
        Item::Event(Event::TaskFailed(e)) => (0, e.task_id.to_string()),
        Item::Event(Event::TaskDead(e)) => {
            (0, e.task_id.map(|i| i.to_string()).unwrap_or_default())
        }
        Item::DeadLettered { task_id, .. } => (0, task_id.to_string()),
        Item::Event(Event::WorkerHeartbeat(e)) => (1, e.worker_id.clone()),
        Item::Event(Event::WorkerStopped(e)) => (1, e.worker_id.clone()),
        Item::Ignore | Item::Reject(_) => (2, String::new()),
    }
}

/// Apply every item in one transaction.
async fn apply_batch(pool: &PgPool, items: &[Item]) -> Result<(), sqlx::Error> {
    let mut ordered: Vec<&Item> = items.iter().collect();
    // Stable: events of one task keep their arrival order.
    ordered.sort_by_key(|item| lock_order(item));
    let mut tx = pool.begin().await?;
    for item in ordered {
        match item {
            Item::Event(Event::TaskStarted(e)) => started(&mut tx, e).await?,
            Item::Event(Event::TaskSucceeded(e)) => succeeded(&mut tx, e).await?,
            Item::Event(Event::TaskFailed(e)) => failed(&mut tx, e).await?,
            Item::Event(Event::TaskDead(e)) => dead(&mut tx, e).await?,
            Item::DeadLettered {
                task_id,
                attempt,
                reason,
            } => dead_lettered(&mut tx, *task_id, *attempt, reason).await?,
            Item::Event(Event::WorkerHeartbeat(e)) => {
                let kinds: Vec<&str> = e.kinds.iter().map(|k| k.as_str()).collect();
                sqlx::query(
                    "INSERT INTO workers (id, host, version, kinds, status, started_at, last_seen_at, in_flight, processed, heartbeat_interval_ms)
                     VALUES ($1, $2, $3, $4, 'up', $5, $6, $7, $8, $9)
                     ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, version = EXCLUDED.version,
                         kinds = EXCLUDED.kinds, status = 'up', started_at = EXCLUDED.started_at,
                         last_seen_at = EXCLUDED.last_seen_at,
                         in_flight = EXCLUDED.in_flight, processed = EXCLUDED.processed,
                         heartbeat_interval_ms = EXCLUDED.heartbeat_interval_ms
                     WHERE workers.last_seen_at < EXCLUDED.last_seen_at
                       AND (workers.status <> 'stopped' OR workers.started_at < EXCLUDED.started_at)",
                )
                .bind(&e.worker_id)
                .bind(&e.host)
                .bind(&e.version)
                .bind(&kinds)
                .bind(e.started_at)
                .bind(e.at)
                .bind(e.in_flight as i32)
                .bind(e.processed as i64)
                .bind(e.interval_ms.min(i32::MAX as u64) as i32)
                .execute(&mut *tx)
                .await?;
            }
            Item::Event(Event::WorkerStopped(e)) => {
                sqlx::query(
                    "UPDATE workers SET status = 'stopped', last_seen_at = GREATEST(last_seen_at, $2),
                         in_flight = 0, processed = $3 WHERE id = $1",
                )
                .bind(&e.worker_id)
                .bind(e.at)
                .bind(e.processed as i64)
                .execute(&mut *tx)
                .await?;
            }
            Item::Ignore | Item::Reject(_) => {}
        }
    }
    tx.commit().await
}

/// A task may move only forward: (attempt, phase) must exceed what the ledger has, and a
/// finished task (succeeded, failed, dead) never moves again.
const NOT_FINISHED: &str = "status NOT IN ('succeeded', 'failed', 'dead')";

async fn started(tx: &mut Transaction<'_, Postgres>, e: &TaskStarted) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE cleanup_tasks SET status = 'running', attempts = $2, worker_id = $3,
             started_at = COALESCE(started_at, $4), next_attempt_at = NULL, updated_at = now()
         WHERE id = $1 AND {NOT_FINISHED}
           AND (attempts < $2 OR (attempts = $2 AND status = 'queued'))"
    ))
    .bind(e.task_id)
    .bind(e.attempt as i32)
    .bind(&e.worker_id)
    .bind(e.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn succeeded(
    tx: &mut Transaction<'_, Postgres>,
    e: &TaskSucceeded,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE cleanup_tasks SET status = 'succeeded', attempts = $2, worker_id = $3,
             result = $4, error = NULL, started_at = COALESCE(started_at, $5), finished_at = $5,
             next_attempt_at = NULL, updated_at = now()
         WHERE id = $1 AND {NOT_FINISHED}
           AND (attempts < $2 OR (attempts = $2 AND status IN ('queued', 'running')))"
    ))
    .bind(e.task_id)
    .bind(e.attempt as i32)
    .bind(&e.worker_id)
    .bind(&e.result)
    .bind(e.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct FailedRow {
    status: String,
    kind: String,
    params: serde_json::Value,
    cutoff: chrono::DateTime<Utc>,
    created_at: chrono::DateTime<Utc>,
    max_attempts: i32,
}

/// The partial result a failure's progress holds: a temp-file walk's progress wraps its
/// result (`{"result": {...}, "done": ...}`); a runs cleanup's progress is its result.
fn partial_result(progress: &serde_json::Value) -> serde_json::Value {
    match progress.get("result") {
        Some(result) if result.is_object() => result.clone(),
        _ => progress.clone(),
    }
}

/// A failed attempt: schedule the next one (status `retrying`, a delayed outbox message)
/// when the error is transient and attempts remain, else the task has `failed`, and the
/// work done before the failure (the event's progress) becomes its `result`.
async fn failed(tx: &mut Transaction<'_, Postgres>, e: &TaskFailed) -> Result<(), sqlx::Error> {
    let next_at = e.next_attempt_at.unwrap_or(e.at);
    // The error as the worker classified it, and when the attempt failed.
    let mut error = serde_json::to_value(&e.error).expect("error serializes");
    error["at"] = json!(e.at);
    let partial = e.progress.as_ref().map(partial_result);
    let row: Option<FailedRow> = sqlx::query_as(&format!(
        "UPDATE cleanup_tasks SET
                 status = CASE WHEN $4 AND $2 < max_attempts THEN 'retrying' ELSE 'failed' END,
                 next_attempt_at = CASE WHEN $4 AND $2 < max_attempts THEN $5 ELSE NULL END,
                 finished_at = CASE WHEN $4 AND $2 < max_attempts THEN NULL ELSE $6 END,
                 result = CASE WHEN $4 AND $2 < max_attempts THEN result
                               ELSE COALESCE($8::jsonb, result) END,
                 attempts = $2, worker_id = $3, error = $7, started_at = COALESCE(started_at, $6),
                 updated_at = now()
             WHERE id = $1 AND {NOT_FINISHED}
               AND (attempts < $2 OR (attempts = $2 AND status IN ('queued', 'running')))
             RETURNING status, kind, params, cutoff, created_at, max_attempts"
    ))
    .bind(e.task_id)
    .bind(e.attempt as i32)
    .bind(&e.worker_id)
    .bind(e.retryable)
    .bind(next_at)
    .bind(e.at)
    .bind(&error)
    .bind(&partial)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(FailedRow {
        status,
        kind,
        params,
        cutoff,
        created_at,
        max_attempts,
    }) = row
    else {
        return Ok(());
    };
    if status != "retrying" {
        return Ok(());
    }
    let Some(task) = kind
        .parse::<TaskKind>()
        .ok()
        .and_then(|k| TaskSpec::from_parts(k, params).ok())
    else {
        tracing::error!(task_id = %e.task_id, "stored parameters no longer parse; not retrying");
        return Ok(());
    };
    let envelope = TaskEnvelope {
        schema_version: shared::envelope::SCHEMA_VERSION,
        task_id: e.task_id,
        task,
        attempt: e.attempt + 1,
        max_attempts: max_attempts as u32,
        enqueued_at: created_at,
        cutoff,
        // What earlier attempts did, so counts and caps span every attempt.
        progress: e.progress.clone(),
    };
    sqlx::query(
        "INSERT INTO cleanup_outbox (task_id, attempt, kind, envelope, due_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(e.task_id)
    .bind((e.attempt + 1) as i32)
    .bind(&kind)
    .bind(serde_json::to_value(&envelope).expect("envelope serializes"))
    .bind(next_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn dead(tx: &mut Transaction<'_, Postgres>, e: &TaskDead) -> Result<(), sqlx::Error> {
    let Some(task_id) = e.task_id else {
        return Ok(());
    };
    // A worker's own reason is the most precise: it replaces a broker's dead-letter note.
    sqlx::query(
        "UPDATE cleanup_tasks SET status = 'dead', error = $2, finished_at = COALESCE(finished_at, $3),
             next_attempt_at = NULL, updated_at = now()
         WHERE id = $1 AND status NOT IN ('succeeded', 'failed')",
    )
    .bind(task_id)
    .bind(json!({"class": "permanent", "message": e.reason}))
    .bind(e.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn dead_lettered(
    tx: &mut Transaction<'_, Postgres>,
    task_id: Uuid,
    attempt: Option<u32>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE cleanup_tasks SET status = 'dead', error = $2, finished_at = now(),
             next_attempt_at = NULL, updated_at = now()
         WHERE id = $1 AND {NOT_FINISHED} AND ($3::int IS NULL OR attempts <= $3)"
    ))
    .bind(task_id)
    .bind(json!({"class": "permanent", "message": reason}))
    .bind(attempt.map(|a| a as i32))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
