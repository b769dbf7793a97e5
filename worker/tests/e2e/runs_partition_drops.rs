//! A partition goes in two transactions: the detach (with the count, and the partition
//! recorded as pending in the task's progress row), then the drop, which locks only the
//! detached table. A worker that dies in between leaves the record, and the task's next
//! attempt drops the table; a record that no longer names the table it named (renamed,
//! attached again, replaced) drops nothing.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::runs_partitions::{partitions, MONTHS};
use crate::runs_safety::{count, database};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

async fn oid(pool: &PgPool, table: &str) -> i64 {
    count(pool, &format!("SELECT '{table}'::regclass::oid::int8")).await
}

async fn record(pool: &PgPool, task: &str, pending: &str) {
    sqlx::query("INSERT INTO cleanup_runs_progress (task_id, pending_drop) VALUES ($1::uuid, $2)")
        .bind(task)
        .bind(pending)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_drop_is_finished_only_while_it_names_the_same_table() {
    let stack = Stack::start().await;
    let (runs, pool) = database(&format!(
        "{MONTHS}
         CREATE TABLE cleanup_runs_progress (
             task_id      uuid PRIMARY KEY,
             runs_deleted bigint NOT NULL DEFAULT 0 CHECK (runs_deleted >= 0),
             runs_estimated bigint NOT NULL DEFAULT 0 CHECK (runs_estimated >= 0),
             pending_drop text,
             finished_at  timestamptz,
             updated_at   timestamptz NOT NULL DEFAULT now());
         CREATE TABLE leftover (LIKE runs);
         CREATE TABLE renamed (LIKE runs);"
    ))
    .await;
    // Three tasks, queued before any worker runs: one whose earlier attempt detached
    // `leftover` and died; one whose record names a partition that is attached (again);
    // one whose record names a table by an oid that is now another name's.
    let body = json!({"max_age_hours": 24});
    let finished = stack.enqueue(RUNS, body.clone()).await;
    let attached = stack.enqueue(RUNS, body.clone()).await;
    let replaced = stack.enqueue(RUNS, body).await;
    record(
        &pool,
        &finished,
        &format!("{} public.leftover", oid(&pool, "leftover").await),
    )
    .await;
    record(
        &pool,
        &attached,
        &format!("{} public.runs_2020_02", oid(&pool, "runs_2020_02").await),
    )
    .await;
    record(
        &pool,
        &replaced,
        &format!("{} public.leftover2", oid(&pool, "renamed").await),
    )
    .await;

    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
    for id in [&finished, &attached, &replaced] {
        let task = wait_for(&stack.app, id, DONE, Duration::from_secs(30)).await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    let exists = |name: &'static str| {
        let pool = pool.clone();
        async move {
            count(
                &pool,
                &format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'"),
            )
            .await
                == 1
        }
    };
    assert!(!exists("leftover").await, "the pending drop was finished");
    assert!(
        exists("runs_2020_02").await,
        "an attached partition is never dropped"
    );
    assert!(
        exists("renamed").await,
        "a table under another name is never dropped"
    );
    assert_eq!(
        partitions(&pool).await,
        ["runs_2020_02", "runs_default", "runs_later"]
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM cleanup_runs_progress WHERE pending_drop IS NOT NULL"
        )
        .await,
        0,
        "every record is settled"
    );
    worker.stop().await;
    stack.stop().await;
}
