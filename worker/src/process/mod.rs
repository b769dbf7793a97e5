//! One delivery, start to finish: the worker's step. Tests call it directly.
//!
//! Parse the envelope (an unprocessable message is poison: reported as `task.dead` and
//! rejected to the dead-letter exchange), execute within the time limit, announcing the
//! task with `task.started` before a real run's first write or once it has run for
//! `STARTED_EVENT_AFTER` (with `0s`: before it starts; see `announce`), publish `task.succeeded` or `task.failed` (with the attempt's start, and
//! the next attempt's time for transient errors), and only then ack: an ack always follows
//! a confirmed result event, and a result follows its confirmed `task.started`, if any.
//! A task this worker knows is cancelled is skipped before it starts, and a running one
//! stops at its next batch boundary when its cancel arrives: both reported as
//! `task.cancelled`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::Channel;
use shared::envelope::TaskEnvelope;
use shared::events::{ErrorClass, Event, TaskError, TaskFailed, TaskStarted, TaskSucceeded};
use shared::retry::RetryPolicy;
use shared::runtime::amqp::{self, OutgoingMessage, PublishError};
use shared::tasks::TaskKind;
use shared::topology::Topology;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::acks::Taken;
use crate::attempt::{run_attempt, Limits};
use crate::executor::{Checkpoint, Execution, Executors};
use crate::metrics::Metrics;

mod announce;
mod cancelled;
mod gather;
mod refuse;

pub use gather::Gathering;

use announce::announced;
use cancelled::{report_cancelled, skip_cancelled, Stop};
use refuse::{parse, reject_poison};

/// Everything a step needs, shared by all in-flight tasks.
pub struct WorkerContext {
    pub worker_id: String,
    pub topology: Topology,
    pub executors: Executors,
    pub retry: RetryPolicy,
    pub task_timeout: Duration,
    /// Working time of one turn before the task is handed on in a continuation.
    pub turn_budget: Duration,
    /// A task still running after this long is announced with `task.started`; zero:
    /// announced (and confirmed) before it starts.
    pub started_event_after: Duration,
    /// Reports of turns that end close together go out together (`RESULTS_LINGER`).
    pub reports: Gathering,
    /// How long an executor may take to stop once its hard time limit is reached: longer
    /// than any one statement may run (RUNS_STATEMENT_TIMEOUT), so that nothing an attempt
    /// started can still commit after the attempt is reported.
    pub stop_grace: Duration,
    pub metrics: Metrics,
    pub processed: AtomicU64,
    pub runs_table_label: String,
    /// Verifies task messages and cancellations, signs continuations (`TASK_SIGNING_KEYS`).
    pub trust: shared::signing::TaskTrust,
    /// The tasks cancelled, as read from the cancellation stream.
    pub cancellations: crate::cancels::Cancellations,
    /// Attempts whose work is under way (not their reporting): a lost session waits for
    /// them to stop before it closes its connection and a new one takes deliveries.
    pub executing: tokio_util::task::TaskTracker,
    /// Why RabbitMQ blocks the connection's publishers (a memory or disk alarm), while it
    /// does: results and heartbeats wait until it lifts. `/readyz` shows it, and
    /// `cleanup_amqp_blocked` is read from it at each scrape.
    pub blocked: std::sync::Mutex<Option<String>>,
}

/// How a delivery ended; the delivery has been acked or rejected accordingly.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        task_id: Uuid,
    },
    /// The turn stopped early; a continuation with its progress is on the queue.
    Continued {
        task_id: Uuid,
    },
    /// The attempt failed; `retryable` when the ledger will schedule another attempt.
    Failed {
        task_id: Uuid,
        retryable: bool,
    },
    /// The delivery died with the broker connection mid-task (nothing reported), or just
    /// before its ack could be sent: the broker redelivers the task.
    Abandoned {
        task_id: Uuid,
    },
    /// The task was cancelled: skipped before it started (`started: false`), or stopped at
    /// a batch boundary; reported as `task.cancelled`.
    Cancelled {
        task_id: Uuid,
        started: bool,
    },
    /// Not a task this worker can run; rejected to the dead-letter exchange.
    Poison {
        task_id: Option<Uuid>,
        reason: String,
    },
}

