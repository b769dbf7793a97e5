//! What a task page's buttons do: cancel and retry (each after a confirmation page), and
//! running a succeeded dry run for real. Each calls the handler of its API route, after
//! the scope that route needs and the form's CSRF token are checked.

use axum::extract::{Path, State};
use axum::http::{header, Method};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;

use super::format::exact;
use super::page::{self, Nav, UiError};
use super::session::Viewer;
use super::task::load;
use crate::http::json::OptionalApiJson;
use crate::http::{cancel, copies, AppState};
use crate::ledger::{TaskRow, TaskStatus};

/// The page of the task an API handler just created (its `Location: /tasks/{id}`).
pub(super) fn to_created(response: &Response) -> Response {
    let id = response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.strip_prefix("/tasks/"))
        .unwrap_or_default();
    Redirect::to(&format!("/ui/tasks/{id}?done=created")).into_response()
}

/// 403 page unless the viewer may call `POST /tasks/{id}/{action}`.
pub(super) fn may_act(
    viewer: &Viewer,
    id: impl std::fmt::Display,
    action: &str,
) -> Result<(), UiError> {
    viewer.may(Method::POST, &format!("/tasks/{id}/{action}"))
}

/// A posted action: the form's CSRF token, then the scope of its API route.
fn posted(viewer: &Viewer, form: &ActionForm, id: &str, action: &str) -> Result<(), UiError> {
    viewer.check_csrf(&form.csrf)?;
    may_act(viewer, id, action)
}

fn confirm_page(
    viewer: &Viewer,
    t: &TaskRow,
    action: &str,
    title: &str,
    explain: Markup,
    extra: Markup,
) -> Response {
    let body = html! {
        h1 { (title) }
        section.panel {
            p { (t.kind.as_str()) " " (page::status_badge(t.status.as_str())) " " span.mono { (t.id) } }
            (explain)
            form method="post" action={ "/ui/tasks/" (t.id) "/" (action) } {
                (page::csrf(viewer))
                (extra)
                div.actions {
                    button.danger type="submit" { (title) }
                    a href={ "/ui/tasks/" (t.id) } { "Back to the task" }
                }
            }
        }
    };
    page::document(title, Some(viewer), Nav::Tasks, body).into_response()
}

pub async fn confirm_cancel(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let t = load(&state, &id).await?;
    may_act(&viewer, t.id, "cancel")?;
    let explain = html! {
        @if t.status == TaskStatus::Running {
            p { "The worker stops at its next batch boundary. What it deleted before stays deleted and is shown as the task's result." }
        } @else if t.status.is_finished() {
            p { "This task is " (t.status.as_str()) " already; there is nothing to cancel." }
        } @else {
            p { "The task has not started: it is cancelled at once, and a worker that receives its message skips it." }
        }
    };
    Ok(confirm_page(
        &viewer,
        &t,
        "cancel",
        "Cancel the task",
        explain,
        html! {},
    ))
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    keep_cutoff: Option<String>,
}

pub async fn cancel(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, UiError> {
    posted(&viewer, &form, &id, "cancel")?;
    let response = cancel::cancel_task(
        State(state),
        Extension(viewer.principal.clone()),
        Path(id.clone()),
    )
    .await?;
    let done = if response.status() == axum::http::StatusCode::ACCEPTED {
        "cancel-requested"
    } else {
        "cancelled"
    };
    Ok(Redirect::to(&format!("/ui/tasks/{id}?done={done}")).into_response())
}

pub async fn confirm_retry(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let t = load(&state, &id).await?;
    may_act(&viewer, t.id, "retry")?;
    let explain = html! {
        p { "A new task with the same kind and parameters, linked to this one." }
    };
    let extra = html! {
        div.checkbox {
            // A real run made from a dry run keeps the cutoff that dry run showed.
            input #keep-cutoff type="checkbox" name="keep_cutoff" value="true" checked[t.dry_run_of.is_some()];
            " " label for="keep-cutoff" { "Keep this task's cutoff (" (exact(t.cutoff)) ") instead of computing one from now" }
        }
    };
    Ok(confirm_page(
        &viewer,
        &t,
        "retry",
        "Retry the task",
        explain,
        extra,
    ))
}

pub async fn retry(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, UiError> {
    posted(&viewer, &form, &id, "retry")?;
    let body = copies::RetryBody {
        keep_cutoff: form.keep_cutoff.is_some(),
    };
    let response = copies::retry_task(
        State(state),
        Extension(viewer.principal.clone()),
        Path(id),
        OptionalApiJson(Some(body)),
    )
    .await?;
    Ok(to_created(&response))
}

pub async fn run(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, UiError> {
    posted(&viewer, &form, &id, "run")?;
    let response =
        copies::run_task(State(state), Extension(viewer.principal.clone()), Path(id)).await?;
    Ok(to_created(&response))
}
