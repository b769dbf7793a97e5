//! Cancels end to end: API, relay, the cancellation stream, workers, the runs database.

use std::time::{Duration, Instant};

use serde_json::json;
use shared::tasks::TaskKind;
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

/// The task's message is on its queue when the task is cancelled, and no worker runs; a
/// worker started afterwards must skip it without deleting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_on_its_queue_is_skipped_by_a_worker_started_later() {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let app = &stack.app;
    runs.insert(1_000, "succeeded", Some(100.0), 1).await;
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 24})).await;
    eventually(
        Duration::from_secs(10),
        "the task's message is on its queue",
        || async { stack.broker.queue_len(TaskKind::CleanupRuns).await == 1 },
    )
    .await;

    let (status, task) = app.cancel(&id).await;
    assert_eq!(
        (status, &task["status"]),
        (200, &json!("cancelled")),
        "{task}"
    );
    app.wait_outbox_empty(Duration::from_secs(10)).await;

    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;
    eventually(
        Duration::from_secs(20),
        "the worker skips the cancelled task",
        || async { worker.metrics().await.contains(r#"outcome="cancelled"} 1"#) },
    )
    .await;
    assert_eq!(stack.broker.queue_len(TaskKind::CleanupRuns).await, 0);
    assert_eq!(runs.count("SELECT count(*) FROM runs").await, 1_000);
    assert_eq!(runs.count("SELECT count(*) FROM run_logs").await, 1_000);
    let task = app.task(&id).await;
    assert_eq!(task["status"], "cancelled", "{task}");
    assert!(task["result"].is_null(), "nothing ran: {task}");
    assert_eq!(task["attempts"], 0, "never started: {task}");
    // Skipped before it started: the ledger never had to send the cancel again.
    let sent = stack.broker.cancellations(2, Duration::from_secs(2)).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    worker.stop().await;
    stack.stop().await;
}

/// A running cleanup of a million rows stops within seconds of the cancel; what it
/// deleted is its result, and the rest is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cleanup_of_a_million_rows_stops_at_a_batch_boundary() {
    const ROWS: i64 = 1_000_000;
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let app = &stack.app;
    runs.insert(ROWS, "succeeded", Some(100.0), 0).await;
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;
    let id = stack
        .cleanup_under_way(&runs, Duration::from_secs(30))
        .await;

    let asked = Instant::now();
    let (status, task) = app.cancel(&id).await;
    assert!(
        status == 202 || status == 200,
        "running, or between two turns: {status} {task}"
    );
    let task = stopped_by_its_worker(app, &id).await;
    let took = asked.elapsed();
    let remaining = runs.count("SELECT count(*) FROM runs").await;
    assert!(remaining > 0, "the cancel came too late to test anything");
    let deleted = task["result"]["runs_deleted"].as_i64().unwrap();
    assert_eq!(deleted, ROWS - remaining, "{task}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        runs.count("SELECT count(*) FROM runs").await,
        remaining,
        "nothing is deleted after the task reported cancelled"
    );
    eprintln!("cancelled {took:?} after the request; {deleted} of {ROWS} rows deleted");
    worker.stop().await;
    stack.stop().await;
}

/// The cancellation stream is deleted and declared again (its offsets start over) under a
/// running worker: the worker must not wait for an offset that no longer comes, and must
/// still learn of the next cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_recovers_when_the_stream_starts_over() {
    const ROWS: i64 = 300_000;
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let app = &stack.app;
    runs.insert(ROWS, "succeeded", Some(100.0), 0).await;
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;
    // The worker has read a few cancellations: of temp-file tasks, which it does not serve.
    for _ in 0..6 {
        let id = stack
            .enqueue(
                "/maintenance/cleanup-temp-files",
                json!({"max_age_hours": 24, "dry_run": true}),
            )
            .await;
        assert_eq!(app.cancel(&id).await.0, 200);
    }
    app.wait_outbox_empty(Duration::from_secs(10)).await;
    stack
        .run(RUNS, json!({"max_age_hours": 24, "dry_run": true}))
        .await;
    stack
        .broker
        .channel
        .queue_delete(
            stack.broker.topology.cancel_stream().as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();

    // The worker is back and deleting.
    let id = stack
        .cleanup_under_way(&runs, Duration::from_secs(40))
        .await;
    let (status, task) = app.cancel(&id).await;
    assert!(status == 202 || status == 200, "{status} {task}");
    let task = stopped_by_its_worker(app, &id).await;
    let remaining = runs.count("SELECT count(*) FROM runs").await;
    assert!(remaining > 0, "the cancel came too late to test anything");
    assert_eq!(
        task["result"]["runs_deleted"].as_i64().unwrap(),
        ROWS - remaining
    );
    worker.stop().await;
    stack.stop().await;
}

/// Wait for a task cancelled while it ran to end `cancelled` with what its worker deleted
/// as its result. (If the ledger had not yet heard that the task started, the cancel
/// ends it at once, and the worker's result follows.)
async fn stopped_by_its_worker(app: &TestApp, id: &str) -> serde_json::Value {
    let task = wait_until(
        app,
        id,
        Duration::from_secs(10),
        "cancelled, with its worker's result",
        |task| {
            DONE.contains(&task["status"].as_str().unwrap_or_default()) && !task["result"].is_null()
        },
    )
    .await;
    assert_eq!(task["status"], "cancelled", "{task}");
    task
}
