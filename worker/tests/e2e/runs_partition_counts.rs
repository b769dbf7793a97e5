//! How a real run counts a partition that goes whole. Where the indexes prove every row
//! eligible without reading one, the rows come from PostgreSQL's statistics, marked
//! `estimated` (RUNS_PARTITION_COUNT=estimate, the default); a partition with no
//! statistics yet, `RUNS_PARTITION_COUNT=exact`, and every dry run count them.

use serde_json::json;
use sqlx::PgPool;

use crate::runs_partitions::{partitions, INDEXES, MONTHS};
use crate::runs_safety::{count, database};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

/// The months of [`MONTHS`] with the census indexes; January analyzed, then its
/// statistics made stale by hand (180 rows on 2 pages where it holds 100 on 1 page: 90
/// for the pages it has now), as they are after writes that autovacuum has not caught up
/// with. March has none, as a table never vacuumed nor analyzed (building the indexes
/// gave it some). The progress table is one an earlier version made, without the column
/// that keeps estimates.
async fn stale_statistics() -> (TestDb, PgPool) {
    let (runs, pool) = database(&format!(
        "{MONTHS} {INDEXES}
         ANALYZE runs_2020_01;
         UPDATE pg_class SET reltuples = 180, relpages = 2 WHERE oid = 'runs_2020_01'::regclass;
         UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE oid = 'runs_2020_03'::regclass;
         CREATE TABLE cleanup_runs_progress (
             task_id      uuid PRIMARY KEY,
             runs_deleted bigint NOT NULL DEFAULT 0 CHECK (runs_deleted >= 0),
             finished_at  timestamptz,
             updated_at   timestamptz NOT NULL DEFAULT now());"
    ))
    .await;
    let pages = count(&pool, "SELECT pg_relation_size('runs_2020_01') / 8192").await;
    assert_eq!(pages, 1, "January's size");
    (runs, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_proven_by_its_indexes_is_counted_from_its_statistics() {
    let stack = Stack::start().await;
    let (runs, pool) = stale_statistics().await;
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;

    let dry = stack
        .run(RUNS, json!({"max_age_hours": 24, "dry_run": true}))
        .await;
    assert_eq!(dry["result"]["runs_matched"], 207, "{dry}");
    assert_eq!(
        dry["result"]["partitions"],
        json!([
            {"name": "public.runs_2020_01", "rows": 100, "action": "dropped"},
            {"name": "public.runs_2020_03", "rows": 30, "action": "dropped"},
        ]),
        "a dry run counts every partition: {dry}"
    );
    assert!(dry["result"].get("runs_estimated").is_none(), "{dry}");

    let task = stack.run(RUNS, json!({"max_age_hours": 24})).await;
    let result = &task["result"];
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        result["partitions"],
        json!([
            {"name": "public.runs_2020_01", "rows": 90, "action": "dropped", "estimated": true},
            {"name": "public.runs_2020_03", "rows": 30, "action": "dropped"},
        ]),
        "January from its statistics, March (none yet) counted: {task}"
    );
    assert_eq!(result["runs_estimated"], 90, "{task}");
    // Committed with the count (in the column the worker added), so that a report
    // rebuilt from the table says it too.
    assert_eq!(
        count(
            &pool,
            "SELECT sum(runs_estimated)::int8 FROM cleanup_runs_progress"
        )
        .await,
        90
    );
    // Each partition was dropped after its detach, and nothing is left pending.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM cleanup_runs_progress WHERE pending_drop IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        result["runs_deleted"], 197,
        "77 rows by batches, 120 by drops: {task}"
    );
    // The estimate is only what is reported: every eligible row went, and only those.
    assert_eq!(
        partitions(&pool).await,
        ["runs_2020_02", "runs_default", "runs_later"]
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 16);
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_count_is_taken_when_so_configured() {
    let stack = Stack::start().await;
    let (runs, pool) = stale_statistics().await;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.url()),
            "--runs-partition-count=exact".into(),
        ])
        .await;
    let task = stack.run(RUNS, json!({"max_age_hours": 24})).await;
    let result = &task["result"];
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(result["runs_deleted"], 207, "{task}");
    assert_eq!(
        result["partitions"],
        json!([
            {"name": "public.runs_2020_01", "rows": 100, "action": "dropped"},
            {"name": "public.runs_2020_03", "rows": 30, "action": "dropped"},
        ]),
        "{task}"
    );
    assert!(result.get("runs_estimated").is_none(), "{task}");
    assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 16);
    worker.stop().await;
    stack.stop().await;
}

/// A progress table without the estimates' column that is busy when the worker starts:
/// the worker does not wait for it (every batch would queue behind its ALTER TABLE) and
/// counts every partition instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_older_progress_table_means_exact_counts() {
    let stack = Stack::start().await;
    let (runs, pool) = stale_statistics().await;
    let mut busy = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE cleanup_runs_progress IN ACCESS SHARE MODE")
        .execute(&mut *busy)
        .await
        .unwrap();
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
    busy.commit().await.unwrap();
    let task = stack.run(RUNS, json!({"max_age_hours": 24})).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"]["partitions"][0]["rows"], 100, "{task}");
    assert!(task["result"].get("runs_estimated").is_none(), "{task}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'cleanup_runs_progress'::regclass
             AND attname = 'runs_estimated'"
        )
        .await,
        0
    );
    worker.stop().await;
    stack.stop().await;
}
