//! Schedules: the claim logic under several replicas with a controllable clock, catch-up
//! and overlap policies, and the `/schedules` API.

use chrono::{DateTime, Duration, Utc};
use producer_api::ledger::schedules::{
    fire_due, write, CatchUp, Fired, Overlap, ScheduleSpec, Written,
};
use producer_api::ledger::MIGRATOR;
use reqwest::Method;
use serde_json::json;
use shared::tasks::{CleanupRunsParams, TaskSpec};
use sqlx::PgPool;
use test_support::{Stack, TestDb};

async fn ledger() -> (TestDb, PgPool) {
    let db = TestDb::create().await;
    let pool = PgPool::connect(&db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    (db, pool)
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn spec(cron: &str, catch_up: CatchUp, overlap: Overlap) -> ScheduleSpec {
    ScheduleSpec {
        task: TaskSpec::CleanupRuns(CleanupRunsParams {
            max_age_hours: 48.0,
            dry_run: true,
            statuses: None,
            batch_size: None,
            max_rows: None,
            max_attempts: None,
            scope: None,
        }),
        cron: cron.into(),
        timezone: "UTC".into(),
        enabled: true,
        catch_up,
        overlap,
    }
}

async fn create(pool: &PgPool, name: &str, spec: &ScheduleSpec, now: DateTime<Utc>) {
    let written = write(pool, name, spec, false, "api", None, now)
        .await
        .unwrap();
    assert!(matches!(written, Written::Created(_)), "{written:?}");
}

/// (schedule, scheduled_for, cutoff) of every task, in window order.
async fn tasks(pool: &PgPool) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT schedule, scheduled_for, cutoff FROM cleanup_tasks ORDER BY scheduled_for",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Three replicas (three pools, racing) run the scheduler over six minutes of a schedule
/// that fires every minute: one task per window, none twice, none missed, each with the
/// cutoff of its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fire_each_window_exactly_once() {
    let (db, pool) = ledger().await;
    let t0 = at("2026-05-01T10:00:00Z");
    create(
        &pool,
        "minutely",
        &spec("* * * * *", CatchUp::Once, Overlap::Allow),
        t0,
    )
    .await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(PgPool::connect(&db.url()).await.unwrap());
    }
    let mut fired = Vec::new();
    for minute in 1..=6 {
        // Each replica's clock a little different, all past the window.
        let ticks = replicas.iter().enumerate().map(|(i, replica)| {
            let now = t0 + Duration::minutes(minute) + Duration::milliseconds(200 * i as i64);
            let replica = replica.clone();
            async move { fire_due(&replica, now, &rules(), 3, 100).await.unwrap() }
        });
        for outcome in futures::future::join_all(ticks).await {
            fired.extend(outcome);
        }
    }
    let windows: Vec<DateTime<Utc>> = fired
        .iter()
        .map(|f| match f {
            Fired::Task { window, missed, .. } => {
                assert_eq!(*missed, 0, "{f:?}");
                *window
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<DateTime<Utc>> = (1..=6).map(|m| t0 + Duration::minutes(m)).collect();
    assert_eq!(windows, expected);
    let stored = tasks(&pool).await;
    assert_eq!(stored.len(), 6);
    for ((schedule, window, cutoff), expected) in stored.iter().zip(&expected) {
        assert_eq!(schedule, "minutely");
        assert_eq!(window, expected);
        assert_eq!(
            *cutoff,
            *expected - Duration::hours(48),
            "the window's cutoff"
        );
    }
}

/// After three hourly windows passed with no replica up: `once` fires one task, for the
/// latest window (its cutoff as if on time); `skip` fires none and waits for the next.
#[tokio::test]
async fn after_an_outage_catch_up_once_fires_once_and_skip_fires_none() {
    let (_db, pool) = ledger().await;
    let t0 = at("2026-05-01T10:00:00Z");
    create(
        &pool,
        "once",
        &spec("0 * * * *", CatchUp::Once, Overlap::Allow),
        t0,
    )
    .await;
    create(
        &pool,
        "skip",
        &spec("0 * * * *", CatchUp::Skip, Overlap::Allow),
        t0,
    )
    .await;
    let back = t0 + Duration::hours(3) + Duration::minutes(10);
    let mut fired = fire_due(&pool, back, &rules(), 3, 100).await.unwrap();
    fired.sort_by_key(|f| format!("{f:?}"));
    let latest = t0 + Duration::hours(3);
    assert!(
        fired.iter().any(
            |f| matches!(f, Fired::Task { schedule, window, missed: 2, .. }
            if schedule == "once" && *window == latest)
        ),
        "{fired:?}"
    );
    assert!(
        fired
            .iter()
            .any(|f| matches!(f, Fired::Skipped { schedule, windows: 3, .. }
            if schedule == "skip")),
        "{fired:?}"
    );
    let stored = tasks(&pool).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].2, latest - Duration::hours(48));
    // Both wait for the next window now.
    let next: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT name, next_fire_at, skipped_windows FROM cleanup_schedules ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        next,
        [
            ("once".to_owned(), t0 + Duration::hours(4), 2),
            ("skip".to_owned(), t0 + Duration::hours(4), 3),
        ]
    );
    assert!(fire_due(&pool, back, &rules(), 3, 100)
        .await
        .unwrap()
        .is_empty());
}

