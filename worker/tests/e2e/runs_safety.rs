//! `cleanup_runs` tried as a careless operator and an odd schema would: each test sets up
//! a table where a naive cleanup deletes rows nobody asked it to delete.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

pub(crate) async fn database(setup: &str) -> (TestDb, PgPool) {
    let db = TestDb::create().await;
    let pool = PgPool::connect(&db.url()).await.unwrap();
    sqlx::raw_sql(setup).execute(&pool).await.unwrap();
    (db, pool)
}

pub(crate) async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The application writes local wall-clock times (`localtimestamp`) into a `timestamp
/// without time zone` column of a database that is 5 hours behind UTC. Rows finished one
/// hour ago must survive a cleanup of rows older than three hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_timestamps_are_read_in_the_databases_time_zone() {
    let (runs, pool) = database(
        "CREATE TABLE runs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                            status text NOT NULL, finished_at timestamp)",
    )
    .await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET timezone TO 'Etc/GMT+5'",
        runs.name
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let pool = PgPool::connect(&runs.url()).await.unwrap();
    sqlx::raw_sql(
        "SET timezone TO 'Etc/GMT+5';
         INSERT INTO runs (status, finished_at)
         SELECT 'succeeded', localtimestamp - interval '1 hour' FROM generate_series(1, 7);
         INSERT INTO runs (status, finished_at)
         SELECT 'succeeded', localtimestamp - interval '4 hours' FROM generate_series(1, 3);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.url()),
            "--runs-timestamp-timezone=Etc/GMT+5".into(),
        ])
        .await;

    for dry_run in [true, false] {
        let id = enqueue(app, RUNS, json!({"max_age_hours": 3, "dry_run": dry_run})).await;
        let task = wait_for(app, &id, DONE, Duration::from_secs(30)).await;
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(
            task["result"]["runs_matched"], 3,
            "dry run {dry_run}: {task}"
        );
        let oldest = task["result"]["oldest_remaining_age_seconds"].as_f64();
        if dry_run {
            let oldest = oldest.unwrap();
            assert!((4.0 * 3600.0..4.1 * 3600.0).contains(&oldest), "{task}");
        } else {
            assert_eq!(oldest, None, "{task}");
        }
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs").await,
        7,
        "young rows deleted"
    );

    // The zone can be named explicitly too: read as UTC, the same young rows would look
    // five hours older; an operator who says so gets exactly that.
    worker.stop().await;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.url()),
            "--runs-timestamp-timezone=Etc/GMT+8".into(),
        ])
        .await;
    let task = stack
        .run(RUNS, json!({"max_age_hours": 3, "dry_run": true}))
        .await;
    assert_eq!(task["result"]["runs_matched"], 0, "{task}");
    worker.stop().await;
    stack.stop().await;
}

/// With an id column that is not unique, `DELETE ... WHERE id IN (eligible ids)` also
/// deletes the young, running rows that share an id: the worker refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_to_start_on_an_id_column_that_is_not_unique() {
    let (runs, _pool) = database(
        "CREATE TABLE runs (id bigint NOT NULL, status text NOT NULL, finished_at timestamptz);
         INSERT INTO runs VALUES (1, 'succeeded', now() - interval '10 days'),
                                 (1, 'running', now());",
    )
    .await;
    let broker = TestBroker::create().await;
    let error = build_worker(&broker, &[runs_database_flag(runs.url())])
        .await
        .err()
        .expect("the worker must refuse this table");
    let message = error.to_string();
    assert!(
        message.contains("RUNS_ID_COLUMN `id` does not identify one row"),
        "{message}"
    );

    // A wrong column name or type is refused the same way.
    let (typed, _pool) =
        database("CREATE TABLE runs (id bigint PRIMARY KEY, status text, finished_at date)").await;
    let error = build_worker(&broker, &[runs_database_flag(typed.url())])
        .await
        .err()
        .expect("a date column must be refused");
    assert!(error.to_string().contains("is of type date"), "{error}");
}

/// A partitioned-style table whose unique key is (id, finished_at): the same id appears
/// on an old, eligible row and a young one. Only the old one may go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_sharing_an_id_with_an_eligible_row_are_not_deleted() {
    let (runs, pool) = database(
        "CREATE TABLE runs (id bigint NOT NULL, status text NOT NULL,
                            finished_at timestamptz NOT NULL, PRIMARY KEY (id, finished_at));
         INSERT INTO runs SELECT g, 'succeeded', now() - interval '10 days' FROM generate_series(1, 20) g;
         INSERT INTO runs SELECT g, 'succeeded', now() FROM generate_series(1, 20) g;
         INSERT INTO runs SELECT g, 'running', now() - interval '20 days' FROM generate_series(1, 20) g;",
    )
    .await;
    let stack = Stack::start().await;
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
    let task = stack
        .run(RUNS, json!({"max_age_hours": 24, "batch_size": 7}))
        .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["runs_deleted"], 20, "{task}");
    assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 40);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs WHERE finished_at < now() - interval '1 day' AND status = 'succeeded'").await,
        0
    );
    worker.stop().await;
    stack.stop().await;
}

