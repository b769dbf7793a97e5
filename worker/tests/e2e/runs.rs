use std::time::Duration;

use serde_json::json;
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_predicts_exactly_what_the_real_run_deletes() {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;

    // Eligible: finished (terminal) and older than 48 h.
    let old_succeeded = runs.insert(10, "succeeded", Some(100.0), 3).await;
    runs.insert(5, "failed", Some(72.0), 3).await;
    runs.insert(3, "cancelled", Some(49.0), 0).await;
    // Never eligible: not terminal, too young, or never finished.
    let running = runs.insert(4, "running", Some(100.0), 2).await;
    let young = runs.insert(6, "succeeded", Some(47.0), 2).await;
    runs.insert(2, "queued", None, 0).await;

    let dry = enqueue(
        app,
        RUNS,
        json!({"max_age_hours": 48, "dry_run": true, "batch_size": 4}),
    )
    .await;
    let task = wait_for(app, &dry, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let result = &task["result"];
    assert_eq!(result["dry_run"], true);
    assert_eq!(result["runs_matched"], 18);
    assert_eq!(result["runs_deleted"], 0);
    // The oldest first, ties in key order (10 runs finished at the same instant: 1, 2,
    // ..., 10, not the text order 1, 10, 2, ...).
    let oldest: Vec<String> = old_succeeded.iter().map(i64::to_string).collect();
    assert_eq!(result["sample_ids"], json!(oldest), "oldest first");
    assert!(result["oldest_remaining_age_seconds"].as_f64().unwrap() > 99.0 * 3600.0);
    assert_eq!(task["attempts"], 1);
    assert_eq!(
        runs.count("SELECT count(*) FROM runs").await,
        30,
        "a dry run deletes nothing"
    );

    let task = stack
        .run(RUNS, json!({"max_age_hours": 48, "batch_size": 4}))
        .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let result = &task["result"];
    assert_eq!(
        result["runs_deleted"], 18,
        "exactly what the dry run predicted"
    );
    assert_eq!(result["runs_matched"], 18);
    assert_eq!(result["batches"], 5, "18 rows in batches of 4");
    assert!(result["oldest_remaining_age_seconds"].is_null());

    // Survivors: exactly the non-terminal, young and unfinished runs, with their logs.
    assert_eq!(runs.count("SELECT count(*) FROM runs").await, 12);
    let survivors: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM runs WHERE status IN ('running', 'succeeded') ORDER BY id",
    )
    .fetch_all(&runs.pool)
    .await
    .unwrap();
    let mut expected = running.clone();
    expected.extend(&young);
    expected.sort();
    assert_eq!(survivors, expected);
    assert_eq!(
        runs.count("SELECT count(*) FROM run_logs").await,
        4 * 2 + 6 * 2,
        "children went with their runs"
    );

    let metrics = worker.metrics().await;
    assert!(
        metrics.contains("cleanup_runs_deleted_total{table=\"runs\"} 18"),
        "{metrics}"
    );
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_filters_and_max_rows_narrow_what_is_deleted() {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;

    runs.insert(7, "failed", Some(100.0), 1).await;
    runs.insert(5, "succeeded", Some(100.0), 1).await;

    let task = stack
        .run(
            RUNS,
            json!({"max_age_hours": 24, "statuses": ["failed"], "max_rows": 4}),
        )
        .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["runs_deleted"], 4);
    assert_eq!(task["result"]["capped"], true);
    assert!(
        task["result"]["oldest_remaining_age_seconds"]
            .as_f64()
            .unwrap()
            > 99.0 * 3600.0
    );
    assert_eq!(
        runs.count("SELECT count(*) FROM runs WHERE status = 'failed'")
            .await,
        3
    );
    assert_eq!(
        runs.count("SELECT count(*) FROM runs WHERE status = 'succeeded'")
            .await,
        5
    );
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_runs_table_fails_the_task_permanently_at_once() {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.db.url()),
            "--runs-table=no_such_table".into(),
        ])
        .await;
    let task = stack.run(RUNS, json!({"max_age_hours": 24})).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["attempts"], 1, "permanent errors are not retried");
    assert_eq!(task["error"]["class"], "permanent");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_table"),
        "{task}"
    );

    // The table made, the failed task is retried: a new task, linked both ways, that runs.
    sqlx::raw_sql(
        "CREATE TABLE no_such_table (id bigint PRIMARY KEY, status text NOT NULL,
                                     finished_at timestamptz);
         INSERT INTO no_such_table SELECT g, 'succeeded', now() - interval '3 days'
         FROM generate_series(1, 5) g;",
    )
    .execute(&runs.pool)
    .await
    .unwrap();
    let id = task["task_id"].as_str().unwrap();
    let response = stack
        .app
        .post(&format!("/tasks/{id}/retry"), json!({"keep_cutoff": true}))
        .await;
    assert_eq!(response.status(), 202);
    let retry: serde_json::Value = response.json().await.unwrap();
    assert_eq!(retry["retry_of"], task["task_id"], "{retry}");
    assert_eq!(retry["params"], task["params"]);
    assert_eq!(retry["cutoff"], task["cutoff"], "keep_cutoff");
    let retry_id = retry["task_id"].as_str().unwrap().to_owned();
    let done = wait_for(&stack.app, &retry_id, DONE, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["runs_deleted"], 5, "{done}");
    let original = stack.app.task(id).await;
    assert_eq!(original["retried_by"], retry["task_id"], "{original}");
    // Retried once only; and a task that succeeded is not retried.
    for again in [id, retry_id.as_str()] {
        let response = stack
            .app
            .post(&format!("/tasks/{again}/retry"), json!({}))
            .await;
        assert_eq!(response.status(), 409, "{again}");
    }
    worker.stop().await;
    stack.stop().await;
}
