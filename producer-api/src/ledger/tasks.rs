//! Tasks: the `cleanup_tasks` row, its status, enqueueing and reading.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::envelope::TaskEnvelope;
use shared::tasks::{TaskKind, TaskSpec};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

/// Lifecycle of a task (contract): `queued → running → succeeded | failed | dead`, with
/// `retrying` between attempts; `cancelled` from any of the first three on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Dead,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Retrying,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Dead,
        TaskStatus::Cancelled,
    ];

    /// A status no event moves a task out of.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Dead | TaskStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Retrying => "retrying",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Dead => "dead",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

impl TryFrom<String> for TaskStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status `{s}`; expected one of queued, running, retrying, \
                     succeeded, failed, dead, cancelled"
                )
            })
    }
}

/// One row of `cleanup_tasks`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: TaskKind,
    #[sqlx(try_from = "String")]
    pub status: TaskStatus,
    pub params: serde_json::Value,
    pub cutoff: DateTime<Utc>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub worker_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub published_at: Option<DateTime<Utc>>,
    /// The schedule that fired the task, and the window it fired for.
    pub schedule: Option<String>,
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Who created it: the API token's name.
    pub actor: Option<String>,
    /// The task this one retries, and the task that retried this one.
    pub retry_of: Option<Uuid>,
    pub retried_by: Option<Uuid>,
    /// When a cancel was asked for, and by whom (`POST /tasks/{id}/cancel`).
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    /// The dry run this real run was made from (`POST /tasks/{id}/run`).
    pub dry_run_of: Option<Uuid>,
}

pub(crate) const TASK_COLUMNS: &str =
    "id, kind, status, params, cutoff, attempts, max_attempts, result, \
     error, idempotency_key, worker_id, created_at, updated_at, started_at, finished_at, \
     next_attempt_at, published_at, schedule, scheduled_for, actor, retry_of, retried_by, \
     cancel_requested_at, cancelled_by, dry_run_of";

impl TaskRow {
    /// The task's kind and parameters as stored.
    pub fn spec(&self) -> Option<TaskSpec> {
        TaskSpec::from_parts(self.kind, self.params.clone()).ok()
    }
}

/// What an enqueue did.
#[derive(Debug)]
pub enum Enqueued {
    /// A new task (and its outbox message) was stored.
    Created(TaskRow),
    /// The idempotency key was used before with the same request: the earlier task.
    Replayed(TaskRow),
    /// The idempotency key was used before with a different request.
    KeyConflict(TaskRow),
}

/// Store a new task and its first outbox message in one statement (so one transaction),
/// or find the task an idempotency key already names.
pub async fn enqueue(
    pool: &PgPool,
    envelope: &TaskEnvelope,
    idempotency_key: Option<&str>,
    actor: Option<&str>,
) -> Result<Enqueued, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    enqueue_in(&mut conn, envelope, idempotency_key, None, actor).await
}

/// [`enqueue`] on a connection (inside the caller's transaction, if any); `schedule`
/// names the schedule and window that fired the task.
pub async fn enqueue_in(
    conn: &mut PgConnection,
    envelope: &TaskEnvelope,
    idempotency_key: Option<&str>,
    schedule: Option<(&str, DateTime<Utc>)>,
    actor: Option<&str>,
) -> Result<Enqueued, sqlx::Error> {
    let kind = envelope.task.kind().as_str();
    let params = envelope.task.params_json();
    let envelope_json = serde_json::to_value(envelope).expect("envelope serializes");
    let sql = format!(
        "WITH inserted AS (
             INSERT INTO cleanup_tasks
                 (id, kind, params, cutoff, max_attempts, idempotency_key, created_at, updated_at,
                  schedule, scheduled_for, actor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $9, $10, $11)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING {TASK_COLUMNS}
         ), outbox AS (
             INSERT INTO cleanup_outbox (task_id, attempt, kind, envelope, due_at)
             SELECT id, 1, kind, $8, created_at FROM inserted
         )
         SELECT {TASK_COLUMNS} FROM inserted"
    );
    let inserted: Option<TaskRow> = sqlx::query_as(&sql)
        .bind(envelope.task_id)
        .bind(kind)
        .bind(&params)
        .bind(envelope.cutoff)
        .bind(envelope.max_attempts as i32)
        .bind(idempotency_key)
        .bind(envelope.enqueued_at)
        .bind(&envelope_json)
        .bind(schedule.map(|(name, _)| name))
        .bind(schedule.map(|(_, window)| window))
        .bind(actor)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = inserted {
        return Ok(Enqueued::Created(row));
    }
    // ON CONFLICT DO NOTHING waited for any concurrent insert of the same key to commit,
    // so the earlier task is visible now.
    let key = idempotency_key.expect("only a keyed insert can conflict");
    let existing: TaskRow = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks WHERE idempotency_key = $1"
    ))
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if existing.spec().as_ref() == Some(&envelope.task) {
        Ok(Enqueued::Replayed(existing))
    } else {
        Ok(Enqueued::KeyConflict(existing))
    }
}

