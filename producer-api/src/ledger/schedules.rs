//! Schedules (`cleanup_schedules`): what they are, and firing them.
//!
//! Every producer-api replica runs the scheduler. A due schedule is claimed with a row
//! lock (`FOR UPDATE SKIP LOCKED`): the replica that holds it inserts the window's task
//! with its outbox row and advances the schedule in the same transaction, so N replicas
//! fire each window once, and a window is not lost while any replica is up. The task's
//! idempotency key is `schedule:<name>:<window>`, a second guard against firing a window
//! twice. Its cutoff is computed from the window's scheduled time, so a late firing deletes
//! exactly what an on-time one would have.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::envelope::{cutoff_for, TaskEnvelope};
use shared::tasks::{TaskKind, TaskSpec};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::tasks::{enqueue_in, Enqueued};
use crate::schedules::calendar::Calendar;

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
/// other.
pub async fn write(
    pool: &PgPool,
    name: &str,
    spec: &ScheduleSpec,
    replace: bool,
    source: &str,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Written, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let existing: Option<(String,)> =
        sqlx::query_as("SELECT managed_by FROM cleanup_schedules WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    match (&existing, replace) {
        (Some(_), false) => return Ok(Written::Exists),
        (Some((managed_by,)), true) if managed_by != source => {
            return Ok(Written::Managed(managed_by.clone()))
        }
        _ => {}
    }
    sqlx::query(
        "INSERT INTO cleanup_schedules AS s (name, kind, params, cron, timezone, enabled,
                 catch_up, overlap, next_fire_at, managed_by, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, params = EXCLUDED.params,
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
                               THEN now() ELSE s.updated_at END",
    )
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
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let row = get(pool, name).await?.expect("just written");
    Ok(if existing.is_some() {
        Written::Replaced(row)
    } else {
        Written::Created(row)
    })
}

/// Enable or disable a schedule; enabling computes its next window from now (missed
/// windows while disabled are not caught up).
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
    sqlx::query(
        "UPDATE cleanup_schedules SET enabled = $2, next_fire_at = $3, actor = $4,
             updated_at = now()
         WHERE name = $1",
    )
    .bind(name)
    .bind(enabled)
    .bind(next)
    .bind(actor)
    .execute(pool)
    .await?;
    Ok(get(pool, name).await?.map(Written::Replaced))
}

/// Remove the file-managed schedules the file no longer lists; their names.
pub async fn remove_unlisted(pool: &PgPool, listed: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM cleanup_schedules WHERE managed_by = 'file' AND name <> ALL($1)
         RETURNING name",
    )
    .bind(listed)
    .fetch_all(pool)
    .await
}

/// Delete a schedule (its tasks stay). `Some(Managed)` when another source manages it.
pub async fn delete(
    pool: &PgPool,
    name: &str,
    source: &str,
) -> Result<Option<Written>, sqlx::Error> {
    let Some(row) = get(pool, name).await? else {
        return Ok(None);
    };
    if row.managed_by != source {
        return Ok(Some(Written::Managed(row.managed_by)));
    }
    sqlx::query("DELETE FROM cleanup_schedules WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(Some(Written::Replaced(row)))
}

/// What the scheduler did with one due schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// A task for this window (and, with `catch_up=once`, the missed ones before it).
    Task {
        schedule: String,
        window: DateTime<Utc>,
        task_id: Uuid,
        missed: u64,
    },
    /// Nothing fired: the windows were skipped (overlap, or `catch_up=skip`).
    Skipped {
        schedule: String,
        windows: u64,
        reason: &'static str,
    },
}

/// How late a window may fire under `catch_up=skip` before it counts as missed.
pub const MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// Fire every schedule due at `now` (up to `limit`), each in its own transaction.
pub async fn fire_due(
    pool: &PgPool,
    now: DateTime<Utc>,
    max_attempts: u32,
    limit: i64,
) -> Result<Vec<Fired>, sqlx::Error> {
    let mut fired = Vec::new();
    for _ in 0..limit {
        let mut tx = pool.begin().await?;
        let due: Option<ScheduleRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM cleanup_schedules s
             WHERE s.enabled AND s.next_fire_at <= $1
             ORDER BY s.next_fire_at, s.name LIMIT 1 FOR UPDATE OF s SKIP LOCKED"
        ))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = due else {
            break;
        };
        let outcome = fire_one(&mut tx, &row, now, max_attempts).await?;
        tx.commit().await?;
        fired.push(outcome);
    }
    Ok(fired)
}

