//! `task.started`: announced only for a task still running after STARTED_EVENT_AFTER (or
//! for every task, before it starts, with `0s`); a shorter task reports its start with its
//! result, and the ledger keeps it either way.
//! And RESULTS_LINGER: the reports of tasks that end close together go out together.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

/// The task events in the tap for `task_id`, in the order they were published: (routing
/// key, body).
async fn events_of(broker: &TestBroker, tap: &str, task_id: &str) -> Vec<(String, Value)> {
    broker
        .drain_named(tap)
        .await
        .into_iter()
        .map(|m| {
            let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            (m.delivery.routing_key.to_string(), body)
        })
        .filter(|(_, body)| body["task_id"] == task_id)
        .collect()
}

/// A stack, a runs table of 10 old rows, a worker with `flag` (if any), and a tap on the
/// task events.
async fn setup(flag: Option<&str>) -> (RunsDb, Stack, TestWorker, String) {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    runs.insert(10, "succeeded", Some(100.0), 0).await;
    let mut flags = vec![runs_database_flag(runs.db.url())];
    flags.extend(flag.map(str::to_owned));
    let worker = stack.worker(&flags).await;
    let tap = stack.broker.tap_events("task.#").await;
    (runs, stack, worker, tap)
}

/// Enqueue `body` at `path`, wait for it to succeed; the task and its events in `tap`.
async fn succeed(
    stack: &Stack,
    tap: &str,
    path: &str,
    body: Value,
) -> (Value, Vec<(String, Value)>) {
    let id = enqueue(&stack.app, path, body).await;
    let task = wait_for(&stack.app, &id, DONE, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let events = events_of(&stack.broker, tap, &id).await;
    (task, events)
}

/// A timestamp to the microsecond (the ledger's precision).
fn time(value: &Value) -> i64 {
    let at: DateTime<Utc> = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp: {value}"))
        .parse()
        .unwrap();
    at.timestamp_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_task_reports_its_start_with_its_result() {
    let (_runs, stack, worker, tap) = setup(None).await;

    let (task, events) = succeed(
        &stack,
        &tap,
        RUNS,
        json!({"max_age_hours": 24, "dry_run": true}),
    )
    .await;
    let keys: Vec<&str> = events.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["task.succeeded"], "no task.started for a short task");
    let started_at = time(&events[0].1["started_at"]);
    assert!(started_at <= time(&events[0].1["at"]), "{events:?}");
    assert_eq!(time(&task["started_at"]), started_at, "{task}");
    assert!(
        time(&task["started_at"]) <= time(&task["finished_at"]),
        "{task}"
    );
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_still_running_after_the_delay_is_announced_while_it_runs() {
    let (runs, stack, worker, tap) = setup(Some("--started-event-after=100ms")).await;

    // The dry run waits for this lock for 600 ms: far longer than 100 ms.
    let mut holder = runs.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let id = enqueue(
        &stack.app,
        RUNS,
        json!({"max_age_hours": 24, "dry_run": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    holder.commit().await.unwrap();
    let task = wait_for(&stack.app, &id, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");

    let events = events_of(&stack.broker, &tap, &id).await;
    let keys: Vec<&str> = events.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["task.started", "task.succeeded"], "{events:?}");
    let (started, succeeded) = (&events[0].1, &events[1].1);
    assert_eq!(time(&started["at"]), time(&succeeded["started_at"]));
    assert_eq!(time(&task["started_at"]), time(&started["at"]), "{task}");
    let ran = time(&succeeded["at"]) - time(&started["at"]);
    assert!(ran >= 100_000, "announced only after 100 ms: {ran} µs");
    worker.stop().await;
    stack.stop().await;
}

/// A real run, however short, is announced before it writes anything: its executor asks
/// for the announcement, whatever STARTED_EVENT_AFTER says. (That nothing is written
/// while the announcement is unconfirmed, or after it failed, is tested in
/// `worker/src/process/announce_tests.rs`: here the worker would declare the bindings a
/// test removes again as soon as it reconnects.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_run_is_announced_before_it_writes() {
    let (_runs, stack, worker, tap) = setup(Some("--started-event-after=1h")).await;
    let (task, events) = succeed(&stack, &tap, RUNS, json!({"max_age_hours": 24})).await;
    assert_eq!(task["result"]["runs_deleted"], 10, "{task}");
    let keys: Vec<String> = events.into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["task.started", "task.succeeded"]);
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_delay_every_task_is_announced_before_it_starts() {
    let (_runs, stack, worker, tap) = setup(Some("--started-event-after=0s")).await;

    let (task, events) = succeed(
        &stack,
        &tap,
        RUNS,
        json!({"max_age_hours": 24, "dry_run": true}),
    )
    .await;
    let keys: Vec<&str> = events.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["task.started", "task.succeeded"], "{events:?}");
    assert_eq!(
        time(&task["started_at"]),
        time(&events[0].1["at"]),
        "{task}"
    );
    worker.stop().await;
    stack.stop().await;
}

/// A real temp-file run is announced before its walk deletes anything; a dry run that
/// finishes sooner than STARTED_EVENT_AFTER is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_temp_file_run_is_announced_before_it_deletes() {
    let scratch = tempfile::tempdir().unwrap();
    let old = scratch.path().join("old.tmp");
    std::fs::write(&old, b"x").unwrap();
    let hours_ago = std::time::SystemTime::now() - Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hours_ago)
        .unwrap();
    let stack = Stack::start().await;
    let tap = stack.broker.tap_events("task.#").await;
    let worker = stack
        .worker(&[
            temp_root_flag("scratch", scratch.path()),
            "--started-event-after=1h".into(),
        ])
        .await;
    const TEMP: &str = "/maintenance/cleanup-temp-files";
    let mut keys = Vec::new();
    for dry_run in [true, false] {
        let body = json!({"max_age_hours": 24, "root": "scratch", "dry_run": dry_run});
        let (_, events) = succeed(&stack, &tap, TEMP, body).await;
        keys.push(events.into_iter().map(|(key, _)| key).collect::<Vec<_>>());
    }
    assert_eq!(keys[0], ["task.succeeded"], "the dry run");
    assert_eq!(keys[1], ["task.started", "task.succeeded"], "the real run");
    assert!(!old.exists(), "the real run deleted the old file");
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_tasks_ending_within_one_linger_go_out_together() {
    let (_runs, stack, worker, tap) = setup(Some("--results-linger=2s")).await;
    let body = json!({"max_age_hours": 24, "dry_run": true});

    // The first dry run ends at once and waits; the second starts 700 ms later, on the
    // worker's other slot, and ends well inside the first one's linger.
    let first = enqueue(&stack.app, RUNS, body.clone()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = enqueue(&stack.app, RUNS, body).await;
    for id in [&first, &second] {
        let task = wait_for(&stack.app, id, DONE, Duration::from_secs(30)).await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    let events = stack.broker.drain_named(&tap).await;
    let reports: Vec<(i64, i64)> = [&first, &second]
        .into_iter()
        .map(|id| {
            let report = events
                .iter()
                .map(|m| serde_json::from_slice::<Value>(&m.delivery.data).unwrap())
                .find(|body| body["task_id"] == id.as_str())
                .expect("a result event");
            (time(&report["started_at"]), time(&report["at"]))
        })
        .collect();
    let [(started_1, out_1), (started_2, out_2)] = reports[..] else {
        unreachable!()
    };
    assert!(started_2 - started_1 >= 600_000, "{reports:?}");
    assert!(
        out_1 - started_1 >= 1_900_000,
        "the first report waited for the linger: {reports:?}"
    );
    assert!(
        (out_2 - out_1).abs() < 300_000,
        "the second report went out with the first: {reports:?}"
    );
    worker.stop().await;
    stack.stop().await;
}
