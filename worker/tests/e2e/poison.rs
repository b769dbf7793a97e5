use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::BasicProperties;
use serde_json::json;
use shared::tasks::TaskKind;

use crate::helpers::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_end_dead_and_the_worker_keeps_going() {
    let db = TestDb::create().await;
    let broker = TestBroker::create().await;
    let scratch = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        &db,
        &broker,
        AppOptions {
            relay_enabled: false,
            ..Default::default()
        },
    )
    .await;
    // A task the ledger knows, whose message arrives corrupted.
    let victim = enqueue(
        &app,
        "/maintenance/cleanup-temp-files",
        json!({"max_age_hours": 24}),
    )
    .await;
    let worker = TestWorker::spawn(
        &broker,
        &[format!("--temp-roots=scratch={}", scratch.path().display())],
    )
    .await;

    let queue = broker.topology.task_queue(TaskKind::CleanupTempFiles);
    for (message_id, body) in [
        (Some(victim.clone()), b"{not json".to_vec()),
        (
            None,
            br#"{"schema_version": 1, "kind": "cleanup_users"}"#.to_vec(),
        ),
    ] {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(ShortString::from(id));
        }
        broker
            .channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let task = wait_for(&app, &victim, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "dead", "{task}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("unprocessable task message"), "{message}");
    assert!(message.contains("malformed"), "{message}");

    let dead_queue = broker.topology.dead_queue();
    eventually(
        Duration::from_secs(10),
        "both messages rest in the dead queue",
        || async { broker.queue_len_named(&dead_queue).await == 2 },
    )
    .await;

    // The next good task still succeeds on the same worker.
    let good = enqueue(
        &app,
        "/maintenance/cleanup-temp-files",
        json!({"max_age_hours": 24}),
    )
    .await;
    let relay = TestApp::spawn(&db, &broker, AppOptions::default()).await;
    let task = wait_for(&app, &good, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains("cleanup_worker_poison_messages_total{kind=\"cleanup_temp_files\"} 2"),
        "{metrics}"
    );
    worker.stop().await;
    relay.stop().await;
    app.stop().await;
}
