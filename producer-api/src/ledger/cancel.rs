//! Cancelling a task (`POST /tasks/{id}/cancel`).
//!
//! A `queued` or `retrying` task is `cancelled` at once and its unpublished messages leave
//! the outbox; a `running` one keeps running, marked `cancel_requested_at`, until its
//! worker stops it at a batch boundary and reports `task.cancelled` (see
//! [`super::transitions`]). Either way a cancellation goes into the outbox in the same
//! transaction, so the relay publishes it on the cancellation stream, where every worker,
//! including one started later, reads it: a message of the task that is already on its
//! queue is then skipped without touching anything.

use sqlx::PgPool;
use uuid::Uuid;

use super::outbox;
use super::tasks::{TaskRow, TaskStatus, TASK_COLUMNS};

/// What a cancel did.
#[derive(Debug)]
pub enum Cancelled {
    /// The task is `cancelled` (now, or it was already: cancelling twice is fine).
    Done(Box<TaskRow>),
    /// The task is running: its worker stops it at its next batch boundary.
    Requested(Box<TaskRow>),
    /// It finished before (`succeeded`, `failed`, `dead`): its status.
    Finished(TaskStatus),
    NotFound,
}

/// Cancel `id` on behalf of `actor`, in one transaction.
pub async fn cancel(pool: &PgPool, id: Uuid, actor: &str) -> Result<Cancelled, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Outbox rows before the task row: the relay locks them in that order (it claims
    // messages, then stamps their tasks), so waiting here for a relay that is publishing
    // this task's message cannot deadlock. Once it commits, that message is on the queue
    // and the cancellation below stops it.
    let first_removed = outbox::remove_task_messages(&mut tx, id, false).await?;
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Cancelled::NotFound);
    };
    // What earlier attempts deleted, carried by a retry's message the cancel withdraws.
    let mut partial: Option<serde_json::Value> = None;
    let update = match row.status {
        TaskStatus::Cancelled => return Ok(Cancelled::Done(Box::new(row))),
        TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Dead => {
            return Ok(Cancelled::Finished(row.status))
        }
        TaskStatus::Running if row.cancel_requested_at.is_some() => {
            // Asked again: send the cancellation again (a worker may have missed it).
            outbox::insert_cancel(&mut tx, id).await?;
            tx.commit().await?;
            return Ok(Cancelled::Requested(Box::new(row)));
        }
        TaskStatus::Running => {
            "UPDATE cleanup_tasks SET cancel_requested_at = now(), cancelled_by = $2,
                 result = COALESCE($3::jsonb, result), updated_at = now()
             WHERE id = $1"
        }
        TaskStatus::Queued | TaskStatus::Retrying => {
            // The recorder writes a retry's message only while it holds this row, so
            // none can appear after this point; a row a relay claimed in the meantime
            // is left to it (and stopped by the cancellation).
            partial = outbox::remove_task_messages(&mut tx, id, true)
                .await?
                .or(first_removed)
                .map(|progress| super::transitions::partial_result(&progress));
            "UPDATE cleanup_tasks SET status = 'cancelled', cancel_requested_at = now(),
                 cancelled_by = $2, finished_at = now(), next_attempt_at = NULL,
                 result = COALESCE($3::jsonb, result), updated_at = now()
             WHERE id = $1"
        }
    };
    sqlx::query(update)
        .bind(id)
        .bind(actor)
        .bind(&partial)
        .execute(&mut *tx)
        .await?;
    outbox::insert_cancel(&mut tx, id).await?;
    let row: TaskRow = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(if row.status == TaskStatus::Cancelled {
        Cancelled::Done(Box::new(row))
    } else {
        Cancelled::Requested(Box::new(row))
    })
}
