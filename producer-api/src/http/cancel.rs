//! `POST /tasks/{id}/cancel`: stop a task (see [`crate::ledger::cancel`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use uuid::Uuid;

use super::auth::Principal;
use super::error::{ApiError, Problem};
use super::tasks::TaskView;
use super::AppState;
use crate::ledger::cancel::{self, Cancelled};

/// Cancel a task. A `queued` or `retrying` task is `cancelled` at once (200): its message
/// is withdrawn, or skipped untouched by the worker that receives it. A `running` task is
/// asked to stop (202): its worker stops at its next batch boundary, within one batch of
/// learning of the cancel, and the task becomes `cancelled` with what it deleted so far as
/// its result (or `succeeded`, if it finished first). Cancelling twice is fine.
#[utoipa::path(
    post,
    path = "/tasks/{id}/cancel",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task is cancelled (now, or it was before)", body = TaskView),
        (status = 202, description = "The task is running: its worker stops at its next batch boundary", body = TaskView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task finished already (succeeded, failed or dead): `task_status` names its status", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn cancel_task(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a task id (a UUID)")))?;
    let (status, row) = match cancel::cancel(&state.pool, id, &principal.name).await? {
        Cancelled::Done(row) => (StatusCode::OK, row),
        Cancelled::Requested(row) => (StatusCode::ACCEPTED, row),
        Cancelled::NotFound => return Err(ApiError::NotFound(format!("no task with id {id}"))),
        Cancelled::Finished(status) => {
            return Err(ApiError::TaskFinished {
                task_id: id,
                status,
            })
        }
    };
    state.outbox_written.notify_one();
    tracing::info!(task_id = %id, status = %row.status, actor = %principal.name, "task cancel");
    Ok((status, Json(TaskView::from(*row))).into_response())
}
