//! Enqueue and inspect tasks: `POST /maintenance/*`, `GET /tasks`, `GET /tasks/{id}`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::envelope::TaskEnvelope;
use shared::tasks::{CleanupRunsParams, CleanupTempFilesParams, TaskKind, TaskSpec};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Principal, Scope};

use super::error::{ApiError, Problem};
use super::idempotency::idempotency_key;
pub use super::idempotency::{IDEMPOTENCY_KEY, SCHEDULE_KEY_PREFIX};
use super::json::ApiJson;
use super::AppState;
use crate::ledger::{self, Enqueued, ListQuery, TaskRow, TaskStatus};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/maintenance/cleanup-runs", post(enqueue_cleanup_runs))
        .route(
            "/maintenance/cleanup-temp-files",
            post(enqueue_cleanup_temp_files),
        )
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/retry", post(super::copies::retry_task))
        .route("/tasks/{id}/run", post(super::copies::run_task))
        .route("/tasks/{id}/cancel", post(super::cancel::cancel_task))
}

/// A task as the API shows it: the status monitor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub task_id: Uuid,
    pub kind: TaskKind,
    /// queued, running, retrying, succeeded, failed, dead or cancelled.
    pub status: TaskStatus,
    /// The parameters as accepted.
    pub params: serde_json::Value,
    /// Attempts started so far.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Nothing younger than this instant is deleted (enqueue time minus `max_age_hours`).
    pub cutoff: DateTime<Utc>,
    /// The executor's result, once succeeded; for a task that failed or was cancelled, what
    /// it deleted before it stopped.
    pub result: Option<serde_json::Value>,
    /// The last error (`{"class", "message", "at"}`), once an attempt failed.
    pub error: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, while `retrying`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the relay last handed an attempt to RabbitMQ.
    pub published_at: Option<DateTime<Utc>>,
    /// The schedule that fired the task (absent for a POST).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The window it fired for: its cutoff is computed from this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Who created it: the API token's name (for a schedule's window, whoever wrote the
    /// schedule).
    pub actor: Option<String>,
    /// The task this one retries (`POST /tasks/{id}/retry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<Uuid>,
    /// The task that retried this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried_by: Option<Uuid>,
    /// When a cancel was asked for (`POST /tasks/{id}/cancel`); a running task stays
    /// `running` until its worker stops at its next batch boundary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Who asked for the cancel: the API token's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    /// The dry run this real run was made from (`POST /tasks/{id}/run`).
    pub dry_run_of: Option<Uuid>,
}

impl From<TaskRow> for TaskView {
    fn from(row: TaskRow) -> Self {
        TaskView {
            task_id: row.id,
            kind: row.kind,
            status: row.status,
            params: row.params,
            attempts: row.attempts.max(0) as u32,
            max_attempts: row.max_attempts.max(0) as u32,
            cutoff: row.cutoff,
            result: row.result,
            error: row.error,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            next_attempt_at: row.next_attempt_at,
            published_at: row.published_at,
            schedule: row.schedule,
            scheduled_for: row.scheduled_for,
            actor: row.actor,
            retry_of: row.retry_of,
            retried_by: row.retried_by,
            cancel_requested_at: row.cancel_requested_at,
            cancelled_by: row.cancelled_by,
            dry_run_of: row.dry_run_of,
        }
    }
}

/// Enqueue a cleanup of old rows of the runs table.
#[utoipa::path(
    post,
    path = "/maintenance/cleanup-runs",
    tag = "tasks",
    request_body = CleanupRunsParams,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        pattern = r"^(?!schedule:)[!-~]{1,255}$",
        description = "Same key and body return the same task: 1 to 255 visible ASCII \
            characters, not starting with `schedule:` (reserved for the tasks schedules fire)")),
    responses(
        (status = 202, description = "Accepted: durable in the ledger", body = TaskView,
            headers(("Location" = String, description = "/tasks/{id}"))),
        (status = 200, description = "Replay of an earlier request with the same Idempotency-Key", body = TaskView,
            headers(("Location" = String, description = "/tasks/{id}"),
                ("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 400, description = "Malformed JSON, or a malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope allows no enqueue, or only a dry run (`dry_run: true`) while this is a real cleanup (`enqueue` scope)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid parameters (`field` names the one at fault), or an Idempotency-Key used before for another request (`task_id` names that task)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["dry-run"]))
)]
pub async fn enqueue_cleanup_runs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(params): ApiJson<CleanupRunsParams>,
) -> Result<Response, ApiError> {
    enqueue(&state, &principal, &headers, TaskSpec::CleanupRuns(params)).await
}