/// `overlap: skip`: while the previous task is queued, running or retrying, a window
/// fires nothing; once it finished, the next window fires.
#[tokio::test]
async fn overlap_skip_waits_for_the_previous_task() {
    let (_db, pool) = ledger().await;
    let t0 = at("2026-05-01T10:00:00Z");
    create(
        &pool,
        "nightly",
        &spec("* * * * *", CatchUp::Once, Overlap::Skip),
        t0,
    )
    .await;
    let first = fire_due(&pool, t0 + Duration::seconds(61), &rules(), 3, 100)
        .await
        .unwrap();
    assert!(matches!(first[..], [Fired::Task { .. }]), "{first:?}");
    let second = fire_due(&pool, t0 + Duration::seconds(121), &rules(), 3, 100)
        .await
        .unwrap();
    assert!(
        matches!(second[..], [Fired::Skipped { windows: 1, .. }]),
        "{second:?}"
    );
    sqlx::query("UPDATE cleanup_tasks SET status = 'succeeded', finished_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let third = fire_due(&pool, t0 + Duration::seconds(181), &rules(), 3, 100)
        .await
        .unwrap();
    assert!(matches!(third[..], [Fired::Task { .. }]), "{third:?}");
    assert_eq!(tasks(&pool).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_api_checks_creates_changes_and_triggers() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let body = json!({
        "name": "nightly-runs",
        "kind": "cleanup_runs",
        "params": {"max_age_hours": 720, "dry_run": true},
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
    });
    let created = app.post("/schedules", body.clone()).await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["location"], "/schedules/nightly-runs");
    let view: serde_json::Value = created.json().await.unwrap();
    assert_eq!(view["managed_by"], "api");
    assert_eq!(view["catch_up"], "once");
    assert_eq!(view["overlap"], "skip");
    let next: DateTime<Utc> = view["next_fire_at"].as_str().unwrap().parse().unwrap();
    assert!(
        next > Utc::now() && next < Utc::now() + Duration::hours(25),
        "{view}"
    );

    let again = app.post("/schedules", body.clone()).await;
    assert_eq!(again.status(), 409);

    // Each bad field is a 422 naming it; nothing is stored.
    for (change, field) in [
        (json!({"cron": "0 2 * *"}), "cron"),
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (
            json!({"params": {"max_age_hours": 0.1}}),
            "params.max_age_hours",
        ),
        (
            json!({"params": {"max_age_hours": 24, "bogus": 1}}),
            "params",
        ),
        (json!({"name": "Has Spaces"}), "name"),
        (json!({"cron": "0 0 30 2 *"}), "cron"),
    ] {
        let mut bad = body.clone();
        bad["name"] = json!("bad-one");
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let response = app.post("/schedules", bad.clone()).await;
        assert_eq!(response.status(), 422, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{problem}");
    }
    // The keys of scheduled tasks are not for clients.
    let taken = app
        .post_with_key(
            "/maintenance/cleanup-runs",
            json!({"max_age_hours": 24, "dry_run": true}),
            "schedule:nightly-runs:2026-12-01T01:30:00+00:00",
        )
        .await;
    assert_eq!(taken.status(), 400);
    let list: serde_json::Value = app.get("/schedules").await.json().await.unwrap();
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1, "{list}");

    // Disable: no next window. Enable again: one.
    let patched = app
        .send(
            Method::PATCH,
            "/schedules/nightly-runs",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let view: serde_json::Value = patched.json().await.unwrap();
    assert_eq!(view["enabled"], false);
    assert!(view["next_fire_at"].is_null(), "{view}");

    // Replace: the new calendar counts.
    let mut replaced = body.clone();
    replaced["cron"] = json!("@hourly");
    let put = app
        .send(Method::PUT, "/schedules/nightly-runs", Some(replaced))
        .await;
    assert_eq!(put.status(), 200);
    let view: serde_json::Value = put.json().await.unwrap();
    assert_eq!(view["cron"], "@hourly");

    // Trigger: a task now, marked with its schedule.
    let triggered = app
        .send(Method::POST, "/schedules/nightly-runs/trigger", None)
        .await;
    assert_eq!(triggered.status(), 202);
    let task: serde_json::Value = triggered.json().await.unwrap();
    assert_eq!(task["schedule"], "nightly-runs", "{task}");
    let shown: serde_json::Value = app
        .get("/schedules/nightly-runs")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["last_task_id"], task["task_id"], "{shown}");
    assert!(shown["last_task_status"].is_string(), "{shown}");

    // Metrics sampled on scrape: the next window, the last task's status, and the
    // failures since the last success (two failed tasks of this schedule).
    sqlx::query(
        "INSERT INTO cleanup_tasks (id, kind, status, params, cutoff, max_attempts, schedule,
                                    finished_at)
         SELECT gen_random_uuid(), 'cleanup_runs', 'failed', '{}', now(), 3, 'nightly-runs', now()
         FROM generate_series(1, 2)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let metrics = app
        .get_without_token("/metrics")
        .await
        .text()
        .await
        .unwrap();
    for line in [
        "cleanup_schedule_last_outcome{schedule=\"nightly-runs\",status=\"queued\"} 1",
        "cleanup_schedule_consecutive_failures{schedule=\"nightly-runs\"} 2",
        "cleanup_schedule_next_fire_timestamp_seconds{schedule=\"nightly-runs\"} ",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }

    let deleted = app
        .send(Method::DELETE, "/schedules/nightly-runs", None)
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.get("/schedules/nightly-runs").await.status(), 404);
    // The task it fired stays.
    let id = task["task_id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/tasks/{id}")).await.status(), 200);
    stack.stop().await;
}