/// The step failed before the delivery could be settled (the broker is unreachable for
/// events); the caller leaves the delivery to be redelivered.
#[derive(Debug, thiserror::Error)]
#[error("cannot settle the delivery: {0}")]
pub struct StepError(#[from] pub PublishError);

impl From<lapin::Error> for StepError {
    fn from(error: lapin::Error) -> Self {
        StepError(PublishError::Amqp(error))
    }
}

/// Ack the delivery (with others of its channel where it can: `crate::acks`) and count it
/// processed; false when lapin sent nothing (see [`sent`]).
pub(crate) async fn ack(ctx: &WorkerContext, delivery: &Taken) -> Result<bool, StepError> {
    settled(ctx, "ack", delivery.ack().await)
}

/// [`sent`], and the delivery counted processed when it was.
pub(crate) fn settled(
    ctx: &WorkerContext,
    what: &'static str,
    result: lapin::Result<bool>,
) -> Result<bool, StepError> {
    let sent = sent(what, result)?;
    if sent {
        ctx.processed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(sent)
}

/// Whether lapin sent a settlement. `Ok(false)`: it sent nothing, because the delivery's
/// channel closed (or began its recovery) after the step's result went out. RabbitMQ
/// delivers the task again, so it does not count as processed here: the same as a
/// delivery found lost before its result ([`Outcome::Abandoned`]); no session rebuild.
pub(crate) fn sent(what: &'static str, result: lapin::Result<bool>) -> Result<bool, StepError> {
    let sent = result?;
    if !sent {
        tracing::warn!("the delivery's channel closed before its {what} could be sent; RabbitMQ delivers the task again");
    }
    Ok(sent)
}

/// Process one delivery of the queue of `queue_kind`.
pub async fn handle_delivery(
    ctx: &WorkerContext,
    events: &Channel,
    queue_kind: TaskKind,
    delivery: &Taken,
    cancel: &CancellationToken,
) -> Result<Outcome, StepError> {
    let envelope = match parse(ctx, queue_kind, delivery) {
        Ok(envelope) => envelope,
        Err(reason) => return reject_poison(ctx, events, queue_kind, delivery, reason).await,
    };
    let task_id = envelope.task_id;
    let kind = envelope.task.kind();
    // The turn stops at its next batch boundary on shutdown, when its budget is spent, or
    // when the task is cancelled.
    let turn = cancel.child_token();
    let Some(watch) = ctx.cancellations.watch(task_id, turn.clone()) else {
        // Cancelled before this delivery started: nothing is touched.
        return skip_cancelled(ctx, events, &envelope, delivery, false).await;
    };
    let started_at = Utc::now();
    let started_event = Event::TaskStarted(TaskStarted {
        task_id,
        kind,
        attempt: envelope.attempt,
        worker_id: ctx.worker_id.clone(),
        at: started_at,
    });
    let mut checkpoint = Checkpoint::resuming(&envelope);
    // With a delay, the task is announced when its executor asks, before it writes, or
    // once the delay is over; without, before it starts.
    let announcement = (!ctx.started_event_after.is_zero()).then(|| checkpoint.announcing());
    if announcement.is_none() {
        publish_event(ctx, events, &started_event).await?;
        if watch.cancelled() {
            // The cancel came while `task.started` was on its way: still nothing is touched.
            return skip_cancelled(ctx, events, &envelope, delivery, true).await;
        }
    }
    ctx.metrics
        .tasks_started
        .with_label_values(&[kind.as_str()])
        .inc();
    ctx.metrics.in_flight.inc();
    let started = Instant::now();
    let budget = {
        let turn = turn.clone();
        let limit = ctx.turn_budget;
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            turn.cancel();
        })
    };
    let limits = Limits {
        task_timeout: ctx.task_timeout,
        stop_grace: ctx.stop_grace,
    };
    // Tracked while the work runs, not while `task.started` may still wait to be confirmed.
    let executing = ctx.executing.token();
    let attempt = async {
        let result = run_attempt(
            ctx.executors.execute(&envelope, &turn, &checkpoint),
            &turn,
            &checkpoint,
            limits,
        )
        .await;
        drop(executing);
        result
    };
    let result = match announcement {
        None => Ok(attempt.await),
        Some(asked) => {
            let publish = publish_event(ctx, events, &started_event);
            announced(attempt, ctx.started_event_after, asked, publish, &turn)
                .await
                .map_err(StepError)
        }
    };
    budget.abort();
    ctx.metrics.in_flight.dec();
    ctx.metrics
        .task_duration
        .with_label_values(&[kind.as_str()])
        .observe(started.elapsed().as_secs_f64());

    // `task.started` could not be published: the turn was stopped, and the delivery is
    // left to be redelivered (what the turn deleted stays deleted: cleanup is idempotent).
    let result = result?;
    // This turn's work is over (its `executing` token is dropped): wait for the reports of
    // the turns still running, at most RESULTS_LINGER; then see whether the delivery is
    // still good, so that a channel lost meanwhile is not reported on either.
    ctx.reports.join(ctx.executing.len()).await;
    if !delivery.acker.usable() {
        // The channel this delivery came on is gone: RabbitMQ has already put the task back
        // on its queue and will deliver it again. Reporting a result or a continuation now
        // would run the task twice; the work done stays done (cleanup is idempotent).
        tracing::warn!(%task_id, %kind, "delivery lost with the broker connection; the task will be redelivered");
        return Ok(Outcome::Abandoned { task_id });
    }
    let outcome = match result {
        // Stopped because the task was cancelled: report it, no continuation.
        Ok(Execution::Interrupted { progress }) if watch.cancelled() => {
            let stop = Stop {
                attempt: envelope.attempt,
                started: true,
                progress: Some(progress),
            };
            report_cancelled(ctx, events, task_id, kind, stop).await?;
            Outcome::Cancelled {
                task_id,
                started: true,
            }
        }
        Ok(Execution::Interrupted { progress }) => {
            let mut continuation = envelope.clone();
            continuation.progress = Some(progress);
            publish_continuation(ctx, events, &continuation).await?;
            tracing::info!(%task_id, %kind, attempt = envelope.attempt, elapsed = ?started.elapsed(), "turn ended early; continuation published");
            ctx.metrics
                .tasks_finished
                .with_label_values(&[kind.as_str(), "continued"])
                .inc();
            Outcome::Continued { task_id }
        }
        Ok(Execution::Done(result)) => {
            result.record(&ctx.metrics, &ctx.runs_table_label);
            tracing::info!(%task_id, %kind, attempt = envelope.attempt, elapsed = ?started.elapsed(), "task succeeded");
            publish_event(
                ctx,
                events,
                &Event::TaskSucceeded(TaskSucceeded {
                    task_id,
                    kind,
                    attempt: envelope.attempt,
                    worker_id: ctx.worker_id.clone(),
                    at: Utc::now(),
                    started_at: Some(started_at),
                    result: result.to_json(),
                }),
            )
            .await?;
            ctx.metrics
                .tasks_finished
                .with_label_values(&[kind.as_str(), "succeeded"])
                .inc();
            Outcome::Succeeded { task_id }
        }
        Err(error) => {
            let failure = Failure {
                task_id,
                kind,
                attempt: envelope.attempt,
                max_attempts: envelope.max_attempts,
                error: error.to_task_error(),
                // A retry continues from it; a final failure reports it as the result.
                progress: error.progress.clone(),
                started_at: Some(started_at),
            };
            let retryable = report_failure(ctx, events, failure, "task attempt failed").await?;
            Outcome::Failed { task_id, retryable }
        }
    };
    if !ack(ctx, delivery).await? {
        return Ok(Outcome::Abandoned { task_id });
    }
    Ok(outcome)
}

