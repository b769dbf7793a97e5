use std::time::Duration;

use serde_json::{json, Value};
use shared::tasks::TaskKind;
use test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_body_return_the_same_task_once() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let broker = &stack.broker;

    let first = app
        .post_with_key(
            "/maintenance/cleanup-runs",
            runs_body(),
            "nightly-2026-11-22",
        )
        .await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();

    // Same meaning, different spelling: explicit defaults and another key order.
    let again = app
        .post_with_key(
            "/maintenance/cleanup-runs",
            json!({"dry_run": true, "max_age_hours": 48.0}),
            "nightly-2026-11-22",
        )
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.headers()["location"].to_str().unwrap(),
        format!("/tasks/{}", first["task_id"].as_str().unwrap())
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["task_id"], first["task_id"]);

    app.wait_outbox_empty(Duration::from_secs(10)).await;
    assert_eq!(app.task_count().await, 1);
    assert_eq!(broker.drain(TaskKind::CleanupRuns).await.len(), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_a_different_body_is_422() {
    let stack = Stack::start().await;
    let app = &stack.app;

    let first: Value = app
        .post_with_key("/maintenance/cleanup-runs", runs_body(), "key-1")
        .await
        .json()
        .await
        .unwrap();
    for (path, body) in [
        (
            "/maintenance/cleanup-runs",
            json!({"max_age_hours": 49, "dry_run": true}),
        ),
        (
            "/maintenance/cleanup-temp-files",
            json!({"max_age_hours": 48, "dry_run": true}),
        ),
    ] {
        let response = app.post_with_key(path, body, "key-1").await;
        assert_eq!(response.status(), 422, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["task_id"], first["task_id"]);
        assert!(problem["detail"].as_str().unwrap().contains("already used"));
    }
    assert_eq!(app.task_count().await, 1);

    let response = app
        .post_with_key("/maintenance/cleanup-runs", runs_body(), &"k".repeat(256))
        .await;
    assert_eq!(response.status(), 400);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_never_create_two_tasks() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let broker = &stack.broker;

    for round in 0..5 {
        let key = format!("race-{round}");
        let requests =
            (0..16).map(|_| app.post_with_key("/maintenance/cleanup-runs", runs_body(), &key));
        let responses = futures::future::join_all(requests).await;
        let mut ids = std::collections::BTreeSet::new();
        let mut created = 0;
        for response in responses {
            let status = response.status().as_u16();
            assert!(status == 202 || status == 200, "{status}");
            created += usize::from(status == 202);
            let body: Value = response.json().await.unwrap();
            ids.insert(body["task_id"].as_str().unwrap().to_owned());
        }
        assert_eq!(ids.len(), 1, "one task per key");
        assert_eq!(created, 1, "exactly one 202 per key");
    }
    app.wait_outbox_empty(Duration::from_secs(10)).await;
    assert_eq!(app.task_count().await, 5);
    assert_eq!(broker.drain(TaskKind::CleanupRuns).await.len(), 5);
    stack.stop().await;
}
