use std::collections::BTreeSet;
use std::time::Duration;

use shared::tasks::TaskKind;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_at_once_publish_each_task_exactly_once() {
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

    // Two relaying replicas race over the same backlog in small batches.
    let options = AppOptions {
        relay_batch_size: 10,
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        TestApp::spawn(&db, &broker, options.clone()),
        TestApp::spawn(&db, &broker, options)
    );
    a.wait_outbox_empty(Duration::from_secs(60)).await;

    let messages = broker.drain(TaskKind::CleanupRuns).await;
    let ids: Vec<String> = messages
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string()
        })
        .collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), TASKS, "no duplicates, nothing missing");
    assert_eq!(unique, accepted);

    let published = |body: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with("cleanup_outbox_published_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let metrics_a = a
        .client
        .get(format!("{}/metrics", a.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics_b = b
        .client
        .get(format!("{}/metrics", b.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (from_a, from_b) = (published(&metrics_a), published(&metrics_b));
    eprintln!("relay A published {from_a}, relay B published {from_b}");
    assert_eq!(from_a + from_b, TASKS as u64);
    writer.stop().await;
    a.stop().await;
    b.stop().await;
}
