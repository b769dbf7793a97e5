//! Deliveries a worker does not run: poison (unauthenticated, corrupt, for another queue),
//! reported as `task.dead` and rejected to the dead-letter exchange; and task messages of
//! a newer schema version, reported as a transient failure so the ledger retries them
//! once workers are upgraded.

use chrono::Utc;
use lapin::message::Delivery;
use lapin::Channel;
use shared::envelope::TaskEnvelope;
use shared::events::{ErrorClass, Event, TaskDead, TaskError};
use shared::tasks::TaskKind;
use uuid::Uuid;

use crate::acks::Taken;

use super::{
    ack, publish_event, report_failure, settled, Failure, Outcome, StepError, WorkerContext,
};

/// Why a delivery is not run.
#[derive(Debug)]
pub(super) enum Refusal {
    /// Not a task this worker can run (unauthenticated, corrupt, wrong queue): poison.
    Poison(String),
    /// A schema version newer than this worker knows (producer-api upgraded first): a
    /// transient failure, so the ledger retries the task later, by when upgraded workers
    /// may take it.
    NewerSchema(shared::envelope::EnvelopeHead),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Poison(reason) => f.write_str(reason),
            Refusal::NewerSchema(head) => write!(
                f,
                "task schema version {} is newer than this worker (knows {}): \
                 upgrade workers before producer-api",
                head.schema_version,
                shared::envelope::SCHEMA_VERSION
            ),
        }
    }
}

/// Read the envelope, refusing anything this worker cannot run. The signature is checked
/// first: nothing in the body is trusted before.
pub(super) fn parse(
    ctx: &WorkerContext,
    queue_kind: TaskKind,
    delivery: &Delivery,
) -> Result<TaskEnvelope, Refusal> {
    use shared::envelope::{EnvelopeError, EnvelopeHead, SCHEMA_VERSION};
    ctx.trust
        .check(
            &delivery.data,
            delivery
                .properties
                .headers()
                .as_ref()
                .map(|h| h as &dyn shared::signing::Headers),
        )
        .map_err(|e| Refusal::Poison(e.to_string()))?;
    let envelope = match TaskEnvelope::from_json(&delivery.data) {
        Ok(envelope) => envelope,
        Err(EnvelopeError::UnsupportedVersion(version)) if version > SCHEMA_VERSION => {
            return Err(match EnvelopeHead::from_json(&delivery.data) {
                Some(head) if head.attempt >= 1 && head.max_attempts >= 1 => {
                    Refusal::NewerSchema(head)
                }
                _ => Refusal::Poison(format!(
                    "task schema version {version} is newer than this worker (knows \
                     {SCHEMA_VERSION}) and its task_id, attempt and max_attempts are unreadable"
                )),
            });
        }
        Err(error) => return Err(Refusal::Poison(error.to_string())),
    };
    if envelope.task.kind() != queue_kind {
        return Err(Refusal::Poison(format!(
            "a {} task arrived on the {queue_kind} queue",
            envelope.task.kind()
        )));
    }
    if envelope.attempt == 0 || envelope.max_attempts == 0 {
        return Err(Refusal::Poison(
            "attempt and max_attempts must be at least 1".into(),
        ));
    }
    Ok(envelope)
}

/// Report a poison message as `task.dead` (when its id is readable), then reject it
/// without requeue so the dead-letter exchange keeps it in `<prefix>.dead`. A message of a
/// newer schema version is not poison: see [`report_newer_schema`].
pub(super) async fn reject_poison(
    ctx: &WorkerContext,
    events: &Channel,
    queue_kind: TaskKind,
    delivery: &Taken,
    refusal: Refusal,
) -> Result<Outcome, StepError> {
    let reason = match refusal {
        Refusal::Poison(reason) => reason,
        Refusal::NewerSchema(head) => {
            return report_newer_schema(ctx, events, queue_kind, delivery, head).await
        }
    };
    let task_id = delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok());
    tracing::error!(task_id = ?task_id, queue = %queue_kind, %reason, "rejecting an unprocessable message to the dead-letter queue");
    publish_event(
        ctx,
        events,
        &Event::TaskDead(TaskDead {
            task_id,
            attempt: None,
            reason: format!("unprocessable task message: {reason}"),
            at: Utc::now(),
        }),
    )
    .await?;
    let rejection = delivery.reject().await;
    if settled(ctx, "reject", rejection)? {
        ctx.metrics
            .poison
            .with_label_values(&[queue_kind.as_str()])
            .inc();
    }
    Ok(Outcome::Poison { task_id, reason })
}

/// A task message of a newer schema version (producer-api upgraded before the workers):
/// report a transient `task.failed`, retryable per the retry policy, so the ledger
/// publishes the task again later, when upgraded workers may take it; then ack.
async fn report_newer_schema(
    ctx: &WorkerContext,
    events: &Channel,
    queue_kind: TaskKind,
    delivery: &Taken,
    head: shared::envelope::EnvelopeHead,
) -> Result<Outcome, StepError> {
    let kind = head
        .kind
        .as_deref()
        .and_then(|k| k.parse::<TaskKind>().ok())
        .unwrap_or(queue_kind);
    let failure = Failure {
        task_id: head.task_id,
        kind,
        attempt: head.attempt,
        max_attempts: head.max_attempts,
        error: TaskError {
            class: ErrorClass::Transient,
            message: Refusal::NewerSchema(head.clone()).to_string(),
        },
        // Carried back untouched, so the retry keeps the work done so far.
        progress: head.progress,
        started_at: None,
    };
    let retryable = report_failure(
        ctx,
        events,
        failure,
        "task message of a newer schema version",
    )
    .await?;
    if !ack(ctx, delivery).await? {
        return Ok(Outcome::Abandoned {
            task_id: head.task_id,
        });
    }
    Ok(Outcome::Failed {
        task_id: head.task_id,
        retryable,
    })
}
