//! How a task moves. Every change of a task's status is a [`Change`]; the recorder
//! applies them with [`apply`], one transaction per batch, rows locked in one order so
//! that recorders running at once never deadlock.
//!
//! One guard rule decides whether a change applies. A task stands at a position
//! (attempts, phase): phase 0 waiting (`queued`), 1 running, 2 an attempt ended
//! (`retrying`, or finished). A change leads to a position, and applies only if that
//! position is later than the task's and the task is not finished (`succeeded`,
//! `failed`, `dead`, `cancelled`). So a duplicate or late event changes nothing, and a finished task
//! never moves again. Two refinements: a dead-lettered message ends its attempt for good
//! (position (attempt, 3)), and a worker's own `task.dead` reason, which is more precise,
//! may replace the broker's note on a task that is already dead.
//!
//! Cancels ([`super::cancel`]): a running task asked to cancel ends `cancelled` when its
//! worker reports `task.cancelled`, or when an attempt fails (no retry is scheduled); if
//! it succeeded first, it stays `succeeded`. A queued task is `cancelled` at once, but its
//! message may already be with a worker that has not heard of the cancel yet: that
//! worker's first report is still recorded (`started`, a failure's partial result, or
//! `succeeded` if it finished first), the only way out of a finished status. A `task.started` of a task that was asked to
//! cancel is answered with another cancellation on the stream (the worker may have missed
//! the first, say, one whose message waited on its queue past the stream's retention).
//!
//! The retry decision is the worker's (its retry policy, sent as `retryable` with
//! `next_attempt_at`); the ledger only holds the invariant that no attempt is scheduled
//! past `max_attempts`.

use chrono::{DateTime, Utc};
use serde_json::json;
use shared::envelope::TaskEnvelope;
use shared::events::{
    TaskCancelled, TaskDead, TaskFailed, TaskStarted, TaskSucceeded, WorkerHeartbeat, WorkerStopped,
};
use shared::tasks::{TaskKind, TaskSpec};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{outbox, workers, TaskStatus};

