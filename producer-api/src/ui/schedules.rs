//! `/ui/schedules`: each schedule's cron in words, its next fire times in its own time
//! zone, its last outcome; pause, resume and trigger (schedules from `SCHEDULES_FILE` are
//! read-only here, as in the API).

use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::Utc;
use maud::html;

use super::format::when;
use super::page::{self, Nav, UiError};
use super::session::{CsrfForm, Viewer};
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::http::schedules::{patch_schedule, trigger_schedule, SchedulePatch};
use crate::http::AppState;
use crate::ledger::schedules;
use crate::schedules::calendar::Calendar;

/// How many fire times each schedule shows.
const NEXT: usize = 3;

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Result<Response, UiError> {
    let rows = schedules::list(&state.pool).await.map_err(ApiError::from)?;
    let now = Utc::now();
    let body = html! {
        h1 { "Schedules" }
        @if rows.is_empty() {
            p.muted { "No schedule. Create one with " code { "POST /schedules" } ", " code { "cleanupctl schedules" } " or " code { "SCHEDULES_FILE" } "." }
        }
        @for s in &rows {
            @let calendar = Calendar::parse(&s.cron, &s.timezone).ok();
            @let file = s.managed_by == "file";
            section.panel.schedule id={ "schedule-" (s.name) } {
                h2 {
                    (s.name) " "
                    (page::status_badge(if s.enabled { "up" } else { "paused" }))
                    @if !s.enabled { span.muted { " paused" } }
                    @if file { " " span.badge { "read-only: SCHEDULES_FILE" } }
                }
                dl.fields {
                    div { dt { "when" } dd {
                        code { (s.cron) } " · " (s.timezone)
                        @if let Some(c) = &calendar { br; (c.describe()) }
                    } }
                    div { dt { "runs" } dd { (s.kind) } }
                    div { dt { "next" } dd {
                        @match (&calendar, s.enabled) {
                            (Some(c), true) => {
                                ul.inline {
                                    @for at in c.next_times(now, NEXT) {
                                        li { (c.local(at)) " (" (when(at, now)) ")" }
                                    }
                                }
                            }
                            (_, false) => span.muted { "paused" },
                            (None, _) => span.muted { "never (the expression no longer parses)" },
                        }
                    } }
                    div { dt { "last" } dd {
                        @match (s.last_fired_at, s.last_task_id) {
                            (Some(at), Some(task)) => {
                                (when(at, now)) " · "
                                a.mono href={ "/ui/tasks/" (task) } { (super::format::short_id(&task)) }
                                " " (page::status_badge(s.last_task_status.as_deref().unwrap_or("pruned")))
                            }
                            _ => span.muted { "never fired" },
                        }
                        @if s.skipped_windows > 0 { br; span.muted { (s.skipped_windows) " window(s) skipped" } }
                    } }
                    div { dt { "parameters" } dd { (super::format::fields(&s.params)) } }
                }
                @if viewer.may(Method::PATCH, &format!("/schedules/{}", s.name)).is_ok() && !file {
                    div.actions {
                        @for (action, label) in [(if s.enabled { "pause" } else { "resume" }, if s.enabled { "Pause" } else { "Resume" }), ("trigger", "Trigger now")] {
                            form.inline method="post" action={ "/ui/schedules/" (s.name) "/" (action) } {
                                (page::csrf(&viewer))
                                button type="submit" { (label) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(
        page::live_document("Schedules", Some(&viewer), Nav::Schedules, Some(30), body)
            .into_response(),
    )
}

pub async fn act(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    viewer.check_csrf(&form.csrf)?;
    let principal = Extension(viewer.principal.clone());
    match action.as_str() {
        "pause" | "resume" => {
            viewer.may(Method::PATCH, &format!("/schedules/{name}"))?;
            let patch = SchedulePatch {
                enabled: action == "resume",
            };
            let axum::Json(_changed) =
                patch_schedule(State(state), principal, Path(name), ApiJson(patch)).await?;
            Ok(Redirect::to("/ui/schedules").into_response())
        }
        "trigger" => {
            viewer.may(Method::POST, &format!("/schedules/{name}/trigger"))?;
            let response = trigger_schedule(State(state), principal, Path(name)).await?;
            Ok(super::actions::to_created(&response))
        }
        other => Err(UiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("no schedule action `{other}` (pause, resume or trigger)"),
        )),
    }
}