/// Store several new tasks, each with its first outbox message, in one statement (one
/// transaction, one commit): what [`enqueue_in`] does for one, for tasks without an
/// idempotency key (so none can conflict). All or none: an error stores nothing. The
/// stored rows come back in no particular order.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    tasks: &[(&TaskEnvelope, Option<&str>)],
) -> Result<Vec<TaskRow>, sqlx::Error> {
    let mut ids = Vec::with_capacity(tasks.len());
    let mut kinds = Vec::with_capacity(tasks.len());
    let mut params = Vec::with_capacity(tasks.len());
    let mut cutoffs = Vec::with_capacity(tasks.len());
    let mut max_attempts = Vec::with_capacity(tasks.len());
    let mut created = Vec::with_capacity(tasks.len());
    let mut envelopes = Vec::with_capacity(tasks.len());
    let mut actors = Vec::with_capacity(tasks.len());
    for (envelope, actor) in tasks {
        ids.push(envelope.task_id);
        kinds.push(envelope.task.kind().as_str());
        params.push(envelope.task.params_json());
        cutoffs.push(envelope.cutoff);
        max_attempts.push(envelope.max_attempts as i32);
        created.push(envelope.enqueued_at);
        envelopes.push(serde_json::to_value(envelope).expect("envelope serializes"));
        actors.push(*actor);
    }
    sqlx::query_as(&format!(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::timestamptz[],
                                  $5::int4[], $6::timestamptz[], $7::jsonb[], $8::text[])
                 AS i(id, kind, params, cutoff, max_attempts, created_at, envelope, actor)
         ), inserted AS (
             INSERT INTO cleanup_tasks
                 (id, kind, params, cutoff, max_attempts, created_at, updated_at, actor)
             SELECT id, kind, params, cutoff, max_attempts, created_at, created_at, actor
             FROM input
             RETURNING {TASK_COLUMNS}
         ), outbox AS (
             INSERT INTO cleanup_outbox (task_id, attempt, kind, envelope, due_at)
             SELECT t.id, 1, t.kind, i.envelope, t.created_at
             FROM inserted t JOIN input i ON i.id = t.id
         )
         SELECT {TASK_COLUMNS} FROM inserted"
    ))
    .bind(&ids)
    .bind(&kinds)
    .bind(&params)
    .bind(&cutoffs)
    .bind(&max_attempts)
    .bind(&created)
    .bind(&envelopes)
    .bind(&actors)
    .fetch_all(conn)
    .await
}

/// The tasks of these ids that exist (in no particular order), read in a transaction that
/// writes WAL (it locks them, `FOR KEY SHARE`, which blocks no update but a key change):
/// its commit, which the answer follows, waits for a synchronous standby as any commit
/// does, and so for every commit before it. (A transaction that only reads, or only takes
/// an id, commits without waiting.)
pub async fn get_tasks_once_durable(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<TaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks WHERE id = ANY($1) FOR KEY SHARE"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await
}

pub async fn get_task(pool: &PgPool, id: Uuid) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Filters and page of `GET /tasks`: newest first, `before` is the cursor (a task id).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub kind: Option<TaskKind>,
    pub actor: Option<String>,
    pub status: Option<TaskStatus>,
    pub schedule: Option<String>,
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// One page of tasks, newest first, and whether more follow.
pub async fn list_tasks(
    pool: &PgPool,
    query: &ListQuery,
) -> Result<(Vec<TaskRow>, bool), sqlx::Error> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {TASK_COLUMNS} FROM cleanup_tasks WHERE true"
    ));
    if let Some(kind) = query.kind {
        sql.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(status) = query.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(actor) = &query.actor {
        sql.push(" AND actor = ").push_bind(actor.clone());
    }
    if let Some(schedule) = &query.schedule {
        sql.push(" AND schedule = ").push_bind(schedule.clone());
    }
    if let Some(before) = query.before {
        sql.push(" AND id < ").push_bind(before);
    }
    sql.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(query.limit) + 1);
    let mut rows: Vec<TaskRow> = sql.build_query_as().fetch_all(pool).await?;
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    Ok((rows, more))
}

/// Per kind, when the last real (not dry-run) task succeeded.
pub async fn last_successes(pool: &PgPool) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, max(finished_at) FROM cleanup_tasks
         WHERE status = 'succeeded' AND NOT coalesce((params->>'dry_run')::boolean, false)
           AND finished_at IS NOT NULL
         GROUP BY kind",
    )
    .fetch_all(pool)
    .await
}

/// Tasks by kind and status.
pub async fn task_counts(pool: &PgPool) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT kind, status, count(*) FROM cleanup_tasks GROUP BY kind, status")
        .fetch_all(pool)
        .await
}
