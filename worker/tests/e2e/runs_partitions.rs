//! The partition fast path: old partitions whose every row is eligible go whole; a
//! partition with one row that is not eligible, the last partition, and tables whose
//! partitions cannot be dropped exactly like their rows would be deleted are cleaned row by
//! row.

use serde_json::json;
use sqlx::PgPool;

use crate::runs_safety::{count, database};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

/// Monthly partitions of 2020, a catch-all for later rows, a default partition, and in
/// them: January all finished (100), February finished (50) but one running, March all
/// failed (30), after April 20 finished and 15 young or running, the default 7 finished.
/// 207 rows are eligible.
pub(crate) const MONTHS: &str = "
    CREATE TABLE runs (id bigint NOT NULL, status text NOT NULL, finished_at timestamptz NOT NULL,
                       PRIMARY KEY (id, finished_at)) PARTITION BY RANGE (finished_at);
    CREATE TABLE runs_2020_01 PARTITION OF runs FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
    CREATE TABLE runs_2020_02 PARTITION OF runs FOR VALUES FROM ('2020-02-01') TO ('2020-03-01');
    CREATE TABLE runs_2020_03 PARTITION OF runs FOR VALUES FROM ('2020-03-01') TO ('2020-04-01');
    CREATE TABLE runs_later PARTITION OF runs FOR VALUES FROM ('2020-04-01') TO (MAXVALUE);
    CREATE TABLE runs_default PARTITION OF runs DEFAULT;
    INSERT INTO runs SELECT g, 'succeeded', timestamptz '2020-01-02' + make_interval(hours => g)
    FROM generate_series(1, 100) g;
    INSERT INTO runs SELECT 1000 + g, 'succeeded', timestamptz '2020-02-02' + make_interval(hours => g)
    FROM generate_series(1, 50) g;
    INSERT INTO runs VALUES (1100, 'running', '2020-02-20');
    INSERT INTO runs SELECT 2000 + g, 'failed', timestamptz '2020-03-02' + make_interval(hours => g)
    FROM generate_series(1, 30) g;
    INSERT INTO runs SELECT 3000 + g, 'succeeded', timestamptz '2020-05-02' + make_interval(hours => g)
    FROM generate_series(1, 20) g;
    INSERT INTO runs SELECT 3100 + g, 'succeeded', now() - interval '1 hour' FROM generate_series(1, 10) g;
    INSERT INTO runs SELECT 3200 + g, 'running', timestamptz '2020-05-01' FROM generate_series(1, 5) g;
    INSERT INTO runs SELECT 4000 + g, 'succeeded', timestamptz '2019-06-01' + make_interval(hours => g)
    FROM generate_series(1, 7) g;";

pub(crate) async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'runs'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Until the worker waits for a lock on January (held by the application).
async fn worker_waits_for_january(pool: &PgPool) {
    eventually(
        std::time::Duration::from_secs(20),
        "the worker waits for the lock on January",
        || async {
            count(
                pool,
                "SELECT count(*) FROM pg_locks
                 WHERE relation = 'runs_2020_01'::regclass AND NOT granted",
            )
            .await
                > 0
        },
    )
    .await;
}

pub(crate) async fn table_exists(pool: &PgPool, name: &str) -> bool {
    count(
        pool,
        &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{name}'"),
    )
    .await
        == 1
}

/// The indexes that let a census prove a partition eligible without reading its rows.
pub(crate) const INDEXES: &str =
    "CREATE INDEX ON runs (status COLLATE \"C\"); CREATE INDEX ON runs (finished_at, id);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_partitions_whose_every_row_is_eligible_are_dropped_whole() {
    drop_whole(MONTHS, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_partitions_proven_eligible_by_indexes_are_dropped_whole() {
    // Building the indexes gave the partitions statistics: a real run takes its counts
    // from them (exact here), marked as estimates.
    drop_whole(&format!("{MONTHS} {INDEXES}"), true).await;
}

/// `partitions` of a result, each marked `estimated` when `estimated`.
fn marked(partitions: &serde_json::Value, estimated: bool) -> serde_json::Value {
    let mut partitions = partitions.clone();
    if estimated {
        for p in partitions.as_array_mut().expect("a list of partitions") {
            p["estimated"] = json!(true);
        }
    }
    partitions
}

async fn drop_whole(setup: &str, estimated: bool) {
    let stack = Stack::start().await;
    let (runs, pool) = database(setup).await;
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;

    let dry = stack
        .run(RUNS, json!({"max_age_hours": 24, "dry_run": true}))
        .await;
    let result = &dry["result"];
    assert_eq!(result["runs_matched"], 207, "{dry}");
    assert_eq!(
        result["partitions"],
        json!([
            {"name": "public.runs_2020_01", "rows": 100, "action": "dropped"},
            {"name": "public.runs_2020_03", "rows": 30, "action": "dropped"},
        ]),
        "{dry}"
    );
    assert_eq!(partitions(&pool).await.len(), 5, "a dry run drops nothing");

    let task = stack
        .run(RUNS, json!({"max_age_hours": 24, "batch_size": 10}))
        .await;
    let result = &task["result"];
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(result["runs_deleted"], 207, "{task}");
    assert_eq!(
        result["partitions"],
        marked(&dry["result"]["partitions"], estimated),
        "{task}"
    );
    assert_eq!(
        partitions(&pool).await,
        ["runs_2020_02", "runs_default", "runs_later"],
        "the partition with a running row stays"
    );
    assert!(!table_exists(&pool, "runs_2020_01").await);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs").await,
        16,
        "the running run of February, the young and the running ones remain"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs WHERE status = 'running'").await,
        6
    );
    worker.stop().await;
    stack.stop().await;
}

