//! The raw broker, as a baseline for `deploy/bench/e2e.sh`: what RabbitMQ's CPU costs per
//! persistent message on a quorum queue, by how the messages arrive and are settled. Run
//! by `deploy/bench/broker.sh`.
//!
//!   bench-broker AMQP_URL QUEUE N BODY_BYTES PUBLISHERS PACED
//!
//! PUBLISHERS (comma-separated counts K): N messages published by K concurrent publishers
//! on one confirm channel, each waiting for its message's confirm before the next (as a
//! worker publishes results); K = 0 publishes them pipelined, 500 confirms outstanding (as
//! the relay publishes a batch). PACED (comma-separated RATE:GROUP, or `-`): 5 seconds of
//! messages at RATE a second, GROUP at a time, each group's confirms awaited (as results
//! arrive from tasks ending one by one, or together). Then everything published is
//! consumed with prefetch 32: half acked one by one, half 16 at a time with `multiple` (as
//! the recorder acks a batch).
//! Prints one line per phase: messages per second and RabbitMQ's (every `beam.smp`) CPU
//! milliseconds per message. The queue is deleted at the end.

use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use test_support::cpu::{ticks_in_stat, SECONDS_PER_TICK};

/// CPU ticks (user + system) of every `beam.smp` process.
fn beam_ticks() -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim() == "beam.smp" {
            let stat = std::fs::read_to_string(path.join("stat"))?;
            total += ticks_in_stat(&stat).context("a /proc stat")?;
        }
    }
    Ok(total)
}

/// Run `phase`, then print its rate and RabbitMQ's CPU per message.
async fn measure<F: std::future::Future<Output = anyhow::Result<()>>>(
    what: &str,
    n: u64,
    phase: F,
) -> anyhow::Result<()> {
    let (ticks, started) = (beam_ticks()?, Instant::now());
    phase.await?;
    let took = started.elapsed().as_secs_f64();
    let cpu_ms = (beam_ticks()? - ticks) as f64 * SECONDS_PER_TICK * 1000.0;
    println!(
        "{what:<44} {:>8.0} msg/s   rabbitmq {:.3} ms CPU per message",
        n as f64 / took,
        cpu_ms / n as f64
    );
    Ok(())
}

/// `n` messages, `group` at a time, each group's confirms awaited before the next group;
/// at most `rate` a second when given.
async fn publish_groups(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    n: u64,
    group: u64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let properties = BasicProperties::default().with_delivery_mode(2);
    let period = rate.map(|rate| std::time::Duration::from_secs_f64(group as f64 / rate));
    let mut ticks = period.map(tokio::time::interval);
    let mut left = n;
    while left > 0 {
        if let Some(ticks) = &mut ticks {
            ticks.tick().await;
        }
        let mut confirms = Vec::new();
        for _ in 0..group.min(left) {
            let publish = channel.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            );
            confirms.push(publish.await?);
        }
        left -= confirms.len() as u64;
        for confirm in confirms {
            confirm.await?;
        }
    }
    Ok(())
}

/// `n` messages from `k` concurrent publishers, each waiting for its message's confirm
/// before the next; `k` = 0: pipelined, 500 unconfirmed at most.
async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    n: u64,
    k: u64,
) -> anyhow::Result<()> {
    if k == 0 {
        return publish_groups(channel, queue, body, n, 500, None).await;
    }
    let publishers = (0..k).map(|i| {
        let share = n / k + u64::from(i < n % k);
        publish_groups(channel, queue, body, share, 1, None)
    });
    futures::future::try_join_all(publishers).await?;
    Ok(())
}

/// Seconds of each paced phase.
const PACED_FOR: f64 = 5.0;

async fn consume(connection: &Connection, queue: &str, n: u64, group: u64) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = 0;
    while got < n {
        let delivery = consumer.next().await.context("the consumer ended")??;
        got += 1;
        if got % group == 0 || got == n {
            delivery
                .ack(BasicAckOptions {
                    multiple: group > 1,
                })
                .await?;
        }
    }
    channel.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, n, body_bytes, publishers, paced] = args.as_slice() else {
        anyhow::bail!("usage: bench-broker AMQP_URL QUEUE N BODY_BYTES PUBLISHERS PACED");
    };
    let publishers: Vec<u64> = publishers
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("PUBLISHERS: comma-separated numbers")?;
    let paced: Vec<(f64, u64)> = paced
        .split(',')
        .filter(|p| *p != "-")
        .map(|p| {
            let (rate, group) = p.split_once(':').context("PACED: RATE:GROUP")?;
            anyhow::Ok((rate.parse()?, group.parse()?))
        })
        .collect::<Result<_, _>>()
        .context("PACED: comma-separated RATE:GROUP")?;
    let n: u64 = n.parse().context("N")?;
    let body = vec![b'x'; body_bytes.parse().context("BODY_BYTES")?];
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, arguments)
        .await?;
    let run = async {
        for &k in &publishers {
            let what = match k {
                0 => "publish, pipelined (500 unconfirmed)".to_owned(),
                k => format!("publish, {k} publishers, one confirm each"),
            };
            measure(&what, n, publish(&channel, queue, &body, n, k)).await?;
        }
        let mut messages = n * publishers.len() as u64;
        for &(rate, group) in &paced {
            let what = format!("publish, {rate}/s, {group} at a time");
            let count = (rate * PACED_FOR) as u64;
            let phase = publish_groups(&channel, queue, &body, count, group, Some(rate));
            measure(&what, count, phase).await?;
            messages += count;
        }
        let single = messages / 2;
        measure(
            "consume, acked one by one",
            single,
            consume(&connection, queue, single, 1),
        )
        .await?;
        let rest = messages - single;
        measure(
            "consume, acked 16 at a time (multiple)",
            rest,
            consume(&connection, queue, rest, 16),
        )
        .await?;
        anyhow::Ok(())
    };
    let result = run.await;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    result
}
