//! Declaring (and, for tests, deleting) the AMQP topology on a channel: every exchange,
//! queue and binding under the prefix. Everything is durable; task queues are quorum
//! queues with a delivery limit and a dead-letter exchange, so a message that crashes
//! every worker ends in `<prefix>.dead` instead of looping forever. Declaring is
//! idempotent: every process declares at start.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::tasks::TaskKind;
use crate::topology::Topology;

impl Topology {
    fn quorum_args(&self, dead_letter: bool) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        if dead_letter {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(self.delivery_limit as i32),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                long_string(&self.dead_exchange()),
            );
            // At-least-once dead-lettering: RabbitMQ keeps the message until the dead queue
            // has confirmed it, so a dead-lettered task is never lost on the way.
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
        args
    }

    /// Declare every exchange, queue and binding. Safe to call any number of times.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.dead_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        for dead in [self.dead_queue(), self.dead_ledger_queue()] {
            channel
                .queue_declare(dead.as_str().into(), queue, self.quorum_args(false))
                .await?;
            channel
                .queue_bind(
                    dead.into(),
                    self.dead_exchange().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        channel
            .exchange_declare(
                self.tasks_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        for kind in TaskKind::ALL {
            channel
                .queue_declare(self.task_queue(kind).into(), queue, self.quorum_args(true))
                .await?;
            channel
                .queue_bind(
                    self.task_queue(kind).into(),
                    self.tasks_exchange().into(),
                    kind.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(self.ledger_queue().into(), queue, self.quorum_args(true))
            .await?;
        for key in ["task.#", "worker.#"] {
            channel
                .queue_bind(
                    self.ledger_queue().into(),
                    self.events_exchange().into(),
                    ShortString::from(key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        // Cancellations: a stream, so that every worker can read what was cancelled
        // before it started. Small segments, so that retention frees old ones.
        channel
            .exchange_declare(
                self.cancels_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut stream = FieldTable::default();
        stream.insert("x-queue-type".into(), long_string("stream"));
        stream.insert(
            "x-max-age".into(),
            long_string(crate::topology::CANCEL_RETENTION),
        );
        stream.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(CANCEL_SEGMENT_BYTES),
        );
        channel
            .queue_declare(self.cancel_stream().into(), queue, stream)
            .await?;
        channel
            .queue_bind(
                self.cancel_stream().into(),
                self.cancels_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Delete every queue and exchange of this prefix, messages included. For tests and
    /// for tearing down a tenant; never called by the services themselves.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        let mut queues: Vec<String> = TaskKind::ALL.iter().map(|k| self.task_queue(*k)).collect();
        queues.push(self.ledger_queue());
        queues.push(self.dead_queue());
        queues.push(self.dead_ledger_queue());
        queues.push(self.cancel_stream());
        for name in queues {
            channel
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await?;
        }
        for name in [
            self.tasks_exchange(),
            self.events_exchange(),
            self.dead_exchange(),
            self.cancels_exchange(),
        ] {
            channel
                .exchange_delete(name.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// Segment size of the cancellation stream: retention drops whole segments.
const CANCEL_SEGMENT_BYTES: i64 = 1_000_000;

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
