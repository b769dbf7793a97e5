//! `POST /tasks/{id}/retry` and `POST /tasks/{id}/run`: new tasks made from stored ones.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use chrono::Utc;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Principal;
use super::error::{ApiError, Problem};
use super::json::OptionalApiJson;
use super::tasks::TaskView;
use super::AppState;
use crate::ledger::copies::{self, Copied};
use crate::ledger::TaskRow;

/// `POST /tasks/{id}/retry`: optional body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Keep the original task's cutoff instead of computing one from now.
    #[serde(default)]
    pub keep_cutoff: bool,
}

/// Run a `failed`, `dead` or `cancelled` task again: a new task with the same kind and parameters,
/// linked both ways (`retry_of`, `retried_by`).
#[utoipa::path(
    post,
    path = "/tasks/{id}/retry",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "Task id")),
    request_body(content = RetryBody, description = "Optional (no body is `{}`): `{\"keep_cutoff\": true}`"),
    responses(
        (status = 202, description = "The new task", body = TaskView,
            headers(("Location" = String, description = "/tasks/{id} of the new task"))),
        (status = 400, description = "The id is not a UUID, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not failed, dead or cancelled, or retried before", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a JSON object, an unknown field, or parameters no longer valid", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn retry_task(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    OptionalApiJson(body): OptionalApiJson<RetryBody>,
) -> Result<Response, ApiError> {
    let id = task_id(&id)?;
    let body = body.unwrap_or_default();
    let copied = copies::retry(
        &state.pool,
        id,
        body.keep_cutoff,
        &state.rules,
        state.max_attempts,
        Some(&principal.name),
        Utc::now(),
    )
    .await?;
    let row = created(
        copied,
        id,
        |status| {
            format!(
                "task {id} is {}; only a failed, dead or cancelled task is retried",
                status.as_str()
            )
        },
        |by| format!("task {id} was retried already, by task {by}; retry that one if it failed"),
        |reason| ApiError::InvalidParameters {
            detail: format!("task {id} cannot be retried: {reason}"),
            field: None,
        },
    )?;
    tracing::info!(task_id = %row.id, retry_of = %id, actor = %principal.name, "task retried");
    Ok(accepted(&state, row))
}

/// Run a succeeded dry run for real: a new task with the same kind, parameters and
/// cutoff, `dry_run` false, linked by `dry_run_of`. Once per dry run.
#[utoipa::path(
    post,
    path = "/tasks/{id}/run",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "Id of a succeeded dry run")),
    responses(
        (status = 202, description = "The real run", body = TaskView,
            headers(("Location" = String, description = "/tasks/{id} of the new task"))),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope allows no real cleanup (`enqueue` scope)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task cannot be run for real as it stands: not a dry run, not succeeded, run for real before (`detail` names that task), a temp-file dry run over several roots, or parameters no longer valid", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["enqueue"]))
)]
pub async fn run_task(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = task_id(&id)?;
    principal.require(super::auth::Scope::Enqueue, "a real (not dry-run) cleanup")?;
    let copied = copies::run_dry_run(
        &state.pool,
        id,
        &state.rules,
        state.max_attempts,
        Some(&principal.name),
        Utc::now(),
    )
    .await?;
    let row = created(
        copied,
        id,
        |status| {
            format!(
                "dry run {id} is {}; only a succeeded dry run is run for real",
                status.as_str()
            )
        },
        |by| format!("dry run {id} was run for real already, by task {by}"),
        // The request is well formed: what stands in the way is the stored task.
        |reason| ApiError::Conflict(format!("task {id} cannot be run for real: {reason}")),
    )?;
    tracing::info!(task_id = %row.id, dry_run_of = %id, actor = %principal.name, "dry run run for real");
    Ok(accepted(&state, row))
}

fn task_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a task id (a UUID)")))
}

/// The new task, or the error saying why there is none.
fn created(
    copied: Copied,
    id: Uuid,
    wrong_status: impl FnOnce(crate::ledger::TaskStatus) -> String,
    before: impl FnOnce(Uuid) -> String,
    invalid: impl FnOnce(String) -> ApiError,
) -> Result<TaskRow, ApiError> {
    match copied {
        Copied::Created(row) => Ok(*row),
        Copied::NotFound => Err(ApiError::NotFound(format!("no task with id {id}"))),
        Copied::WrongStatus(status) => Err(ApiError::Conflict(wrong_status(status))),
        Copied::Before(by) => Err(ApiError::Conflict(before(by))),
        Copied::Invalid(reason) => Err(invalid(reason)),
    }
}

fn accepted(state: &AppState, row: TaskRow) -> Response {
    state.outbox_written.notify_one();
    state
        .metrics
        .tasks_enqueued
        .with_label_values(&[row.kind.as_str()])
        .inc();
    let location = format!("/tasks/{}", row.id);
    super::located(StatusCode::ACCEPTED, &location, TaskView::from(row))
}
