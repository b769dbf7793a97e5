//! The ledger recorder: applies worker events (`<prefix>.ledger`) and dead-lettered task
//! messages (`<prefix>.ledger.dead`) to `cleanup_tasks` and `workers`.
//!
//! Each delivery becomes a ledger change ([`crate::ledger::transitions`], where the guard
//! rule lives: a duplicate or late event changes nothing, a finished task never moves
//! again). Deliveries are applied in batches, one transaction per batch, and acked only
//! after the commit. While the ledger is down the batch is retried and nothing is acked,
//! so no event is lost.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use shared::retry::RetryPolicy;
use shared::runtime::amqp::{self, SessionEnd};
use shared::topology::Topology;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

mod items;

use items::{event_time, Item};

/// How long an ack may take before the channel is given up.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Deliveries applied in one transaction at most.
const MAX_BATCH: usize = 200;

pub struct Recorder {
    pool: PgPool,
    amqp_url: String,
    topology: Topology,
    metrics: Arc<Metrics>,
}

/// How long the recorder waits for the broker to say how many events wait; no answer
/// means the connection is not healthy.
const STALL_CHECK_LIMIT: Duration = Duration::from_secs(5);

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
        let session = |(connection, channels): (Connection, [Channel; 2])| {
            let shutdown = &shutdown;
            async move {
                tracing::info!("recorder consuming events");
                let end = this.consume(&channels, shutdown).await;
                amqp::retire(connection, "recorder stopping").await;
                end
            }
        };
        amqp::supervise("recorder", &shutdown, connect, session).await;
    }

    /// A connection and two channels: one for the ledger queue, one for the dead-letter
    /// ledger queue. Each consumer has its own channel so that its deliveries, in order,
    /// are all its channel has: one ack with `multiple` can settle them.
    async fn connect(&self) -> anyhow::Result<(Connection, [Channel; 2])> {
        let connection = amqp::connect(&self.amqp_url, "producer-api recorder").await?;
        let mut channels = Vec::new();
        for _ in 0..2 {
            let channel = connection.create_channel().await?;
            self.topology.declare(&channel).await?;
            channel
                .basic_qos((MAX_BATCH * 2) as u16, BasicQosOptions::default())
                .await?;
            channels.push(channel);
        }
        let channels: [Channel; 2] = channels.try_into().expect("two channels");
        Ok((connection, channels))
    }

    /// Apply deliveries until shutdown or until the connection is lost.
    async fn consume(&self, channels: &[Channel; 2], shutdown: &CancellationToken) -> SessionEnd {
        let channel = &channels[0];
        let mut streams = futures::stream::SelectAll::new();
        for (queue, dead, channel) in [
            (self.topology.ledger_queue(), false, &channels[0]),
            (self.topology.dead_ledger_queue(), true, &channels[1]),
        ] {
            let consume = channel.basic_consume(
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
            );
            // A broker that stops answering now would hold the answer for a recovery.
            let consumed = tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                consumed = tokio::time::timeout(amqp::SETUP_LIMIT, consume) => consumed,
            };
            let consumer = match consumed {
                Ok(Ok(consumer)) => consumer,
                Ok(Err(error)) => {
                    tracing::warn!(%error, %queue, "cannot consume");
                    return SessionEnd::Lost;
                }
                Err(_) => {
                    tracing::warn!(%queue, limit = ?amqp::SETUP_LIMIT, "no answer to consume");
                    return SessionEnd::Lost;
                }
            };
            streams.push(consumer.map(move |d| (d, dead)).boxed());
        }
        let mut watchdog = amqp::RecoveryWatchdog::default();
        let mut watch = tokio::time::interval(Duration::from_secs(2));
        let mut last_delivery = std::time::Instant::now();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = watch.tick() => {
                    if !watchdog.check(&[&channels[0], &channels[1]]) {
                        return SessionEnd::Lost;
                    }
                    // The check asks the broker: a stop must not wait for its answer.
                    let stalled = tokio::select! {
                        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                        stalled = self.stalled(channel, last_delivery) => stalled,
                    };
                    if stalled {
                        return SessionEnd::Lost;
                    }
                    continue;
                }
                next = streams.next() => next,
            };
            last_delivery = std::time::Instant::now();
            let mut batch = Vec::new();
            let mut consumer_failed = false;
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
                            // Settled first; then the other queue's consumer goes too.
                            consumer_failed = true;
                            break;
                        }
                        return SessionEnd::Lost;
                    }
                    None => return SessionEnd::Lost,
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
            if let ControlFlow::Break(end) = self.settle(batch, shutdown).await {
                return end;
            }
            if consumer_failed {
                return SessionEnd::Lost;
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
        let declared = channel.queue_declare(queue.as_str().into(), options, FieldTable::default());
        let Ok(declared) = tokio::time::timeout(STALL_CHECK_LIMIT, declared).await else {
            tracing::warn!(
                limit = ?STALL_CHECK_LIMIT,
                "the broker does not answer on the recorder's connection; rebuilding it"
            );
            return true;
        };
        match declared {
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

    /// Apply a batch (retrying while the ledger is unavailable), then ack it. Breaks with
    /// `Shutdown` if shutdown came first (nothing acked: RabbitMQ redelivers), or `Lost`
    /// when the channel failed while acking (the session must be rebuilt).
    async fn settle(
        &self,
        batch: Vec<(Delivery, bool)>,
        shutdown: &CancellationToken,
    ) -> ControlFlow<SessionEnd> {
        let mut lost = false;
        let mut items: Vec<Item> = batch
            .iter()
            .map(|(delivery, dead)| items::classify(delivery, *dead, &self.topology))
            .collect();
        let policy = RetryPolicy {
            max_delay: Duration::from_secs(10),
            ..RetryPolicy::in_attempt()
        };
        let mut failures = 0;
        loop {
            match items::apply(&self.pool, &items).await {
                Ok(()) => break,
                // One item the ledger refuses must not hold back the others: apply them one
                // by one and reject the refused ones to the dead-letter queue.
                Err(error) if !shared::runtime::db::is_transient(&error) => {
                    tracing::error!(%error, "the ledger refused a batch of events; applying them one by one");
                    match self.isolate(&mut items).await {
                        Ok(()) => break,
                        Err(error) => {
                            failures += 1;
                            tracing::warn!(%error, failures, "cannot apply events to the ledger; retrying");
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return ControlFlow::Break(SessionEnd::Shutdown),
                        _ = tokio::time::sleep(policy.delay_after(failures.max(1))) => {}
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "cannot apply events to the ledger; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return ControlFlow::Break(SessionEnd::Shutdown),
                        _ = tokio::time::sleep(policy.delay_after(failures)) => {}
                    }
                }
            }
        }
        let now = Utc::now();
        let rejected: Vec<bool> = items.iter().map(|i| matches!(i, Item::Reject(_))).collect();
        let queues: Vec<bool> = batch.iter().map(|(_, dead)| *dead).collect();
        let acks = acks(&queues, &rejected);
        // The rejections first: the acks with `multiple` that follow settle only what is
        // still unsettled.
        let order = (0..batch.len()).filter(|&i| rejected[i]).chain(acks);
        for i in order {
            let ((delivery, _), item) = (&batch[i], &items[i]);
            let settle = async {
                match item {
                    Item::Reject(reason) => {
                        tracing::error!(%reason, "rejecting an unreadable event to the dead-letter queue");
                        delivery.reject(BasicRejectOptions { requeue: false }).await
                    }
                    _ => delivery.ack(BasicAckOptions { multiple: true }).await,
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
                    return ControlFlow::Break(SessionEnd::Lost);
                }
            }
        }
        for item in &items {
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
            ControlFlow::Break(SessionEnd::Lost)
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Apply each item alone; an item the ledger refuses becomes a rejection. Stops at the
    /// first transient error (the caller retries; applied items are idempotent).
    async fn isolate(&self, items: &mut [Item]) -> Result<(), sqlx::Error> {
        for item in items.iter_mut() {
            match items::apply(&self.pool, std::slice::from_ref(item)).await {
                Ok(()) => {}
                Err(error) if !shared::runtime::db::is_transient(&error) => {
                    *item = Item::Reject(format!("the ledger refused this event: {error}"));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// Which deliveries of a batch to ack, with `multiple`: on each queue's channel (`queues`:
/// whether each delivery came from the dead-letter ledger queue) the last one that is not
/// `rejected`. A channel carries one consumer's deliveries in order, and every batch is
/// settled before the next is taken, so that ack settles exactly the batch's deliveries of
/// the channel (the rejected ones are rejected before it).
fn acks(queues: &[bool], rejected: &[bool]) -> Vec<usize> {
    [false, true]
        .into_iter()
        .filter_map(|queue| {
            (0..queues.len())
                .rev()
                .find(|&i| queues[i] == queue && !rejected[i])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::acks;

    #[test]
    fn a_batch_is_acked_by_the_last_delivery_of_each_channel_that_is_not_rejected() {
        assert_eq!(acks(&[false, false, false], &[false; 3]), [2]);
        assert_eq!(acks(&[false, true, false, true], &[false; 4]), [2, 3]);
        assert_eq!(
            acks(&[false, false, true], &[false, true, false]),
            [0, 2],
            "the last of the ledger queue is rejected: the one before it is acked"
        );
        assert_eq!(acks(&[false, false], &[true, true]), Vec::<usize>::new());
        assert_eq!(acks(&[], &[]), Vec::<usize>::new());
    }
}