/// An attempt that failed, as `task.failed` reports it.
struct Failure {
    task_id: Uuid,
    kind: TaskKind,
    attempt: u32,
    max_attempts: u32,
    error: TaskError,
    /// What the task did so far: a retry continues from it.
    progress: Option<serde_json::Value>,
    /// When the attempt started (`None`: it never did).
    started_at: Option<chrono::DateTime<Utc>>,
}

/// Report a failed attempt: decide whether another is due (a transient error, while the
/// retry policy allows one: the one place this is decided), publish `task.failed`, count
/// it. Returns whether the task will be retried.
async fn report_failure(
    ctx: &WorkerContext,
    events: &Channel,
    failure: Failure,
    what: &str,
) -> Result<bool, StepError> {
    let Failure {
        task_id,
        kind,
        attempt,
        max_attempts,
        error,
        progress,
        started_at,
    } = failure;
    let failed_at = Utc::now();
    let next_attempt_at = match error.class {
        ErrorClass::Transient => ctx.retry.next_attempt_at(attempt, max_attempts, failed_at),
        ErrorClass::Permanent => None,
    };
    let retryable = next_attempt_at.is_some();
    tracing::warn!(%task_id, %kind, attempt, class = ?error.class, retryable, error = %error.message, "{what}");
    let class = match error.class {
        ErrorClass::Transient => "transient",
        ErrorClass::Permanent => "permanent",
    };
    publish_event(
        ctx,
        events,
        &Event::TaskFailed(TaskFailed {
            task_id,
            kind,
            attempt,
            worker_id: ctx.worker_id.clone(),
            at: failed_at,
            started_at,
            error,
            retryable,
            next_attempt_at,
            progress,
        }),
    )
    .await?;
    ctx.metrics
        .errors
        .with_label_values(&[kind.as_str(), class])
        .inc();
    let label = if retryable { "retried" } else { "failed" };
    ctx.metrics
        .tasks_finished
        .with_label_values(&[kind.as_str(), label])
        .inc();
    Ok(retryable)
}

