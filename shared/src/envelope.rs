//! The task message: what travels on `cleanup.tasks` from the relay to a worker.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::tasks::TaskSpec;

/// Version of the envelope's JSON shape; a worker rejects a version it does not know.
pub const SCHEMA_VERSION: u32 = 1;
/// AMQP `type` property of a task message.
pub const TASK_MESSAGE_TYPE: &str = "cleanup.task";
/// AMQP `content_type` of every message the service publishes.
pub const CONTENT_TYPE: &str = "application/json";

/// A task as delivered to a worker. `message_id` on the AMQP message is the task id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEnvelope {
    pub schema_version: u32,
    /// UUID v7: time-ordered, so ids sort by creation.
    pub task_id: Uuid,
    #[serde(flatten)]
    pub task: TaskSpec,
    /// 1 for the first attempt; the ledger increments it for each retry.
    pub attempt: u32,
    pub max_attempts: u32,
    pub enqueued_at: DateTime<Utc>,
    /// Nothing younger than this instant is deleted. Fixed at enqueue time, so a retry or a
    /// continuation deletes exactly what the original request meant.
    pub cutoff: DateTime<Utc>,
    /// Work already done by earlier turns of the same attempt (a continuation), opaque to
    /// everyone but the executor of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
}

impl TaskEnvelope {
    /// A first attempt of `task`, enqueued now.
    pub fn new(task_id: Uuid, task: TaskSpec, max_attempts: u32, now: DateTime<Utc>) -> Self {
        let cutoff = cutoff_for(now, task.max_age_hours());
        Self {
            schema_version: SCHEMA_VERSION,
            task_id,
            task,
            attempt: 1,
            max_attempts,
            enqueued_at: now,
            cutoff,
            progress: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelope always serializes")
    }

    /// Parse a message body; refuses schema versions this build does not know.
    pub fn from_json(body: &[u8]) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let version: Version = serde_json::from_slice(body).map_err(EnvelopeError::Malformed)?;
        if version.schema_version != SCHEMA_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version.schema_version));
        }
        serde_json::from_slice(body).map_err(EnvelopeError::Malformed)
    }
}

/// What any schema version of a task message is expected to keep readable: enough for a
/// worker that does not know the version to report the task (a rolling upgrade).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EnvelopeHead {
    pub schema_version: u32,
    pub task_id: Uuid,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The kind as written; it may name a kind this build does not know.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub progress: Option<serde_json::Value>,
}

impl EnvelopeHead {
    /// Read the head of a message body of any schema version, ignoring everything else.
    pub fn from_json(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }
}

/// Why a message body is not a task this build can run: such a message is poison.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("malformed task message: {0}")]
    Malformed(serde_json::Error),
    #[error("unsupported task schema version {0} (this build knows {SCHEMA_VERSION})")]
    UnsupportedVersion(u32),
}

/// `now - max_age_hours`, to the millisecond.
pub fn cutoff_for(now: DateTime<Utc>, max_age_hours: f64) -> DateTime<Utc> {
    let millis = (max_age_hours * 3_600_000.0).round() as i64;
    now - Duration::milliseconds(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{CleanupRunsParams, TaskKind};

    fn envelope() -> TaskEnvelope {
        let task = TaskSpec::CleanupRuns(CleanupRunsParams {
            max_age_hours: 24.0,
            dry_run: true,
            statuses: Some(vec!["failed".into()]),
            batch_size: Some(500),
            max_rows: None,
            max_attempts: None,
            scope: None,
        });
        TaskEnvelope::new(Uuid::now_v7(), task, 3, Utc::now())
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let original = envelope();
        let back = TaskEnvelope::from_json(&original.to_json()).unwrap();
        assert_eq!(original, back);
    }

    #[test]
    fn envelope_json_has_the_documented_fields() {
        let e = envelope();
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["kind"], "cleanup_runs");
        assert_eq!(v["params"]["max_age_hours"], 24.0);
        assert_eq!(v["attempt"], 1);
        assert_eq!(v["task_id"], e.task_id.to_string());
        assert!(v.get("progress").is_none());
        assert_eq!(e.task.kind(), TaskKind::CleanupRuns);
    }

    #[test]
    fn cutoff_is_fixed_from_enqueue_time() {
        let e = envelope();
        assert_eq!(e.enqueued_at - e.cutoff, Duration::hours(24));
    }

    #[test]
    fn the_head_of_a_newer_version_is_readable() {
        let e = envelope();
        let mut v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        v["schema_version"] = 2.into();
        v["params"] = serde_json::json!({"something": "new"});
        v["extra"] = true.into();
        let head = EnvelopeHead::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(head.schema_version, 2);
        assert_eq!(head.task_id, e.task_id);
        assert_eq!((head.attempt, head.max_attempts), (1, 3));
        assert_eq!(head.kind.as_deref(), Some("cleanup_runs"));
        assert!(EnvelopeHead::from_json(br#"{"schema_version": 2}"#).is_none());
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&envelope().to_json()).unwrap();
        v["schema_version"] = 99.into();
        let err = TaskEnvelope::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, EnvelopeError::UnsupportedVersion(99)));
        assert!(matches!(
            TaskEnvelope::from_json(b"not json").unwrap_err(),
            EnvelopeError::Malformed(_)
        ));
        v["schema_version"] = 1.into();
        v["kind"] = "cleanup_users".into();
        assert!(TaskEnvelope::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
