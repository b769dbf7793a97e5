use std::time::Duration;

use serde_json::{json, Value};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_its_turn_budget_continues_and_counts_every_row_once() {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let app = &stack.app;
    runs.insert(20_000, "succeeded", Some(100.0), 0).await;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.db.url()),
            "--turn-budget=150ms".into(),
            "--task-timeout=30s".into(),
        ])
        .await;
    let id = enqueue(app, RUNS, json!({"max_age_hours": 24, "batch_size": 200})).await;
    let task = wait_for(app, &id, DONE, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let result = &task["result"];
    assert!(
        result["turns"].as_u64().unwrap() > 1,
        "the budget split the task: {result}"
    );
    assert_eq!(result["runs_deleted"], 20_000);
    assert_eq!(result["batches"], 100);
    assert_eq!(runs.count("SELECT count(*) FROM runs").await, 0);
    assert_eq!(task["attempts"], 1, "continuations are not new attempts");
    let metrics = worker.metrics().await;
    assert!(metrics.contains("outcome=\"continued\""), "{metrics}");
    worker.stop().await;
    stack.stop().await;
}

/// Fault scenario "transient failure": the runs database becomes unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_growing_delays_then_succeed_or_fail() {
    let runs = RunsDb::create().await;
    let stack = Stack::start_with(AppOptions::with_args(&["--max-attempts=4"])).await;
    let app = &stack.app;
    runs.insert(50, "failed", Some(100.0), 1).await;
    let proxy = TcpProxy::start("127.0.0.1:5432", false).await;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.db.url_via(proxy.addr)),
            "--runs-database-acquire-timeout=200ms".into(),
            "--retry-initial-delay=1s".into(),
            "--retry-multiplier=2".into(),
        ])
        .await;

    // The database comes back during the third attempt's wait: the task succeeds.
    let id = enqueue(app, RUNS, json!({"max_age_hours": 24})).await;
    let mut delays = Vec::new();
    let mut seen_attempt = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let task = loop {
        let task: Value = app.task(&id).await;
        let attempts = task["attempts"].as_u64().unwrap();
        if task["status"] == "retrying" && attempts > seen_attempt {
            seen_attempt = attempts;
            let next: chrono::DateTime<chrono::Utc> =
                task["next_attempt_at"].as_str().unwrap().parse().unwrap();
            let failed_at: chrono::DateTime<chrono::Utc> =
                task["error"]["at"].as_str().unwrap().parse().unwrap();
            delays.push((next - failed_at).num_milliseconds());
            assert_eq!(task["error"]["class"], "transient", "{task}");
            if attempts == 2 {
                proxy.restore();
            }
        }
        if DONE.contains(&task["status"].as_str().unwrap()) {
            break task;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("retry delays seen in the ledger (ms): {delays:?}");
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 3);
    assert_eq!(task["result"]["runs_deleted"], 50);
    assert_eq!(delays.len(), 2, "{delays:?}");
    assert!(
        (990..1010).contains(&delays[0]),
        "first delay ≈ 1 s: {delays:?}"
    );
    assert!(
        (1990..2010).contains(&delays[1]),
        "second delay ≈ 2 s: {delays:?}"
    );

    // Down for longer than every attempt: the task fails with the last error.
    proxy.cut();
    let id = enqueue(app, RUNS, json!({"max_age_hours": 24, "max_attempts": 2})).await;
    let task = wait_for(app, &id, DONE, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["attempts"], 2);
    assert_eq!(task["error"]["class"], "transient");
    assert!(task["next_attempt_at"].is_null());
    assert!(!task["error"]["message"].as_str().unwrap().is_empty());
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_register_by_heartbeat_are_marked_lost_when_silent_and_can_be_pruned() {
    let scratch = tempfile::tempdir().unwrap();
    let stack = Stack::start().await;
    let app = &stack.app;
    let roots = temp_root_flag("s", scratch.path());
    let beat = "--worker-heartbeat-interval=200ms".to_owned();
    let stays = stack
        .worker(&[roots.clone(), beat.clone(), "--worker-id=stays".into()])
        .await;
    let leaves = stack
        .worker(&[roots.clone(), beat.clone(), "--worker-id=leaves".into()])
        .await;
    let vanishes = stack
        .worker(&[roots, beat, "--worker-id=vanishes".into()])
        .await;

    let status_of = |items: &Value, id: &str| -> String {
        items["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker_id"] == id)
            .map(|w| w["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(10), "three workers up", || async {
        let list: Value = app.get("/workers?status=up").await.json().await.unwrap();
        list["items"].as_array().unwrap().len() == 3
    })
    .await;

    leaves.stop().await; // says goodbye
    vanishes.abandon(); // goes silent without a word
    eventually(Duration::from_secs(10), "one stopped, one lost", || async {
        let list: Value = app.get("/workers").await.json().await.unwrap();
        status_of(&list, "leaves") == "stopped"
            && status_of(&list, "vanishes") == "lost"
            && status_of(&list, "stays") == "up"
    })
    .await;

    let dry: Value = app
        .post("/workers/prune", json!({"dry_run": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        dry,
        json!({"pruned": ["leaves", "vanishes"], "skipped": 1, "dry_run": true})
    );
    let list: Value = app.get("/workers").await.json().await.unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        3,
        "a dry run removes nothing"
    );
    let real: Value = app
        .post("/workers/prune", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        real,
        json!({"pruned": ["leaves", "vanishes"], "skipped": 1, "dry_run": false})
    );
    let list: Value = app.get("/workers").await.json().await.unwrap();
    assert_eq!(status_of(&list, "stays"), "up");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    stays.stop().await;
    stack.stop().await;
}

/// Retry state lives in PostgreSQL: a task waiting for its next attempt survives a
/// restart of the API and of every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_retry_survives_a_restart_of_every_process() {
    let runs = RunsDb::create().await;
    runs.insert(5, "failed", Some(100.0), 0).await;
    let proxy = TcpProxy::start("127.0.0.1:5432", false).await;
    let worker_args = [
        runs_database_flag(runs.db.url_via(proxy.addr)),
        "--runs-database-acquire-timeout=200ms".into(),
        "--retry-initial-delay=3s".into(),
    ];
    let stack = Stack::start().await;
    let worker = stack.worker(&worker_args).await;
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 24})).await;
    let task = wait_for(&stack.app, &id, &["retrying"], Duration::from_secs(30)).await;
    assert_eq!(task["attempts"], 1);

    // Everything stops while the retry waits; the database comes back meanwhile.
    worker.stop().await;
    stack.app.stop().await;
    proxy.restore();
    let app = TestApp::spawn(&stack.db, &stack.broker, AppOptions::default()).await;
    let worker = TestWorker::spawn(&stack.broker, &worker_args).await;
    let task = wait_for(&app, &id, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 2);
    assert_eq!(task["result"]["runs_deleted"], 5);
    worker.stop().await;
    app.stop().await;
}

