//! The built `cleanupctl` binary against a real producer-api (and a worker where a task
//! must finish), PostgreSQL and RabbitMQ.

use std::time::Duration;

use serde_json::Value;
use test_support::*;

const READ: &str = "viewer-secret-0123456789ab";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Run cleanupctl against `server` with `token`.
async fn ctl_at(server: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cleanupctl"));
    command
        .env_remove("CLEANUP_SERVER")
        .env_remove("CLEANUP_TOKEN")
        .arg("--server")
        .arg(server);
    if let Some(token) = token {
        command.arg("--token").arg(token);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.args(args).output())
        .await
        .expect("cleanupctl finished within 60 s")
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn ctl(app: &TestApp, args: &[&str]) -> Run {
    ctl_at(&app.address, Some(TOKEN), args).await
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_schedules() {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;
    eventually(Duration::from_secs(15), "the worker is up", || async {
        ctl(app, &["workers", "list"]).await.stdout.contains(" up ")
    })
    .await;
    worker.stop().await;
    eventually(Duration::from_secs(15), "the worker stopped", || async {
        ctl(app, &["workers", "list", "--status", "stopped"])
            .await
            .stdout
            .lines()
            .count()
            == 2
    })
    .await;
    let listed = ctl(app, &["-o", "json", "workers", "list"]).await.json();
    assert_eq!(listed["items"][0]["status"], "stopped", "{listed}");
    let preview = ctl(app, &["-o", "json", "workers", "prune", "--dry-run"])
        .await
        .json();
    assert_eq!(preview["pruned"].as_array().unwrap().len(), 1, "{preview}");
    assert_eq!(preview["dry_run"], true);
    let out = ctl(app, &["workers", "prune", "--dry-run"]).await;
    assert!(
        out.stdout.contains("Would prune worker '") && out.stdout.contains("(stopped "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("1 worker(s) would be pruned, 0 skipped (up)"),
        "{}",
        out.stdout
    );
    let out = ctl(app, &["workers", "prune"]).await;
    assert!(out.stdout.contains("1 worker(s) pruned"), "{}", out.stdout);

    let dir = tempdir();
    let file = dir.join("schedules.yaml");
    let write = |cron: &str| {
        std::fs::write(
            &file,
            format!("schedules:\n  - name: nightly\n    kind: cleanup_runs\n    params: {{max_age_hours: 720}}\n    cron: \"{cron}\"\n"),
        )
        .unwrap()
    };
    write("30 2 * * *");
    let path = file.to_str().unwrap();
    let plan = ctl(app, &["schedules", "apply", "-f", path, "--dry-run"]).await;
    assert_eq!(
        plan.stdout,
        "+ nightly (create)\nDry run: nothing was changed.\n"
    );
    let plan = ctl(
        app,
        &["-o", "json", "schedules", "apply", "-f", path, "--dry-run"],
    )
    .await;
    assert_eq!(
        plan.json()["schedules"][0]["action"],
        "create",
        "{}",
        plan.stdout
    );
    assert_eq!(
        ctl(app, &["schedules", "list"])
            .await
            .stdout
            .lines()
            .count(),
        1
    );
    assert_eq!(
        ctl(app, &["schedules", "apply", "-f", path]).await.stdout,
        "+ nightly (create)\n"
    );
    assert_eq!(
        ctl(app, &["schedules", "apply", "-f", path]).await.stdout,
        "= nightly (unchanged)\n"
    );
    write("0 3 * * *");
    let plan = ctl(app, &["schedules", "apply", "-f", path, "--dry-run"]).await;
    assert!(
        plan.stdout
            .contains("~ nightly (replace)\n    cron: \"30 2 * * *\" → \"0 3 * * *\""),
        "{}",
        plan.stdout
    );
    let get = ctl(app, &["-o", "json", "schedules", "get", "nightly"]).await;
    assert_eq!(
        get.json()["cron"],
        "30 2 * * *",
        "a dry run changes nothing"
    );

    let listed = ctl(app, &["-o", "json", "schedules", "list"]).await.json();
    assert_eq!(listed["schedules"][0]["name"], "nightly", "{listed}");
    let table = ctl(app, &["schedules", "list"]).await.stdout;
    assert!(
        table.lines().nth(1).unwrap().starts_with("nightly "),
        "{table}"
    );
    let out = ctl(app, &["schedules", "pause", "nightly"]).await;
    assert!(
        out.stdout.starts_with("Paused schedule 'nightly'"),
        "{}",
        out.stdout
    );
    let out = ctl(app, &["schedules", "resume", "nightly"]).await;
    assert!(
        out.stdout
            .starts_with("Resumed schedule 'nightly'; it fires next at 20"),
        "{}",
        out.stdout
    );
    let out = ctl(app, &["schedules", "trigger", "nightly"]).await;
    assert!(
        out.stdout.starts_with("Schedule 'nightly' fired task "),
        "{}",
        out.stdout
    );
    let out = ctl(app, &["schedules", "delete", "nightly"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = ctl(app, &["schedules", "get", "nightly"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);

    let bash = ctl(app, &["completion", "bash"]).await;
    assert!(bash.stdout.contains("_cleanupctl()"), "{}", bash.stdout);
    let version = ctl(app, &["--version"]).await;
    assert_eq!(
        version.stdout.trim(),
        format!("cleanupctl {}", env!("CARGO_PKG_VERSION"))
    );
    let _ = std::fs::remove_dir_all(&dir);
    stack.stop().await;
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cleanupctl-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
