//! Retention of the ledger: finished tasks past their status's retention go, in batches,
//! oldest first; unfinished tasks stay whatever their age; departed workers go after
//! WORKER_RETENTION; two replicas never prune at once.

use std::time::Duration;

use producer_api::ledger::retention::{prune_once, Retention};
use producer_api::ledger::{TaskStatus, MIGRATOR};
use sqlx::PgPool;
use test_support::TestDb;

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn ledger() -> (TestDb, PgPool) {
    let db = TestDb::create().await;
    let pool = PgPool::connect(&db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    (db, pool)
}

/// `n` tasks of `status`, finished (when finished at all) `days_ago` days ago; the
/// unfinished ones were created that long ago.
async fn tasks(pool: &PgPool, n: i64, status: &str, days_ago: i64) {
    let finished = matches!(status, "succeeded" | "failed" | "dead");
    sqlx::query(
        "INSERT INTO cleanup_tasks (id, kind, status, params, cutoff, max_attempts, created_at,
                                    finished_at)
         SELECT gen_random_uuid(), 'cleanup_runs', $1, '{}', now(), 3,
                now() - make_interval(days => $2::int),
                CASE WHEN $3 THEN now() - make_interval(days => $2::int) END
         FROM generate_series(1, $4)",
    )
    .bind(status)
    .bind(days_ago as i32)
    .bind(finished)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

async fn count(pool: &PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cleanup_tasks WHERE status = $1")
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn retention(batch: u32) -> Retention {
    Retention {
        tasks: vec![
            (TaskStatus::Succeeded, 7 * DAY),
            (TaskStatus::Failed, 30 * DAY),
            (TaskStatus::Dead, 30 * DAY),
        ],
        workers: DAY,
        batch,
        every: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn finished_tasks_past_their_retention_go_in_batches_and_nothing_else() {
    let (_db, pool) = ledger().await;
    tasks(&pool, 23, "succeeded", 8).await; // past 7 days: go
    tasks(&pool, 5, "succeeded", 6).await; // stay
    tasks(&pool, 4, "failed", 8).await; // failed keeps 30 days: stay
    tasks(&pool, 6, "failed", 31).await; // go
    tasks(&pool, 2, "dead", 40).await; // go
                                       // Never finished, however old: never deleted.
    tasks(&pool, 3, "queued", 90).await;
    tasks(&pool, 3, "running", 90).await;
    tasks(&pool, 3, "retrying", 90).await;

    let pruned = prune_once(&pool, &retention(5)).await.unwrap();
    assert!(!pruned.skipped);
    assert_eq!(
        pruned.tasks,
        vec![
            (TaskStatus::Succeeded, 23),
            (TaskStatus::Failed, 6),
            (TaskStatus::Dead, 2),
        ]
    );
    // 23 in batches of 5 (5 batches), 6 (2), 2 (1).
    assert_eq!(pruned.batches, 8, "{pruned:?}");
    assert_eq!(count(&pool, "succeeded").await, 5);
    assert_eq!(count(&pool, "failed").await, 4);
    assert_eq!(count(&pool, "dead").await, 0);
    for status in ["queued", "running", "retrying"] {
        assert_eq!(count(&pool, status).await, 3, "{status}");
    }
    // A second round finds nothing more.
    let again = prune_once(&pool, &retention(5)).await.unwrap();
    assert_eq!(again.batches, 0);
}

#[tokio::test]
async fn departed_workers_go_after_their_retention_and_live_ones_stay() {
    let (_db, pool) = ledger().await;
    sqlx::raw_sql(
        "INSERT INTO workers (id, host, version, status, started_at, last_seen_at) VALUES
             ('gone-stopped', 'h', 'v', 'stopped', now() - interval '3 days', now() - interval '25 hours'),
             ('gone-lost', 'h', 'v', 'lost', now() - interval '3 days', now() - interval '2 days'),
             ('recent-stop', 'h', 'v', 'stopped', now() - interval '3 days', now() - interval '1 hour'),
             ('up', 'h', 'v', 'up', now() - interval '30 days', now());",
    )
    .execute(&pool)
    .await
    .unwrap();
    let pruned = prune_once(&pool, &retention(100)).await.unwrap();
    assert_eq!(pruned.workers, 2);
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM workers ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["recent-stop", "up"]);
}

/// One replica prunes at a time: while another holds the retention lock, a round does
/// nothing.
#[tokio::test]
async fn a_round_skips_while_another_replica_prunes() {
    let (_db, pool) = ledger().await;
    tasks(&pool, 4, "succeeded", 8).await;
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(7164222545097748084)")
        .execute(&mut *other)
        .await
        .unwrap();
    let pruned = prune_once(&pool, &retention(100)).await.unwrap();
    assert!(pruned.skipped);
    assert_eq!(count(&pool, "succeeded").await, 4);
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *other)
        .await
        .unwrap();
    let pruned = prune_once(&pool, &retention(100)).await.unwrap();
    assert_eq!(pruned.tasks[0], (TaskStatus::Succeeded, 4));
}

/// A schedule shows its last task: retention keeps that one, however old.
#[tokio::test]
async fn the_last_task_of_a_schedule_is_kept() {
    let (_db, pool) = ledger().await;
    tasks(&pool, 3, "succeeded", 40).await;
    sqlx::query(
        "INSERT INTO cleanup_schedules (name, kind, params, cron, last_task_id)
         SELECT 'nightly', 'cleanup_runs', '{}', '@daily', id FROM cleanup_tasks LIMIT 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    let pruned = prune_once(&pool, &retention(100)).await.unwrap();
    assert_eq!(pruned.tasks[0], (TaskStatus::Succeeded, 2));
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cleanup_tasks t JOIN cleanup_schedules s ON s.last_task_id = t.id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, 1);
}

/// A schedule's failing streak counts from its latest success: retention keeps that one
/// (else a weekly schedule's old success would go at 7 days and its older failures, kept
/// 30 days, would read as a streak).
#[tokio::test]
async fn a_schedules_latest_success_is_kept() {
    let (_db, pool) = ledger().await;
    sqlx::raw_sql(
        "INSERT INTO cleanup_tasks (id, kind, status, params, cutoff, max_attempts, created_at,
                                    finished_at, schedule)
         VALUES (gen_random_uuid(), 'cleanup_runs', 'succeeded', '{}', now(), 3,
                 now() - interval '20 days', now() - interval '20 days', 'weekly'),
                (gen_random_uuid(), 'cleanup_runs', 'succeeded', '{}', now(), 3,
                 now() - interval '13 days', now() - interval '13 days', 'weekly'),
                (gen_random_uuid(), 'cleanup_runs', 'succeeded', '{}', now(), 3,
                 now() - interval '13 days', now() - interval '13 days', NULL);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let pruned = prune_once(&pool, &retention(100)).await.unwrap();
    assert_eq!(pruned.tasks[0], (TaskStatus::Succeeded, 2));
    let kept: Vec<Option<String>> = sqlx::query_scalar("SELECT schedule FROM cleanup_tasks")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(kept, [Some("weekly".to_owned())]);
}
