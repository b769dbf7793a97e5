//! A delivery of a cancelled task: skipped before it runs, or stopped at a batch
//! boundary; either way reported as `task.cancelled` with what the task deleted so far.

use chrono::Utc;
use lapin::Channel;
use shared::envelope::TaskEnvelope;
use shared::events::{Event, TaskCancelled};
use shared::tasks::TaskKind;
use uuid::Uuid;

use crate::acks::Taken;

use super::{ack, publish_event, Outcome, StepError, WorkerContext};

/// Skip a delivery of a cancelled task without running it: report `task.cancelled` with
/// what the task deleted before (for a runs cleanup, the committed count in the runs
/// database outranks the message's, since another copy may have gone further), then ack.
pub(super) async fn skip_cancelled(
    ctx: &WorkerContext,
    events: &Channel,
    envelope: &TaskEnvelope,
    delivery: &Taken,
    started: bool,
) -> Result<Outcome, StepError> {
    let task_id = envelope.task_id;
    let kind = envelope.task.kind();
    let committed = match (&envelope.task, &ctx.executors.runs) {
        (shared::tasks::TaskSpec::CleanupRuns(_), Some(runs)) => runs
            .committed(task_id)
            .await
            .map(|c| (c.runs_deleted, c.runs_estimated)),
        _ => None,
    };
    let stop = Stop {
        attempt: envelope.attempt,
        started,
        progress: with_committed(envelope.progress.clone(), committed),
    };
    report_cancelled(ctx, events, task_id, kind, stop).await?;
    if !ack(ctx, delivery).await? {
        return Ok(Outcome::Abandoned { task_id });
    }
    Ok(Outcome::Cancelled { task_id, started })
}

/// A runs task's progress with `runs_deleted` raised to the committed count, and
/// `runs_estimated` to the committed estimates among them.
fn with_committed(
    progress: Option<serde_json::Value>,
    committed: Option<(u64, u64)>,
) -> Option<serde_json::Value> {
    let Some((committed, estimated)) = committed else {
        return progress;
    };
    let mut progress = progress.unwrap_or_else(|| serde_json::json!({}));
    let carried = progress["runs_deleted"].as_u64().unwrap_or(0);
    if committed > carried || progress.get("runs_deleted").is_none() {
        progress["runs_deleted"] = committed.into();
    }
    if estimated > progress["runs_estimated"].as_u64().unwrap_or(0) {
        progress["runs_estimated"] = estimated.into();
    }
    Some(progress)
}

/// How a cancelled task stopped, as `task.cancelled` reports it.
pub(super) struct Stop {
    pub(super) attempt: u32,
    /// Whether this delivery ran before it stopped.
    pub(super) started: bool,
    /// What the task did so far, every turn and attempt included.
    pub(super) progress: Option<serde_json::Value>,
}

pub(super) async fn report_cancelled(
    ctx: &WorkerContext,
    events: &Channel,
    task_id: Uuid,
    kind: TaskKind,
    stop: Stop,
) -> Result<(), StepError> {
    tracing::info!(%task_id, %kind, attempt = stop.attempt, started = stop.started, "task cancelled");
    publish_event(
        ctx,
        events,
        &Event::TaskCancelled(TaskCancelled {
            task_id,
            kind,
            attempt: stop.attempt,
            worker_id: ctx.worker_id.clone(),
            at: Utc::now(),
            started: stop.started,
            progress: stop.progress,
        }),
    )
    .await?;
    ctx.metrics
        .tasks_finished
        .with_label_values(&[kind.as_str(), "cancelled"])
        .inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_committed;
    use serde_json::json;

    #[test]
    fn the_committed_count_outranks_the_message() {
        assert_eq!(with_committed(None, None), None);
        assert_eq!(
            with_committed(None, Some((7, 0))),
            Some(json!({"runs_deleted": 7}))
        );
        let carried = json!({"runs_deleted": 5, "batches": 2});
        assert_eq!(
            with_committed(Some(carried.clone()), Some((9, 0))),
            Some(json!({"runs_deleted": 9, "batches": 2}))
        );
        assert_eq!(
            with_committed(Some(carried.clone()), Some((3, 0))),
            Some(carried.clone())
        );
        assert_eq!(with_committed(Some(carried.clone()), None), Some(carried));
        // A partition dropped by an attempt whose report was lost: its estimate shows.
        assert_eq!(
            with_committed(Some(json!({"runs_deleted": 5})), Some((905, 900))),
            Some(json!({"runs_deleted": 905, "runs_estimated": 900}))
        );
    }
}
