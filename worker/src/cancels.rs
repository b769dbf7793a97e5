//! Cancellations, as this worker learns them from the `<prefix>.cancels` stream.
//!
//! On every connection the worker reads the stream from where it left off (from its
//! start, bounded by the stream's retention, the first time), up to a marker it publishes
//! itself, before it consumes a single task: so a task cancelled before this worker
//! started is skipped untouched. It then follows the stream; a cancel of a task running
//! here stops it at its next batch boundary.
//!
//! A cancel must be signed like a task message (`TASK_SIGNING_KEYS`); one that is not is
//! ignored, since it could only stop work, not start it, but it is logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, Consumer};
use shared::cancel::{CancelRequest, CANCEL_MESSAGE_TYPE, SYNC_MESSAGE_TYPE};
use shared::runtime::amqp::{self, OutgoingMessage};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::process::WorkerContext;

/// Cancellations read per credit round from the stream.
const STREAM_PREFETCH: u16 = 500;
/// Longest wait to read the stream up to this worker's marker, from its start.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
/// The same, resuming after the last cancellation read: short, because when the stream
/// was deleted and declared again (its offsets start over), RabbitMQ waits for an offset
/// that does not exist yet and nothing arrives, not even the marker.
const RESUME_LIMIT: Duration = Duration::from_secs(10);
/// A cancellation is remembered this long (the stream's retention).
const REMEMBER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The tasks this worker knows are cancelled, and the running ones it can stop.
pub struct Cancellations {
    inner: Mutex<Inner>,
    /// The stream offset of the last cancellation read (-1: none yet).
    offset: AtomicI64,
}

#[derive(Default)]
struct Inner {
    cancelled: HashMap<Uuid, Instant>,
    running: HashMap<Uuid, Vec<(u64, CancellationToken)>>,
    next_watch: u64,
}

impl Default for Cancellations {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            offset: AtomicI64::new(-1),
        }
    }
}

impl Cancellations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember `task_id` as cancelled and stop its running turns; returns how many.
    pub fn cancel(&self, task_id: Uuid) -> usize {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.cancelled.insert(task_id, now);
        if inner.cancelled.len() % 1024 == 0 {
            inner
                .cancelled
                .retain(|_, learnt| now.duration_since(*learnt) < REMEMBER);
        }
        let running = inner.running.get(&task_id).map_or(&[][..], Vec::as_slice);
        for (_, token) in running {
            token.cancel();
        }
        running.len()
    }

    pub fn is_cancelled(&self, task_id: Uuid) -> bool {
        self.lock().cancelled.contains_key(&task_id)
    }

    /// Watch a turn of `task_id` that is about to start: a cancel stops it through
    /// `turn`. `None` when the task is cancelled already (the turn must not start).
    pub fn watch(&self, task_id: Uuid, turn: CancellationToken) -> Option<Watch<'_>> {
        let mut inner = self.lock();
        if inner.cancelled.contains_key(&task_id) {
            return None;
        }
        inner.next_watch += 1;
        let id = inner.next_watch;
        inner.running.entry(task_id).or_default().push((id, turn));
        Some(Watch {
            owner: self,
            task_id,
            id,
        })
    }

    /// Where to start reading the stream: after the last cancellation read, or its start.
    fn resume_from(&self) -> AMQPValue {
        match self.offset.load(Ordering::Relaxed) {
            offset if offset >= 0 => AMQPValue::LongLongInt(offset + 1),
            _ => AMQPValue::LongString(LongString::from("first")),
        }
    }
}

/// A running turn, watched for cancels until dropped.
pub struct Watch<'a> {
    owner: &'a Cancellations,
    task_id: Uuid,
    id: u64,
}

impl Watch<'_> {
    /// Whether the task was cancelled since the turn started.
    pub fn cancelled(&self) -> bool {
        self.owner.is_cancelled(self.task_id)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut inner = self.owner.lock();
        if let Some(turns) = inner.running.get_mut(&self.task_id) {
            turns.retain(|(id, _)| *id != self.id);
            if turns.is_empty() {
                inner.running.remove(&self.task_id);
            }
        }
    }
}

/// Open the cancellation stream and read it up to now: up to a marker this worker
/// publishes on `publisher` (a confirm channel), so every cancellation published before is
/// known before the worker takes a task. Returns the channel and consumer to follow.
pub async fn catch_up(
    ctx: &WorkerContext,
    connection: &Connection,
    publisher: &Channel,
) -> anyhow::Result<(Channel, Consumer)> {
    let from = ctx.cancellations.resume_from();
    let limit = match from {
        AMQPValue::LongLongInt(_) => RESUME_LIMIT,
        _ => CATCH_UP_LIMIT,
    };
    // Everything under the limit: a stream that is not ready after a broker restart may
    // leave the consume, or the marker's confirmation, unanswered.
    match tokio::time::timeout(limit, read_up_to_now(ctx, connection, publisher, from)).await {
        Ok(result) => result,
        Err(_) => {
            // Read it from its start next time: re-reading cancellations is harmless.
            ctx.cancellations.offset.store(-1, Ordering::Relaxed);
            anyhow::bail!(
                "the cancellation stream was not read up to now within {limit:?}; reading it \
                 from its start on the next connection"
            )
        }
    }
}

