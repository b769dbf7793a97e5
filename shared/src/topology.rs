//! AMQP topology: exchange and queue names under a prefix (their declaration is in
//! `shared::runtime::declare`).
//!
//! Everything is durable; task queues are quorum queues with a delivery limit and a
//! dead-letter exchange, so a message that crashes every worker ends in `<prefix>.dead`
//! instead of looping forever. Declaring is idempotent: every process declares at start.

use crate::tasks::TaskKind;

/// Default name prefix (`AMQP_PREFIX`).
pub const DEFAULT_PREFIX: &str = "cleanup";
/// Default quorum-queue delivery limit: a message redelivered this often is dead-lettered.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

/// How long the cancellation stream keeps a cancel (RabbitMQ's `x-max-age`). A task
/// message that waits longer than this on its queue after its task was cancelled is
/// still stopped, by the recorder answering its `task.started`, at its first batch.
pub const CANCEL_RETENTION: &str = "7D";

/// The names of every exchange and queue, derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    pub(crate) delivery_limit: u32,
}

impl Topology {
    /// `prefix` must be 1 to 100 characters of `[A-Za-z0-9_.-]`.
    pub fn new(prefix: &str, delivery_limit: u32) -> Result<Self, String> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 100
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(format!(
                "AMQP prefix `{prefix}` must be 1 to 100 characters of letters, digits, `_`, `-`, `.`"
            ));
        }
        if delivery_limit == 0 {
            return Err("the delivery limit must be at least 1".into());
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            delivery_limit,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Direct exchange that task messages are published to, routing key = kind.
    pub fn tasks_exchange(&self) -> String {
        format!("{}.tasks", self.prefix)
    }

    /// The quorum queue holding tasks of one kind.
    pub fn task_queue(&self, kind: TaskKind) -> String {
        format!("{}.tasks.{}", self.prefix, kind.as_str())
    }

    /// Topic exchange of worker events, routing key = event type.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The recorder's queue: every `task.*` and `worker.*` event.
    pub fn ledger_queue(&self) -> String {
        format!("{}.ledger", self.prefix)
    }

    /// Fanout exchange that rejected and over-delivered messages go to.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Where dead-lettered messages rest for an operator to inspect.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Fanout exchange of cancellations (`task.cancel`), published by the relay from the
    /// ledger's outbox.
    pub fn cancels_exchange(&self) -> String {
        format!("{}.cancels", self.prefix)
    }

    /// The stream of cancellations: every worker reads it from its start (bounded by
    /// [`CANCEL_RETENTION`]) when it connects, then follows it, so a worker that starts
    /// after a cancel still learns of it.
    pub fn cancel_stream(&self) -> String {
        format!("{}.cancels", self.prefix)
    }

    /// The recorder's copy of every dead-lettered message, so the ledger can mark the
    /// task `dead` while `<prefix>.dead` keeps the message for an operator.
    pub fn dead_ledger_queue(&self) -> String {
        format!("{}.ledger.dead", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let t = Topology::new("cleanup", 5).unwrap();
        assert_eq!(t.tasks_exchange(), "cleanup.tasks");
        assert_eq!(
            t.task_queue(TaskKind::CleanupRuns),
            "cleanup.tasks.cleanup_runs"
        );
        assert_eq!(
            t.task_queue(TaskKind::CleanupTempFiles),
            "cleanup.tasks.cleanup_temp_files"
        );
        assert_eq!(t.events_exchange(), "cleanup.events");
        assert_eq!(t.ledger_queue(), "cleanup.ledger");
        assert_eq!(t.dead_exchange(), "cleanup.dead");
        assert_eq!(t.dead_queue(), "cleanup.dead");
        assert_eq!(t.dead_ledger_queue(), "cleanup.ledger.dead");
        assert_eq!(t.cancels_exchange(), "cleanup.cancels");
        assert_eq!(t.cancel_stream(), "cleanup.cancels");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert!(Topology::new("", 5).is_err());
        assert!(Topology::new("a b", 5).is_err());
        assert!(Topology::new("ok-1.x", 5).is_ok());
        assert!(Topology::new("ok", 0).is_err());
    }
}
