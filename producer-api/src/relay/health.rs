//! The broker's health as `/readyz` and the relay see it: whether the relay holds a usable
//! connection, and whether RabbitMQ blocks its publishers (a memory or disk alarm).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, ConnectionStatus};
use shared::runtime::amqp;

use crate::metrics::Metrics;

/// Whether the process currently holds a usable broker connection (for `/readyz`).
#[derive(Clone, Default)]
pub struct BrokerHealth {
    /// The live connection status, and a channel for passive queue inspection.
    state: Arc<Mutex<Option<(ConnectionStatus, Channel)>>>,
    /// The reason RabbitMQ gave in its last `connection.blocked`, until `unblocked`.
    blocked_reason: Arc<Mutex<Option<String>>>,
}

impl BrokerHealth {
    pub(super) fn set(&self, state: Option<(ConnectionStatus, Channel)>) {
        *self.state.lock().expect("broker health lock") = state;
        *self.blocked_reason.lock().expect("broker health lock") = None;
    }

    fn set_blocked(&self, reason: Option<String>) {
        *self.blocked_reason.lock().expect("broker health lock") = reason;
    }

    pub fn is_connected(&self) -> bool {
        self.state
            .lock()
            .expect("broker health lock")
            .as_ref()
            .is_some_and(|(s, _)| s.connected())
    }

    /// While RabbitMQ blocks the connection from publishing (a memory or disk alarm): why.
    pub fn blocked(&self) -> Option<String> {
        let flagged = self
            .state
            .lock()
            .expect("broker health lock")
            .as_ref()
            .is_some_and(|(s, _)| s.blocked());
        let reason = self
            .blocked_reason
            .lock()
            .expect("broker health lock")
            .clone();
        match (flagged, reason) {
            (_, Some(reason)) => Some(reason),
            (true, None) => Some("no reason given".to_owned()),
            (false, None) => None,
        }
    }

    /// Messages ready in a queue (passive declare), when connected.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let channel = self
            .state
            .lock()
            .expect("broker health lock")
            .as_ref()
            .filter(|(s, _)| s.connected())
            .map(|(_, c)| c.clone())?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel.queue_declare(queue.into(), options, FieldTable::default());
        match tokio::time::timeout(Duration::from_secs(1), declared).await {
            Ok(Ok(queue)) => Some(queue.message_count()),
            _ => None,
        }
    }
}

/// Follow `connection.blocked` / `connection.unblocked` (RabbitMQ's memory and disk alarms
/// stop publishers): logged, exported as `cleanup_amqp_blocked`, reported by `/readyz`.
pub(super) async fn watch_blocked(
    events: impl futures::Stream<Item = lapin::Event>,
    health: BrokerHealth,
    metrics: Arc<Metrics>,
) {
    amqp::follow_blocked(events, |reason| {
        match &reason {
            Some(reason) => tracing::warn!(%reason, "RabbitMQ blocks publishing on the relay's connection (memory or disk alarm); tasks wait in the outbox"),
            None => tracing::info!("RabbitMQ unblocked the relay's connection; publishing resumes"),
        }
        metrics.amqp_blocked.set(i64::from(reason.is_some()));
        health.set_blocked(reason);
    })
    .await
}
