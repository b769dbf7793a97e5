//! Cleanups, the task commands and the errors every command may meet.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_is_dry_run_then_run_and_waited_for_in_text_and_json() {
    let runs = RunsDb::create().await;
    runs.insert(1_000, "succeeded", Some(100.0), 0).await;
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;

    let dry = ctl(app, &["runs", "--older-than", "1d", "--dry-run", "--wait"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout
            .contains("Would delete 1,000 runs (succeeded, failed, cancelled) finished before"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("oldest 4 days. Nothing was deleted (dry run)."),
        "{}",
        dry.stdout
    );
    assert_eq!(runs.count("SELECT count(*) FROM runs").await, 1_000);

    let real = ctl(
        app,
        &[
            "-o",
            "json",
            "runs",
            "--older-than",
            "24h",
            "--max-rows",
            "400",
            "--wait",
        ],
    )
    .await;
    assert_eq!(real.code, 0, "{}", real.stderr);
    let task = real.json();
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["result"]["runs_deleted"], 400);
    assert_eq!(task["params"]["max_age_hours"], 24.0);
    assert_eq!(runs.count("SELECT count(*) FROM runs").await, 600);

    let text = ctl(
        app,
        &[
            "runs",
            "--older-than",
            "1d",
            "--batch-size",
            "300",
            "--wait",
        ],
    )
    .await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("Deleted 600 runs in "),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains(" batches ("),
        "at most 300 a batch: {}",
        text.stdout
    );

    // Without --wait: the id and where to look.
    let queued = ctl(
        app,
        &[
            "runs",
            "--older-than",
            "90m",
            "--dry-run",
            "--idempotency-key",
            "k-1",
        ],
    )
    .await;
    assert_eq!(queued.code, 0, "{}", queued.stderr);
    assert!(
        queued.stdout.contains(" accepted (queued)."),
        "{}",
        queued.stdout
    );
    assert!(
        queued.stdout.contains("Location: /tasks/"),
        "{}",
        queued.stdout
    );
    let replay = ctl(
        app,
        &[
            "runs",
            "--older-than",
            "90m",
            "--dry-run",
            "--idempotency-key",
            "k-1",
        ],
    )
    .await;
    assert!(
        replay
            .stdout
            .contains("was accepted before with this Idempotency-Key"),
        "{}",
        replay.stdout
    );

    // Every task, one page at a time.
    let all = ctl(
        app,
        &["-o", "json", "tasks", "list", "--limit", "1", "--all"],
    )
    .await;
    assert_eq!(
        all.json()["items"].as_array().unwrap().len(),
        4,
        "{}",
        all.stdout
    );
    let table = ctl(app, &["tasks", "list", "--status", "succeeded"]).await;
    assert!(table.stdout.starts_with("TASK"), "{}", table.stdout);
    assert!(
        table.stdout.lines().count() >= 4,
        "header + 3 succeeded: {}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .lines()
            .skip(1)
            .all(|l| l.contains(" succeeded ")),
        "{}",
        table.stdout
    );
    let id = task["task_id"].as_str().unwrap();
    let get = ctl(app, &["tasks", "get", id]).await;
    assert!(
        get.stdout.contains(&format!(
            "Task {id} (cleanup_runs) is succeeded, attempt 1 of"
        )),
        "{}",
        get.stdout
    );
    assert!(
        get.stdout.contains("Deleted 400 runs in "),
        "{}",
        get.stdout
    );
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_1_when_the_task_fails_or_is_cancelled_and_3_when_it_runs_out() {
    let stack = Stack::start().await;
    let app = &stack.app;
    // No worker yet: the wait runs out, and says the task goes on.
    let out = ctl(
        app,
        &[
            "runs",
            "--older-than",
            "2d",
            "--wait",
            "--wait-timeout",
            "1s",
        ],
    )
    .await;
    assert_eq!(out.code, 3, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("is still queued after 1s; it goes on"),
        "{}",
        out.stderr
    );
    let page: Value = app.get("/tasks").await.json().await.unwrap();
    let id = page["items"][0]["task_id"].as_str().unwrap().to_owned();

    let cancelled = ctl(app, &["tasks", "cancel", &id]).await;
    assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
    assert_eq!(cancelled.stdout.trim(), format!("Task {id} is cancelled."));
    let watch = ctl(app, &["tasks", "watch", &id]).await;
    assert_eq!(watch.code, 1, "{}", watch.stderr);
    assert!(
        watch.stderr.contains(&format!("task {id} cancelled")),
        "{}",
        watch.stderr
    );
    let watched = ctl(app, &["-o", "json", "tasks", "watch", &id]).await;
    assert_eq!(watched.code, 1);
    assert_eq!(
        watched.json()["status"],
        "cancelled",
        "only the final document"
    );
    let again = ctl(app, &["-o", "json", "tasks", "cancel", &id]).await;
    assert_eq!(
        (again.code, &again.json()["status"]),
        (0, &Value::from("cancelled"))
    );

    // A root the worker does not have fails a temp-file task for good.
    let dir = std::env::temp_dir().join(format!("cleanupctl-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let worker = stack.worker(&[temp_root_flag("scratch", &dir)]).await;
    let failed = ctl(
        app,
        &[
            "temp-files",
            "--older-than",
            "1d",
            "--root",
            "elsewhere",
            "--wait",
        ],
    )
    .await;
    assert_eq!(failed.code, 1, "{} {}", failed.stdout, failed.stderr);
    assert!(failed.stdout.contains("is failed"), "{}", failed.stdout);
    assert!(
        failed
            .stdout
            .contains("Last error (permanent): unknown temp root `elsewhere`"),
        "{}",
        failed.stdout
    );
    assert!(failed.stderr.contains("failed"), "{}", failed.stderr);

    // A cancelled task can be retried, and finished ones cannot be cancelled.
    let retried = ctl(app, &["-o", "json", "tasks", "retry", &id]).await;
    assert_eq!(retried.code, 0, "{}", retried.stderr);
    assert_eq!(retried.json()["retry_of"], id.as_str());
    let failed_id = failed.stdout.split_whitespace().nth(1).unwrap().to_owned();
    let refused = ctl(app, &["tasks", "cancel", &failed_id]).await;
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("refused (409): task")
            && refused.stderr.contains("is failed already"),
        "{}",
        refused.stderr
    );

    // A succeeded dry run runs for real, once, with its own cutoff.
    let dry = ctl(
        app,
        &[
            "temp-files",
            "--older-than",
            "1d",
            "--root",
            "scratch",
            "--dry-run",
            "--wait",
        ],
    )
    .await;
    assert_eq!(dry.code, 0, "{} {}", dry.stdout, dry.stderr);
    let dry_id = dry.stdout.split_whitespace().nth(1).unwrap().to_owned();
    let real = ctl(app, &["-o", "json", "tasks", "run", &dry_id, "--wait"]).await;
    assert_eq!(real.code, 0, "{} {}", real.stdout, real.stderr);
    assert_eq!(real.json()["dry_run_of"], dry_id.as_str());
    assert_eq!(real.json()["params"]["dry_run"], false);
    assert_eq!(real.json()["status"], "succeeded");
    let twice = ctl(app, &["tasks", "run", &dry_id]).await;
    assert_eq!(twice.code, 4, "{}", twice.stderr);
    assert!(
        twice.stderr.contains("was run for real already"),
        "{}",
        twice.stderr
    );
    worker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_one_line_and_its_exit_code() {
    let tokens = format!("--api-tokens=viewer:read:{READ}");
    let stack = Stack::start_with(AppOptions::with_args(&[&tokens])).await;
    let app = &stack.app;
    let server = app.address.as_str();

    let out = ctl_at("http://127.0.0.1:9", Some(TOKEN), &["tasks", "list"]).await;
    assert_eq!(out.code, 5);
    assert!(
        out.stderr
            .starts_with("cleanupctl: cannot reach the API at http://127.0.0.1:9"),
        "{}",
        out.stderr
    );

    let out = ctl_at(server, None, &["tasks", "list"]).await;
    assert_eq!(out.code, 4);
    assert!(
        out.stderr.contains("(401): no token given: pass --token"),
        "{}",
        out.stderr
    );
    let out = ctl_at(
        server,
        Some("wrong-token-0123456789abcdef"),
        &["tasks", "list"],
    )
    .await;
    assert_eq!(out.code, 4);
    assert!(
        out.stderr.contains("refused the token (401)"),
        "{}",
        out.stderr
    );

    let out = ctl_at(server, Some(READ), &["runs", "--older-than", "2d"]).await;
    assert_eq!(out.code, 4);
    assert!(
        out.stderr.contains("not allowed (403)") && out.stderr.contains("`enqueue`"),
        "{}",
        out.stderr
    );
    assert_eq!(app.task_count().await, 0, "nothing stored");

    // Below the floor (MIN_AGE_HOURS 1): the problem's detail and field.
    let out = ctl(app, &["-o", "json", "runs", "--older-than", "30m"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("refused (422)") && out.stderr.contains("(field `max_age_hours`)"),
        "{}",
        out.stderr
    );
    assert_eq!(out.json()["status"], 422, "the problem, for scripts");

    let out = ctl(
        app,
        &["tasks", "get", "0196f7a0-0000-7000-8000-000000000000"],
    )
    .await;
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("refused (404)"), "{}", out.stderr);
    let out = ctl(app, &["tasks", "get", "../workers"]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("is not a task id"), "{}", out.stderr);
    let out = ctl(app, &["runs", "--older-than", "-3d"]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("negative"), "{}", out.stderr);

    // A 5xx from whatever answers at --server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = [0u8; 4096];
        let _ = socket.read(&mut buffer).await;
        let body = r#"{"type":"urn:cleanup:problem:ledger-unavailable","title":"Service Unavailable","status":503,"detail":"the task ledger is unavailable; nothing was stored, retry later"}"#;
        let answer = format!("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        socket.write_all(answer.as_bytes()).await.unwrap();
    });
    let out = ctl_at(&address, Some(TOKEN), &["tasks", "list"]).await;
    assert_eq!(out.code, 5);
    assert!(
        out.stderr
            .contains("the API failed (503): the task ledger is unavailable"),
        "{}",
        out.stderr
    );
    stack.stop().await;
}