/// Fire one claimed schedule: the latest due window, or nothing; then its next window.
async fn fire_one(
    conn: &mut PgConnection,
    row: &ScheduleRow,
    now: DateTime<Utc>,
    max_attempts: u32,
) -> Result<Fired, sqlx::Error> {
    let calendar = Calendar::parse(&row.cron, &row.timezone).ok();
    let first = row.next_fire_at.expect("a due schedule has a next window");
    // The due windows: the first, and every later one up to now.
    let mut latest = first;
    let mut due = 1u64;
    if let Some(calendar) = &calendar {
        while let Some(next) = calendar.next_after(latest) {
            if next > now {
                break;
            }
            latest = next;
            due += 1;
        }
    }
    let next = calendar
        .as_ref()
        .and_then(|c| c.next_after(now.max(latest)));
    let catch_up = if row.catch_up == "skip" {
        CatchUp::Skip
    } else {
        CatchUp::Once
    };
    let late = (now - latest).to_std().unwrap_or_default();
    let busy = row.overlap != "allow"
        && matches!(
            row.last_task_status.as_deref(),
            Some("queued" | "running" | "retrying")
        );
    let skip_reason = if busy {
        Some("the previous task has not finished (overlap: skip)")
    } else if catch_up == CatchUp::Skip && late > MISFIRE_GRACE {
        Some("missed while no replica was up (catch_up: skip)")
    } else {
        None
    };
    if let Some(reason) = skip_reason {
        sqlx::query(
            "UPDATE cleanup_schedules SET next_fire_at = $2,
                 skipped_windows = skipped_windows + $3, updated_at = now()
             WHERE name = $1",
        )
        .bind(&row.name)
        .bind(next)
        .bind(due as i64)
        .execute(&mut *conn)
        .await?;
        return Ok(Fired::Skipped {
            schedule: row.name.clone(),
            windows: due,
            reason,
        });
    }
    let task = row
        .kind
        .parse::<TaskKind>()
        .ok()
        .and_then(|kind| TaskSpec::from_parts(kind, row.params.clone()).ok());
    let Some(task) = task else {
        // Stored parameters that no longer parse (a downgrade): never fire, say why.
        tracing::error!(schedule = %row.name, "stored parameters no longer parse; schedule disabled");
        sqlx::query(
            "UPDATE cleanup_schedules SET enabled = false, next_fire_at = NULL, updated_at = now()
             WHERE name = $1",
        )
        .bind(&row.name)
        .execute(&mut *conn)
        .await?;
        return Ok(Fired::Skipped {
            schedule: row.name.clone(),
            windows: due,
            reason: "its parameters no longer parse",
        });
    };
    let max_attempts = task.max_attempts().unwrap_or(max_attempts);
    let mut envelope = TaskEnvelope::new(Uuid::now_v7(), task, max_attempts, now);
    // As if it had fired on time.
    envelope.cutoff = cutoff_for(latest, envelope.task.max_age_hours());
    let key = format!("schedule:{}:{}", row.name, latest.to_rfc3339());
    let task_id = match enqueue_in(conn, &envelope, Some(&key), Some((&row.name, latest))).await? {
        Enqueued::Created(task) | Enqueued::Replayed(task) | Enqueued::KeyConflict(task) => task.id,
    };
    sqlx::query(
        "UPDATE cleanup_schedules SET next_fire_at = $2, last_fired_at = $3, last_task_id = $4,
             skipped_windows = skipped_windows + $5, updated_at = now()
         WHERE name = $1",
    )
    .bind(&row.name)
    .bind(next)
    .bind(latest)
    .bind(task_id)
    .bind((due - 1) as i64)
    .execute(&mut *conn)
    .await?;
    Ok(Fired::Task {
        schedule: row.name.clone(),
        window: latest,
        task_id,
        missed: due - 1,
    })
}

/// Fire a schedule now, outside its calendar (`POST /schedules/{name}/trigger`): a task
/// whose cutoff is computed from now; the schedule's windows are unchanged.
pub async fn trigger(
    pool: &PgPool,
    name: &str,
    now: DateTime<Utc>,
    max_attempts: u32,
) -> Result<Option<Uuid>, sqlx::Error> {
    let Some(row) = get(pool, name).await? else {
        return Ok(None);
    };
    let Some(task) = row
        .kind
        .parse::<TaskKind>()
        .ok()
        .and_then(|kind| TaskSpec::from_parts(kind, row.params.clone()).ok())
    else {
        return Ok(None);
    };
    let max_attempts = task.max_attempts().unwrap_or(max_attempts);
    let envelope = TaskEnvelope::new(Uuid::now_v7(), task, max_attempts, now);
    let mut tx = pool.begin().await?;
    let task_id = match enqueue_in(&mut tx, &envelope, None, Some((&row.name, now))).await? {
        Enqueued::Created(task) | Enqueued::Replayed(task) | Enqueued::KeyConflict(task) => task.id,
    };
    sqlx::query(
        "UPDATE cleanup_schedules SET last_task_id = $2, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(task_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(task_id))
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
    sqlx::query_as(
        "SELECT s.name, s.next_fire_at, s.last_fired_at,
                (SELECT t.status FROM cleanup_tasks t WHERE t.id = s.last_task_id) AS last_task_status,
                (SELECT count(*) FROM cleanup_tasks t
                 WHERE t.schedule = s.name AND t.status IN ('failed', 'dead')
                   AND t.created_at > coalesce(
                       (SELECT max(u.created_at) FROM cleanup_tasks u
                        WHERE u.schedule = s.name AND u.status = 'succeeded'),
                       '-infinity')) AS consecutive_failures
         FROM cleanup_schedules s ORDER BY s.name",
    )
    .fetch_all(pool)
    .await
}