/// A walk longer than its turn budget resumes where it stopped: dry and real runs count
/// every file once over several turns.
///
/// The directories are small beside the budget: a turn that makes no progress counts as
/// stalled, and three in a row fail the task. With 150 files a directory and an 8 ms
/// budget, a worker starved of CPU (four busy loops beside it on two cores; once, the
/// whole suite in parallel) stalled three turns running and failed the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_walk_longer_than_its_turn_budget_resumes_and_counts_every_file_once() {
    let scratch = tempfile::tempdir().unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(48 * 3600);
    for d in 0..300 {
        let dir = scratch.path().join(format!("d{d:03}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..30 {
            let path = dir.join(format!("f{f}"));
            std::fs::write(&path, b"xy").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack
        .worker(&[
            temp_root_flag("s", scratch.path()),
            "--turn-budget=20ms".into(),
            "--temp-walk-threads=1".into(),
        ])
        .await;
    for dry_run in [true, false] {
        let id = enqueue(
            app,
            "/maintenance/cleanup-temp-files",
            json!({"max_age_hours": 24, "dry_run": dry_run}),
        )
        .await;
        let task = wait_for(app, &id, DONE, Duration::from_secs(120)).await;
        assert_eq!(task["status"], "succeeded", "{task}");
        let result = &task["result"];
        eprintln!("dry_run={dry_run}: {} turns", result["turns"]);
        assert!(result["turns"].as_u64().unwrap() > 1, "{result}");
        assert_eq!(result["files_matched"], 9000, "{result}");
        assert_eq!(result["bytes_matched"], 18000);
        let expected = if dry_run { 0 } else { 9000 };
        assert_eq!(result["files_deleted"], expected);
    }
    let left: usize = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(left, 0);
    worker.stop().await;
    stack.stop().await;
}

/// A worker that cannot report a result (its event is unroutable, as for a moment after a
/// broker restart, when a queue is not back yet) must not hand the task straight back:
/// every return spends one of the message's deliveries, and a tight loop of returns
/// dead-lettered healthy tasks. It rebuilds its connection instead (declaring the
/// topology again), and the task succeeds on its next delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_report_rebuilds_instead_of_spending_the_deliveries() {
    let scratch = tempfile::tempdir().unwrap();
    let stack = Stack::start().await;
    let worker = stack.worker(&[temp_root_flag("s", scratch.path())]).await;
    // Connected, its topology declared and the cancellation stream read.
    let readyz = format!("http://127.0.0.1:{}/readyz", worker.port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The events no longer reach the ledger queue: a worker's publish is unroutable
    // (mandatory) and so not confirmed as delivered.
    let topology = &stack.broker.topology;
    for key in ["task.#", "worker.#"] {
        stack
            .broker
            .channel
            .queue_unbind(
                topology.ledger_queue().into(),
                topology.events_exchange().into(),
                key.into(),
                Default::default(),
            )
            .await
            .unwrap();
    }
    let id = stack
        .enqueue(
            "/maintenance/cleanup-temp-files",
            json!({"max_age_hours": 24, "root": "s", "dry_run": true}),
        )
        .await;
    let task = wait_for(&stack.app, &id, DONE, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        stack.broker.queue_len_named(&topology.dead_queue()).await,
        0
    );
    worker.stop().await;
    stack.stop().await;
}