/// One change to the ledger.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Started(&'a TaskStarted),
    Succeeded(&'a TaskSucceeded),
    /// Retrying, or failed for good (with what was deleted before the failure).
    Failed(&'a TaskFailed),
    /// A worker skipped or stopped the task because it was cancelled.
    Cancelled(&'a TaskCancelled),
    /// A worker refused the task's message as poison.
    Dead(&'a TaskDead),
    /// RabbitMQ dead-lettered the task's message; `attempt` is the one it carried.
    DeadLettered {
        task_id: Uuid,
        attempt: Option<u32>,
        reason: &'a str,
    },
    Heartbeat(&'a WorkerHeartbeat),
    WorkerStopped(&'a WorkerStopped),
}

impl Change<'_> {
    /// The task the change moves, if it moves one.
    fn task(&self) -> Option<Uuid> {
        match self {
            Change::Started(e) => Some(e.task_id),
            Change::Succeeded(e) => Some(e.task_id),
            Change::Failed(e) => Some(e.task_id),
            Change::Cancelled(e) => Some(e.task_id),
            Change::Dead(e) => e.task_id,
            Change::DeadLettered { task_id, .. } => Some(*task_id),
            Change::Heartbeat(_) | Change::WorkerStopped(_) => None,
        }
    }

    /// Task rows first in id order, then worker rows in id order.
    fn lock_order(&self) -> (u8, String) {
        match self {
            Change::Started(e) => (0, e.task_id.to_string()),
            Change::Succeeded(e) => (0, e.task_id.to_string()),
            Change::Failed(e) => (0, e.task_id.to_string()),
            Change::Cancelled(e) => (0, e.task_id.to_string()),
            Change::Dead(e) => (0, e.task_id.map(|i| i.to_string()).unwrap_or_default()),
            Change::DeadLettered { task_id, .. } => (0, task_id.to_string()),
            Change::Heartbeat(e) => (1, e.worker_id.clone()),
            Change::WorkerStopped(e) => (1, e.worker_id.clone()),
        }
    }
}

/// Apply every change in one transaction (events of one task keep their order).
pub async fn apply(pool: &PgPool, changes: &[Change<'_>]) -> Result<(), sqlx::Error> {
    let mut ordered: Vec<&Change> = changes.iter().collect();
    ordered.sort_by_key(|change| change.lock_order());
    let mut tx = pool.begin().await?;
    // Successes in a row, of different tasks: applied by one statement, in lock order,
    // when the next change is of another kind or task, or at the end.
    let mut successes: Vec<Success> = Vec::new();
    for (i, change) in ordered.iter().enumerate() {
        if let Change::Succeeded(e) = **change {
            if successes
                .last()
                .is_some_and(|(last, _)| last.task_id == e.task_id)
            {
                succeeded(&mut tx, &std::mem::take(&mut successes)).await?;
            }
            let start = ordered[..i]
                .iter()
                .rev()
                .take_while(|earlier| earlier.task() == Some(e.task_id))
                .find_map(|earlier| match **earlier {
                    Change::Started(s) if s.attempt == e.attempt => Some(s.at),
                    _ => None,
                });
            successes.push((e, start));
            continue;
        }
        if matches!(change, Change::Started(e) if succeeded_later(&ordered[i + 1..], e)) {
            // Its success is in the same batch (a short task): one UPDATE, with the start's
            // time, instead of two (each status change rewrites every index entry).
            continue;
        }
        if !successes.is_empty() {
            succeeded(&mut tx, &std::mem::take(&mut successes)).await?;
        }
        match **change {
            Change::Started(e) => started(&mut tx, e).await?,
            Change::Succeeded(_) => unreachable!("successes are applied above"),
            Change::Failed(e) => failed(&mut tx, e).await?,
            Change::Cancelled(e) => cancelled(&mut tx, e).await?,
            Change::Dead(e) => dead(&mut tx, e).await?,
            Change::DeadLettered {
                task_id,
                attempt,
                reason,
            } => dead_lettered(&mut tx, task_id, attempt, reason).await?,
            Change::Heartbeat(e) => workers::heartbeat(&mut tx, e).await?,
            Change::WorkerStopped(e) => workers::stopped(&mut tx, e).await?,
        }
    }
    succeeded(&mut tx, &successes).await?;
    tx.commit().await
}

/// Whether `later` (the rest of a batch in lock order) holds the success of the attempt
/// `started` began.
fn succeeded_later(later: &[&Change<'_>], started: &TaskStarted) -> bool {
    later
        .iter()
        .take_while(|c| c.task() == Some(started.task_id))
        .any(|c| matches!(c, Change::Succeeded(s) if s.attempt == started.attempt))
}

/// Where a task stands: (attempts, phase).
const POSITION: &str =
    "(attempts, CASE status WHEN 'queued' THEN 0 WHEN 'running' THEN 1 ELSE 2 END)";
/// Statuses no change leaves.
const FINISHED: &str = "('succeeded', 'failed', 'dead', 'cancelled')";
/// A worker's `task.dead` may refine a `dead` task's reason.
const FINISHED_BUT_DEAD: &str = "('succeeded', 'failed', 'cancelled')";

/// The one guard: the task is not finished (`finished` lists what counts), and the change
/// leads past its position. `$1` is the task id, `$2` the change's attempt (NULL when
/// unknown: any position).
fn guard(phase: u8, finished: &str) -> String {
    guard_on("$1", "$2::int", phase, finished)
}

/// [`guard`] with the task id and the attempt from expressions of the statement.
fn guard_on(id: &str, attempt: &str, phase: u8, finished: &str) -> String {
    format!("id = {id} AND status NOT IN {finished} AND ({attempt} IS NULL OR {POSITION} < ({attempt}, {phase}))")
}

/// A task cancelled while its message was already out, whose worker had not heard of
/// the cancel yet: the worker's first report of it is still recorded (`id`: the task).
fn unreported(id: &str) -> String {
    format!("(id = {id} AND status = 'cancelled' AND result IS NULL)")
}

async fn started(conn: &mut PgConnection, e: &TaskStarted) -> Result<(), sqlx::Error> {
    let asked_to_cancel: Option<bool> = sqlx::query_scalar(&format!(
        "UPDATE cleanup_tasks SET
             status = CASE WHEN status = 'cancelled' THEN status ELSE 'running' END,
             attempts = $2, worker_id = $3,
             started_at = COALESCE(started_at, $4), next_attempt_at = NULL, updated_at = now()
         WHERE {} OR ({} AND attempts < $2)
         RETURNING cancel_requested_at IS NOT NULL",
        guard(1, FINISHED),
        unreported("$1")
    ))
    .bind(e.task_id)
    .bind(e.attempt as i32)
    .bind(&e.worker_id)
    .bind(e.at)
    .fetch_optional(&mut *conn)
    .await?;
    // Second line of defence: this task was asked to cancel, yet a worker starts it (a
    // start that moved nothing, a duplicate or a late one, is checked too).
    if asked_to_cancel != Some(false) && outbox::insert_cancel(conn, e.task_id).await? {
        tracing::info!(task_id = %e.task_id, worker_id = %e.worker_id, "a worker started a task asked to cancel; cancellation sent again");
    }
    Ok(())
}

/// A success, and when its attempt started if its `task.started` came in the same batch.
type Success<'a> = (&'a TaskSucceeded, Option<DateTime<Utc>>);

/// Succeeded; also a task cancelled while its message was out, whose worker finished it
/// before the cancel reached it: what it deleted is deleted, and the ledger says so. One
/// statement for successes of different tasks.
async fn succeeded(conn: &mut PgConnection, successes: &[Success<'_>]) -> Result<(), sqlx::Error> {
    if successes.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut attempts = Vec::new();
    let mut workers = Vec::new();
    let mut results = Vec::new();
    let mut ats = Vec::new();
    // The worker's own record of the start (a short task is never announced), else the
    // start that came in the same batch.
    let mut starts = Vec::new();
    for (e, started_at) in successes {
        ids.push(e.task_id);
        attempts.push(e.attempt as i32);
        workers.push(e.worker_id.as_str());
        results.push(&e.result);
        ats.push(e.at);
        starts.push(e.started_at.or(*started_at));
    }
    // One statement would lock its rows in whatever order its plan takes them.
    super::lock_tasks(conn, &ids).await?;
    sqlx::query(&format!(
        "UPDATE cleanup_tasks SET status = 'succeeded', attempts = c_attempt,
             worker_id = c_worker, result = c_result, error = NULL,
             started_at = COALESCE(started_at, c_started, c_at), finished_at = c_at,
             next_attempt_at = NULL, updated_at = now()
         FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::timestamptz[],
                     $6::timestamptz[]) AS c(c_id, c_attempt, c_worker, c_result, c_at, c_started)
         WHERE {} OR {}",
        guard_on("c_id", "c_attempt", 2, FINISHED),
        unreported("c_id")
    ))
    .bind(&ids)
    .bind(&attempts)
    .bind(&workers)
    .bind(&results)
    .bind(&ats)
    .bind(&starts)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct FailedRow {
    #[sqlx(try_from = "String")]
    status: TaskStatus,
    kind: String,
    params: serde_json::Value,
    cutoff: DateTime<Utc>,
    created_at: DateTime<Utc>,
    max_attempts: i32,
}

/// The partial result a failure's progress holds: a temp-file walk's progress wraps its
/// result (`{"result": {...}, "done": ...}`); a runs cleanup's progress is its result.
pub(super) fn partial_result(progress: &serde_json::Value) -> serde_json::Value {
    match progress.get("result") {
        Some(result) if result.is_object() => result.clone(),
        _ => progress.clone(),
    }
}

/// A failed attempt: when the worker says another is due (and `max_attempts` allows it)
/// the task is `retrying` and the next attempt's message waits in the outbox until then;
/// else the task has `failed`, and the work done before the failure (the event's
/// progress) becomes its `result`.
async fn failed(conn: &mut PgConnection, e: &TaskFailed) -> Result<(), sqlx::Error> {
    let next_at = e.next_attempt_at.unwrap_or(e.at);
    // The error as the worker classified it, and when the attempt failed.
    let mut error = serde_json::to_value(&e.error).expect("error serializes");
    error["at"] = json!(e.at);
    let partial = e.progress.as_ref().map(partial_result);
    let row: Option<FailedRow> = sqlx::query_as(&format!(
        "UPDATE cleanup_tasks SET
                 status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                               WHEN {again} THEN 'retrying' ELSE 'failed' END,
                 next_attempt_at = CASE WHEN {again} THEN $5 ELSE NULL END,
                 finished_at = CASE WHEN {again} THEN NULL ELSE $6 END,
                 result = CASE WHEN {again} THEN result ELSE COALESCE($8::jsonb, result) END,
                 attempts = $2, worker_id = $3, error = $7,
                 started_at = COALESCE(started_at, $9, $6),
                 updated_at = now()
             WHERE {} OR {}
             RETURNING status, kind, params, cutoff, created_at, max_attempts",
        guard(2, FINISHED),
        unreported("$1"),
        // Another attempt is due: the worker says so, `max_attempts` allows it, and no
        // cancel was asked for.
        again = "($4 AND $2 < max_attempts AND cancel_requested_at IS NULL)",
    ))
    .bind(e.task_id)
    .bind(e.attempt as i32)
    .bind(&e.worker_id)
    .bind(e.retryable)
    .bind(next_at)
    .bind(e.at)
    .bind(&error)
    .bind(&partial)
    .bind(e.started_at)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    // The attempt's worker and error, for the task's timeline.
    sqlx::query(
        "INSERT INTO cleanup_task_attempts (task_id, attempt, worker_id, error, failed_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(e.task_id)
    .bind(e.attempt as i32)
    .bind(&e.worker_id)
    .bind(&error)
    .bind(e.at)
    .execute(&mut *conn)
    .await?;
    if row.status != TaskStatus::Retrying {
        return Ok(());
    }
    let Some(task) = row
        .kind
        .parse::<TaskKind>()
        .ok()
        .and_then(|k| TaskSpec::from_parts(k, row.params).ok())
    else {
        tracing::error!(task_id = %e.task_id, "stored parameters no longer parse; not retrying");
        return Ok(());
    };
    let envelope = TaskEnvelope {
        schema_version: shared::envelope::SCHEMA_VERSION,
        task_id: e.task_id,
        task,
        attempt: e.attempt + 1,
        max_attempts: row.max_attempts as u32,
        enqueued_at: row.created_at,
        cutoff: row.cutoff,
        // What earlier attempts did, so counts and caps span every attempt.
        progress: e.progress.clone(),
    };
    outbox::insert_attempt(conn, &envelope, next_at).await
}

/// The worker skipped the task's delivery, or stopped it at a batch boundary, because it
/// was asked to cancel. A running task becomes `cancelled` with what it deleted so far as
/// its result; a task cancelled while queued (its worker may have run a batch before the
/// cancellation reached it) gets the result if it has none.
async fn cancelled(conn: &mut PgConnection, e: &TaskCancelled) -> Result<(), sqlx::Error> {
    let partial = e.progress.as_ref().map(partial_result);
    sqlx::query(&format!(
        "UPDATE cleanup_tasks SET status = 'cancelled', attempts = greatest(attempts, $2),
             worker_id = $3, result = COALESCE(result, $4::jsonb),
             finished_at = COALESCE(finished_at, $5), next_attempt_at = NULL, updated_at = now()
         WHERE cancel_requested_at IS NOT NULL
           AND (({}) OR (id = $1 AND status = 'cancelled' AND result IS NULL AND $4::jsonb IS NOT NULL))",
        guard(2, FINISHED)
    ))
    .bind(e.task_id)
    .bind(e.attempt as i32)
    .bind(&e.worker_id)
    .bind(&partial)
    .bind(e.at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn dead(conn: &mut PgConnection, e: &TaskDead) -> Result<(), sqlx::Error> {
    let Some(task_id) = e.task_id else {
        return Ok(());
    };
    sqlx::query(&format!(
        "UPDATE cleanup_tasks SET status = 'dead', error = $3, finished_at = COALESCE(finished_at, $4),
             next_attempt_at = NULL, updated_at = now()
         WHERE {}",
        guard(3, FINISHED_BUT_DEAD)
    ))
    .bind(task_id)
    // Whatever attempt it names: a poison message ends the task.
    .bind(None::<i32>)
    .bind(json!({"class": "permanent", "message": e.reason}))
    .bind(e.at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn dead_lettered(
    conn: &mut PgConnection,
    task_id: Uuid,
    attempt: Option<u32>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    // A stale copy of an earlier attempt must not kill a later one.
    sqlx::query(&format!(
        "UPDATE cleanup_tasks SET status = 'dead', error = $3, finished_at = now(),
             next_attempt_at = NULL, updated_at = now()
         WHERE {}",
        guard(3, FINISHED)
    ))
    .bind(task_id)
    .bind(attempt.map(|a| a as i32))
    .bind(json!({"class": "permanent", "message": reason}))
    .execute(conn)
    .await?;
    Ok(())
}
