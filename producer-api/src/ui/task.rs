//! `/ui/tasks/{id}`: one task: what it was asked to do, its timeline, its result, and the
//! buttons its status and the viewer's scope allow (what they do: [`super::actions`]).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::actions::may_act;
use super::format::{self, exact, when};
use super::page::{self, Nav, UiError};
use super::session::Viewer;
use super::tasks::{is_dry_run, outcome};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::ledger::{self, console, TaskRow, TaskStatus};

#[derive(Debug, Default, Deserialize)]
pub struct Done {
    done: Option<String>,
}

pub(super) async fn load(state: &AppState, id: &str) -> Result<TaskRow, UiError> {
    let id = Uuid::parse_str(id)
        .map_err(|_| UiError::bad_request(format!("`{id}` is not a task id")))?;
    ledger::get_task(&state.pool, id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            UiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("no task with id {id}"),
            )
        })
}

fn can_cancel(viewer: &Viewer, t: &TaskRow) -> bool {
    may_act(viewer, t.id, "cancel").is_ok() && !t.status.is_finished()
}

fn can_retry(viewer: &Viewer, t: &TaskRow) -> bool {
    may_act(viewer, t.id, "retry").is_ok()
        && matches!(
            t.status,
            TaskStatus::Failed | TaskStatus::Dead | TaskStatus::Cancelled
        )
        && t.retried_by.is_none()
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, UiError> {
    let t = load(&state, &id).await?;
    let attempts = console::failed_attempts(&state.pool, t.id)
        .await
        .map_err(ApiError::from)?;
    let real_run = if is_dry_run(&t) {
        ledger::copies::real_run_of(&state.pool, t.id)
            .await
            .map_err(ApiError::from)?
    } else {
        None
    };
    let now = Utc::now();
    let dry = is_dry_run(&t);
    let notice = done.done.as_deref().and_then(|d| match d {
        "cancelled" | "cancel-requested" if t.status == TaskStatus::Cancelled => {
            Some("The task is cancelled.")
        }
        "created" => Some("Accepted: the task is durable in the ledger."),
        _ => None,
    });
    let body = html! {
        p { a href="/ui/tasks" { "← Tasks" } }
        h1 {
            (t.kind.as_str()) " " (page::status_badge(t.status.as_str()))
            @if dry { " " span.badge.dry { "dry run" } }
        }
        p.mono #task-id { (t.id) }
        @if let Some(notice) = notice { (page::notice(false, notice)) }
        @if t.cancel_requested_at.is_some() && !t.status.is_finished() {
            p.alert.alert-warn { "Cancel requested; the worker stops at its next batch boundary." }
        }
        div.actions {
            @if can_cancel(&viewer, &t) {
                a.button.danger href={ "/ui/tasks/" (t.id) "/cancel" } { "Cancel…" }
            }
            @if can_retry(&viewer, &t) {
                a.button href={ "/ui/tasks/" (t.id) "/retry" } { "Retry…" }
            }
        }
        @if dry && t.status == TaskStatus::Succeeded {
            (dry_run_panel(&viewer, &t, real_run))
        }
        div.grid {
            section.panel {
                h2 { "Request" }
                dl.fields {
                    div { dt { "cutoff" } dd { (exact(t.cutoff)) br; span.muted { "nothing younger than this is deleted (" (when(t.cutoff, now)) ")" } } }
                    div { dt { "attempts" } dd { (t.attempts) " of " (t.max_attempts) } }
                    @if let Some(s) = &t.schedule { div { dt { "schedule" } dd { a href={ "/ui/tasks?schedule=" (s) } { (s) } } } }
                    @if let Some(a) = &t.actor { div { dt { "actor" } dd { (a) } } }
                    @for (label, link) in links(&t, real_run) {
                        div { dt { (label) } dd { a.mono href={ "/ui/tasks/" (link) } { (link) } } }
                    }
                }
                h2 { "Parameters" }
                (format::fields(&t.params))
            }
            section.panel {
                h2 { "Timeline" }
                (timeline(&t, &attempts, now))
            }
        }
        @if let Some(result) = &t.result {
            section.panel #result {
                h2 { @if t.status == TaskStatus::Succeeded { "Result" } @else { "Done before it stopped" } }
                p { strong { (outcome(&t)) } }
                (format::fields(&shown(result)))
            }
        }
        @if let Some(error) = &t.error {
            section.panel #error {
                h2 { "Last error" }
                (format::fields(error))
            }
        }
    };
    let refresh = (!t.status.is_finished()).then_some(2);
    let title = format!("Task {}", format::short_id(&t.id));
    Ok(page::live_document(&title, Some(&viewer), Nav::Tasks, refresh, body).into_response())
}

/// A result without what only the worker reads (where a continuation goes on from).
fn shown(result: &serde_json::Value) -> serde_json::Value {
    let mut result = result.clone();
    if let Some(map) = result.as_object_mut() {
        map.remove("cursor");
    }
    result
}

/// The tasks linked to this one, labelled.
fn links(t: &TaskRow, real_run: Option<Uuid>) -> Vec<(&'static str, Uuid)> {
    [
        ("retry of", t.retry_of),
        ("retried by", t.retried_by),
        ("dry run", t.dry_run_of),
        ("real run", real_run),
    ]
    .into_iter()
    .filter_map(|(label, id)| id.map(|id| (label, id)))
    .collect()
}

