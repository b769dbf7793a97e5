//! Waiting for what happens asynchronously: a condition, a task's end.

use std::time::Duration;

use serde_json::Value;

use crate::app::TestApp;

/// Wait until `check` holds, polling; fail with `what` after `within`, also when a check
/// itself hangs.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(true) => return,
            Ok(false) if tokio::time::Instant::now() < deadline => {}
            Ok(false) => panic!("timed out waiting for: {what}"),
            Err(_) => panic!("timed out waiting for: {what} (the last check was still running)"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enqueue through the API and return the task id (the request must be accepted: 202).
pub async fn enqueue(app: &TestApp, path: &str, body: Value) -> String {
    let response = app.post(path, body).await;
    assert_eq!(response.status(), 202, "enqueue {path}");
    let body: Value = response.json().await.unwrap();
    body["task_id"].as_str().unwrap().to_owned()
}

/// Poll `GET /tasks/{id}` until its status is one of `finished`; return the task.
pub async fn wait_for(app: &TestApp, task_id: &str, finished: &[&str], within: Duration) -> Value {
    let what = format!("{finished:?}");
    wait_until(app, task_id, within, &what, |task| {
        finished.contains(&task["status"].as_str().unwrap_or_default())
    })
    .await
}

/// Poll `GET /tasks/{id}` until the task satisfies `check` (described by `what`); return
/// the task.
pub async fn wait_until(
    app: &TestApp,
    task_id: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // The client gives up on a request that does not answer (`STOP_LIMIT`).
        let task = app.task(task_id).await;
        if check(&task) {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {task_id} did not reach {what} within {within:?}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The statuses a task ends in, for [`wait_for`].
pub const DONE: &[&str] = &["succeeded", "failed", "dead", "cancelled"];

/// [`enqueue`] a task and [`wait_for`] it to end ([`DONE`]) within `within`; return the
/// task as `GET /tasks/{id}` shows it.
pub async fn run_task(app: &TestApp, path: &str, body: Value, within: Duration) -> Value {
    let id = enqueue(app, path, body).await;
    wait_for(app, &id, DONE, within).await
}
