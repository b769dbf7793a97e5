//! What each delivery the recorder receives means for the ledger: an event, a task
//! message RabbitMQ dead-lettered (with a reason read from its headers), or nothing.

use chrono::Utc;
use lapin::message::Delivery;
use shared::envelope::TaskEnvelope;
use shared::events::Event;
use shared::topology::Topology;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ledger::transitions::{self, Change};

/// What a delivery turned out to be.
#[derive(Debug)]
pub(super) enum Item {
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

/// What a delivery from the ledger queue (`dead_lettered`: from the dead-letter ledger
/// queue) is for the ledger.
pub(super) fn classify(delivery: &Delivery, dead_lettered: bool, topology: &Topology) -> Item {
    if !dead_lettered {
        return match Event::from_json(&delivery.data) {
            Ok(event) => Item::Event(event),
            Err(error) => Item::Reject(format!("unreadable event: {error}")),
        };
    }
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let queue =
        shared::runtime::amqp::header_text(&headers, "x-first-death-queue").unwrap_or_default();
    let tasks_prefix = format!("{}.", topology.tasks_exchange());
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
    let reason =
        shared::runtime::amqp::header_text(&headers, "x-first-death-reason").unwrap_or_default();
    let dead_queue = topology.dead_queue();
    let reason = match reason.as_str() {
        "delivery_limit" => format!(
            "dead-lettered by RabbitMQ: delivered too many times without an ack (a worker \
             crashed or was killed on each delivery); the message is kept in `{dead_queue}`"
        ),
        "rejected" => {
            format!("rejected by a worker as unprocessable; the message is kept in `{dead_queue}`")
        }
        other => {
            format!("dead-lettered by RabbitMQ ({other}); the message is kept in `{dead_queue}`")
        }
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

pub(super) fn event_time(event: &Event) -> Option<chrono::DateTime<Utc>> {
    Some(match event {
        Event::TaskStarted(e) => e.at,
        Event::TaskSucceeded(e) => e.at,
        Event::TaskFailed(e) => e.at,
        Event::TaskCancelled(e) => e.at,
        Event::TaskDead(e) => e.at,
        Event::WorkerHeartbeat(e) => e.at,
        Event::WorkerStopped(e) => e.at,
    })
}

impl Item {
    /// The ledger change this delivery stands for, if any.
    fn change(&self) -> Option<Change<'_>> {
        Some(match self {
            Item::Event(Event::TaskStarted(e)) => Change::Started(e),
            Item::Event(Event::TaskSucceeded(e)) => Change::Succeeded(e),
            Item::Event(Event::TaskFailed(e)) => Change::Failed(e),
            Item::Event(Event::TaskCancelled(e)) => Change::Cancelled(e),
            Item::Event(Event::TaskDead(e)) => Change::Dead(e),
            Item::Event(Event::WorkerHeartbeat(e)) => Change::Heartbeat(e),
            Item::Event(Event::WorkerStopped(e)) => Change::WorkerStopped(e),
            Item::DeadLettered {
                task_id,
                attempt,
                reason,
            } => Change::DeadLettered {
                task_id: *task_id,
                attempt: *attempt,
                reason,
            },
            Item::Ignore | Item::Reject(_) => return None,
        })
    }
}

/// Apply every item in one transaction.
pub(super) async fn apply(pool: &PgPool, items: &[Item]) -> Result<(), sqlx::Error> {
    let changes: Vec<Change> = items.iter().filter_map(Item::change).collect();
    transitions::apply(pool, &changes).await
}
