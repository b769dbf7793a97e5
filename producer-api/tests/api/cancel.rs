//! `POST /tasks/{id}/cancel` against the ledger, the relay and the recorder (the worker's
//! side is in the worker's end-to-end tests).

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use shared::events::{ErrorClass, TaskError};
use shared::events::{Event, TaskCancelled, TaskFailed, TaskStarted, TaskSucceeded};
use shared::tasks::TaskKind;
use test_support::*;
use uuid::Uuid;

const RUNS: &str = "/maintenance/cleanup-runs";

fn started(id: Uuid, attempt: u32) -> Event {
    Event::TaskStarted(TaskStarted {
        task_id: id,
        kind: TaskKind::CleanupRuns,
        attempt,
        worker_id: "w-test".into(),
        at: Utc::now(),
    })
}

/// Messages of `kind` in the outbox for `id`: (task messages, cancellations).
async fn outbox_of(app: &TestApp, id: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind <> 'cancel'), count(*) FILTER (WHERE kind = 'cancel')
         FROM cleanup_outbox WHERE task_id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let task = app.task(id).await;
        if task["status"] == status {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not {status} within 10 s: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_is_cancelled_at_once_its_message_withdrawn_and_the_cancel_streamed() {
    // No relay: the task's message waits in the outbox.
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 48})).await;
    assert_eq!(outbox_of(app, &id).await, (1, 0));

    let (status, task) = app.cancel(&id).await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["status"], "cancelled", "{task}");
    assert!(task["finished_at"].is_string() && task["cancel_requested_at"].is_string());
    assert_eq!(task["cancelled_by"], task["actor"], "{task}");
    assert!(task["result"].is_null(), "nothing ran: {task}");
    assert_eq!(
        outbox_of(app, &id).await,
        (0, 1),
        "the task message is withdrawn, a cancellation queued"
    );
    // Twice is fine, and sends nothing more.
    let (status, again) = app.cancel(&id).await;
    assert_eq!((status, &again["status"]), (200, &json!("cancelled")));
    assert_eq!(again["cancel_requested_at"], task["cancel_requested_at"]);
    assert_eq!(outbox_of(app, &id).await, (0, 1));

    // A relay publishes the cancellation on the stream, and never the task.
    let relay = stack.another_app(AppOptions::default()).await;
    relay.wait_outbox_empty(Duration::from_secs(10)).await;
    let streamed = stack.broker.cancellations(1, Duration::from_secs(3)).await;
    assert_eq!(streamed, vec![id.parse::<Uuid>().unwrap()]);
    assert_eq!(stack.broker.queue_len(TaskKind::CleanupRuns).await, 0);
    let listed: Value = app
        .get("/tasks?status=cancelled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["task_id"], id.as_str(), "{listed}");

    // A cancelled task can be retried.
    let response = app
        .send(reqwest::Method::POST, &format!("/tasks/{id}/retry"), None)
        .await;
    assert_eq!(response.status(), 202);
    let retry: Value = response.json().await.unwrap();
    assert_eq!(retry["retry_of"], id.as_str());
    assert_eq!(retry["status"], "queued");
    relay.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_task_loses_its_next_attempt() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 48})).await;
    // Attempt 1 is on its queue (as when a worker starts it) before its events are faked.
    app.wait_outbox_empty(Duration::from_secs(10)).await;
    let task_id: Uuid = id.parse().unwrap();
    stack.broker.publish_event(&started(task_id, 1)).await;
    wait_status(app, &id, "running").await;
    let at = Utc::now();
    let failed = Event::TaskFailed(TaskFailed {
        task_id,
        kind: TaskKind::CleanupRuns,
        attempt: 1,
        worker_id: "w-test".into(),
        at,
        started_at: None,
        error: TaskError {
            class: ErrorClass::Transient,
            message: "connection refused".into(),
        },
        retryable: true,
        next_attempt_at: Some(at + chrono::Duration::hours(1)),
        progress: Some(json!({"runs_deleted": 3})),
    });
    stack.broker.publish_event(&failed).await;
    wait_status(app, &id, "retrying").await;
    assert_eq!(outbox_of(app, &id).await, (1, 0), "attempt 2 waits");

    let (status, task) = app.cancel(&id).await;
    assert_eq!(
        (status, &task["status"]),
        (200, &json!("cancelled")),
        "{task}"
    );
    assert!(task["next_attempt_at"].is_null(), "{task}");
    assert_eq!(
        task["result"]["runs_deleted"], 3,
        "what attempt 1 deleted stays the result: {task}"
    );
    app.wait_outbox_empty(Duration::from_secs(10)).await;
    assert_eq!(
        stack
            .broker
            .cancellations(1, Duration::from_secs(3))
            .await
            .len(),
        1
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_asked_to_stop_and_ends_cancelled_with_what_it_deleted() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 48})).await;
    let task_id: Uuid = id.parse().unwrap();
    stack.broker.publish_event(&started(task_id, 1)).await;
    wait_status(app, &id, "running").await;

    let (status, task) = app.cancel(&id).await;
    assert_eq!(status, 202, "{task}");
    assert_eq!(task["status"], "running", "its worker stops it: {task}");
    assert!(task["cancel_requested_at"].is_string(), "{task}");
    assert_eq!(app.cancel(&id).await.0, 202, "asking twice is fine");
    // ... and sends the cancellation again, in case a worker missed it.
    let sent = stack.broker.cancellations(2, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 2, "{sent:?}");

    // The worker stops at a batch boundary and says what it deleted.
    let stopped = Event::TaskCancelled(TaskCancelled {
        task_id,
        kind: TaskKind::CleanupRuns,
        attempt: 1,
        worker_id: "w-test".into(),
        at: Utc::now(),
        started: true,
        progress: Some(json!({"runs_deleted": 7, "batches": 2})),
    });
    stack.broker.publish_event(&stopped).await;
    let task = wait_status(app, &id, "cancelled").await;
    assert_eq!(task["result"]["runs_deleted"], 7, "{task}");
    assert!(task["finished_at"].is_string(), "{task}");
    assert_eq!(app.cancel(&id).await.0, 200, "cancelled already");

    // A worker that starts it anyway (a message it missed the cancel of) is answered with
    // the cancellation again.
    app.wait_outbox_empty(Duration::from_secs(10)).await;
    stack.broker.publish_event(&started(task_id, 2)).await;
    let streamed = stack.broker.cancellations(3, Duration::from_secs(5)).await;
    assert_eq!(
        streamed,
        vec![task_id, task_id, task_id],
        "sent on the cancel, on the second request, and on the late start"
    );
    assert_eq!(app.task(&id).await["status"], "cancelled");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_not_cancelled_and_unknown_ids_are_refused() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 48})).await;
    let task_id: Uuid = id.parse().unwrap();
    let succeeded = Event::TaskSucceeded(TaskSucceeded {
        task_id,
        kind: TaskKind::CleanupRuns,
        attempt: 1,
        worker_id: "w-test".into(),
        at: Utc::now(),
        started_at: None,
        result: json!({"runs_deleted": 1}),
    });
    stack.broker.publish_event(&succeeded).await;
    wait_status(app, &id, "succeeded").await;
    let outbox_before = app.outbox_len().await;

    let (status, problem) = app.cancel(&id).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["task_status"], "succeeded", "{problem}");
    assert_eq!(problem["task_id"], id.as_str(), "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("succeeded"),
        "{problem}"
    );
    assert_eq!(app.task(&id).await["status"], "succeeded");
    assert!(app.task(&id).await["cancel_requested_at"].is_null());
    assert_eq!(app.outbox_len().await, outbox_before, "nothing was sent");

    let (status, problem) = app.cancel(&Uuid::now_v7().to_string()).await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = app.cancel("not-a-uuid").await;
    assert_eq!(status, 400, "{problem}");
    stack.stop().await;
}

