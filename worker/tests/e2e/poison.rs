use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use shared::signing::{KeyRing, Signature};
use shared::tasks::TaskKind;
use test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_end_dead_and_the_worker_keeps_going() {
    let scratch = tempfile::tempdir().unwrap();
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let broker = &stack.broker;
    // A task the ledger knows, whose message arrives corrupted.
    let victim = enqueue(
        app,
        "/maintenance/cleanup-temp-files",
        json!({"max_age_hours": 24}),
    )
    .await;
    let worker = stack
        .worker(&[temp_root_flag("scratch", scratch.path())])
        .await;

    let queue = broker.topology.task_queue(TaskKind::CleanupTempFiles);
    for (message_id, body) in [
        (Some(victim.clone()), b"{not json".to_vec()),
        (
            None,
            br#"{"schema_version": 1, "kind": "cleanup_users"}"#.to_vec(),
        ),
    ] {
        // Signed: these messages are authentic but unprocessable.
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(signature_headers(Some(key_ring().sign(&body))));
        if let Some(id) = message_id {
            properties = properties.with_message_id(ShortString::from(id));
        }
        broker.publish_raw("", &queue, &body, properties).await;
    }

    let task = wait_for(app, &victim, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "dead", "{task}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("unprocessable task message"), "{message}");
    assert!(message.contains("malformed"), "{message}");

    let dead_queue = broker.topology.dead_queue();
    broker
        .until_ready(&dead_queue, 2, "both messages rest in the dead queue")
        .await;

    // The next good task still succeeds on the same worker.
    let good = enqueue(
        app,
        "/maintenance/cleanup-temp-files",
        json!({"max_age_hours": 24}),
    )
    .await;
    let relay = stack.another_app(AppOptions::default()).await;
    let task = wait_for(app, &good, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains("cleanup_worker_poison_messages_total{kind=\"cleanup_temp_files\"} 2"),
        "{metrics}"
    );
    worker.stop().await;
    relay.stop().await;
    stack.stop().await;
}

/// The AMQP headers of a signature (none for an unsigned message).
fn signature_headers(signature: Option<Signature>) -> FieldTable {
    let mut headers = FieldTable::default();
    for (key, value) in signature.iter().flat_map(|s| s.headers()) {
        headers.insert(key.into(), AMQPValue::LongString(value.as_str().into()));
    }
    headers
}

/// Publish `body` straight to the tasks exchange, as anyone with broker access could.
async fn publish_task(
    broker: &TestBroker,
    kind: TaskKind,
    task_id: &str,
    body: &[u8],
    signature: Option<Signature>,
) {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_type(shared::envelope::TASK_MESSAGE_TYPE.into())
        .with_message_id(ShortString::from(task_id))
        .with_headers(signature_headers(signature));
    let exchange = broker.topology.tasks_exchange();
    broker
        .publish_raw(&exchange, kind.as_str(), body, properties)
        .await;
}

/// The envelope the ledger holds for `task_id` (the API runs no relay, so it stays there).
async fn outbox_envelope(app: &TestApp, task_id: &str) -> Value {
    sqlx::query_scalar("SELECT envelope FROM cleanup_outbox WHERE task_id = $1::uuid")
        .bind(task_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

const SIGNED_RUNS: usize = 30;

/// `SIGNED_RUNS` runs finished `age_hours` ago, an API that does not relay (the test
/// publishes every message itself) and a worker on the runs.
async fn signed_runs_setup(age_hours: f64) -> (RunsDb, Stack, TestWorker) {
    let runs = RunsDb::create().await;
    runs.insert(SIGNED_RUNS as i64, "succeeded", Some(age_hours), 1)
        .await;
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;
    (runs, stack, worker)
}

/// A runs task (older than a day) the ledger accepted: its id, and the envelope the
/// outbox holds for it.
async fn held_runs_task(app: &TestApp) -> (String, Value) {
    let id = enqueue(
        app,
        "/maintenance/cleanup-runs",
        json!({"max_age_hours": 24}),
    )
    .await;
    let envelope = outbox_envelope(app, &id).await;
    (id, envelope)
}

/// Publish `envelope` as the message of runs task `task_id`, signed with `keys`.
async fn publish_signed(broker: &TestBroker, task_id: &str, envelope: &Value, keys: &KeyRing) {
    let body = envelope.to_string().into_bytes();
    publish_task(
        broker,
        TaskKind::CleanupRuns,
        task_id,
        &body,
        Some(keys.sign(&body)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_and_unknown_key_messages_end_dead_and_delete_nothing() {
    let runs = RunsDb::create().await;
    let scratch = tempfile::tempdir().unwrap();
    let old_file = scratch.path().join("old.tmp");
    std::fs::write(&old_file, b"x").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(100 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old_file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    runs.insert(SIGNED_RUNS as i64, "succeeded", Some(100.0), 1)
        .await;
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let (app, broker) = (&stack.app, &stack.broker);
    let worker = stack
        .worker(&[
            runs_database_flag(runs.db.url()),
            temp_root_flag("scratch", scratch.path()),
        ])
        .await;

    let forged = KeyRing::parse("test-new:not-the-real-secret-0123456789abcdef").unwrap();
    let intruder = KeyRing::parse("intruder:an-intruders-own-secret-0123456789abcdef").unwrap();
    let mut cases = Vec::new();
    for (name, path, kind) in [
        (
            "unsigned",
            "/maintenance/cleanup-runs",
            TaskKind::CleanupRuns,
        ),
        ("forged", "/maintenance/cleanup-runs", TaskKind::CleanupRuns),
        (
            "unknown key",
            "/maintenance/cleanup-runs",
            TaskKind::CleanupRuns,
        ),
        (
            "unsigned",
            "/maintenance/cleanup-temp-files",
            TaskKind::CleanupTempFiles,
        ),
    ] {
        let id = enqueue(app, path, json!({"max_age_hours": 24})).await;
        let body = outbox_envelope(app, &id).await.to_string().into_bytes();
        let signature = match name {
            "unsigned" => None,
            "forged" => Some(forged.sign(&body)),
            _ => Some(intruder.sign(&body)),
        };
        publish_task(broker, kind, &id, &body, signature).await;
        cases.push((name, id));
    }

    for (name, id) in &cases {
        let task = wait_for(app, id, DONE, Duration::from_secs(30)).await;
        assert_eq!(task["status"], "dead", "{name}: {task}");
        let expected = match *name {
            "unsigned" => "unsigned task message refused: TASK_SIGNING_KEYS requires a signature",
            "forged" => "bad signature (key id `test-new`)",
            _ => "signed with unknown key id `intruder`",
        };
        // The worker's reason (it may follow the broker's dead-letter note).
        eventually(Duration::from_secs(10), expected, || async {
            let task: Value = app.task(id).await;
            task["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(expected))
        })
        .await;
        assert_eq!(task["attempts"], 0, "{name}: never started: {task}");
    }
    let dead_queue = broker.topology.dead_queue();
    let refused = cases.len() as u32;
    broker
        .until_ready(
            &dead_queue,
            refused,
            "every refused message rests in the dead queue",
        )
        .await;
    assert_eq!(
        runs.count("SELECT count(*) FROM runs").await,
        SIGNED_RUNS as i64,
        "nothing deleted"
    );
    assert!(old_file.exists(), "nothing deleted");
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains("cleanup_worker_poison_messages_total{kind=\"cleanup_runs\"} 3"),
        "{metrics}"
    );
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_signed_with_the_older_key_of_the_ring_is_accepted() {
    let (runs, stack, worker) = signed_runs_setup(100.0).await;
    let (app, broker) = (&stack.app, &stack.broker);

    // Only the second key of the workers' ring, as a producer not yet rotated holds it.
    let old_key = SIGNING_KEYS.split(',').nth(1).unwrap().trim();
    assert!(old_key.starts_with("test-old:"));
    let old = KeyRing::parse(old_key).unwrap();
    let (id, envelope) = held_runs_task(app).await;
    publish_signed(broker, &id, &envelope, &old).await;

    let task = wait_for(app, &id, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["runs_deleted"], SIGNED_RUNS);
    assert_eq!(runs.count("SELECT count(*) FROM runs").await, 0);
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_version_is_retried_later_not_dead_and_an_older_one_is_poison() {
    let (runs, stack, worker) = signed_runs_setup(100.0).await;
    let (app, broker) = (&stack.app, &stack.broker);
    let keys = key_ring();

    // What a producer-api upgraded before the workers would send: a version this worker
    // does not know, with fields it has never seen.
    let (newer, mut envelope) = held_runs_task(app).await;
    envelope["schema_version"] = 2.into();
    envelope["params"]["added_in_v2"] = true.into();
    envelope["priority"] = "high".into();
    publish_signed(broker, &newer, &envelope, &keys).await;

    let task = wait_for(
        app,
        &newer,
        &["retrying", "succeeded", "failed", "dead"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(task["status"], "retrying", "{task}");
    assert_eq!(task["error"]["class"], "transient");
    assert_eq!(
        task["error"]["message"],
        "task schema version 2 is newer than this worker (knows 1): upgrade workers before producer-api"
    );
    assert!(task["next_attempt_at"].is_string(), "{task}");
    // The ledger scheduled attempt 2 (published again once a relay runs).
    let attempts: Vec<i32> = sqlx::query_scalar(
        "SELECT attempt FROM cleanup_outbox WHERE task_id = $1::uuid ORDER BY attempt",
    )
    .bind(&newer)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(attempts, vec![1, 2]);

    // An older version is poison.
    let (older, mut envelope) = held_runs_task(app).await;
    envelope["schema_version"] = 0.into();
    publish_signed(broker, &older, &envelope, &keys).await;
    let task = wait_for(app, &older, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "dead", "{task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unsupported task schema version 0"),
        "{task}"
    );

    let dead_queue = broker.topology.dead_queue();
    broker
        .until_ready(&dead_queue, 1, "only the older one is dead")
        .await;
    let task: Value = app.task(&newer).await;
    assert_eq!(task["status"], "retrying", "{task}");
    assert_eq!(
        runs.count("SELECT count(*) FROM runs").await,
        SIGNED_RUNS as i64,
        "nothing deleted"
    );
    worker.stop().await;
    stack.stop().await;
}

/// A message signed with the real key (a producer bug, a leaked key) whose cutoff is
/// younger than its own `max_age_hours` allows, or younger than the worker's
/// MIN_AGE_HOURS floor: the worker refuses it and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_message_with_a_cutoff_younger_than_allowed_deletes_nothing() {
    // Two hours old: older than the worker's floor of one hour, younger than a day.
    let (runs, stack, worker) = signed_runs_setup(2.0).await;
    let (app, broker) = (&stack.app, &stack.broker);
    let keys = key_ring();
    let now = chrono::Utc::now();

    // The request said a day; the cutoff says 90 minutes.
    let (moved, mut envelope) = held_runs_task(app).await;
    envelope["cutoff"] = json!(now - chrono::Duration::minutes(90));
    // Below the floor, consistently: a day before an `enqueued_at` in the future. (A
    // `max_age_hours` below the floor is refused earlier, as invalid parameters.)
    let (below, mut floor) = held_runs_task(app).await;
    floor["enqueued_at"] = json!(now + chrono::Duration::minutes(23 * 60 + 30));
    floor["cutoff"] = json!(now - chrono::Duration::minutes(30));

    for (id, envelope) in [(&moved, &envelope), (&below, &floor)] {
        publish_signed(broker, id, envelope, &keys).await;
    }
    for (id, expected) in [
        (&moved, "is younger than max_age_hours (24) allows"),
        (
            &below,
            "is younger than this worker's MIN_AGE_HOURS (1) allows",
        ),
    ] {
        let task = wait_for(app, id, DONE, Duration::from_secs(30)).await;
        assert_ne!(task["status"], "succeeded", "{task}");
        let message = task["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{task}");
    }
    assert_eq!(
        runs.count("SELECT count(*) FROM runs").await,
        SIGNED_RUNS as i64,
        "nothing deleted"
    );
    worker.stop().await;
    stack.stop().await;
}
