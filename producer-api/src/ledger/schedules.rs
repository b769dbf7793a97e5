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
use shared::tasks::{TaskKind, TaskSpec, ValidationRules};
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

/// [`write`] on a connection (inside the caller's transaction, if any).
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
    rules: &ValidationRules,
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
        let outcome = fire_one(&mut tx, &row, now, rules, max_attempts).await?;
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
    rules: &ValidationRules,
    max_attempts: u32,
) -> Result<Fired, sqlx::Error> {
    let calendar = match Calendar::parse(&row.cron, &row.timezone) {
        Ok(calendar) => Some(calendar),
        Err(e) => return disable(conn, row, format!("its calendar no longer parses: {e}")).await,
    };
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
        return skip(conn, row, next, due, reason).await;
    }
    // The parameters as today's rules judge them (MIN_AGE_HOURS, terminal statuses and
    // scope columns may have been tightened since the schedule was written).
    let task = match stored_task(row, rules) {
        Ok(task) => task,
        Err(reason) => return disable(conn, row, reason).await,
    };
    let max_attempts = task.max_attempts().unwrap_or(max_attempts);
    let mut envelope = TaskEnvelope::new(Uuid::now_v7(), task, max_attempts, now);
    // As if it had fired on time.
    envelope.cutoff = cutoff_for(latest, envelope.task.max_age_hours());
    let key = format!(
        "{}{}:{}",
        crate::http::tasks::SCHEDULE_KEY_PREFIX,
        row.name,
        latest.to_rfc3339()
    );
    // The window's task is the schedule writer's doing.
    let actor = row.actor.as_deref();
    let task_id = match enqueue_in(
        conn,
        &envelope,
        Some(&key),
        Some((&row.name, latest)),
        actor,
    )
    .await?
    {
        Enqueued::Created(task) | Enqueued::Replayed(task) => task.id,
        // This window's key names a task with other parameters (a schedule of this name
        // deleted and made again): never fire it as if it were that one.
        Enqueued::KeyConflict(task) => {
            tracing::warn!(schedule = %row.name, window = %latest, other = %task.id, "a task with this window's key exists with other parameters; window skipped");
            let reason = "a task with this window's key exists with other parameters";
            return skip(conn, row, next, due, reason).await;
        }
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

/// Fire nothing for `due` windows, and wait for `next`.
async fn skip(
    conn: &mut PgConnection,
    row: &ScheduleRow,
    next: Option<DateTime<Utc>>,
    due: u64,
    reason: &'static str,
) -> Result<Fired, sqlx::Error> {
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
    Ok(Fired::Skipped {
        schedule: row.name.clone(),
        windows: due,
        reason,
    })
}

/// A schedule's stored task, checked against today's rules; why not, otherwise.
fn stored_task(row: &ScheduleRow, rules: &ValidationRules) -> Result<TaskSpec, String> {
    let kind = row
        .kind
        .parse::<TaskKind>()
        .map_err(|e| format!("its kind no longer parses: {e}"))?;
    let task = TaskSpec::from_parts(kind, row.params.clone())
        .map_err(|e| format!("its parameters no longer parse: {e}"))?;
    task.validate(rules)
        .map_err(|e| format!("its parameters are no longer valid: {e}"))?;
    Ok(task)
}

/// Stop a schedule that cannot fire any more, saying why (logged; the schedule shows
/// `enabled: false`).
async fn disable(
    conn: &mut PgConnection,
    row: &ScheduleRow,
    reason: String,
) -> Result<Fired, sqlx::Error> {
    tracing::error!(schedule = %row.name, %reason, "schedule disabled");
    sqlx::query(
        "UPDATE cleanup_schedules SET enabled = false, next_fire_at = NULL, updated_at = now()
         WHERE name = $1",
    )
    .bind(&row.name)
    .execute(&mut *conn)
    .await?;
    Ok(Fired::Skipped {
        schedule: row.name.clone(),
        windows: 1,
        reason: "it cannot fire any more and was disabled (see the log)",
    })
}

/// Fire a schedule now, outside its calendar (`POST /schedules/{name}/trigger`): a task
/// whose cutoff is computed from now; the schedule's windows are unchanged.
pub async fn trigger(
    pool: &PgPool,
    name: &str,
    now: DateTime<Utc>,
    rules: &ValidationRules,
    max_attempts: u32,
    actor: &str,
) -> Result<Option<Result<Uuid, String>>, sqlx::Error> {
    let Some(row) = get(pool, name).await? else {
        return Ok(None);
    };
    let task = match stored_task(&row, rules) {
        Ok(task) => task,
        Err(reason) => return Ok(Some(Err(reason))),
    };
    let max_attempts = task.max_attempts().unwrap_or(max_attempts);
    let envelope = TaskEnvelope::new(Uuid::now_v7(), task, max_attempts, now);
    let mut tx = pool.begin().await?;
    let task_id = match enqueue_in(
        &mut tx,
        &envelope,
        None,
        Some((&row.name, now)),
        Some(actor),
    )
    .await?
    {
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
    Ok(Some(Ok(task_id)))
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
