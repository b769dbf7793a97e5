//! `/ui/tasks`: tasks newest first, filtered by kind, status, actor and schedule, a page
//! at a time; the page refreshes itself while a task on it is still moving.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;
use shared::tasks::TaskKind;
use uuid::Uuid;

use super::format::{self, when};
use super::page::{self, Nav, UiError};
use super::session::Viewer;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::ledger::{self, ListQuery, TaskRow, TaskStatus};

const PAGE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    kind: Option<String>,
    status: Option<String>,
    actor: Option<String>,
    schedule: Option<String>,
    /// The last task of the previous page.
    before: Option<String>,
}

/// An empty form field is no filter.
fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(filters): Query<Filters>,
) -> Result<Response, UiError> {
    let text = |field: &Option<String>| -> Result<Option<String>, UiError> {
        match given(field) {
            Some(v) if v.contains('\0') => {
                Err(UiError::bad_request("a filter contains a NUL character"))
            }
            other => Ok(other.map(str::to_owned)),
        }
    };
    let query = ListQuery {
        kind: given(&filters.kind)
            .map(str::parse::<TaskKind>)
            .transpose()
            .map_err(UiError::bad_request)?,
        status: given(&filters.status)
            .map(str::parse::<TaskStatus>)
            .transpose()
            .map_err(UiError::bad_request)?,
        actor: text(&filters.actor)?,
        schedule: text(&filters.schedule)?,
        before: given(&filters.before)
            .map(|c| {
                Uuid::parse_str(c)
                    .map_err(|_| UiError::bad_request(format!("`{c}` is not a task id")))
            })
            .transpose()?,
        limit: PAGE,
    };
    let (rows, more) = ledger::list_tasks(&state.pool, &query)
        .await
        .map_err(ApiError::from)?;
    let moving = rows.iter().any(|r| !r.status.is_finished());
    let now = Utc::now();
    let filter_pairs: Vec<(&str, &str)> = [
        ("kind", given(&filters.kind)),
        ("status", given(&filters.status)),
        ("actor", given(&filters.actor)),
        ("schedule", given(&filters.schedule)),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect();
    let link = |before: Option<&str>| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(&filter_pairs);
        if let Some(before) = before {
            query.append_pair("before", before);
        }
        format!("/ui/tasks?{}", query.finish())
    };
    let first_page = link(None);
    let next_page = more
        .then(|| rows.last().map(|last| link(Some(&last.id.to_string()))))
        .flatten();

    let body = html! {
        h1 { "Tasks" }
        form.panel.filters method="get" action="/ui/tasks" role="search" {
            div {
                label for="f-kind" { "Kind" }
                select #f-kind name="kind" {
                    option value="" { "any" }
                    @for k in TaskKind::ALL {
                        option value=(k.as_str()) selected[given(&filters.kind) == Some(k.as_str())] { (k.as_str()) }
                    }
                }
            }
            div {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" { "any" }
                    @for s in TaskStatus::ALL {
                        option value=(s.as_str()) selected[given(&filters.status) == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            div {
                label for="f-actor" { "Actor (token name)" }
                input #f-actor type="text" name="actor" value=[given(&filters.actor)];
            }
            div {
                label for="f-schedule" { "Schedule" }
                input #f-schedule type="text" name="schedule" value=[given(&filters.schedule)];
            }
            div { button.primary type="submit" { "Filter" } " " a href="/ui/tasks" { "Clear" } }
        }
        @if rows.is_empty() {
            p.muted { "No task matches." }
        } @else {
            (task_table(&rows, now))
        }
        nav.pager aria-label="Pages" {
            @if query.before.is_some() { a href=(first_page) { "← Newest" } }
            @if let Some(next_page) = next_page { a href=(next_page) { "Older →" } }
        }
    };
    // The first page shows new tasks as they come; any page follows its moving tasks.
    let refresh = if moving {
        Some(3)
    } else {
        query.before.is_none().then_some(10)
    };
    Ok(page::live_document("Tasks", Some(&viewer), Nav::Tasks, refresh, body).into_response())
}

/// A table of tasks (one card per task at phone width).
pub fn task_table(rows: &[TaskRow], now: chrono::DateTime<Utc>) -> Markup {
    html! {
        div.table-wrap {
            table.cards #tasks {
                thead { tr {
                    th { "task" } th { "status" } th { "kind" } th { "created" } th { "by" } th { "outcome" }
                } }
                tbody {
                    @for t in rows {
                        tr {
                            td data-label="task" {
                                a.mono href={ "/ui/tasks/" (t.id) } { (format::short_id(&t.id)) }
                                @if is_dry_run(t) { " " span.badge.dry { "dry run" } }
                            }
                            td data-label="status" {
                                (page::status_badge(t.status.as_str()))
                                @if t.cancel_requested_at.is_some() && !t.status.is_finished() { " " span.muted { "cancelling" } }
                            }
                            td data-label="kind" { (t.kind.as_str()) }
                            td data-label="created" { (when(t.created_at, now)) }
                            td data-label="by" {
                                @if let Some(s) = &t.schedule { "schedule " (s) }
                                @else if let Some(a) = &t.actor { (a) }
                            }
                            td data-label="outcome" { (outcome(t)) }
                        }
                    }
                }
            }
        }
    }
}

pub fn is_dry_run(task: &TaskRow) -> bool {
    task.params
        .get("dry_run")
        .and_then(|d| d.as_bool())
        .unwrap_or(false)
}

/// One line saying what a task did (or would do, for a dry run), or why it failed.
pub fn outcome(task: &TaskRow) -> String {
    if let Some(result) = &task.result {
        let n = |key: &str| result.get(key).and_then(|v| v.as_u64());
        let dry = is_dry_run(task);
        return match task.kind {
            TaskKind::CleanupRuns if dry => {
                format!("would delete {} rows", n("runs_matched").unwrap_or(0))
            }
            TaskKind::CleanupRuns => format!(
                "{}{} rows deleted",
                // Partitions dropped without reading them are counted from statistics.
                if n("runs_estimated").unwrap_or(0) > 0 {
                    "about "
                } else {
                    ""
                },
                n("runs_deleted").unwrap_or(0)
            ),
            TaskKind::CleanupTempFiles if dry => format!(
                "would delete {} files ({})",
                n("files_matched").unwrap_or(0),
                format::bytes(n("bytes_matched").unwrap_or(0))
            ),
            TaskKind::CleanupTempFiles => format!(
                "{} files deleted ({})",
                n("files_deleted").unwrap_or(0),
                format::bytes(n("bytes_freed").unwrap_or(0))
            ),
        };
    }
    super::overview::error_text(task.error.as_ref())
}
