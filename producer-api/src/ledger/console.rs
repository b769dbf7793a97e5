//! What the operator console (`/ui`) keeps and reads: its sessions, and the few reads
//! its pages need beyond the API's (counts of the last day, the latest failures, a task's
//! failed attempts).

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::tasks::{TaskRow, TASK_COLUMNS};

/// A live session: whose token it was made with, and its CSRF token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    /// The API token's name and the session's MAC of it; `None` when auth is disabled.
    pub token_name: Option<String>,
    pub token_mac: Option<Vec<u8>>,
    pub csrf: String,
}

/// Store a new session (and forget the expired ones).
pub async fn create_session(
    pool: &PgPool,
    id_digest: &[u8],
    token: Option<(&str, &[u8])>,
    csrf: &str,
    lifetime: Duration,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO console_sessions (id_digest, token_name, token_mac, csrf, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5)",
    )
    .bind(id_digest)
    .bind(token.map(|(name, _)| name))
    .bind(token.map(|(_, mac)| mac))
    .bind(csrf)
    .bind(lifetime)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The session with this id digest, unless it expired.
pub async fn find_session(
    pool: &PgPool,
    id_digest: &[u8],
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT token_name, token_mac, csrf FROM console_sessions
         WHERE id_digest = $1 AND expires_at > now()",
    )
    .bind(id_digest)
    .fetch_optional(pool)
    .await
}

/// Sign out: the session is gone.
pub async fn end_session(pool: &PgPool, id_digest: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM console_sessions WHERE id_digest = $1")
        .bind(id_digest)
        .execute(pool)
        .await?;
    Ok(())
}

/// The smallest UUID v7 of an instant: task ids are v7, so `id >= floor(t)` are the tasks
/// created at or after `t`, read from the primary key.
fn id_floor(at: DateTime<Utc>) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(at.timestamp_millis().max(0) as u64, &[0; 10])
        .into_uuid()
}

/// Tasks created since `since`, by kind and status.
pub async fn counts_since(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, status, count(*) FROM cleanup_tasks WHERE id >= $1
         GROUP BY kind, status ORDER BY kind, status",
    )
    .bind(id_floor(since))
    .fetch_all(pool)
    .await
}

/// The latest tasks that failed or died, newest first.
pub async fn latest_failures(pool: &PgPool, limit: i64) -> Result<Vec<TaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks
         WHERE status IN ('failed', 'dead') AND finished_at IS NOT NULL
         ORDER BY finished_at DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One failed attempt of a task.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt: i32,
    pub worker_id: String,
    pub error: serde_json::Value,
    pub failed_at: DateTime<Utc>,
}

/// A task's failed attempts, first first.
pub async fn failed_attempts(pool: &PgPool, id: Uuid) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, worker_id, error, failed_at FROM cleanup_task_attempts
         WHERE task_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_floor_sorts_between_the_ids_of_before_and_after() {
        let at = Utc::now();
        let before = Uuid::now_v7();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let floor = id_floor(Utc::now());
        std::thread::sleep(std::time::Duration::from_millis(3));
        let after = Uuid::now_v7();
        assert!(before < floor && floor < after, "{before} {floor} {after}");
        assert!(id_floor(at) <= before);
    }
}
