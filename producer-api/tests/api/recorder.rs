use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use shared::events::{ErrorClass, Event, TaskError, TaskFailed, TaskStarted, TaskSucceeded};
use shared::tasks::TaskKind;
use test_support::*;

fn started(task_id: &str, worker_id: &str, attempt: u32) -> Event {
    Event::TaskStarted(TaskStarted {
        task_id: task_id.parse().unwrap(),
        kind: TaskKind::CleanupRuns,
        attempt,
        worker_id: worker_id.into(),
        at: Utc::now(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_ledger_refuses_is_dead_lettered_and_does_not_block_the_others() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let broker = &stack.broker;
    for _ in 0..2 {
        assert_eq!(
            app.post("/maintenance/cleanup-runs", runs_body())
                .await
                .status(),
            202
        );
    }
    let page: Value = app.get("/tasks").await.json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    let (a, b) = (
        items[0]["task_id"].as_str().unwrap(),
        items[1]["task_id"].as_str().unwrap(),
    );

    // PostgreSQL text cannot hold a NUL character: this event can never be stored.
    broker.publish_event(&started(a, "bad\u{0}worker", 1)).await;
    broker.publish_event(&started(b, "good-worker", 1)).await;
    eventually(
        Duration::from_secs(10),
        "the good event is applied",
        || async {
            let task: Value = app.task(b).await;
            task["status"] == "running"
        },
    )
    .await;
    let dead = broker.topology.dead_queue();
    broker
        .until_ready(&dead, 1, "the refused event rests in the dead queue")
        .await;
    let task: Value = app.task(a).await;
    assert_eq!(task["status"], "queued");

    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_duplicate_events_never_move_a_task_backwards() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let broker = &stack.broker;
    let body: Value = app
        .post("/maintenance/cleanup-runs", runs_body())
        .await
        .json()
        .await
        .unwrap();
    let id = body["task_id"].as_str().unwrap().to_owned();
    let task_id = id.parse().unwrap();
    let failed = |attempt: u32| {
        Event::TaskFailed(TaskFailed {
            task_id,
            kind: TaskKind::CleanupRuns,
            attempt,
            worker_id: "w".into(),
            at: Utc::now(),
            started_at: None,
            error: TaskError {
                class: ErrorClass::Transient,
                message: "late".into(),
            },
            retryable: true,
            next_attempt_at: Some(Utc::now()),
            progress: None,
        })
    };
    let succeeded = Event::TaskSucceeded(TaskSucceeded {
        task_id,
        kind: TaskKind::CleanupRuns,
        attempt: 2,
        worker_id: "w".into(),
        at: Utc::now(),
        started_at: None,
        result: serde_json::json!({"runs_deleted": 7}),
    });
    let status = |app: &TestApp| {
        let path = format!("/tasks/{id}");
        let client = app.client.clone();
        let url = format!("{}{path}", app.address);
        async move {
            let task: Value = client
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                task["status"].as_str().unwrap().to_owned(),
                task["attempts"].as_u64().unwrap(),
            )
        }
    };

    // Attempt 2 succeeds; then attempt 1's events arrive late, and attempt 2's again.
    broker.publish_event(&started(&id, "w", 2)).await;
    broker.publish_event(&succeeded).await;
    eventually(Duration::from_secs(10), "succeeded", || async {
        status(app).await == ("succeeded".into(), 2)
    })
    .await;
    for late in [
        started(&id, "w", 1),
        failed(1),
        started(&id, "w", 2),
        failed(2),
        succeeded.clone(),
    ] {
        broker.publish_event(&late).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(app).await, ("succeeded".into(), 2));
    let task: Value = app.task(&id).await;
    assert_eq!(task["result"]["runs_deleted"], 7);
    assert!(task["error"].is_null());
    assert_eq!(
        app.outbox_len().await,
        1,
        "no retry was scheduled by a late failure"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_carries_the_progress_of_the_failed_attempt() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let broker = &stack.broker;
    let body: Value = app
        .post(
            "/maintenance/cleanup-runs",
            serde_json::json!({"max_age_hours": 48, "max_rows": 100}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = body["task_id"].as_str().unwrap().to_owned();
    let progress = serde_json::json!({"runs_deleted": 40, "batches": 4});
    broker.publish_event(&started(&id, "w", 1)).await;
    broker
        .publish_event(&Event::TaskFailed(TaskFailed {
            task_id: id.parse().unwrap(),
            kind: TaskKind::CleanupRuns,
            attempt: 1,
            worker_id: "w".into(),
            at: Utc::now(),
            started_at: None,
            error: TaskError {
                class: ErrorClass::Transient,
                message: "connection reset".into(),
            },
            retryable: true,
            next_attempt_at: Some(Utc::now()),
            progress: Some(progress.clone()),
        }))
        .await;
    eventually(Duration::from_secs(10), "a retry is scheduled", || async {
        app.outbox_len().await == 2
    })
    .await;
    let envelope: Value =
        sqlx::query_scalar("SELECT envelope FROM cleanup_outbox WHERE attempt = 2")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(envelope["attempt"], 2);
    assert_eq!(envelope["progress"], progress);
    let task: Value = app.task(&id).await;
    assert_eq!(task["status"], "retrying");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partial_result_of_a_final_failure_is_recorded() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let broker = &stack.broker;
    let enqueue = |path: &'static str| {
        let app = &app;
        async move {
            let body: Value = app
                .post(path, serde_json::json!({"max_age_hours": 48}))
                .await
                .json()
                .await
                .unwrap();
            body["task_id"].as_str().unwrap().to_owned()
        }
    };
    let failed = |id: &str, kind: TaskKind, retryable: bool, progress: Value| {
        Event::TaskFailed(TaskFailed {
            task_id: id.parse().unwrap(),
            kind,
            attempt: 1,
            worker_id: "w".into(),
            at: Utc::now(),
            started_at: None,
            error: TaskError {
                class: if retryable {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                },
                message: "boom".into(),
            },
            retryable,
            next_attempt_at: retryable.then(Utc::now),
            progress: Some(progress),
        })
    };
    // A runs cleanup that deleted rows before a permanent error: its progress is the result.
    let runs = enqueue("/maintenance/cleanup-runs").await;
    let runs_progress = serde_json::json!({"runs_deleted": 40, "batches": 4, "dry_run": false});
    broker.publish_event(&started(&runs, "w", 1)).await;
    broker
        .publish_event(&failed(
            &runs,
            TaskKind::CleanupRuns,
            false,
            runs_progress.clone(),
        ))
        .await;
    // A temp-file walk: its progress wraps the result.
    let temp = enqueue("/maintenance/cleanup-temp-files").await;
    let temp_result = serde_json::json!({"files_deleted": 3, "bytes_freed": 300});
    broker
        .publish_event(&failed(
            &temp,
            TaskKind::CleanupTempFiles,
            false,
            serde_json::json!({"result": temp_result, "done": ["a", "b"]}),
        ))
        .await;
    // A failure that is retried keeps no result: the next attempt carries the progress.
    let retried = enqueue("/maintenance/cleanup-runs").await;
    broker
        .publish_event(&failed(
            &retried,
            TaskKind::CleanupRuns,
            true,
            runs_progress.clone(),
        ))
        .await;

    for (id, status) in [(&runs, "failed"), (&temp, "failed"), (&retried, "retrying")] {
        eventually(
            Duration::from_secs(10),
            "the failure is applied",
            || async {
                let task: Value = app.task(id).await;
                task["status"] == status
            },
        )
        .await;
    }
    let task: Value = app.task(&runs).await;
    assert_eq!(task["result"], runs_progress, "{task}");
    assert_eq!(task["result"]["runs_deleted"], 40);
    assert_eq!(task["error"]["message"], "boom");
    let task: Value = app.task(&temp).await;
    assert_eq!(task["result"], temp_result, "{task}");
    let task: Value = app.task(&retried).await;
    assert!(task["result"].is_null(), "{task}");
    stack.stop().await;
}