const FILE_V1: &str = r#"
schedules:
  - name: nightly-runs
    kind: cleanup_runs
    params: {max_age_hours: 720}
    cron: "30 2 * * *"
    timezone: Europe/Berlin
  - name: hourly-tmp
    kind: cleanup_temp_files
    params: {max_age_hours: 24, root: scratch}
    cron: "@hourly"
"#;

const FILE_V2: &str = r#"
schedules:
  - name: nightly-runs
    kind: cleanup_runs
    params: {max_age_hours: 240}
    cron: "30 2 * * *"
    timezone: Europe/Berlin
"#;

fn rules() -> shared::tasks::ValidationRules {
    shared::tasks::ValidationRules::default()
}

/// The schedules file creates what it lists, updates what changed, removes what it no
/// longer lists, and leaves the API's schedules alone; the API cannot change the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_file_creates_updates_and_removes_its_own() {
    use producer_api::schedules::file::{apply, parse};
    let stack = Stack::start().await;
    let app = &stack.app;
    let pool = &app.pool;
    let api_owned = json!({
        "name": "api-owned", "kind": "cleanup_runs",
        "params": {"max_age_hours": 48}, "cron": "@daily"});
    assert_eq!(app.post("/schedules", api_owned).await.status(), 201);

    let applied = apply(pool, &parse(FILE_V1, &rules()).unwrap())
        .await
        .unwrap();
    assert_eq!(applied.created, ["nightly-runs", "hourly-tmp"]);
    let shown: serde_json::Value = app
        .get("/schedules/nightly-runs")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["managed_by"], "file");
    // The same file again changes nothing.
    let again = apply(pool, &parse(FILE_V1, &rules()).unwrap())
        .await
        .unwrap();
    assert_eq!(again.unchanged.len(), 2, "{again:?}");
    assert!(
        again.updated.is_empty() && again.removed.is_empty(),
        "{again:?}"
    );

    // The API may not change or delete what the file manages.
    for (method, body) in [
        (Method::PATCH, Some(json!({"enabled": false}))),
        (Method::DELETE, None),
        (
            Method::PUT,
            Some(
                json!({"kind": "cleanup_runs", "params": {"max_age_hours": 48}, "cron": "@daily"}),
            ),
        ),
    ] {
        let response = app
            .send(method.clone(), "/schedules/nightly-runs", body)
            .await;
        assert_eq!(response.status(), 409, "{method}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("SCHEDULES_FILE"),
            "{problem}"
        );
    }

    let applied = apply(pool, &parse(FILE_V2, &rules()).unwrap())
        .await
        .unwrap();
    assert_eq!(applied.updated, ["nightly-runs"]);
    assert_eq!(applied.removed, ["hourly-tmp"]);
    let shown: serde_json::Value = app
        .get("/schedules/nightly-runs")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["params"]["max_age_hours"], 240.0, "{shown}");
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM cleanup_schedules ORDER BY name")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(
        names,
        ["api-owned", "nightly-runs"],
        "the API's schedule stays"
    );

    // A file naming an API schedule is refused whole.
    let clash = format!(
        "{FILE_V2}  - name: api-owned\n    kind: cleanup_runs\n    params: {{max_age_hours: 48}}\n    cron: \"@daily\"\n"
    );
    let error = apply(pool, &parse(&clash, &rules()).unwrap())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("which the API manages"),
        "{error}"
    );
    stack.stop().await;
}

