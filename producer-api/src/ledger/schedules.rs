//! Schedules (`cleanup_schedules`): what they are, and firing them.
//!
//! Every producer-api replica runs the scheduler. A due schedule is claimed with a row
//! lock (`FOR UPDATE SKIP LOCKED`): the replica that holds it inserts the window's task
//! with its outbox row and advances the schedule in the same transaction, so N replicas
//! fire each window once, and a window is not lost while any replica is up. The task's
//! idempotency key is `schedule:<name>:<window>`, a second guard against firing a window
//! twice. Its cutoff is computed from the window's scheduled time, so a late firing deletes
//! exactly what an on-time one would have.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::tasks::TaskSpec;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::schedules::calendar::Calendar;

mod fire;

pub use fire::{fire_due, trigger, Fired, MISFIRE_GRACE};

/// After downtime: fire one task for the windows missed (`once`), or none (`skip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    #[default]
    Once,
    Skip,
}

/// While the schedule's previous task has not finished: fire nothing (`skip`) or fire
/// anyway (`allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    #[default]
    Skip,
    Allow,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Once => "once",
            CatchUp::Skip => "skip",
        }
    }
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        }
    }
}

/// A schedule as stored, checked: what to run and when.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    pub task: TaskSpec,
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
    pub catch_up: CatchUp,
    pub overlap: Overlap,
}

/// A schedule row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRow {
    pub name: String,
    pub kind: String,
    pub params: serde_json::Value,
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
    pub catch_up: String,
    pub overlap: String,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub last_task_id: Option<Uuid>,
    /// The status of `last_task_id`, when it is still in the ledger.
    pub last_task_status: Option<String>,
    pub skipped_windows: i64,
    pub managed_by: String,
    pub actor: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "s.name, s.kind, s.params, s.cron, s.timezone, s.enabled, s.catch_up,
     s.overlap, s.next_fire_at, s.last_fired_at, s.last_task_id,
     (SELECT t.status FROM cleanup_tasks t WHERE t.id = s.last_task_id) AS last_task_status,
     s.skipped_windows, s.managed_by, s.actor, s.created_at, s.updated_at";

/// The next window of an enabled schedule after `now`.
fn next_fire(spec: &ScheduleSpec, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if !spec.enabled {
        return None;
    }
    Calendar::parse(&spec.cron, &spec.timezone)
        .ok()?
        .next_after(now)
}

pub async fn get(pool: &PgPool, name: &str) -> Result<Option<ScheduleRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM cleanup_schedules s WHERE s.name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<ScheduleRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM cleanup_schedules s ORDER BY s.name"
    ))
    .fetch_all(pool)
    .await
}

/// What a write found.
#[derive(Debug)]
pub enum Written {
    Created(ScheduleRow),
    Replaced(ScheduleRow),
    /// `create` only: the name is taken.
    Exists,
    /// The schedule is managed by another source (`managed_by`), which alone may change it.
    Managed(String),
}

/// Create a schedule, or with `replace`, create or replace it (`PUT`). `source` is who
/// manages it (`api` or `file`); a schedule managed by one source is not changed by the
/// other. One statement decides, so concurrent writers cannot both win.
pub async fn write(
    pool: &PgPool,
    name: &str,
    spec: &ScheduleSpec,
    replace: bool,
    source: &str,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Written, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    write_in(&mut conn, name, spec, replace, source, actor, now).await
}

