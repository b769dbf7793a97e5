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
    /// A task message whose task was cancelled meanwhile: dropped, never published.
    pub withdrawn: bool,
}

impl OutboxRow {
    /// A cancellation for the cancellation stream, not a task message.
    pub fn is_cancel(&self) -> bool {
        self.kind == shared::cancel::CANCEL_OUTBOX_KIND
    }
}

/// Claim up to `limit` due messages for this transaction, rows another relay has claimed
/// skipped: cancellations first (a running task must not wait behind a backlog to hear
/// of its cancel), then task messages, oldest due first.
pub async fn claim_due(conn: &mut PgConnection, limit: u32) -> Result<Vec<OutboxRow>, sqlx::Error> {
    // The kind is written into the statement, not bound, so that the partial index of
    // cancellations (`cleanup_outbox_cancels`) serves the first query.
    let claim = |cancels: bool| {
        format!(
            "SELECT o.id, o.task_id, o.kind, o.envelope::text AS envelope,
                    (o.kind <> '{cancel}' AND t.status = 'cancelled') AS withdrawn
             FROM cleanup_outbox o JOIN cleanup_tasks t ON t.id = o.task_id
             WHERE o.due_at <= now() AND o.kind {op} '{cancel}'
             ORDER BY o.due_at, o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
            cancel = shared::cancel::CANCEL_OUTBOX_KIND,
            op = if cancels { "=" } else { "<>" }
        )
    };
    let mut rows: Vec<OutboxRow> = sqlx::query_as(&claim(true))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
    let left = i64::from(limit) - rows.len() as i64;
    if left > 0 {
        let tasks: Vec<OutboxRow> = sqlx::query_as(&claim(false))
            .bind(left)
            .fetch_all(&mut *conn)
            .await?;
        rows.extend(tasks);
    }
    Ok(rows)
}

/// Drop claimed messages without publishing them (their task was cancelled).
pub async fn drop_withdrawn(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM cleanup_outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
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
    super::lock_tasks(conn, task_ids).await?;
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
/// Returns the progress the latest of them carried (what earlier attempts deleted).
pub async fn remove_task_messages(
    conn: &mut PgConnection,
    task_id: Uuid,
    skip_locked: bool,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let lock = if skip_locked {
        "FOR UPDATE SKIP LOCKED"
    } else {
        "FOR UPDATE"
    };
    let removed: Vec<(i32, Option<serde_json::Value>)> = sqlx::query_as(&format!(
        "DELETE FROM cleanup_outbox WHERE id IN (
             SELECT id FROM cleanup_outbox WHERE task_id = $1 AND kind <> $2 {lock})
         RETURNING attempt, envelope->'progress'"
    ))
    .bind(task_id)
    .bind(shared::cancel::CANCEL_OUTBOX_KIND)
    .fetch_all(conn)
    .await?;
    Ok(removed
        .into_iter()
        .max_by_key(|(attempt, _)| *attempt)
        .and_then(|(_, progress)| progress)
        .filter(|p| !p.is_null()))
}
