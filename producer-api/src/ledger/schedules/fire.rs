//! Firing schedules: claim a due one, insert its window's task (or skip the window), and
//! advance it, in one transaction; and `trigger`, a task now outside the calendar.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::envelope::{cutoff_for, TaskEnvelope};
use shared::tasks::{TaskKind, TaskSpec, ValidationRules};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{get, CatchUp, ScheduleRow, COLUMNS};
use crate::ledger::tasks::{enqueue_in, Enqueued};
use crate::schedules::calendar::Calendar;

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