async fn read_up_to_now(
    ctx: &WorkerContext,
    connection: &Connection,
    publisher: &Channel,
    from: AMQPValue,
) -> anyhow::Result<(Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    // A stream consumer needs a prefetch: the credit it reads with.
    channel
        .basic_qos(STREAM_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), from);
    let mut consumer = channel
        .basic_consume(
            ctx.topology.cancel_stream().into(),
            format!("{}-cancels", ctx.worker_id).into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await?;
    let marker = Uuid::now_v7().to_string();
    let exchange = ctx.topology.cancels_exchange();
    amqp::publish(
        publisher,
        &OutgoingMessage {
            exchange: &exchange,
            routing_key: "",
            message_type: SYNC_MESSAGE_TYPE,
            message_id: marker.clone(),
            body: b"{}".to_vec(),
        },
    )
    .await?;
    let read = async {
        let mut read = 0u64;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            read += 1;
            if receive(ctx, &delivery).await?.as_deref() == Some(marker.as_str()) {
                return Ok::<_, anyhow::Error>(read);
            }
        }
        anyhow::bail!("the cancellation stream's consumer ended while catching up")
    };
    let read = read.await?;
    tracing::debug!(read, "cancellation stream read up to now");
    Ok((channel, consumer))
}

/// Follow the stream until its consumer fails or ends (the session is then rebuilt).
pub async fn follow(ctx: &WorkerContext, mut consumer: Consumer) -> anyhow::Error {
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(error) => return error.into(),
        };
        if let Err(error) = receive(ctx, &delivery).await {
            return error;
        }
    }
    anyhow::anyhow!("the cancellation stream's consumer ended")
}

/// Take in one message of the stream and ack it; returns a marker's id.
async fn receive(ctx: &WorkerContext, delivery: &Delivery) -> anyhow::Result<Option<String>> {
    let properties = &delivery.properties;
    let message_type = properties.kind().as_ref().map(|t| t.as_str());
    let mut marker = None;
    match message_type {
        Some(SYNC_MESSAGE_TYPE) => {
            marker = properties.message_id().as_ref().map(|id| id.to_string());
        }
        Some(CANCEL_MESSAGE_TYPE) => take_cancel(ctx, delivery),
        other => {
            tracing::warn!(message_type = ?other, "ignoring a message of unknown type on the cancellation stream")
        }
    }
    if let Some(AMQPValue::LongLongInt(offset)) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-stream-offset"))
    {
        ctx.cancellations
            .offset
            .fetch_max(*offset, Ordering::Relaxed);
    }
    // `false`: the channel closed or began its recovery; the stream is read again from
    // the offset kept above, and a cancellation taken twice changes nothing.
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(marker)
}

fn take_cancel(ctx: &WorkerContext, delivery: &Delivery) {
    let headers = delivery.properties.headers().as_ref();
    if let Err(error) = ctx.trust.check(
        &delivery.data,
        headers.map(|h| h as &dyn shared::signing::Headers),
    ) {
        tracing::warn!(%error, "ignoring a cancellation that does not verify");
        return;
    }
    match CancelRequest::from_json(&delivery.data) {
        Ok(cancel) => {
            let stopping = ctx.cancellations.cancel(cancel.task_id);
            if stopping > 0 {
                tracing::info!(task_id = %cancel.task_id, requested_at = %cancel.requested_at, "task cancelled; stopping it at its next batch boundary");
            }
        }
        Err(error) => tracing::warn!(%error, "ignoring an unreadable cancellation"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_stops_watched_turns_and_refuses_new_ones() {
        let cancels = Cancellations::default();
        let task = Uuid::now_v7();
        let other = Uuid::now_v7();
        let (first, second, unrelated) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let watch_first = cancels.watch(task, first.clone()).unwrap();
        let watch_second = cancels.watch(task, second.clone()).unwrap();
        let watch_other = cancels.watch(other, unrelated.clone()).unwrap();
        assert!(!watch_first.cancelled());
        drop(watch_second);
        assert_eq!(cancels.cancel(task), 1, "only the turn still watched");
        assert!(first.is_cancelled() && watch_first.cancelled());
        assert!(!second.is_cancelled(), "a finished turn is not touched");
        assert!(!unrelated.is_cancelled() && !watch_other.cancelled());
        assert!(cancels.watch(task, CancellationToken::new()).is_none());
        drop(watch_first);
        assert!(!cancels.lock().running.contains_key(&task));
    }

    #[test]
    fn reading_resumes_after_the_last_offset() {
        let cancels = Cancellations::default();
        assert_eq!(
            cancels.resume_from(),
            AMQPValue::LongString(LongString::from("first"))
        );
        cancels.offset.fetch_max(41, Ordering::Relaxed);
        assert_eq!(cancels.resume_from(), AMQPValue::LongLongInt(42));
    }
}