/// One bad entry refuses the whole file, naming the entry and the field.
#[test]
fn a_bad_schedules_file_names_the_entry_and_field() {
    use producer_api::schedules::file::parse;
    for (text, says) in [
        ("schedules:\n  - name: a\n    kind: cleanup_runs\n    params: {max_age_hours: 24}\n    cron: \"0 2 * *\"\n", "schedule #1 (`a`), field `cron`"),
        ("schedules:\n  - name: a\n    kind: cleanup_runs\n    params: {max_age_hours: 0.01}\n    cron: \"@daily\"\n", "field `params.max_age_hours`"),
        ("schedules:\n  - name: a\n    kind: cleanup_runs\n    params: {max_age_hours: 24}\n    cron: \"@daily\"\n  - name: a\n    kind: cleanup_runs\n    params: {max_age_hours: 24}\n    cron: \"@daily\"\n", "schedule #2 (`a`) is listed twice"),
        ("schedules:\n  - kind: cleanup_runs\n    params: {max_age_hours: 24}\n    cron: \"@daily\"\n", "schedule #1 has no `name`"),
        ("schedules:\n  - name: a\n    kind: cleanup_sessions\n", "not a schedules file"),
        // Empty or truncated: not "no schedules" (which would remove them all).
        ("", "needs a `schedules:` list"),
        ("schedules:\n", "needs a `schedules:` list"),
        ("# nothing\n", "needs a `schedules:` list"),
    ] {
        let error = parse(text, &rules()).unwrap_err().to_string();
        assert!(error.contains(says), "{error}");
    }
}

/// The example shipped in the Kubernetes manifests is a valid schedules file.
#[test]
fn the_shipped_schedules_file_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/k8s/base/schedules.yaml"
    ))
    .unwrap();
    let specs = producer_api::schedules::file::parse(&text, &rules()).unwrap();
    let names: Vec<&str> = specs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["nightly-runs", "hourly-scratch"]);
}

