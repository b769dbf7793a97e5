//! Cancellations: what travels on the `<prefix>.cancels` stream from the relay to every
//! worker. The ledger decides a cancel (`POST /tasks/{id}/cancel`) and writes it to its
//! outbox in the same transaction; the relay publishes it, signed like a task message.
//! A worker skips a delivery of a cancelled task without touching anything, and stops a
//! running one at its next batch boundary.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// AMQP `type` of a cancellation.
pub const CANCEL_MESSAGE_TYPE: &str = "task.cancel";
/// AMQP `type` of a worker's marker: published by a worker into the stream it reads, so
/// that it knows when it has read every cancellation published before it (see
/// `worker::cancels`). Everyone else ignores it.
pub const SYNC_MESSAGE_TYPE: &str = "cancel.sync";
/// The outbox `kind` of a cancellation row (task rows carry the task kind).
pub const CANCEL_OUTBOX_KIND: &str = "cancel";

/// One cancellation. The body is built by the ledger (`ledger::outbox::insert_cancel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub task_id: Uuid,
    pub requested_at: DateTime<Utc>,
}

impl CancelRequest {
    pub fn from_json(body: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_body_postgres_builds() {
        // jsonb_build_object('task_id', id, 'requested_at', cancel_requested_at)
        let body = br#"{"task_id": "01936f4e-7a1c-7b3e-9a40-2f1d5c7e8a90", "requested_at": "2026-11-23T17:32:17.123456+00:00"}"#;
        let cancel = CancelRequest::from_json(body).unwrap();
        assert_eq!(
            cancel.task_id.to_string(),
            "01936f4e-7a1c-7b3e-9a40-2f1d5c7e8a90"
        );
        assert_eq!(cancel.requested_at.timestamp_subsec_micros(), 123_456);
        assert!(CancelRequest::from_json(br#"{"task_id": "x"}"#).is_err());
    }
}