/// Tables where dropping a partition is not the same as deleting its rows, and the last
/// partition: everything eligible still goes, row by row, and no partition is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_stay_where_dropping_would_differ_from_deleting() {
    let stack = Stack::start().await;
    let two_months = "
        CREATE TABLE runs (id bigint NOT NULL, status text NOT NULL, finished_at timestamptz NOT NULL,
                           PRIMARY KEY (id, finished_at)) PARTITION BY RANGE (finished_at);
        CREATE TABLE runs_2020_01 PARTITION OF runs FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
        CREATE TABLE runs_2020_02 PARTITION OF runs FOR VALUES FROM ('2020-02-01') TO ('2020-03-01');
        INSERT INTO runs SELECT g, 'succeeded', timestamptz '2020-01-01' + make_interval(hours => g)
        FROM generate_series(1, 40) g;";
    let cases = [
        // The only partition: the table would accept no row without it.
        (
            "CREATE TABLE runs (id bigint NOT NULL, status text NOT NULL, finished_at timestamptz NOT NULL,
                                PRIMARY KEY (id, finished_at)) PARTITION BY RANGE (finished_at);
             CREATE TABLE runs_2020 PARTITION OF runs FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
             INSERT INTO runs SELECT g, 'succeeded', timestamptz '2020-01-01' + make_interval(hours => g)
             FROM generate_series(1, 40) g;"
                .to_owned(),
            vec!["runs_2020"],
            40,
        ),
        // Child rows that must go through the cascade.
        (
            format!(
                "{two_months}
                 CREATE TABLE run_logs (run_id bigint, run_finished_at timestamptz, line text,
                     FOREIGN KEY (run_id, run_finished_at) REFERENCES runs ON DELETE CASCADE);
                 INSERT INTO run_logs SELECT id, finished_at, 'x' FROM runs;"
            ),
            vec!["runs_2020_01", "runs_2020_02"],
            40,
        ),
        // The application's own DELETE trigger (an audit, say) must fire.
        (
            format!(
                "{two_months}
                 CREATE TABLE audit (id bigint);
                 CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN INSERT INTO audit VALUES (OLD.id); RETURN OLD; END $$;
                 CREATE TRIGGER audit AFTER DELETE ON runs FOR EACH ROW EXECUTE FUNCTION audit();"
            ),
            vec!["runs_2020_01", "runs_2020_02"],
            40,
        ),
        // Row-level security: the worker might not see every row of a partition.
        (
            format!("{two_months} ALTER TABLE runs_2020_01 ENABLE ROW LEVEL SECURITY;"),
            vec!["runs_2020_01", "runs_2020_02"],
            40,
        ),
        // Published: subscribers would keep the rows a drop removes here.
        (
            format!("{two_months} CREATE PUBLICATION runs_feed FOR TABLE runs;"),
            vec!["runs_2020_01", "runs_2020_02"],
            40,
        ),
    ];
    for (setup, kept, deleted) in cases {
        let (runs, pool) = database(&setup).await;
        let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
        let dry = stack
            .run(RUNS, json!({"max_age_hours": 24, "dry_run": true}))
            .await;
        assert!(dry["result"].get("partitions").is_none(), "{dry}");
        let task = stack.run(RUNS, json!({"max_age_hours": 24})).await;
        assert_eq!(task["result"]["runs_deleted"], deleted, "{task}");
        assert!(task["result"].get("partitions").is_none(), "{task}");
        assert_eq!(partitions(&pool).await, kept, "{setup}");
        assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 0);
        if setup.contains("run_logs") {
            assert_eq!(count(&pool, "SELECT count(*) FROM run_logs").await, 0);
        }
        if setup.contains("audit") {
            assert_eq!(count(&pool, "SELECT count(*) FROM audit").await, 40);
        }
        worker.stop().await;
    }
    stack.stop().await;
}

