use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use shared::tasks::TaskKind;
use test_support::*;
use tokio::process::{Child, Command};

/// A real `producer-api` process that only relays (no recorder), on a port of its own.
fn relay_process(db: &TestDb, broker: &TestBroker) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_producer-api"))
        .env("DATABASE_URL", db.url())
        .env("API_TOKENS", TOKEN)
        .env("TASK_SIGNING_KEYS", SIGNING_KEYS)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AMQP_URL", amqp_base())
        .env("AMQP_PREFIX", broker.prefix())
        .env("RELAY_ENABLED", "true")
        .env("RELAY_BATCH_SIZE", "10")
        .env("RECORDER_ENABLED", "false")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("producer-api binary runs");
    (child, port)
}

async fn published(port: u16) -> u64 {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find(|l| l.starts_with("cleanup_outbox_published_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_processes_at_once_publish_each_task_exactly_once() {
    const TASKS: usize = 600;
    let db = TestDb::create().await;
    let broker = TestBroker::create().await;

    // Fill the outbox through an API replica that does not relay.
    let writer = TestApp::spawn(
        &db,
        &broker,
        AppOptions {
            relay_enabled: false,
            ..Default::default()
        },
    )
    .await;
    let mut accepted = BTreeSet::new();
    for chunk in 0..(TASKS / 50) {
        let requests = (0..50).map(|_| writer.post("/maintenance/cleanup-runs", runs_body()));
        for response in futures::future::join_all(requests).await {
            assert_eq!(response.status(), 202, "chunk {chunk}");
            let body: serde_json::Value = response.json().await.unwrap();
            accepted.insert(body["task_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(writer.outbox_len().await, TASKS as i64);

    // Two producer-api processes race over the same backlog in batches of 10.
    let (mut a, port_a) = relay_process(&db, &broker);
    let (mut b, port_b) = relay_process(&db, &broker);
    writer.wait_outbox_empty(Duration::from_secs(60)).await;

    let ids = broker.drain_ids(TaskKind::CleanupRuns).await;
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), TASKS, "no duplicates, nothing missing");
    assert_eq!(unique, accepted);
    let (from_a, from_b) = (published(port_a).await, published(port_b).await);
    eprintln!("relay process A published {from_a}, B published {from_b}");
    assert_eq!(from_a + from_b, TASKS as u64);
    a.kill().await.unwrap();
    b.kill().await.unwrap();
    writer.stop().await;
}
