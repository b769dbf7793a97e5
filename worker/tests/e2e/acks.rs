//! `worker::acks` against a real quorum queue: whatever the order the tasks end in, the
//! acks settle the deliveries that are done and nothing else. What a channel leaves
//! unsettled returns to its queue when it closes (all of it at once), so the queue then
//! shows what the acks really covered: each test leaves one delivery running, whose
//! return says the returns are in.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use shared::tasks::TaskKind;
use test_support::*;
use worker::acks::{Acks, Taken};

type Kept = (Channel, lapin::Consumer, Acks);

/// `count` messages ("1", "2", ...) on the runs queue of a prefix of the test's own,
/// delivered to a consumer of a connection of its own (prefetch 16) and taken in order.
/// The channel and the consumer come back with them, kept as the worker keeps them (lapin
/// closes a channel whose last handle is dropped).
async fn delivered(broker: &TestBroker, count: u8) -> (Connection, Kept, Vec<Taken>) {
    let queue = broker.topology.task_queue(TaskKind::CleanupRuns);
    for n in 1..=count {
        let persistent = BasicProperties::default().with_delivery_mode(2);
        let body = n.to_string();
        broker
            .publish_raw("", &queue, body.as_bytes(), persistent)
            .await;
    }
    let connection = Connection::connect(&amqp_base(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(16, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "acks-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let acks = Acks::new();
    let mut taken = Vec::new();
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivered in time")
            .unwrap()
            .unwrap();
        taken.push(acks.take(delivery));
    }
    (connection, (channel, consumer, acks), taken)
}

/// Close the consuming connection, then the bodies of what returned to the queue.
async fn returned(broker: &TestBroker, connection: Connection, expected: u32) -> Vec<String> {
    connection.close(200, "test over".into()).await.unwrap();
    let queue = broker.topology.task_queue(TaskKind::CleanupRuns);
    let back = "the unsettled deliveries are back in the queue";
    broker.until_ready(&queue, expected, back).await;
    bodies(broker, &queue).await
}

/// The bodies of the messages in the queue called `name`, taken from it, in order.
async fn bodies(broker: &TestBroker, name: &str) -> Vec<String> {
    let mut bodies: Vec<String> = broker
        .drain_named(name)
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.delivery.data).unwrap())
        .collect();
    bodies.sort();
    bodies
}

// One thread: the acks asked for in one `join!` are all waiting when the sender task runs,
// so they make one round, as reports of one gathering do.
#[tokio::test]
async fn acks_of_tasks_ending_out_of_order_never_settle_one_still_running() {
    let broker = TestBroker::create().await;
    let (connection, _kept, taken) = delivered(&broker, 5).await;
    // Tasks 2, 4 and 5 end together while 1 and 3 run: an ack with `multiple` at 5 (or 4)
    // would settle 1 and 3 as well.
    let (two, four, five) = tokio::join!(taken[1].ack(), taken[3].ack(), taken[4].ack());
    assert!(two.unwrap() && four.unwrap() && five.unwrap());
    // Then 3; 1 never ends (its worker dies).
    assert!(taken[2].ack().await.unwrap());
    assert_eq!(returned(&broker, connection, 1).await, ["1"]);
}

#[tokio::test]
async fn acks_of_tasks_ending_together_settle_them_all_and_a_rejection_stays_rejected() {
    let broker = TestBroker::create().await;
    let (connection, _kept, taken) = delivered(&broker, 5).await;
    // 1-4 end at once, 3 refused: it goes to the dead-letter queue, not acked by a
    // `multiple` at 4. 5 never ends.
    let (one, two, three, four) = tokio::join!(
        taken[0].ack(),
        taken[1].ack(),
        taken[2].reject(),
        taken[3].ack()
    );
    assert!(one.unwrap() && two.unwrap() && three.unwrap() && four.unwrap());
    assert_eq!(returned(&broker, connection, 1).await, ["5"]);
    let dead = broker.topology.dead_queue();
    broker
        .until_ready(&dead, 1, "the rejection is dead-lettered")
        .await;
    assert_eq!(bodies(&broker, &dead).await, ["3"]);
}