/// Put the rest of a task back on its queue: same task id and attempt, with the progress
/// so far. Confirmed before the original delivery is acked, so no work is lost or repeated.
async fn publish_continuation(
    ctx: &WorkerContext,
    events: &Channel,
    continuation: &TaskEnvelope,
) -> Result<(), PublishError> {
    let exchange = ctx.topology.tasks_exchange();
    let message = OutgoingMessage {
        exchange: &exchange,
        routing_key: continuation.task.kind().as_str(),
        message_type: shared::envelope::TASK_MESSAGE_TYPE,
        message_id: continuation.task_id.to_string(),
        body: continuation.to_json(),
    };
    // Signed like the producer's messages, with the first key of the ring.
    let headers = ctx
        .trust
        .sign(&message.body)
        .map(|s| s.headers().to_vec())
        .unwrap_or_default();
    amqp::publish_with_headers(events, &message, &headers).await
}

/// Publish an event on the events exchange and wait for the broker's confirmation.
pub async fn publish_event(
    ctx: &WorkerContext,
    events: &Channel,
    event: &Event,
) -> Result<(), PublishError> {
    let exchange = ctx.topology.events_exchange();
    let message = OutgoingMessage {
        exchange: &exchange,
        routing_key: event.routing_key(),
        message_type: event.routing_key(),
        message_id: Uuid::now_v7().to_string(),
        body: event.to_json(),
    };
    amqp::publish(events, &message).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settlement_lapin_did_not_send_is_told_apart() {
        assert!(sent("ack", Ok(true)).unwrap());
        assert!(!sent("reject", Ok(false)).unwrap());
        let failed = sent("ack", Err(lapin::ErrorKind::ChannelsLimitReached.into()));
        assert!(failed.is_err());
    }
}
