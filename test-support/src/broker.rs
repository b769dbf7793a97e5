//! An AMQP name prefix of its own for each test.

use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};
use shared::tasks::TaskKind;
use shared::topology::Topology;
use uuid::Uuid;

/// The broker the tests use: `TEST_AMQP_URL`, or the local RabbitMQ as `guest`.
pub fn amqp_base() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker's `host:port` (of [`amqp_base`]), for a [`crate::TcpProxy`] in front of it.
pub fn amqp_address() -> String {
    let uri: lapin::uri::AMQPUri = amqp_base().parse().expect("a valid TEST_AMQP_URL");
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// [`amqp_base`] through a proxy listening on `proxy` instead of the broker itself.
pub fn amqp_via(proxy: std::net::SocketAddr) -> String {
    let base = amqp_base();
    let address = amqp_address();
    assert!(
        base.contains(&address),
        "TEST_AMQP_URL must spell out host and port: {base}"
    );
    base.replacen(&address, &proxy.to_string(), 1)
}

/// An AMQP prefix of its own for one test; its exchanges and queues are deleted at the end.
pub struct TestBroker {
    pub topology: Topology,
    _connection: Connection,
    /// A channel of the test's own on the broker.
    pub channel: Channel,
}

impl TestBroker {
    /// A fresh prefix with the default delivery limit (5), its topology declared.
    pub async fn create() -> Self {
        Self::with_delivery_limit(5).await
    }

    /// Every component on this prefix must then use `--amqp-delivery-limit=<limit>`.
    pub async fn with_delivery_limit(limit: u32) -> Self {
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        let topology = Topology::new(&prefix, limit).unwrap();
        let connection = Connection::connect(&amqp_base(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (see README)");
        let channel = connection.create_channel().await.unwrap();
        topology.declare(&channel).await.expect("declare topology");
        Self {
            topology,
            _connection: connection,
            channel,
        }
    }

    /// The prefix, for `--amqp-prefix`.
    pub fn prefix(&self) -> &str {
        self.topology.prefix()
    }

    /// Messages ready in the queue of `kind`.
    pub async fn queue_len(&self, kind: TaskKind) -> u32 {
        self.queue_len_named(&self.topology.task_queue(kind)).await
    }

    /// Messages ready in the queue called `name`.
    pub async fn queue_len_named(&self, name: &str) -> u32 {
        let queue = self
            .channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue.message_count()
    }

    /// Wait, at most 10 s, until `count` messages are ready in the queue called `name`
    /// (`what`: the condition, for the failure message).
    pub async fn until_ready(&self, name: &str, count: u32, what: &str) {
        crate::eventually(Duration::from_secs(10), what, || async {
            self.queue_len_named(name).await == count
        })
        .await;
    }

    /// Take (and ack) every message in the queue of `kind`.
    pub async fn drain(&self, kind: TaskKind) -> Vec<lapin::message::BasicGetMessage> {
        self.drain_named(&self.topology.task_queue(kind)).await
    }

    /// Take (and ack) every message in the queue called `name`.
    pub async fn drain_named(&self, name: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(name.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            messages.push(message);
        }
        messages
    }

    /// A queue of the test's own receiving the events whose routing key matches
    /// `pattern` (`task.#`, ...) from now on; gone with the test's connection.
    pub async fn tap_events(&self, pattern: &str) -> String {
        let name = format!("{}.tap.{}", self.prefix(), Uuid::new_v4().simple());
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(name.as_str().into(), options, FieldTable::default())
            .await
            .unwrap();
        self.channel
            .queue_bind(
                name.as_str().into(),
                self.topology.events_exchange().into(),
                pattern.into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        name
    }

    /// [`drain`](Self::drain) the queue of `kind`; the message ids, in queue order.
    pub async fn drain_ids(&self, kind: TaskKind) -> Vec<String> {
        self.drain(kind)
            .await
            .iter()
            .map(|m| {
                m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

impl TestBroker {
    /// Publish `event` on the events exchange, as a worker would (confirmed).
    pub async fn publish_event(&self, event: &shared::events::Event) {
        use shared::runtime::amqp::{self, OutgoingMessage};
        let channel = amqp::confirm_channel(&self._connection).await.unwrap();
        let exchange = self.topology.events_exchange();
        amqp::publish(
            &channel,
            &OutgoingMessage {
                exchange: &exchange,
                routing_key: event.routing_key(),
                message_type: event.routing_key(),
                message_id: Uuid::now_v7().to_string(),
                body: event.to_json(),
            },
        )
        .await
        .unwrap();
        let _ = channel.close(200, "sent".into()).await;
    }

    /// Publish `body` as it is, with `properties`, to `exchange` ("": the default exchange,
    /// `routing_key` naming a queue): forged, corrupt or hand-made messages.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The task ids of the cancellations on the cancellation stream, from its start, in
    /// stream order: reads until `expected` are there, or nothing new came for `idle`.
    pub async fn cancellations(&self, expected: usize, idle: Duration) -> Vec<Uuid> {
        use futures::StreamExt;
        let channel = self._connection.create_channel().await.unwrap();
        channel
            .basic_qos(100, BasicQosOptions::default())
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString(LongString::from("first")),
        );
        let mut consumer = channel
            .basic_consume(
                self.topology.cancel_stream().into(),
                format!("test-reader-{}", Uuid::now_v7()).into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .unwrap();
        let mut ids = Vec::new();
        while ids.len() < expected {
            let Ok(Some(delivery)) = tokio::time::timeout(idle, consumer.next()).await else {
                break;
            };
            let delivery = delivery.unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            let kind = delivery.properties.kind().as_ref().map(|k| k.to_string());
            if kind.as_deref() == Some(shared::cancel::CANCEL_MESSAGE_TYPE) {
                let cancel = shared::cancel::CancelRequest::from_json(&delivery.data).unwrap();
                ids.push(cancel.task_id);
            }
        }
        let _ = channel.close(200, "read".into()).await;
        ids
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        crate::teardown("the test's AMQP prefix", async move {
            if let Ok(conn) =
                Connection::connect(&amqp_base(), ConnectionProperties::default()).await
            {
                if let Ok(channel) = conn.create_channel().await {
                    let _ = topology.delete(&channel).await;
                }
                let _ = conn.close(200, "test over".into()).await;
            }
        });
    }
}