/// `RUNS_PARTITIONS=detach` keeps the old partition as a table of its own; a scoped or
/// capped task never takes the fast path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_only_detached_when_so_configured() {
    let stack = Stack::start().await;
    let (runs, pool) = database(MONTHS).await;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.url()),
            "--runs-partitions=detach".into(),
        ])
        .await;
    let capped = stack
        .run(RUNS, json!({"max_age_hours": 24, "max_rows": 5}))
        .await;
    assert_eq!(capped["result"]["runs_deleted"], 5, "{capped}");
    assert!(capped["result"].get("partitions").is_none(), "{capped}");
    assert_eq!(partitions(&pool).await.len(), 5);

    let task = stack.run(RUNS, json!({"max_age_hours": 24})).await;
    assert_eq!(task["result"]["runs_deleted"], 202, "{task}");
    assert_eq!(
        task["result"]["partitions"][0]["action"], "detached",
        "{task}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs_2020_01").await,
        100,
        "a detached partition keeps its rows, outside the runs table"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 16);
    worker.stop().await;
    stack.stop().await;
}

/// The census of a partition sees a row committed while the worker waited for its lock,
/// even when the database makes transactions REPEATABLE READ by default (a snapshot
/// taken before the lock would miss it, and the running row would be dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_while_the_worker_waits_for_the_partition_keeps_it() {
    row_committed_while_waiting("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_while_the_worker_waits_keeps_a_partition_proven_by_indexes() {
    row_committed_while_waiting(INDEXES).await;
}

async fn row_committed_while_waiting(indexes: &str) {
    use std::time::Duration;
    let stack = Stack::start().await;
    let (runs, pool) = database(&format!(
        "{MONTHS} {indexes}
         DO $$ BEGIN
             EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = %L',
                            current_database(), 'repeatable read');
         END $$;"
    ))
    .await;
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
    // The application is inserting a running run into January, not yet committed.
    let mut app = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO runs VALUES (9999, 'running', '2020-01-15')")
        .execute(&mut *app)
        .await
        .unwrap();
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 24})).await;
    worker_waits_for_january(&pool).await;
    app.commit().await.unwrap();
    let task = wait_for(
        &stack.app,
        &id,
        &["succeeded", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs WHERE id = 9999").await,
        1,
        "the running run was deleted: {task}"
    );
    assert!(table_exists(&pool, "runs_2020_01").await, "{task}");
    assert_eq!(task["result"]["runs_deleted"], 207, "{task}");
    assert_eq!(
        task["result"]["partitions"],
        marked(
            &json!([{"name": "public.runs_2020_03", "rows": 30, "action": "dropped"}]),
            !indexes.is_empty()
        ),
        "{task}"
    );
    worker.stop().await;
    stack.stop().await;
}

/// The status column changes type (to `citext`, whose `>` ignores case) after the worker
/// listed the partitions, while it waits for January's lock; a `SUCCEEDED` run arrives
/// with it. The proof is chosen again under the lock: the scan sees that `SUCCEEDED` is not
/// among the task's statuses, and January stays (the index walk, chosen for text, would
/// have folded `SUCCEEDED` into `succeeded` and dropped it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_column_that_changes_type_meanwhile_keeps_the_partition() {
    use std::time::Duration;
    let stack = Stack::start().await;
    let (runs, pool) = database(&format!("CREATE EXTENSION citext; {MONTHS} {INDEXES}")).await;
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
    let mut app = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO runs VALUES (9999, 'succeeded', '2020-01-15')")
        .execute(&mut *app)
        .await
        .unwrap();
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 24})).await;
    worker_waits_for_january(&pool).await;
    sqlx::raw_sql(
        "ALTER TABLE runs ALTER COLUMN status TYPE citext;
         INSERT INTO runs VALUES (9998, 'SUCCEEDED', '2020-01-16');",
    )
    .execute(&mut *app)
    .await
    .unwrap();
    app.commit().await.unwrap();
    let task = wait_for(
        &stack.app,
        &id,
        &["succeeded", "failed"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs WHERE id = 9998").await,
        1,
        "a run whose status is not the task's was deleted: {task}"
    );
    assert!(table_exists(&pool, "runs_2020_01").await, "{task}");
    assert_eq!(task["result"]["runs_deleted"], 208, "{task}");
    worker.stop().await;
    stack.stop().await;
}
