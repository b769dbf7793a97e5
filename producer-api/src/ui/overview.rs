//! `/ui`: the last day's tasks by kind and status, queue depths, workers up, the next
//! schedules to fire and the latest failures.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use maud::html;
use shared::tasks::TaskKind;

use super::format::{self, when};
use super::page::{self, Nav, UiError};
use super::session::Viewer;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::ledger::{self, console, TaskStatus};

const STATUSES: [TaskStatus; 7] = TaskStatus::ALL;

/// Signed out, the sign-in page (the extractor sends the browser there).
pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Result<Response, UiError> {
    let now = Utc::now();
    let counts = console::counts_since(&state.pool, now - Duration::hours(24))
        .await
        .map_err(ApiError::from)?;
    let mut table: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (kind, status, n) in counts {
        table.insert((kind, status), n);
    }
    let workers = ledger::workers::list(&state.pool, Some("up"))
        .await
        .map_err(ApiError::from)?;
    let mut schedules: Vec<_> = ledger::schedules::list(&state.pool)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|s| s.enabled && s.next_fire_at.is_some())
        .collect();
    schedules.sort_by_key(|s| s.next_fire_at);
    schedules.truncate(5);
    let failures = console::latest_failures(&state.pool, 5)
        .await
        .map_err(ApiError::from)?;
    let backlog = ledger::outbox::backlog(&state.pool)
        .await
        .map_err(ApiError::from)?;
    let topology = &state.topology;
    let mut queues = Vec::new();
    for kind in TaskKind::ALL {
        let depth = state.broker.queue_depth(&topology.task_queue(kind)).await;
        queues.push((kind.as_str().to_owned(), depth));
    }
    queues.push((
        "dead letters".to_owned(),
        state.broker.queue_depth(&topology.dead_queue()).await,
    ));
    let moving = table
        .iter()
        .any(|((_, s), n)| *n > 0 && ["queued", "running", "retrying"].contains(&s.as_str()));

    let body = html! {
        h1 { "Overview" }
        section.panel {
            h2 { "Tasks created in the last 24 hours" }
            div.table-wrap {
                table.cards {
                    thead { tr { th { "kind" } @for s in STATUSES { th.num { (s.as_str()) } } } }
                    tbody {
                        @for kind in TaskKind::ALL {
                            tr {
                                td data-label="kind" { (kind.as_str()) }
                                @for s in STATUSES {
                                    @let n = table.get(&(kind.as_str().to_owned(), s.as_str().to_owned())).copied().unwrap_or(0);
                                    td.num data-label=(s.as_str()) {
                                        @if n > 0 {
                                            a href={ "/ui/tasks?kind=" (kind.as_str()) "&status=" (s.as_str()) } { (n) }
                                        } @else { span.muted { "0" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        div.grid {
            section.panel {
                h2 { "Queues" }
                dl.fields {
                    @for (name, depth) in &queues {
                        div { dt { (name) } dd {
                            @match depth {
                                Some(n) => { span.stat { (n) } " ready" }
                                None => span.muted { "unknown (RabbitMQ not connected)" },
                            }
                        } }
                    }
                    div { dt { "outbox" } dd { span.stat { (backlog) } " not yet published" } }
                }
            }
            section.panel {
                h2 { "Workers" }
                p { span.stat { (workers.len()) } " up" }
                @if workers.is_empty() {
                    p.alert.alert-warn { "No worker is up: queued tasks wait until one starts." }
                }
                p { a href="/ui/workers" { "All workers" } }
            }
            section.panel {
                h2 { "Next schedules" }
                @if schedules.is_empty() {
                    p.muted { "No enabled schedule." }
                } @else {
                    ul {
                        @for s in &schedules {
                            li {
                                strong { (s.name) } " · "
                                @if let Some(at) = s.next_fire_at { (when(at, now)) }
                            }
                        }
                    }
                }
                p { a href="/ui/schedules" { "All schedules" } }
            }
        }
        section.panel {
            h2 { "Latest failures" }
            @if failures.is_empty() {
                p.muted { "No failed or dead task in the ledger." }
            } @else {
                div.table-wrap {
                    table.cards {
                        thead { tr { th { "task" } th { "status" } th { "kind" } th { "finished" } th { "error" } } }
                        tbody {
                            @for t in &failures {
                                tr {
                                    td data-label="task" { a.mono href={ "/ui/tasks/" (t.id) } { (format::short_id(&t.id)) } }
                                    td data-label="status" { (page::status_badge(t.status.as_str())) }
                                    td data-label="kind" { (t.kind.as_str()) }
                                    td data-label="finished" { @if let Some(at) = t.finished_at { (when(at, now)) } }
                                    td data-label="error" { (error_text(t.error.as_ref())) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let refresh = if moving { Some(5) } else { Some(30) };
    Ok(
        page::live_document("Overview", Some(&viewer), Nav::Overview, refresh, body)
            .into_response(),
    )
}

/// A stored error's message (`{"class", "message", "at"}`).
pub fn error_text(error: Option<&serde_json::Value>) -> String {
    error
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_owned()
}
