//! Events published by workers on `cleanup.events`; the ledger recorder applies them.
//!
//! The routing key of each event is its `type` (`task.started`, `worker.heartbeat`, ...),
//! so any consumer can bind to the ones it wants.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::tasks::TaskKind;

/// Whether retrying can help: decided where the error arises, never by parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Connection refused, timeout, serialization failure, lock timeout: try again later.
    Transient,
    /// Invalid parameters, unknown root, missing table: retrying gives the same answer.
    Permanent,
}

/// An error as recorded in the ledger and shown by `GET /tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskError {
    pub class: ErrorClass,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStarted {
    pub task_id: Uuid,
    pub kind: TaskKind,
    pub attempt: u32,
    pub worker_id: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSucceeded {
    pub task_id: Uuid,
    pub kind: TaskKind,
    pub attempt: u32,
    pub worker_id: String,
    pub at: DateTime<Utc>,
    /// When this attempt started. A worker announces a start with `task.started` only when
    /// the task is still running after its `STARTED_EVENT_AFTER`; a shorter task reports
    /// its start here, with its result. Absent in events of older workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// The executor's result (see the README for each kind's fields).
    pub result: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    pub task_id: Uuid,
    pub kind: TaskKind,
    pub attempt: u32,
    pub worker_id: String,
    pub at: DateTime<Utc>,
    /// When this attempt started. A worker announces a start with `task.started` only when
    /// the task is still running after its `STARTED_EVENT_AFTER`; a shorter task reports
    /// its start here, with its result. Absent in events of older workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    pub error: TaskError,
    /// True when another attempt is due at `next_attempt_at`.
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Work done before the failure (executor-specific), carried into the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
}

/// The task was cancelled (`POST /tasks/{id}/cancel`): the worker skipped its delivery
/// (`started: false`, nothing touched) or stopped it at a batch boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCancelled {
    pub task_id: Uuid,
    pub kind: TaskKind,
    pub attempt: u32,
    pub worker_id: String,
    pub at: DateTime<Utc>,
    /// Whether this delivery ran at all before it stopped.
    pub started: bool,
    /// Work done before the stop, every turn and attempt included (as `task.failed`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
}

/// A message that can never be processed: unparseable, unknown kind, or dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDead {
    /// Known when the message carried a readable id (`message_id` or body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub worker_id: String,
    pub host: String,
    pub version: String,
    pub kinds: Vec<TaskKind>,
    pub started_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
    pub in_flight: u32,
    pub processed: u64,
    /// Heartbeat period: the ledger marks the worker `lost` after three silent periods.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_interval_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStopped {
    pub worker_id: String,
    pub at: DateTime<Utc>,
    pub processed: u64,
}

/// Every event, tagged by `type`, which is also its routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "task.started")]
    TaskStarted(TaskStarted),
    #[serde(rename = "task.succeeded")]
    TaskSucceeded(TaskSucceeded),
    #[serde(rename = "task.failed")]
    TaskFailed(TaskFailed),
    #[serde(rename = "task.cancelled")]
    TaskCancelled(TaskCancelled),
    #[serde(rename = "task.dead")]
    TaskDead(TaskDead),
    #[serde(rename = "worker.heartbeat")]
    WorkerHeartbeat(WorkerHeartbeat),
    #[serde(rename = "worker.stopped")]
    WorkerStopped(WorkerStopped),
}

impl Event {
    /// The routing key on the events exchange, equal to the `type` field.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Event::TaskStarted(_) => "task.started",
            Event::TaskSucceeded(_) => "task.succeeded",
            Event::TaskFailed(_) => "task.failed",
            Event::TaskCancelled(_) => "task.cancelled",
            Event::TaskDead(_) => "task.dead",
            Event::WorkerHeartbeat(_) => "worker.heartbeat",
            Event::WorkerStopped(_) => "worker.stopped",
        }
    }

    /// The task the event is about, if any; used as the AMQP `message_id`'s basis.
    pub fn task_id(&self) -> Option<Uuid> {
        match self {
            Event::TaskStarted(e) => Some(e.task_id),
            Event::TaskSucceeded(e) => Some(e.task_id),
            Event::TaskFailed(e) => Some(e.task_id),
            Event::TaskCancelled(e) => Some(e.task_id),
            Event::TaskDead(e) => e.task_id,
            Event::WorkerHeartbeat(_) | Event::WorkerStopped(_) => None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events always serialize")
    }

    pub fn from_json(body: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Event> {
        let id = Uuid::now_v7();
        let at = Utc::now();
        vec![
            Event::TaskStarted(TaskStarted {
                task_id: id,
                kind: TaskKind::CleanupRuns,
                attempt: 1,
                worker_id: "w1".into(),
                at,
            }),
            Event::TaskSucceeded(TaskSucceeded {
                task_id: id,
                kind: TaskKind::CleanupRuns,
                attempt: 1,
                worker_id: "w1".into(),
                at,
                started_at: Some(at),
                result: serde_json::json!({"runs_deleted": 3}),
            }),
            Event::TaskFailed(TaskFailed {
                task_id: id,
                kind: TaskKind::CleanupTempFiles,
                attempt: 2,
                worker_id: "w2".into(),
                at,
                started_at: None,
                error: TaskError {
                    class: ErrorClass::Transient,
                    message: "connection refused".into(),
                },
                retryable: true,
                next_attempt_at: Some(at),
                progress: Some(serde_json::json!({"runs_deleted": 10})),
            }),
            Event::TaskCancelled(TaskCancelled {
                task_id: id,
                kind: TaskKind::CleanupRuns,
                attempt: 1,
                worker_id: "w1".into(),
                at,
                started: true,
                progress: Some(serde_json::json!({"runs_deleted": 4})),
            }),
            Event::TaskDead(TaskDead {
                task_id: None,
                attempt: None,
                reason: "malformed".into(),
                at,
            }),
            Event::WorkerHeartbeat(WorkerHeartbeat {
                worker_id: "w1".into(),
                host: "pod-a".into(),
                version: "0.1.0".into(),
                kinds: vec![TaskKind::CleanupRuns],
                started_at: at,
                at,
                in_flight: 2,
                processed: 10,
                interval_ms: 5000,
            }),
            Event::WorkerStopped(WorkerStopped {
                worker_id: "w1".into(),
                at,
                processed: 10,
            }),
        ]
    }

    #[test]
    fn every_event_round_trips_and_its_type_is_its_routing_key() {
        for event in samples() {
            let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
            assert_eq!(json["type"], event.routing_key());
            assert_eq!(Event::from_json(&event.to_json()).unwrap(), event);
        }
    }

    #[test]
    fn error_class_is_snake_case() {
        let json = serde_json::to_value(ErrorClass::Permanent).unwrap();
        assert_eq!(json, "permanent");
    }
}