/// [`write`](fn@write) on a connection (inside the caller's transaction, if any).
pub async fn write_in(
    conn: &mut PgConnection,
    name: &str,
    spec: &ScheduleSpec,
    replace: bool,
    source: &str,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Written, sqlx::Error> {
    let on_conflict = if replace {
        "DO UPDATE SET kind = EXCLUDED.kind, params = EXCLUDED.params,
             cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, enabled = EXCLUDED.enabled,
             catch_up = EXCLUDED.catch_up, overlap = EXCLUDED.overlap,
             -- The same calendar keeps its next window (a due one included).
             next_fire_at = CASE WHEN s.cron = EXCLUDED.cron AND s.timezone = EXCLUDED.timezone
                                      AND s.enabled = EXCLUDED.enabled
                                 THEN s.next_fire_at ELSE EXCLUDED.next_fire_at END,
             actor = EXCLUDED.actor,
             updated_at = CASE WHEN (s.kind, s.params, s.cron, s.timezone, s.enabled, s.catch_up,
                                     s.overlap)
                                    IS DISTINCT FROM
                                    (EXCLUDED.kind, EXCLUDED.params, EXCLUDED.cron,
                                     EXCLUDED.timezone, EXCLUDED.enabled, EXCLUDED.catch_up,
                                     EXCLUDED.overlap)
                               THEN now() ELSE s.updated_at END
         WHERE s.managed_by = EXCLUDED.managed_by"
    } else {
        "DO NOTHING"
    };
    let written: Option<bool> = sqlx::query_scalar(&format!(
        "INSERT INTO cleanup_schedules AS s (name, kind, params, cron, timezone, enabled,
                 catch_up, overlap, next_fire_at, managed_by, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (name) {on_conflict}
         RETURNING (xmax = 0)"
    ))
    .bind(name)
    .bind(spec.task.kind().as_str())
    .bind(spec.task.params_json())
    .bind(&spec.cron)
    .bind(&spec.timezone)
    .bind(spec.enabled)
    .bind(spec.catch_up.as_str())
    .bind(spec.overlap.as_str())
    .bind(next_fire(spec, now))
    .bind(source)
    .bind(actor)
    .fetch_optional(&mut *conn)
    .await?;
    let row = get_in(conn, name).await?;
    Ok(match (written, row) {
        (Some(true), Some(row)) => Written::Created(row),
        (Some(false), Some(row)) => Written::Replaced(row),
        // Not written: the name is taken, by this source or another.
        (None, Some(row)) if row.managed_by != source => Written::Managed(row.managed_by),
        (None, Some(_)) => Written::Exists,
        // Deleted meanwhile by someone else: as if taken (the caller may try again).
        (_, None) => Written::Exists,
    })
}

async fn get_in(conn: &mut PgConnection, name: &str) -> Result<Option<ScheduleRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM cleanup_schedules s WHERE s.name = $1"
    ))
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// Enable or disable a schedule. Enabling a disabled one computes its next window from
/// now (windows missed while disabled are not caught up); enabling an enabled one keeps
/// its next window.
pub async fn set_enabled(
    pool: &PgPool,
    name: &str,
    enabled: bool,
    source: &str,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Written>, sqlx::Error> {
    let Some(row) = get(pool, name).await? else {
        return Ok(None);
    };
    if row.managed_by != source {
        return Ok(Some(Written::Managed(row.managed_by)));
    }
    let next = if enabled {
        Calendar::parse(&row.cron, &row.timezone)
            .ok()
            .and_then(|c| c.next_after(now))
    } else {
        None
    };
    let updated = sqlx::query(
        "UPDATE cleanup_schedules SET enabled = $2,
             next_fire_at = CASE WHEN enabled AND $2 THEN next_fire_at ELSE $3 END,
             actor = $4, updated_at = now()
         WHERE name = $1 AND managed_by = $5",
    )
    .bind(name)
    .bind(enabled)
    .bind(next)
    .bind(actor)
    .bind(source)
    .execute(pool)
    .await?;
    let after = get(pool, name).await?;
    Ok(match after {
        None => None,
        Some(row) if updated.rows_affected() == 0 => Some(Written::Managed(row.managed_by)),
        Some(row) => Some(Written::Replaced(row)),
    })
}

/// Remove the file-managed schedules the file no longer lists; their names.
pub async fn remove_unlisted(
    conn: &mut PgConnection,
    listed: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM cleanup_schedules WHERE managed_by = 'file' AND name <> ALL($1)
         RETURNING name",
    )
    .bind(listed)
    .fetch_all(conn)
    .await
}

/// Delete a schedule (its tasks stay). `Some(Managed)` when another source manages it.
pub async fn delete(
    pool: &PgPool,
    name: &str,
    source: &str,
) -> Result<Option<Written>, sqlx::Error> {
    let deleted: Option<String> = sqlx::query_scalar(
        "DELETE FROM cleanup_schedules WHERE name = $1 AND managed_by = $2 RETURNING name",
    )
    .bind(name)
    .bind(source)
    .fetch_optional(pool)
    .await?;
    if deleted.is_some() {
        return Ok(Some(Written::Exists));
    }
    Ok(get(pool, name)
        .await?
        .map(|row| Written::Managed(row.managed_by)))
}

/// Per schedule, for the metrics: next window, last window fired, last task's status, and
/// how many of its tasks failed or died since its last success.
#[derive(Debug, sqlx::FromRow)]
pub struct ScheduleHealth {
    pub name: String,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub last_task_status: Option<String>,
    pub consecutive_failures: i64,
}

pub async fn health(pool: &PgPool) -> Result<Vec<ScheduleHealth>, sqlx::Error> {
    // Bounded per schedule: the latest success through its own index, and at most 100
    // failures counted after it.
    sqlx::query_as(
        "SELECT s.name, s.next_fire_at, s.last_fired_at,
                (SELECT t.status FROM cleanup_tasks t WHERE t.id = s.last_task_id) AS last_task_status,
                (SELECT count(*) FROM (
                     SELECT 1 FROM cleanup_tasks t
                     WHERE t.schedule = s.name AND t.status IN ('failed', 'dead')
                       AND t.created_at > coalesce(
                           (SELECT u.created_at FROM cleanup_tasks u
                            WHERE u.schedule = s.name AND u.status = 'succeeded'
                            ORDER BY u.created_at DESC LIMIT 1),
                           '-infinity')
                     LIMIT 100) f) AS consecutive_failures
         FROM cleanup_schedules s ORDER BY s.name",
    )
    .fetch_all(pool)
    .await
}
