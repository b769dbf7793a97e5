//! New tasks made from stored ones: a retry of a task that did not succeed
//! (`POST /tasks/{id}/retry`), and a real run of a succeeded dry run with the same
//! parameters and cutoff (`POST /tasks/{id}/run`). Each is one transaction: the original
//! locked, checked, the copy and its outbox message stored, the two linked.

use chrono::{DateTime, Utc};
use shared::envelope::TaskEnvelope;
use shared::tasks::{TaskSpec, ValidationRules};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::tasks::{enqueue_in, Enqueued, TaskRow, TaskStatus, TASK_COLUMNS};

/// What asking for a copy found.
#[derive(Debug)]
pub enum Copied {
    /// The new task.
    Created(Box<TaskRow>),
    NotFound,
    /// The original is not in a status this copy is made from: its status.
    WrongStatus(TaskStatus),
    /// A copy of this kind was made before: that task.
    Before(Uuid),
    /// Its parameters no longer pass today's checks, or it is not a dry run.
    Invalid(String),
}

/// Retry a `failed`, `dead` or `cancelled` task: a new task with the same kind and
/// parameters (the cutoff from `now`, or the original's with `keep_cutoff`), linked both
/// ways (`retry_of`, `retried_by`).
pub async fn retry(
    pool: &PgPool,
    id: Uuid,
    keep_cutoff: bool,
    rules: &ValidationRules,
    default_max_attempts: u32,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Copied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(original) = lock(&mut tx, id).await? else {
        return Ok(Copied::NotFound);
    };
    if !matches!(
        original.status,
        TaskStatus::Failed | TaskStatus::Dead | TaskStatus::Cancelled
    ) {
        return Ok(Copied::WrongStatus(original.status));
    }
    if let Some(by) = original.retried_by {
        return Ok(Copied::Before(by));
    }
    let task = match checked_spec(&original, rules) {
        Ok(task) => task,
        Err(reason) => return Ok(Copied::Invalid(reason)),
    };
    let cutoff = keep_cutoff.then_some(original.cutoff);
    let created = store(&mut tx, task, cutoff, default_max_attempts, actor, now).await?;
    sqlx::query("UPDATE cleanup_tasks SET retry_of = $2 WHERE id = $1")
        .bind(created)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE cleanup_tasks SET retried_by = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(created)
        .execute(&mut *tx)
        .await?;
    let created = read(&mut tx, created).await?;
    tx.commit().await?;
    Ok(Copied::Created(Box::new(created)))
}

/// Run a succeeded dry run for real: a new task with its kind and parameters (`dry_run`
/// false, and what the dry run's worker chose by itself pinned: `pinned`) and its
/// cutoff. It deletes what matches those rules when it runs: nothing younger than the
/// cutoff, whatever the dry run found that still matches, and whatever came to match
/// since (a run that finished meanwhile with an old timestamp). One real run per dry run.
pub async fn run_dry_run(
    pool: &PgPool,
    id: Uuid,
    rules: &ValidationRules,
    default_max_attempts: u32,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Copied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(original) = lock(&mut tx, id).await? else {
        return Ok(Copied::NotFound);
    };
    let task = match checked_spec(&original, rules) {
        Ok(task) if task.dry_run() => task,
        Ok(_) => {
            return Ok(Copied::Invalid(
                "it is not a dry run (only a dry run is run for real)".to_owned(),
            ))
        }
        Err(reason) => return Ok(Copied::Invalid(reason)),
    };
    if original.status != TaskStatus::Succeeded {
        return Ok(Copied::WrongStatus(original.status));
    }
    let before: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM cleanup_tasks WHERE dry_run_of = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(before) = before {
        return Ok(Copied::Before(before));
    }
    let real = match pinned(task.with_dry_run(false), original.result.as_ref()) {
        Ok(real) => real,
        Err(reason) => return Ok(Copied::Invalid(reason)),
    };
    if let Err(e) = real.validate(rules) {
        return Ok(Copied::Invalid(format!(
            "its parameters are no longer valid: {e}"
        )));
    }
    let created = store(
        &mut tx,
        real,
        Some(original.cutoff),
        default_max_attempts,
        actor,
        now,
    )
    .await?;
    sqlx::query("UPDATE cleanup_tasks SET dry_run_of = $2 WHERE id = $1")
        .bind(created)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let created = read(&mut tx, created).await?;
    tx.commit().await?;
    Ok(Copied::Created(Box::new(created)))
}

/// The real run of a dry run, with what the dry run's worker chose by itself written into
/// its parameters: the statuses (the worker's terminal statuses when none were named) and
/// the root (every configured root when none was named). A worker with another
/// configuration must not make the real run delete what the dry run never looked at; a
/// dry run over several roots is refused, since another worker may have other roots.
fn pinned(real: TaskSpec, result: Option<&serde_json::Value>) -> Result<TaskSpec, String> {
    let strings = |key: &str| -> Option<Vec<String>> {
        result?
            .get(key)?
            .as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    match real {
        TaskSpec::CleanupRuns(mut p) => {
            if p.statuses.is_none() {
                let statuses = strings("statuses")
                    .filter(|s| !s.is_empty())
                    .ok_or("its result does not say which statuses it took; run a new dry run")?;
                p.statuses = Some(statuses);
            }
            Ok(TaskSpec::CleanupRuns(p))
        }
        TaskSpec::CleanupTempFiles(mut p) => {
            if p.root.is_none() {
                let roots = strings("roots").unwrap_or_default();
                match roots.as_slice() {
                    [one] => p.root = Some(one.clone()),
                    [] => {
                        return Err("its result names no root it cleaned; run a new dry run".into())
                    }
                    many => {
                        return Err(format!(
                            "it covered several roots ({}), and the worker that takes the real \
                             run may have other ones; run a dry run of one root (`root`)",
                            many.join(", ")
                        ))
                    }
                }
            }
            Ok(TaskSpec::CleanupTempFiles(p))
        }
    }
}

/// The real run made from dry run `id`, if any.
pub async fn real_run_of(pool: &PgPool, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM cleanup_tasks WHERE dry_run_of = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

async fn read(conn: &mut PgConnection, id: Uuid) -> Result<TaskRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
}

/// The original's task as stored, if it still passes today's checks.
fn checked_spec(original: &TaskRow, rules: &ValidationRules) -> Result<TaskSpec, String> {
    let task = original
        .spec()
        .ok_or_else(|| "its stored parameters no longer parse".to_owned())?;
    task.validate(rules)
        .map_err(|e| format!("its parameters are no longer valid: {e}"))?;
    Ok(task)
}

/// Store the copy and its outbox message; `cutoff` replaces the one computed from `now`.
async fn store(
    conn: &mut PgConnection,
    task: TaskSpec,
    cutoff: Option<DateTime<Utc>>,
    default_max_attempts: u32,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Uuid, sqlx::Error> {
    let max_attempts = task.max_attempts().unwrap_or(default_max_attempts);
    let mut envelope = TaskEnvelope::new(Uuid::now_v7(), task, max_attempts, now);
    if let Some(cutoff) = cutoff {
        envelope.cutoff = cutoff;
    }
    match enqueue_in(conn, &envelope, None, None, actor).await? {
        Enqueued::Created(row) | Enqueued::Replayed(row) | Enqueued::KeyConflict(row) => Ok(row.id),
    }
}