/// A child table without `ON DELETE CASCADE` makes a batch fail permanently. The rows
/// deleted by earlier batches are gone: the failed task must say how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_fails_for_good_reports_the_rows_it_deleted_before() {
    let (runs, pool) = database(
        "CREATE TABLE runs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                            status text NOT NULL, finished_at timestamptz);
         CREATE TABLE artifacts (run_id bigint NOT NULL REFERENCES runs (id));
         INSERT INTO runs (status, finished_at)
         SELECT 'succeeded', now() - make_interval(days => 100 - g) FROM generate_series(1, 30) g;
         -- the 10 youngest of the old runs are still referenced
         INSERT INTO artifacts SELECT id FROM runs ORDER BY finished_at DESC LIMIT 10;",
    )
    .await;
    let stack = Stack::start().await;
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
    let task = stack
        .run(RUNS, json!({"max_age_hours": 24, "batch_size": 5}))
        .await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["class"], "permanent", "{task}");
    let gone = 30 - count(&pool, "SELECT count(*) FROM runs").await;
    assert_eq!(
        gone, 20,
        "the unreferenced runs went in the first four batches"
    );
    assert_eq!(task["result"]["runs_deleted"], gone, "{task}");
    assert_eq!(task["result"]["batches"], 4, "{task}");
    worker.stop().await;
    stack.stop().await;
}

/// The application holds a lock on the runs table. Without `lock_timeout` the batch
/// waits behind it past the attempt's hard time limit, the attempt is reported failed,
/// and the abandoned `DELETE` commits the moment the lock goes. With it, the batch gives
/// up in time and nothing is deleted after the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_delete_commits_after_its_attempt_was_reported_failed() {
    let (runs, pool) = database(
        "CREATE TABLE runs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                            status text NOT NULL, finished_at timestamptz);
         INSERT INTO runs (status, finished_at)
         SELECT 'succeeded', now() - interval '10 days' FROM generate_series(1, 50);",
    )
    .await;
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.url()),
            "--runs-lock-timeout=300ms".into(),
            "--runs-statement-timeout=2s".into(),
            "--turn-budget=1s".into(),
            "--task-timeout=2s".into(),
        ])
        .await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let id = enqueue(app, RUNS, json!({"max_age_hours": 24, "max_attempts": 1})).await;
    let task = wait_for(app, &id, DONE, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["class"], "transient", "{task}");
    holder.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs").await,
        50,
        "a DELETE committed after its attempt was reported failed"
    );
    worker.stop().await;
    stack.stop().await;
}

/// Around a daylight-saving fall-back, one wall time names two instants an hour apart.
/// The wall-clock cutoff must be safe for both.
#[tokio::test]
async fn a_wall_clock_cutoff_is_safe_in_the_hour_a_clock_change_repeats() {
    use worker::executor::runs::schema::{Schema, Strategy, Timestamps};
    let (_db, pool) = database("SELECT 1").await;
    let schema = Schema {
        key: vec!["\"id\"".into()],
        timestamps: Timestamps::WallClock {
            zone: "America/New_York".into(),
        },
        strategy: Strategy::Keyset,
        id_type: "bigint".into(),
        ts_type: "timestamp without time zone".into(),
        scope_types: Default::default(),
        partitioned: false,
    };
    let cutoff_wall = |instant: &'static str| {
        let sql = format!("SELECT ({})::text", schema.cutoff_expr());
        let pool = pool.clone();
        async move {
            let at: chrono::DateTime<chrono::Utc> = instant.parse().unwrap();
            sqlx::query_scalar::<_, String>(&sql)
                .bind(Vec::<String>::new())
                .bind(at)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // An ordinary day: the wall time of the cutoff.
    assert_eq!(
        cutoff_wall("2026-07-01T12:00:00Z").await,
        "2026-07-01 08:00:00"
    );
    // 2026-11-01: 01:00-02:00 happens twice (EDT, then EST). A cutoff at 01:30 EDT must
    // not take a row written at 01:10 EST (40 minutes later) as older.
    assert_eq!(
        cutoff_wall("2026-11-01T05:30:00Z").await,
        "2026-11-01 00:30:00"
    );
    // A cutoff at 01:30 EST (second pass): every 01:xx row is older.
    assert_eq!(
        cutoff_wall("2026-11-01T06:30:00Z").await,
        "2026-11-01 01:30:00"
    );
    // Antarctica/Troll moves two hours: on 2026-10-25 at 01:00 UTC, 03:00 (+02) becomes
    // 01:00 (+00), so 01:00-03:00 happens twice. A cutoff at 01:30 (+02) must not take a
    // row written at 01:10 (+00), 1 h 40 min later, as older.
    let (_db2, troll) = database("SET timezone TO 'UTC'").await;
    let troll_schema = Schema {
        key: vec!["\"id\"".into()],
        timestamps: Timestamps::WallClock {
            zone: "Antarctica/Troll".into(),
        },
        strategy: Strategy::Keyset,
        id_type: "bigint".into(),
        ts_type: "timestamp without time zone".into(),
        scope_types: Default::default(),
        partitioned: false,
    };
    let bound: String =
        sqlx::query_scalar(&format!("SELECT ({})::text", troll_schema.cutoff_expr()))
            .bind(Vec::<String>::new())
            .bind(
                "2026-10-24T23:30:00Z"
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .unwrap(),
            )
            .fetch_one(&troll)
            .await
            .unwrap();
    assert!(
        bound.as_str() <= "2026-10-25 01:00:00",
        "the bound {bound} lets a younger row written at 01:10 (+00) pass as older"
    );
    // Spring forward (02:00-03:00 does not exist): the wall time of the cutoff.
    assert_eq!(
        cutoff_wall("2026-03-08T06:30:00Z").await,
        "2026-03-08 01:30:00"
    );
}
