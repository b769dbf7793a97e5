//! `task.started`: announced only for a task still running after STARTED_EVENT_AFTER (or
//! for every task, before it starts, with `0s`); a shorter task reports its start with its
//! result, and the ledger keeps it either way.
//! And RESULTS_LINGER: the reports of tasks that end close together go out together.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::BasicGetMessage;
use serde_json::{json, Value};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";
const TEMP: &str = "/maintenance/cleanup-temp-files";

/// The task events in the tap for `task_id`, in the order they were published: (routing
/// key, body). The tap is emptied.
async fn events_of(broker: &TestBroker, tap: &str, task_id: &str) -> Vec<(String, Value)> {
    task_events(&broker.drain_named(tap).await, task_id)
}

/// The events among `messages` for `task_id`, in their order: (routing key, body).
fn task_events(messages: &[BasicGetMessage], task_id: &str) -> Vec<(String, Value)> {
    messages
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            (m.delivery.routing_key.to_string(), body)
        })
        .filter(|(_, body)| body["task_id"] == task_id)
        .collect()
}

/// A stack, a runs table of 10 old rows, a worker with these extra flags, and a tap on
/// the task events.
async fn setup(extra: &[String]) -> (RunsDb, Stack, TestWorker, String) {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    runs.insert(10, "succeeded", Some(100.0), 0).await;
    let mut flags = vec![runs_database_flag(runs.db.url())];
    flags.extend_from_slice(extra);
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
    let (_runs, stack, worker, tap) = setup(&[]).await;

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
    let (runs, stack, worker, tap) = setup(&["--started-event-after=100ms".into()]).await;

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
    let (_runs, stack, worker, tap) = setup(&["--started-event-after=1h".into()]).await;
    let (task, events) = succeed(&stack, &tap, RUNS, json!({"max_age_hours": 24})).await;
    assert_eq!(task["result"]["runs_deleted"], 10, "{task}");
    let keys: Vec<String> = events.into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["task.started", "task.succeeded"]);
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_delay_every_task_is_announced_before_it_starts() {
    let (_runs, stack, worker, tap) = setup(&["--started-event-after=0s".into()]).await;

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

/// The report of a turn that ends while another still runs waits for it (at most
/// RESULTS_LINGER), and the two go out together once the last one ends; a turn that ends
/// with none other running reports at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_turns_ending_close_together_go_out_together() {
    let scratch = tempfile::tempdir().unwrap();
    // Six slots: a gathering holds up to three reports, so the two below end theirs only
    // because no other turn is running.
    let flags = [
        "--results-linger=1s".to_owned(),
        "--worker-concurrency=6".to_owned(),
        temp_root_flag("scratch", scratch.path()),
    ];
    let (runs, stack, worker, tap) = setup(&flags).await;
    let runs_dry = json!({"max_age_hours": 24, "dry_run": true});
    let temp_dry = json!({"max_age_hours": 24, "root": "scratch", "dry_run": true});

    // The runs dry run waits for this lock; the temp-file dry run, started once it does,
    // ends at once and waits for it.
    let mut holder = runs.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let long = enqueue(&stack.app, RUNS, runs_dry.clone()).await;
    eventually(
        Duration::from_secs(20),
        "the runs dry run waits for the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&runs.pool)
            .await
            .unwrap();
            waiting > 0
        },
    )
    .await;
    let short = enqueue(&stack.app, TEMP, temp_dry).await;
    // The short turn's work is over once its duration is recorded (before it reports).
    let ended = "cleanup_worker_task_duration_seconds_count{kind=\"cleanup_temp_files\"} 1";
    eventually(
        Duration::from_secs(20),
        "the temp-file dry run ends",
        || async { worker.metrics().await.contains(ended) },
    )
    .await;
    let released = Utc::now().timestamp_micros();
    holder.commit().await.unwrap();
    for id in [&long, &short] {
        let task = wait_for(&stack.app, id, DONE, Duration::from_secs(30)).await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    // Then a lone dry run, with nothing else running.
    let alone = enqueue(&stack.app, RUNS, runs_dry).await;
    let task = wait_for(&stack.app, &alone, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");

    let events = stack.broker.drain_named(&tap).await;
    let report = |id: &str| {
        let (_, body) = task_events(&events, id)
            .into_iter()
            .find(|(key, _)| key == "task.succeeded")
            .expect("a result event");
        (time(&body["started_at"]), time(&body["at"]))
    };
    let ((_, long_out), (short_started, short_out)) = (report(&long), report(&short));
    assert!(
        short_out >= released,
        "the short report waited for the long turn: out {short_out}, lock released {released}"
    );
    assert!(
        (short_out - long_out).abs() < 300_000,
        "the two went out together: {short_out} and {long_out}"
    );
    let waited = short_out - short_started;
    assert!(
        waited < 900_000,
        "and went out when the long turn ended, not at the end of the 1 s linger: {waited} µs"
    );
    let (alone_started, alone_out) = report(&alone);
    assert!(
        alone_out - alone_started < 900_000,
        "a report with no other turn running goes out at once"
    );
    worker.stop().await;
    stack.stop().await;
}
