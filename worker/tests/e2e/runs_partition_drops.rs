//! A partition goes in two transactions: the detach (with the count, and the partition
//! recorded as pending in the task's progress row), then the drop, which locks only the
//! detached table. A worker that dies in between leaves the record, and the task's next
//! attempt drops the table; a record that no longer names the table it named (renamed,
//! attached again, replaced) drops nothing.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::runs_partitions::{partitions, table_exists as exists, MONTHS};
use crate::runs_safety::{count, database};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

/// A record of `table` as a detach would write it (oid, the xmin of its catalog row,
/// name), under `name` unless told otherwise.
async fn record_of(pool: &PgPool, table: &str, name: Option<&str>) -> String {
    let (oid, xmin): (i64, String) =
        sqlx::query_as("SELECT oid::int8, xmin::text FROM pg_class WHERE oid = to_regclass($1)")
            .bind(table)
            .fetch_one(pool)
            .await
            .unwrap();
    format!(
        "{oid} {xmin} {}",
        name.unwrap_or(&format!("public.{table}"))
    )
}

async fn record(pool: &PgPool, task: &str, pending: &str) {
    sqlx::query("INSERT INTO cleanup_runs_progress (task_id, pending_drop) VALUES ($1::uuid, $2)")
        .bind(task)
        .bind(pending)
        .execute(pool)
        .await
        .unwrap();
}

async fn pending_records(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM cleanup_runs_progress WHERE pending_drop IS NOT NULL",
    )
    .await
}

/// The runs table of [`MONTHS`], a progress table, a table as a detach leaves one, and
/// other tables a record might name.
async fn setup() -> (TestDb, PgPool) {
    database(&format!(
        "{MONTHS}
         CREATE TABLE cleanup_runs_progress (
             task_id      uuid PRIMARY KEY,
             runs_deleted bigint NOT NULL DEFAULT 0 CHECK (runs_deleted >= 0),
             runs_estimated bigint NOT NULL DEFAULT 0 CHECK (runs_estimated >= 0),
             pending_drop text,
             finished_at  timestamptz,
             updated_at   timestamptz NOT NULL DEFAULT now());
         CREATE TABLE leftover (LIKE runs);
         CREATE TABLE renamed (LIKE runs);
         CREATE TABLE altered (LIKE runs);"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_drop_is_finished_only_while_it_names_the_same_table() {
    let stack = Stack::start().await;
    let (runs, pool) = setup().await;
    // Tasks queued before any worker runs, each with a record: one whose earlier attempt
    // detached `leftover` and died; the others name tables that must stay: a partition
    // that is attached, a table by another name's oid (and by a name that is no valid
    // name), a table altered since its record, and the progress table itself (a forged
    // record).
    let mut records = vec![
        record_of(&pool, "leftover", None).await,
        record_of(&pool, "runs_2020_02", None).await,
        record_of(&pool, "renamed", Some("public.leftover2")).await,
        record_of(&pool, "renamed", Some("public.\"unterminated")).await,
        record_of(&pool, "altered", None).await,
        record_of(&pool, "cleanup_runs_progress", None).await,
    ];
    sqlx::raw_sql("ALTER TABLE altered ADD COLUMN note text")
        .execute(&pool)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for pending in records.drain(..) {
        let id = stack.enqueue(RUNS, json!({"max_age_hours": 24})).await;
        record(&pool, &id, &pending).await;
        tasks.push(id);
    }
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
    for id in &tasks {
        let task = wait_for(&stack.app, id, DONE, Duration::from_secs(30)).await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    assert!(
        !exists(&pool, "leftover").await,
        "the pending drop was finished"
    );
    for kept in [
        "runs_2020_02",
        "renamed",
        "altered",
        "cleanup_runs_progress",
    ] {
        assert!(exists(&pool, kept).await, "{kept} was dropped");
    }
    assert_eq!(
        partitions(&pool).await,
        ["runs_2020_02", "runs_default", "runs_later"]
    );
    assert_eq!(pending_records(&pool).await, 0, "every record is settled");
    worker.stop().await;
    stack.stop().await;
}

/// With `RUNS_PARTITIONS=detach` a detached table stays, whatever a record says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_only_detaches_finishes_no_drop() {
    let stack = Stack::start().await;
    let (runs, pool) = setup().await;
    let id = stack.enqueue(RUNS, json!({"max_age_hours": 24})).await;
    record(&pool, &id, &record_of(&pool, "leftover", None).await).await;
    let worker = stack
        .worker(&[
            runs_database_flag(runs.url()),
            "--runs-partitions=detach".into(),
        ])
        .await;
    let task = wait_for(&stack.app, &id, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert!(exists(&pool, "leftover").await);
    assert_eq!(
        pending_records(&pool).await,
        1,
        "the record waits for a drop worker"
    );
    worker.stop().await;
    stack.stop().await;
}
