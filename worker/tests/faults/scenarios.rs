use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::harness::*;
use test_support::*;

const TEMP: &str = "/maintenance/cleanup-temp-files";
const RUNS: &str = "/maintenance/cleanup-runs";

/// A temp root with `files` young files: every task walks it and deletes nothing.
fn scratch(files: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..files {
        let sub = dir.path().join(format!("d{}", i % 20));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}")), b"x").unwrap();
    }
    dir
}

async fn enqueue_many(
    app: &TestApp,
    count: usize,
    path: &str,
    body: serde_json::Value,
) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let chunk = (count - ids.len()).min(25);
        let requests = (0..chunk).map(|_| enqueue_retrying(app, path, body.clone()));
        ids.extend(futures::future::join_all(requests).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection: stops shared services; run by deploy/local/test.sh, serially"]
async fn workers_killed_at_random_moments_lose_no_task() {
    // Big enough that a task takes a while, so kills land mid-task.
    let root = scratch(20_000);
    let stack = Stack::start().await;
    let app = &stack.app;
    let broker = &stack.broker;
    let env = [scratch_root(&root)];
    let mut workers = vec![
        WorkerProcess::spawn(broker, "kill-a-0", &env),
        WorkerProcess::spawn(broker, "kill-b-0", &env),
    ];
    let ids = enqueue_many(
        app,
        600,
        TEMP,
        json!({"max_age_hours": 24, "root": "scratch"}),
    )
    .await;

    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let census = Census::take(&app.pool, &ids).await;
        if census.finished() == ids.len() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 + random_below(400))).await;
        let victim = random_below(workers.len() as u64) as usize;
        workers[victim].kill().await;
        kills += 1;
        let id = format!("kill-{}-{kills}", ["a", "b"][victim]);
        workers[victim] = WorkerProcess::spawn(broker, &id, &env);
    }
    let census = settle(&app.pool, &ids, Duration::from_secs(120)).await;
    census.report(&format!("SIGKILL x{kills}, 2 workers"), ids.len());
    assert!(kills >= 5, "the run was too short to kill anything");
    assert_eq!(census.lost, 0);
    assert_eq!(census.count("succeeded"), ids.len(), "{census:?}");
    for worker in &mut workers {
        worker.kill().await;
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection: stops shared services; run by deploy/local/test.sh, serially"]
async fn a_rabbitmq_restart_mid_run_loses_no_task() {
    // The in-process API's warnings (relay, recorder) show with --nocapture.
    show_logs("warn");
    let root = scratch(20_000);
    let stack = Stack::start().await;
    let app = &stack.app;
    let broker = &stack.broker;
    let env = [scratch_root(&root)];
    let mut workers = [
        WorkerProcess::spawn(broker, "rmq-a", &env),
        WorkerProcess::spawn(broker, "rmq-b", &env),
    ];
    let body = json!({"max_age_hours": 24, "root": "scratch"});
    let mut ids = enqueue_many(app, 150, TEMP, body.clone()).await;
    eventually(Duration::from_secs(30), "the run is under way", || async {
        Census::take(&app.pool, &ids).await.finished() >= 5
    })
    .await;

    let before = Census::take(&app.pool, &ids).await;
    assert!(
        before.finished() < ids.len(),
        "the outage must hit a run in progress"
    );
    eprintln!(
        "[RabbitMQ] at stop_app: {} of {} tasks finished",
        before.finished(),
        ids.len()
    );
    let outage = RabbitOutage::begin();
    let during = enqueue_many(app, 100, TEMP, body.clone()).await;
    let readyz = format!("http://127.0.0.1:{}/readyz", workers[0].port);
    eventually(
        Duration::from_secs(10),
        "a disconnected worker is not ready",
        || async { reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 503) },
    )
    .await;
    let api_ready = app.get_without_token("/readyz").await;
    assert_eq!(api_ready.status(), 503, "nor is the API");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = Census::take(&app.pool, &during).await;
    assert_eq!(
        stuck.count("queued"),
        during.len(),
        "nothing runs while the broker is down"
    );
    outage.end();
    ids.extend(&during);
    ids.extend(enqueue_many(app, 50, TEMP, body).await);

    let census = settle(&app.pool, &ids, Duration::from_secs(240)).await;
    census.report("RabbitMQ stop_app/start_app", ids.len());
    // Recovery, or (if it hangs) the supervisor's rebuild after RECOVERY_GRACE.
    eventually(
        Duration::from_secs(60),
        "the worker is ready again",
        || async { reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 200) },
    )
    .await;
    assert_eq!(census.lost, 0);
    assert_eq!(census.count("succeeded"), ids.len(), "{census:?}");
    for worker in &mut workers {
        worker.kill().await;
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection: stops shared services; run by deploy/local/test.sh, serially"]
async fn a_postgresql_restart_mid_run_loses_no_event() {
    let runs = RunsDb::create().await;
    let root = scratch(20_000);
    runs.insert(3000, "succeeded", Some(100.0), 0).await;
    let stack = Stack::start_with(AppOptions::with_args(&["--max-attempts=6"])).await;
    let app = &stack.app;
    let broker = &stack.broker;
    let env = [
        scratch_root(&root),
        ("RUNS_DATABASE_URL", runs.db.url()),
        ("RUNS_DATABASE_ACQUIRE_TIMEOUT", "1s".to_owned()),
    ];
    let mut workers = [
        WorkerProcess::spawn(broker, "pg-a", &env),
        WorkerProcess::spawn(broker, "pg-b", &env),
    ];
    let mut ids = enqueue_many(
        app,
        80,
        TEMP,
        json!({"max_age_hours": 24, "root": "scratch"}),
    )
    .await;
    ids.extend(
        enqueue_many(
            app,
            60,
            RUNS,
            json!({"max_age_hours": 24, "max_rows": 50, "batch_size": 10}),
        )
        .await,
    );

    let before = Census::take(&app.pool, &ids).await;
    assert!(
        before.finished() < ids.len(),
        "the outage must hit a run in progress"
    );
    eprintln!(
        "[PostgreSQL] at stop: {} of {} tasks finished",
        before.finished(),
        ids.len()
    );
    let outage = PostgresOutage::begin();
    tokio::time::sleep(Duration::from_secs(4)).await;
    outage.end();
    ids.extend(enqueue_many(app, 40, RUNS, json!({"max_age_hours": 24, "dry_run": true})).await);

    let census = settle(&app.pool, &ids, Duration::from_secs(240)).await;
    census.report("PostgreSQL stop 4 s/start", ids.len());
    assert_eq!(census.lost, 0);
    assert_eq!(census.count("succeeded"), ids.len(), "{census:?}");
    // Every real runs cleanup is accounted for: the rows deleted equal the sum of results.
    let reported: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum((result->>'runs_deleted')::bigint), 0)::bigint FROM cleanup_tasks WHERE kind = 'cleanup_runs'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let left = runs.count("SELECT count(*) FROM runs").await;
    eprintln!(
        "[PostgreSQL restart] runs deleted per results: {reported}, rows gone: {}",
        3000 - left
    );
    assert_eq!(
        reported,
        3000 - left,
        "every deleted row is reported exactly once"
    );
    for worker in &mut workers {
        worker.kill().await;
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection: stops shared services; run by deploy/local/test.sh, serially"]
async fn sigterm_during_a_long_cleanup_hands_the_rest_to_another_worker() {
    const ROWS: i64 = 1_000_000;
    let runs = RunsDb::create().await;
    runs.insert(ROWS, "succeeded", Some(100.0), 0).await;
    let stack = Stack::start().await;
    let app = &stack.app;
    let broker = &stack.broker;
    let env = [("RUNS_DATABASE_URL", runs.db.url())];
    let mut first = WorkerProcess::spawn(broker, "long-a", &env);
    let id = enqueue_retrying(app, RUNS, json!({"max_age_hours": 24, "batch_size": 1000})).await;

    eventually(
        Duration::from_secs(60),
        "the first worker deleted some rows",
        || async { runs.count("SELECT count(*) FROM runs").await < ROWS - 50_000 },
    )
    .await;
    let (took, status) = first.terminate().await;
    let at_stop = ROWS - runs.count("SELECT count(*) FROM runs").await;
    eprintln!("[SIGTERM] worker exited in {took:?} ({status}) after deleting {at_stop} rows");
    assert!(status.success(), "a clean exit");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(
        at_stop < ROWS,
        "the first worker did not finish the task by itself"
    );

    let mut second = WorkerProcess::spawn(broker, "long-b", &env);
    let task = wait_for(app, &id.to_string(), DONE, Duration::from_secs(300)).await;
    let deleted = ROWS - runs.count("SELECT count(*) FROM runs").await;
    eprintln!("[SIGTERM] result: {}", task["result"]);
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(deleted, ROWS);
    assert_eq!(
        task["result"]["runs_deleted"], deleted,
        "every row counted exactly once"
    );
    assert!(task["result"]["turns"].as_u64().unwrap() >= 2);
    assert_eq!(task["attempts"], 1);
    second.kill().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection: stops shared services; run by deploy/local/test.sh, serially"]
async fn a_task_that_crashes_every_worker_ends_dead() {
    let runs = RunsDb::create().await;
    runs.insert(10, "succeeded", Some(100.0), 0).await;
    let stack = Stack::start_on(
        TestBroker::with_delivery_limit(2).await,
        AppOptions::with_args(&["--amqp-delivery-limit=2"]),
    )
    .await;
    let (app, broker) = (&stack.app, &stack.broker);
    // Hold the table: the task hangs in every worker, which the test then kills.
    let mut lock = runs.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let id = enqueue_retrying(app, RUNS, json!({"max_age_hours": 24})).await;
    let env = [
        ("RUNS_DATABASE_URL", runs.db.url()),
        ("AMQP_DELIVERY_LIMIT", "2".to_owned()),
    ];

    let started = Instant::now();
    let mut crashes = 0;
    for round in 0..10 {
        let task: serde_json::Value = app.task(&id.to_string()).await;
        if task["status"] == "dead" {
            break;
        }
        let mut worker = WorkerProcess::spawn(broker, &format!("crash-{round}"), &env);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while worker.metric("cleanup_worker_tasks_in_flight").await != Some(1.0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker.kill().await;
        crashes += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let task = wait_for(app, &id.to_string(), DONE, Duration::from_secs(30)).await;
    eprintln!(
        "[crash loop] {crashes} crashes in {:?}; task: {} / {}",
        started.elapsed(),
        task["status"],
        task["error"]["message"]
    );
    assert_eq!(task["status"], "dead", "{task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delivered too many times"),
        "{task}"
    );
    assert!(crashes <= 4, "the delivery limit stopped the loop");
    lock.rollback().await.unwrap();
    assert_eq!(
        broker.queue_len_named(&broker.topology.dead_queue()).await,
        1,
        "the message is kept"
    );
    assert_eq!(runs.count("SELECT count(*) FROM runs").await, 10);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection: raises RabbitMQ's memory alarm; run by deploy/local/test.sh, serially"]
async fn a_rabbitmq_memory_alarm_makes_the_api_unready_and_holds_tasks_until_it_clears() {
    show_logs("warn,producer_api::relay=info");
    let root = scratch(10);
    let stack = Stack::start_with(AppOptions::with_args(&["--relay-publish-timeout=3s"])).await;
    let app = &stack.app;
    let broker = &stack.broker;
    let env = [scratch_root(&root)];
    let mut worker = WorkerProcess::spawn(broker, "alarm-a", &env);
    let body = json!({"max_age_hours": 24, "root": "scratch"});
    let before = enqueue_retrying(app, TEMP, body.clone()).await;
    wait_for(app, &before.to_string(), DONE, Duration::from_secs(30)).await;
    let readyz = format!("{}/readyz", app.address);
    let metrics = format!("{}/metrics", app.address);
    let ready = |url: String| async move {
        let response = reqwest::get(&url).await.unwrap();
        let status = response.status();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(ready(readyz.clone()).await.0, 200);

    let alarm = MemoryAlarm::begin();
    let started = Instant::now();
    // Accepted (the ledger alone makes it durable), but not published while blocked.
    let during = enqueue_retrying(app, TEMP, body.clone()).await;
    eventually(
        Duration::from_secs(30),
        "readyz reports the broker blocking publishers",
        || async {
            let (status, body) = ready(readyz.clone()).await;
            status == 503
                && body["broker"] == false
                && body["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("blocks publishing"))
        },
    )
    .await;
    let (_, body_when_blocked) = ready(readyz.clone()).await;
    eprintln!(
        "[memory alarm] /readyz after {:?}: {body_when_blocked}",
        started.elapsed()
    );
    let scrape = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert!(scrape.contains("cleanup_amqp_blocked 1"), "{scrape}");
    // The worker is blocked too once it publishes (a heartbeat a second): it says so.
    let worker_readyz = format!("http://127.0.0.1:{}/readyz", worker.port);
    eventually(
        Duration::from_secs(30),
        "the worker reports the broker blocking it",
        || async {
            let (status, body) = ready(worker_readyz.clone()).await;
            worker.metric("cleanup_amqp_blocked").await == Some(1.0)
                && status == 200
                && body["blocked"].as_str().is_some_and(|r| !r.is_empty())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let task: serde_json::Value = app.task(&during.to_string()).await;
    assert_eq!(task["status"], "queued", "{task}");
    assert!(task["published_at"].is_null(), "{task}");
    assert_eq!(app.outbox_len().await, 1, "the task waits in the outbox");

    alarm.end();
    let task = wait_for(app, &during.to_string(), DONE, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    eventually(Duration::from_secs(30), "readyz is ready again", || async {
        ready(readyz.clone()).await.0 == 200
    })
    .await;
    let scrape = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert!(scrape.contains("cleanup_amqp_blocked 0"), "{scrape}");
    eventually(
        Duration::from_secs(30),
        "the worker is unblocked",
        || async {
            worker.metric("cleanup_amqp_blocked").await == Some(0.0)
                && ready(worker_readyz.clone()).await.1["blocked"].is_null()
        },
    )
    .await;
    // RabbitMQ blocks a connection when it first publishes under the alarm: the batch of
    // `during` hung, timed out, was rolled back and published again after the alarm.
    let timeouts: u64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("cleanup_outbox_publish_timeouts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    eprintln!("[memory alarm] relay batches timed out: {timeouts}");
    assert!(timeouts >= 1, "{scrape}");
    assert_eq!(task["attempts"], 1, "{task}");
    worker.kill().await;
    stack.stop().await;
}
