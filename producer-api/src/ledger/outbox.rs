//! The outbox (`cleanup_outbox`): task messages and cancellations waiting to be published.
//! A row is written in the same transaction as the task change that needs it (enqueue, a
//! retry, a cancel), and deleted in the same transaction that records its publication.

use chrono::{DateTime, Utc};
use shared::envelope::TaskEnvelope;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One due message, as the relay publishes it.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub task_id: Uuid,
    pub kind: String,
    /// The envelope exactly as stored (the signed bytes are computed from it).
    pub envelope: String,
}

impl OutboxRow {
    /// A cancellation for the cancellation stream, not a task message.
    pub fn is_cancel(&self) -> bool {
        self.kind == shared::cancel::CANCEL_OUTBOX_KIND
    }
}

/// Claim up to `limit` due messages for this transaction, oldest due first; rows another
/// relay has claimed are skipped.
pub async fn claim_due(conn: &mut PgConnection, limit: u32) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, task_id, kind, envelope::text AS envelope FROM cleanup_outbox
         WHERE due_at <= now() ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
}

/// RabbitMQ confirmed these messages: remove them and stamp their tasks `published_at`.
pub async fn record_published(
    conn: &mut PgConnection,
    ids: &[i64],
    task_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM cleanup_outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE cleanup_tasks SET published_at = now() WHERE id = ANY($1)")
        .bind(task_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// RabbitMQ refused these messages: count the try, keep the error, try again after `delay`.
pub async fn record_refused(
    conn: &mut PgConnection,
    ids: &[i64],
    error: Option<&str>,
    delay: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cleanup_outbox SET publish_tries = publish_tries + 1, last_error = $2,
         due_at = now() + make_interval(secs => $3) WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(error)
    .bind(delay.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// The message of a later attempt, due at `due_at`.
pub async fn insert_attempt(
    conn: &mut PgConnection,
    envelope: &TaskEnvelope,
    due_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cleanup_outbox (task_id, attempt, kind, envelope, due_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(envelope.task_id)
    .bind(envelope.attempt as i32)
    .bind(envelope.task.kind().as_str())
    .bind(serde_json::to_value(envelope).expect("envelope serializes"))
    .bind(due_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Messages waiting in the outbox (due or not): the relay's backlog.
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM cleanup_outbox")
        .fetch_one(pool)
        .await
}

/// Queue a cancellation of `task_id` for the relay to publish on the cancellation stream,
/// if a cancel was asked for it (the body: `{"task_id", "requested_at"}`, see
/// `shared::cancel::CancelRequest`). Returns whether a row was written.
pub async fn insert_cancel(conn: &mut PgConnection, task_id: Uuid) -> Result<bool, sqlx::Error> {
    let written = sqlx::query(
        "INSERT INTO cleanup_outbox (task_id, attempt, kind, envelope)
         SELECT id, attempts, $2,
                jsonb_build_object('task_id', id, 'requested_at', cancel_requested_at)
         FROM cleanup_tasks WHERE id = $1 AND cancel_requested_at IS NOT NULL",
    )
    .bind(task_id)
    .bind(shared::cancel::CANCEL_OUTBOX_KIND)
    .execute(conn)
    .await?;
    Ok(written.rows_affected() > 0)
}

/// Drop the task messages of `task_id` still waiting to be published (its cancellations
/// stay). `skip_locked`: leave rows a relay is publishing right now instead of waiting.
pub async fn remove_task_messages(
    conn: &mut PgConnection,
    task_id: Uuid,
    skip_locked: bool,
) -> Result<u64, sqlx::Error> {
    let lock = if skip_locked {
        "FOR UPDATE SKIP LOCKED"
    } else {
        "FOR UPDATE"
    };
    let removed = sqlx::query(&format!(
        "DELETE FROM cleanup_outbox WHERE id IN (
             SELECT id FROM cleanup_outbox WHERE task_id = $1 AND kind <> $2 {lock})"
    ))
    .bind(task_id)
    .bind(shared::cancel::CANCEL_OUTBOX_KIND)
    .execute(conn)
    .await?;
    Ok(removed.rows_affected())
}