/// Cancellations go out before a backlog of task messages; a task message a cancel could
/// not withdraw (a relay held it) is dropped, not published; and no change of status
/// leaves `cancelled` but `succeeded` (an older replica's recorder would try).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_jump_the_backlog_and_cancelled_tasks_stay_cancelled() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(stack.enqueue(RUNS, json!({"max_age_hours": 48})).await);
    }
    assert_eq!(app.cancel(&ids[4]).await.0, 200);
    let mut tx = app.pool.begin().await.unwrap();
    let claimed = producer_api::ledger::outbox::claim_due(&mut tx, 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        claimed[0].is_cancel(),
        "the cancellation first: {claimed:?}"
    );
    tx.rollback().await.unwrap();

    // A message of a cancelled task that stayed in the outbox (as when a relay held it
    // while the cancel ran): put one back.
    assert_eq!(app.cancel(&ids[3]).await.0, 200);
    sqlx::query(
        "INSERT INTO cleanup_outbox (task_id, attempt, kind, envelope)
         SELECT $2::uuid, 1, 'cleanup_runs', envelope FROM cleanup_outbox
         WHERE task_id = $1::uuid AND kind = 'cleanup_runs'",
    )
    .bind(&ids[0])
    .bind(&ids[3])
    .execute(&app.pool)
    .await
    .unwrap();
    let relay = stack.another_app(AppOptions::default()).await;
    relay.wait_outbox_empty(Duration::from_secs(10)).await;
    let published = stack.broker.drain_ids(TaskKind::CleanupRuns).await;
    assert_eq!(
        published,
        ids[..3].to_vec(),
        "no message of a cancelled task goes out"
    );

    // An older recorder, which does not know `cancelled` is final, changes nothing.
    for status in ["running", "retrying", "failed", "queued"] {
        let moved = sqlx::query("UPDATE cleanup_tasks SET status = $2 WHERE id = $1::uuid")
            .bind(&ids[4])
            .bind(status)
            .execute(&app.pool)
            .await
            .unwrap();
        assert_eq!(moved.rows_affected(), 0, "{status}");
    }
    assert_eq!(app.task(&ids[4]).await["status"], "cancelled");
    relay.stop().await;
    stack.stop().await;
}