/// The real binary: SCHEDULES_FILE is applied at start-up, again on SIGHUP (the process
/// keeps running), and a file that does not apply on SIGHUP changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_schedules_file_again() {
    use std::time::Duration as StdDuration;
    use test_support::{amqp_base, eventually, TestBroker, SIGNING_KEYS, TOKEN};
    let (db, pool) = ledger().await;
    let broker = TestBroker::create().await;
    let dir = std::env::temp_dir().join(format!("schedules-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("schedules.yaml");
    std::fs::write(&file, FILE_V1).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_producer-api"))
        .env("DATABASE_URL", db.url())
        .env("API_TOKENS", TOKEN)
        .env("AMQP_URL", amqp_base())
        .env("AMQP_PREFIX", broker.prefix())
        .env("TASK_SIGNING_KEYS", SIGNING_KEYS)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("SCHEDULES_FILE", &file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let names = || async {
        sqlx::query_scalar::<_, String>("SELECT name FROM cleanup_schedules ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
    };
    eventually(
        StdDuration::from_secs(30),
        "the file applied at start-up",
        || async { names().await == ["hourly-tmp", "nightly-runs"] },
    )
    .await;
    let pid = child.id().unwrap().to_string();
    let hangup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // A broken file: nothing changes, the process stays up.
    std::fs::write(&file, "schedules:\n  - name: x\n    cron: nope\n").unwrap();
    hangup();
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    assert_eq!(names().await, ["hourly-tmp", "nightly-runs"]);
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the process"
    );

    std::fs::write(&file, FILE_V2).unwrap();
    hangup();
    eventually(
        StdDuration::from_secs(30),
        "the new file applied on SIGHUP",
        || async { names().await == ["nightly-runs"] },
    )
    .await;
    assert!(child.try_wait().unwrap().is_none());
    child.kill().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A window whose key already names a task with other parameters (a schedule deleted and
/// made again under the same name) is skipped, not taken for that task; a schedule whose
/// parameters today's rules refuse is disabled instead of firing tasks workers refuse.
#[tokio::test]
async fn a_window_never_fires_as_another_task_or_with_invalid_parameters() {
    use shared::envelope::TaskEnvelope;
    let (_db, pool) = ledger().await;
    let t0 = at("2026-05-01T10:00:00Z");
    let window = t0 + Duration::minutes(1);
    create(
        &pool,
        "minutely",
        &spec("* * * * *", CatchUp::Once, Overlap::Allow),
        t0,
    )
    .await;
    let other = TaskEnvelope::new(
        uuid::Uuid::now_v7(),
        TaskSpec::CleanupRuns(CleanupRunsParams {
            max_age_hours: 1.0,
            dry_run: false,
            statuses: None,
            batch_size: None,
            max_rows: None,
            max_attempts: None,
            scope: None,
        }),
        3,
        t0,
    );
    let key = format!("schedule:minutely:{}", window.to_rfc3339());
    producer_api::ledger::enqueue(&pool, &other, Some(&key), None)
        .await
        .unwrap();
    let fired = fire_due(&pool, window + Duration::seconds(1), &rules(), 3, 100)
        .await
        .unwrap();
    assert!(
        matches!(&fired[..], [Fired::Skipped { reason, .. }] if reason.contains("other parameters")),
        "{fired:?}"
    );
    let last: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT last_task_id FROM cleanup_schedules WHERE name = 'minutely'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(last, None, "the other task is not the schedule's");

    // MIN_AGE_HOURS raised above the schedule's 48 hours: disabled, nothing fired.
    let mut strict = rules();
    strict.min_age_hours = 72.0;
    let fired = fire_due(&pool, window + Duration::minutes(1), &strict, 3, 100)
        .await
        .unwrap();
    assert!(
        matches!(&fired[..], [Fired::Skipped { reason, .. }] if reason.contains("disabled")),
        "{fired:?}"
    );
    let (enabled, next): (bool, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT enabled, next_fire_at FROM cleanup_schedules WHERE name = 'minutely'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!enabled && next.is_none());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM cleanup_tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "only the other task");
}
