//! The task state machine, pair by pair: every (state, change) the ledger can meet, and
//! what it must become, including the pairs that must change nothing (duplicates, late
//! and stale events, anything after a task finished).

use chrono::{DateTime, Utc};
use producer_api::ledger::transitions::{self, Change};
use producer_api::ledger::MIGRATOR;
use shared::events::{
    ErrorClass, TaskCancelled, TaskDead, TaskError, TaskFailed, TaskStarted, TaskSucceeded,
};
use shared::tasks::TaskKind;
use sqlx::PgPool;
use uuid::Uuid;

use test_support::TestDb;

mod batch;
mod locks;

#[derive(Debug, Clone, Copy)]
enum Ev {
    Started(u32),
    Succeeded(u32),
    /// Transient, and the worker says another attempt is due.
    Retry(u32),
    /// Permanent.
    Fail(u32),
    /// A worker refused the message as poison.
    Dead,
    DeadLettered(Option<u32>),
    /// A worker stopped the task because it was cancelled, with 5 rows deleted.
    Cancelled(u32),
}

/// A task's status and attempts; `running+cancel`: running, and a cancel was asked for.
type State = (&'static str, i32);

/// (status, attempts) before; the change; (status, attempts) after; whether it applied.
const CASES: &[(State, Ev, State, bool)] = &[
    (("queued", 0), Ev::Started(1), ("running", 1), true),
    (("queued", 0), Ev::Succeeded(1), ("succeeded", 1), true),
    (("queued", 0), Ev::Retry(1), ("retrying", 1), true),
    (("queued", 0), Ev::Fail(1), ("failed", 1), true),
    (("queued", 0), Ev::Dead, ("dead", 0), true),
    (("queued", 0), Ev::DeadLettered(Some(1)), ("dead", 0), true),
    (("queued", 0), Ev::DeadLettered(None), ("dead", 0), true),
    (("running", 1), Ev::Started(1), ("running", 1), false),
    (("running", 1), Ev::Started(2), ("running", 2), true),
    (("running", 1), Ev::Succeeded(1), ("succeeded", 1), true),
    (("running", 1), Ev::Retry(1), ("retrying", 1), true),
    (("running", 1), Ev::Fail(1), ("failed", 1), true),
    (("running", 1), Ev::DeadLettered(Some(1)), ("dead", 1), true),
    (("running", 2), Ev::Succeeded(1), ("running", 2), false),
    (("running", 2), Ev::Retry(1), ("running", 2), false),
    (
        ("running", 2),
        Ev::DeadLettered(Some(1)),
        ("running", 2),
        false,
    ),
    (("retrying", 1), Ev::Started(1), ("retrying", 1), false),
    (("retrying", 1), Ev::Retry(1), ("retrying", 1), false),
    (("retrying", 1), Ev::Succeeded(1), ("retrying", 1), false),
    (("retrying", 1), Ev::Started(2), ("running", 2), true),
    (("retrying", 1), Ev::Succeeded(2), ("succeeded", 2), true),
    (
        ("retrying", 1),
        Ev::DeadLettered(Some(1)),
        ("dead", 1),
        true,
    ),
    // The last attempt: a worker that asks for another gets a failed task.
    (("running", 3), Ev::Retry(3), ("failed", 3), true),
    (("succeeded", 1), Ev::Started(2), ("succeeded", 1), false),
    (("succeeded", 1), Ev::Fail(1), ("succeeded", 1), false),
    (("succeeded", 1), Ev::Retry(2), ("succeeded", 1), false),
    (("succeeded", 1), Ev::Dead, ("succeeded", 1), false),
    (
        ("succeeded", 1),
        Ev::DeadLettered(None),
        ("succeeded", 1),
        false,
    ),
    (("failed", 1), Ev::Started(2), ("failed", 1), false),
    (("failed", 1), Ev::Succeeded(2), ("failed", 1), false),
    (("failed", 1), Ev::Dead, ("failed", 1), false),
    // A worker's own reason replaces the broker's note on a dead task.
    (("dead", 0), Ev::Dead, ("dead", 0), true),
    (("dead", 0), Ev::Started(1), ("dead", 0), false),
    (("dead", 0), Ev::Succeeded(1), ("dead", 0), false),
    (("dead", 0), Ev::DeadLettered(None), ("dead", 0), false),
    // Cancels. A worker reports `task.cancelled` only for a task asked to cancel.
    (("running", 1), Ev::Cancelled(1), ("running", 1), false),
    (("queued", 0), Ev::Cancelled(1), ("queued", 0), false),
    (
        ("running+cancel", 1),
        Ev::Cancelled(1),
        ("cancelled", 1),
        true,
    ),
    (
        ("running+cancel", 2),
        Ev::Cancelled(1),
        ("running", 2),
        false,
    ),
    // An attempt that fails after a cancel was asked for is not retried.
    (("running+cancel", 1), Ev::Retry(1), ("cancelled", 1), true),
    (("running+cancel", 1), Ev::Fail(1), ("cancelled", 1), true),
    // Finished before the cancel reached its worker: it succeeded.
    (
        ("running+cancel", 1),
        Ev::Succeeded(1),
        ("succeeded", 1),
        true,
    ),
    (("running+cancel", 1), Ev::Started(2), ("running", 2), true),
    // Cancelled while queued, but its message was already with a worker that had not
    // heard of the cancel: that worker's first report is recorded. It started...
    (("cancelled", 0), Ev::Started(1), ("cancelled", 1), true),
    // ... it finished before the cancel reached it ...
    (("cancelled", 0), Ev::Succeeded(1), ("succeeded", 1), true),
    // ... it failed (no retry) ...
    (("cancelled", 0), Ev::Retry(1), ("cancelled", 1), true),
    (("cancelled", 0), Ev::Fail(1), ("cancelled", 1), true),
    // ... or it stopped at a batch boundary: what it deleted becomes the result.
    (("cancelled", 0), Ev::Cancelled(1), ("cancelled", 1), true),
    (("cancelled", 0), Ev::Dead, ("cancelled", 0), false),
    (
        ("cancelled", 0),
        Ev::DeadLettered(None),
        ("cancelled", 0),
        false,
    ),
    // Once a report is recorded, nothing moves it.
    (
        ("cancelled+result", 1),
        Ev::Started(2),
        ("cancelled", 1),
        false,
    ),
    (
        ("cancelled+result", 1),
        Ev::Succeeded(1),
        ("cancelled", 1),
        false,
    ),
    (
        ("cancelled+result", 1),
        Ev::Succeeded(2),
        ("cancelled", 1),
        false,
    ),
    (
        ("cancelled+result", 1),
        Ev::Retry(1),
        ("cancelled", 1),
        false,
    ),
    (
        ("cancelled+result", 1),
        Ev::Cancelled(2),
        ("cancelled", 1),
        false,
    ),
    (("failed", 1), Ev::Cancelled(1), ("failed", 1), false),
    (("succeeded", 1), Ev::Cancelled(1), ("succeeded", 1), false),
];

const MAX_ATTEMPTS: i32 = 3;
const OLD: &str = "2000-01-01T00:00:00Z";

async fn task_in(pool: &PgPool, status: &str, attempts: i32) -> Uuid {
    let id = Uuid::now_v7();
    let result = status
        .ends_with("+result")
        .then(|| serde_json::json!({"runs_deleted": 1}));
    let (status, cancel) = match status.split_once('+') {
        Some((status, _)) => (status, true),
        None => (status, status == "cancelled"),
    };
    sqlx::query(
        "INSERT INTO cleanup_tasks (id, kind, status, params, cutoff, attempts, max_attempts,
                                    created_at, updated_at, cancel_requested_at, result)
         VALUES ($1, 'cleanup_runs', $2, '{\"max_age_hours\": 24}', now() - interval '1 day',
                 $3, $4, $5::timestamptz, $5::timestamptz,
                 CASE WHEN $6 THEN $5::timestamptz END, $7)",
    )
    .bind(id)
    .bind(status)
    .bind(attempts)
    .bind(MAX_ATTEMPTS)
    .bind(OLD)
    .bind(cancel)
    .bind(result)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn apply(pool: &PgPool, task_id: Uuid, ev: Ev) {
    let at = Utc::now();
    let worker_id = "w-1".to_owned();
    let kind = TaskKind::CleanupRuns;
    let failed = |attempt: u32, class: ErrorClass, retry: bool| TaskFailed {
        task_id,
        kind,
        attempt,
        worker_id: worker_id.clone(),
        at,
        started_at: None,
        error: TaskError {
            class,
            message: "boom".into(),
        },
        retryable: retry,
        next_attempt_at: retry.then(|| at + chrono::Duration::seconds(2)),
        progress: None,
    };
    let (started, succeeded, failed_event, dead, cancelled);
    let change = match ev {
        Ev::Started(attempt) => {
            started = TaskStarted {
                task_id,
                kind,
                attempt,
                worker_id: worker_id.clone(),
                at,
            };
            Change::Started(&started)
        }
        Ev::Succeeded(attempt) => {
            succeeded = TaskSucceeded {
                task_id,
                kind,
                attempt,
                worker_id: worker_id.clone(),
                at,
                started_at: None,
                result: serde_json::json!({"runs_deleted": 0}),
            };
            Change::Succeeded(&succeeded)
        }
        Ev::Retry(attempt) => {
            failed_event = failed(attempt, ErrorClass::Transient, true);
            Change::Failed(&failed_event)
        }
        Ev::Fail(attempt) => {
            failed_event = failed(attempt, ErrorClass::Permanent, false);
            Change::Failed(&failed_event)
        }
        Ev::Dead => {
            dead = TaskDead {
                task_id: Some(task_id),
                attempt: None,
                reason: "poison".into(),
                at,
            };
            Change::Dead(&dead)
        }
        Ev::DeadLettered(attempt) => Change::DeadLettered {
            task_id,
            attempt,
            reason: "dead-lettered",
        },
        Ev::Cancelled(attempt) => {
            cancelled = TaskCancelled {
                task_id,
                kind,
                attempt,
                worker_id: worker_id.clone(),
                at,
                started: true,
                progress: Some(serde_json::json!({"runs_deleted": 5})),
            };
            Change::Cancelled(&cancelled)
        }
    };
    transitions::apply(pool, &[change]).await.unwrap();
}

#[tokio::test]
async fn every_state_and_change_of_the_task_state_machine() {
    let db = TestDb::create().await;
    let pool = PgPool::connect(&db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let old: DateTime<Utc> = OLD.parse().unwrap();
    let mut wrong = Vec::new();
    for &((status, attempts), ev, (to_status, to_attempts), applies) in CASES {
        let id = task_in(&pool, status, attempts).await;
        apply(&pool, id, ev).await;
        let (now_status, now_attempts, updated_at): (String, i32, DateTime<Utc>) =
            sqlx::query_as("SELECT status, attempts, updated_at FROM cleanup_tasks WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        let applied = updated_at > old;
        let retries: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cleanup_outbox WHERE task_id = $1 AND attempt = $2
                 AND kind <> 'cancel'",
        )
        .bind(id)
        .bind(to_attempts + 1)
        .fetch_one(&pool)
        .await
        .unwrap();
        let cancels: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cleanup_outbox WHERE task_id = $1 AND kind = 'cancel'",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        let scheduled = to_status == "retrying" && applies;
        // A worker starting a task asked to cancel is sent the cancellation again.
        let resent =
            matches!(ev, Ev::Started(_)) && (status.contains('+') || status == "cancelled");
        if (
            now_status.as_str(),
            now_attempts,
            applied,
            retries == 1,
            cancels == 1,
        ) != (to_status, to_attempts, applies, scheduled, resent)
        {
            wrong.push(format!(
                "({status}, {attempts}) + {ev:?}: got ({now_status}, {now_attempts}, applied \
                 {applied}, next attempt queued {}, cancel sent {}), want ({to_status}, \
                 {to_attempts}, applied {applies}, next attempt queued {scheduled}, cancel \
                 sent {resent})",
                retries == 1,
                cancels == 1
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A start and a success of one attempt in the same batch make one change: the task is
/// `succeeded` and keeps the start's time.
#[tokio::test]
async fn a_start_and_its_success_in_one_batch() {
    let db = TestDb::create().await;
    let pool = PgPool::connect(&db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let id = task_in(&pool, "queued", 0).await;
    let began = Utc::now() - chrono::Duration::seconds(5);
    let started = TaskStarted {
        task_id: id,
        kind: TaskKind::CleanupRuns,
        attempt: 1,
        worker_id: "w-1".into(),
        at: began,
    };
    let succeeded = TaskSucceeded {
        task_id: id,
        kind: TaskKind::CleanupRuns,
        attempt: 1,
        worker_id: "w-1".into(),
        at: Utc::now(),
        started_at: None,
        result: serde_json::json!({"runs_deleted": 2}),
    };
    transitions::apply(
        &pool,
        &[Change::Started(&started), Change::Succeeded(&succeeded)],
    )
    .await
    .unwrap();
    let (status, attempts, started_at): (String, i32, DateTime<Utc>) =
        sqlx::query_as("SELECT status, attempts, started_at FROM cleanup_tasks WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("succeeded", 1));
    assert_eq!(
        started_at.timestamp_micros(),
        began.timestamp_micros(),
        "the start's time, not the success's"
    );
}
