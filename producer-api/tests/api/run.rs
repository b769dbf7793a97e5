//! `POST /tasks/{id}/run`: a succeeded dry run, run for real with the same parameters and
//! cutoff, once; and the history of failed attempts a task page shows.

use chrono::Utc;
use producer_api::ledger::transitions::{apply, Change};
use serde_json::{json, Value};
use shared::events::{ErrorClass, TaskError, TaskFailed};
use shared::tasks::TaskKind;
use test_support::*;

const DRY_RUN: &str = "ci-dry-run-token-0123456789";
const RUNS: &str = "/maintenance/cleanup-runs";
const TEMP: &str = "/maintenance/cleanup-temp-files";

/// A dry run (no statuses, no root named) that succeeded with `result`.
async fn dry_run_with(stack: &Stack, path: &str, result: Value) -> String {
    let id = stack
        .enqueue(path, json!({"max_age_hours": 48, "dry_run": true}))
        .await;
    succeed(&stack.app, &id, result).await;
    id
}

async fn succeed(app: &TestApp, id: &str, result: Value) {
    sqlx::query("UPDATE cleanup_tasks SET status = 'succeeded', result = $2 WHERE id = $1::uuid")
        .bind(id)
        .bind(result)
        .execute(&app.pool)
        .await
        .unwrap();
}

async fn mark(app: &TestApp, id: &str, status: &str) {
    sqlx::query(
        "UPDATE cleanup_tasks SET status = $2, result = '{\"runs_matched\": 3}', finished_at = now()
         WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(status)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_succeeded_dry_run_runs_for_real_once_with_its_own_cutoff() {
    let tokens = format!("--api-tokens=ci:dry-run:{DRY_RUN}");
    let mut options = AppOptions::with_args(&[&tokens]);
    options.relay_enabled = false;
    let stack = Stack::start_with(options).await;
    let app = &stack.app;
    let params =
        json!({"max_age_hours": 48, "dry_run": true, "max_rows": 10, "statuses": ["failed"]});
    let dry = stack.enqueue("/maintenance/cleanup-runs", params).await;
    let run = |id: String| async move {
        app.send(reqwest::Method::POST, &format!("/tasks/{id}/run"), None)
            .await
    };

    // Not finished yet: nothing to run.
    let early = run(dry.clone()).await;
    assert_eq!(early.status(), 409);
    assert!(early
        .text()
        .await
        .unwrap()
        .contains("only a succeeded dry run"));

    mark(app, &dry, "succeeded").await;
    // A dry-run token may not run anything for real.
    let refused = app
        .client
        .post(format!("{}/tasks/{dry}/run", app.address))
        .bearer_auth(DRY_RUN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(app.task_count().await, 1);

    let created = run(dry.clone()).await;
    assert_eq!(created.status(), 202);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let real: Value = created.json().await.unwrap();
    assert_eq!(
        location,
        format!("/tasks/{}", real["task_id"].as_str().unwrap())
    );
    let original = app.task(&dry).await;
    assert_eq!(real["params"]["dry_run"], false);
    assert_eq!(real["params"]["max_rows"], 10);
    assert_eq!(real["params"]["statuses"], json!(["failed"]));
    assert_eq!(
        real["cutoff"], original["cutoff"],
        "the dry run's cutoff, not a new one"
    );
    assert_eq!(real["dry_run_of"], dry.as_str());
    assert_eq!(real["status"], "queued");
    assert_eq!(
        app.outbox_len().await,
        2,
        "the real run's message waits in the outbox"
    );

    // Once only; the real run is not a dry run; unknown ids are 404.
    let again = run(dry.clone()).await;
    assert_eq!(again.status(), 409);
    assert!(again
        .text()
        .await
        .unwrap()
        .contains(real["task_id"].as_str().unwrap()));
    let real_id = real["task_id"].as_str().unwrap().to_owned();
    mark(app, &real_id, "succeeded").await;
    let not_dry = run(real_id).await;
    assert_eq!(not_dry.status(), 409);
    assert!(not_dry.text().await.unwrap().contains("not a dry run"));
    assert_eq!(
        run("00000000-0000-0000-0000-000000000000".into())
            .await
            .status(),
        404
    );
    assert_eq!(run("nope".into()).await.status(), 400);
    assert_eq!(app.task_count().await, 2);

    // What the dry run's worker chose by itself goes into the real run's parameters: a
    // worker configured otherwise must not widen it.
    let open = dry_run_with(&stack, RUNS, json!({"runs_matched": 1})).await;
    assert_eq!(
        run(open.clone()).await.status(),
        409,
        "no statuses in the result: refused"
    );
    succeed(
        app,
        &open,
        json!({"runs_matched": 1, "statuses": ["failed", "cancelled"]}),
    )
    .await;
    let pinned: Value = run(open).await.json().await.unwrap();
    assert_eq!(
        pinned["params"]["statuses"],
        json!(["failed", "cancelled"]),
        "{pinned}"
    );
    let several = dry_run_with(
        &stack,
        TEMP,
        json!({"files_matched": 1, "roots": ["a", "b"]}),
    )
    .await;
    let refused = run(several).await;
    assert_eq!(refused.status(), 409);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("several roots (a, b)"));
    let one = dry_run_with(
        &stack,
        TEMP,
        json!({"files_matched": 1, "roots": ["scratch"]}),
    )
    .await;
    let one: Value = run(one).await.json().await.unwrap();
    assert_eq!(one["params"]["root"], "scratch", "{one}");
    assert_eq!(one["params"]["dry_run"], false);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_attempt_is_kept_for_the_timeline() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let id = stack
        .enqueue("/maintenance/cleanup-runs", json!({"max_age_hours": 48}))
        .await;
    let task_id = id.parse().unwrap();
    for (attempt, worker, message) in [(1, "w-1", "connection reset"), (2, "w-2", "lock timeout")] {
        let failed = TaskFailed {
            task_id,
            kind: TaskKind::CleanupRuns,
            attempt,
            worker_id: worker.into(),
            at: Utc::now(),
            started_at: None,
            error: TaskError {
                class: ErrorClass::Transient,
                message: message.into(),
            },
            retryable: true,
            next_attempt_at: Some(Utc::now()),
            progress: None,
        };
        apply(&app.pool, &[Change::Failed(&failed)]).await.unwrap();
        // A duplicate of the event adds nothing.
        apply(&app.pool, &[Change::Failed(&failed)]).await.unwrap();
    }
    let rows: Vec<(i32, String, Value)> = sqlx::query_as(
        "SELECT attempt, worker_id, error FROM cleanup_task_attempts WHERE task_id = $1 ORDER BY attempt",
    )
    .bind(task_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].0, rows[0].1.as_str()), (1, "w-1"));
    assert_eq!(rows[1].2["message"], "lock timeout");
    assert_eq!(rows[1].2["class"], "transient");
    assert_eq!(app.task(&id).await["status"], "retrying");
    stack.stop().await;
}