/// What a succeeded dry run found, and the way to run it for real.
fn dry_run_panel(viewer: &Viewer, t: &TaskRow, real_run: Option<Uuid>) -> Markup {
    let result = t.result.clone().unwrap_or_default();
    let samples = result
        .get("sample_ids")
        .or_else(|| result.get("sample_paths"))
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    let oldest = result
        .get("oldest_remaining_age_seconds")
        .and_then(|v| v.as_f64());
    html! {
        section.panel #dry-run {
            h2 { "What a real run would delete" }
            p.stat { (outcome(t)) }
            @if let Some(age) = oldest { p { "The oldest is " (format::span(age)) " old." } }
            @if !samples.is_empty() {
                p { "For example: " (format::value("samples", &serde_json::Value::Array(samples))) }
            }
            @if nothing(t) {
                p { "Nothing to delete: there is nothing to run for real." }
            } @else if let Some(roots) = several_roots(t) {
                p.alert.alert-warn {
                    "This dry run covered several roots (" (roots) "), and the worker that takes a real run may have other ones: "
                    a href={ "/ui/new?kind=cleanup_temp_files" } { "start a dry run of one root" } " to run it for real."
                }
            } @else if let Some(real) = real_run {
                p { "Run for real already: " a.mono href={ "/ui/tasks/" (real) } { (real) } }
            } @else if may_act(viewer, t.id, "run").is_ok() {
                form method="post" action={ "/ui/tasks/" (t.id) "/run" } {
                    (page::csrf(viewer))
                    p.hint {
                        "Same parameters and the same cutoff (" (exact(t.cutoff)) "), with the "
                        @if t.kind == shared::tasks::TaskKind::CleanupRuns { "statuses" } @else { "root" }
                        " this dry run took: nothing younger than the cutoff is deleted. It deletes what matches when it runs: what this dry run found unless it changed since, and anything that came to match meanwhile."
                        @if t.kind == shared::tasks::TaskKind::CleanupTempFiles {
                            " Temp roots belong to the worker that takes the task: with a root on each node, the real run may clean another node's copy of it."
                        }
                    }
                    button.danger type="submit" { "Run it for real" }
                }
            } @else {
                p.muted { "Your token's scope (" (viewer.principal.scope.as_str()) ") runs dry runs only." }
            }
        }
    }
}

/// The roots of a temp-file dry run that named none and covered several (it is not run
/// for real: `POST /tasks/{id}/run` refuses it).
fn several_roots(t: &TaskRow) -> Option<String> {
    if t.params.get("root").is_some_and(|r| !r.is_null()) {
        return None;
    }
    let roots: Vec<&str> = t
        .result
        .as_ref()?
        .get("roots")?
        .as_array()?
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    (roots.len() > 1).then(|| roots.join(", "))
}

/// Whether a dry run found nothing to delete.
fn nothing(t: &TaskRow) -> bool {
    let matched = |key: &str| {
        t.result
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(|v| v.as_u64())
    };
    matched("runs_matched")
        .or(matched("files_matched"))
        .unwrap_or(0)
        == 0
        && matched("dirs_matched").unwrap_or(0) == 0
}

/// The task's history, oldest first.
fn timeline(t: &TaskRow, attempts: &[console::AttemptRow], now: DateTime<Utc>) -> Markup {
    let mut events: Vec<(DateTime<Utc>, &'static str, String)> = Vec::new();
    let by = match (&t.schedule, &t.actor) {
        (Some(s), _) => format!(", fired by schedule {s}"),
        (None, Some(a)) => format!(" from {a}"),
        (None, None) => String::new(),
    };
    events.push((t.created_at, "", format!("Accepted{by}")));
    if let Some(at) = t.published_at {
        events.push((at, "", "Published to RabbitMQ".to_owned()));
    }
    if let Some(at) = t.started_at {
        events.push((at, "", "First attempt started".to_owned()));
    }
    for a in attempts {
        let class = a
            .error
            .get("class")
            .and_then(|c| c.as_str())
            .unwrap_or("error");
        let message = a
            .error
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        events.push((
            a.failed_at,
            "bad",
            format!(
                "Attempt {} failed on {} ({class}): {message}",
                a.attempt, a.worker_id
            ),
        ));
    }
    if let Some(at) = t.cancel_requested_at {
        let who = t.cancelled_by.as_deref().unwrap_or("someone");
        events.push((at, "", format!("Cancel asked for by {who}")));
    }
    if let Some(at) = t.next_attempt_at {
        events.push((at, "", format!("Attempt {} due", t.attempts + 1)));
    }
    if let Some(at) = t.finished_at {
        let turns = t
            .result
            .as_ref()
            .and_then(|r| r.get("turns"))
            .and_then(|v| v.as_u64());
        let worker = t
            .worker_id
            .as_deref()
            .map(|w| format!(" on {w}"))
            .unwrap_or_default();
        let turns = turns
            .filter(|n| *n > 1)
            .map(|n| format!(", in {n} turns"))
            .unwrap_or_default();
        let class = if t.status == TaskStatus::Succeeded {
            "good"
        } else {
            "bad"
        };
        events.push((
            at,
            class,
            format!(
                "{}{worker} (attempt {}{turns})",
                capitalized(t.status.as_str()),
                t.attempts
            ),
        ));
    } else if t.status == TaskStatus::Running {
        let worker = t.worker_id.as_deref().unwrap_or("a worker");
        events.push((
            now,
            "",
            format!("Attempt {} running on {worker}", t.attempts),
        ));
    }
    events.sort_by_key(|(at, ..)| *at);
    html! {
        ol.timeline {
            @for (at, class, what) in &events {
                li class=(class) { span.what { (what) } br; span.muted { (when(*at, now)) " · " (exact(*at)) } }
            }
        }
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