/// Enqueue a cleanup of old files under the workers' configured temp roots.
#[utoipa::path(
    post,
    path = "/maintenance/cleanup-temp-files",
    tag = "tasks",
    request_body = CleanupTempFilesParams,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        pattern = r"^(?!schedule:)[!-~]{1,255}$",
        description = "Same key and body return the same task: 1 to 255 visible ASCII \
            characters, not starting with `schedule:` (reserved for the tasks schedules fire)")),
    responses(
        (status = 202, description = "Accepted: durable in the ledger", body = TaskView,
            headers(("Location" = String, description = "/tasks/{id}"))),
        (status = 200, description = "Replay of an earlier request with the same Idempotency-Key", body = TaskView,
            headers(("Location" = String, description = "/tasks/{id}"),
                ("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 400, description = "Malformed JSON, or a malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope allows no enqueue, or only a dry run (`dry_run: true`) while this is a real cleanup (`enqueue` scope)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid parameters (`field` names the one at fault), or an Idempotency-Key used before for another request (`task_id` names that task)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["dry-run"]))
)]
pub async fn enqueue_cleanup_temp_files(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(params): ApiJson<CleanupTempFilesParams>,
) -> Result<Response, ApiError> {
    enqueue(
        &state,
        &principal,
        &headers,
        TaskSpec::CleanupTempFiles(params),
    )
    .await
}

/// Enqueue a task (what both enqueue routes and the console's form do).
pub(crate) async fn enqueue(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    task: TaskSpec,
) -> Result<Response, ApiError> {
    if !task.dry_run() {
        principal.require(Scope::Enqueue, "a real (not dry-run) cleanup")?;
    }
    task.validate(&state.rules)
        .map_err(|e| ApiError::InvalidParameters {
            detail: format!("invalid parameters: {e}"),
            field: Some(e.field.to_owned()),
        })?;
    let key = idempotency_key(headers)?;
    let max_attempts = task.max_attempts().unwrap_or(state.max_attempts);
    let envelope = TaskEnvelope::new(Uuid::now_v7(), task, max_attempts, Utc::now());
    let actor = Some(principal.name.as_str());
    let (status, row) = match state
        .intake
        .enqueue(envelope, key.as_deref(), actor)
        .await?
    {
        // Counted, logged and handed to this replica's relay by the intake.
        Enqueued::Created(row) => (StatusCode::ACCEPTED, row),
        Enqueued::Replayed(row) => (StatusCode::OK, row),
        Enqueued::KeyConflict(row) => {
            return Err(ApiError::IdempotencyKeyReused {
                key: key.unwrap_or_default(),
                task_id: row.id,
            })
        }
    };
    let location = format!("/tasks/{}", row.id);
    let mut response = super::located(status, &location, TaskView::from(row));
    if status == StatusCode::OK {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The status monitor of one task.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, body = TaskView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a task id (a UUID)")))?;
    let row = ledger::get_task(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no task with id {id}")))?;
    Ok(Json(TaskView::from(row)))
}

/// Filters and cursor of `GET /tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only tasks of this kind.
    #[param(value_type = Option<TaskKind>)]
    pub kind: Option<String>,
    /// Only tasks in this status.
    #[param(value_type = Option<TaskStatus>)]
    pub status: Option<String>,
    /// Only tasks this schedule fired.
    #[param(pattern = r"^[^\x00]*$")]
    pub schedule: Option<String>,
    /// Only tasks this actor (API token name) created.
    #[param(pattern = r"^[^\x00]*$")]
    pub actor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
}

/// A page of tasks, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    pub items: Vec<TaskView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// List tasks, newest first, filtered by kind and status, with cursor pagination.
#[utoipa::path(
    get,
    path = "/tasks",
    tag = "tasks",
    params(ListParams),
    responses(
        (status = 200, body = TaskPage),
        (status = 400, description = "An unknown kind or status, a limit out of range, a cursor not from this API, an unknown or repeated parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn list_tasks(
    State(state): State<AppState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let Query(params) =
        query.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    for (name, value) in [("actor", &params.actor), ("schedule", &params.schedule)] {
        if value.as_deref().is_some_and(|a| a.contains('\0')) {
            return Err(ApiError::BadRequest(format!(
                "{name} must not contain a NUL character"
            )));
        }
    }
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    let query = ListQuery {
        kind: params
            .kind
            .map(|k| k.parse::<TaskKind>())
            .transpose()
            .map_err(ApiError::BadRequest)?,
        status: params
            .status
            .map(|s| s.parse::<TaskStatus>())
            .transpose()
            .map_err(ApiError::BadRequest)?,
        before: params
            .cursor
            .map(|c| {
                Uuid::parse_str(&c).map_err(|_| {
                    ApiError::BadRequest(format!("`{c}` is not a cursor from this API"))
                })
            })
            .transpose()?,
        actor: params.actor,
        schedule: params.schedule,
        limit,
    };
    let (rows, more) = ledger::list_tasks(&state.pool, &query).await?;
    let next_cursor = more
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let items = rows.into_iter().map(TaskView::from).collect();
    Ok(Json(TaskPage { items, next_cursor }))
}
