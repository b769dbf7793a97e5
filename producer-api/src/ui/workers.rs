//! `/ui/workers`: the worker registry, and pruning the departed ones after a preview.

use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::html;

use super::format::when;
use super::page::{self, FormFields, Nav, UiError};
use super::session::Viewer;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::http::workers::{prune_workers, PruneRequest};
use crate::http::AppState;
use crate::ledger::workers as registry;

#[derive(Debug, serde::Deserialize)]
pub struct Pruned {
    pruned: Option<usize>,
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    axum::extract::Query(pruned): axum::extract::Query<Pruned>,
) -> Result<Response, UiError> {
    let workers = registry::list(&state.pool, None)
        .await
        .map_err(ApiError::from)?;
    let now = Utc::now();
    let departed = workers.iter().filter(|w| w.status != "up").count();
    let body = html! {
        h1 { "Workers" }
        @if let Some(n) = pruned.pruned { (page::notice(false, &format!("Pruned {n} worker(s) from the registry."))) }
        @if workers.is_empty() {
            p.muted { "No worker has reported yet." }
        } @else {
            div.table-wrap {
                table.cards #workers {
                    thead { tr {
                        th { "worker" } th { "status" } th { "host" } th { "version" } th { "kinds" }
                        th { "last seen" } th.num { "in flight" } th.num { "processed" }
                    } }
                    tbody {
                        @for w in &workers {
                            tr {
                                td.mono data-label="worker" { (w.worker_id) }
                                td data-label="status" { (page::status_badge(&w.status)) }
                                td data-label="host" { (w.host) }
                                td data-label="version" { (w.version) }
                                td data-label="kinds" { (w.kinds.join(", ")) }
                                td data-label="last seen" { (when(w.last_seen_at, now)) }
                                td.num data-label="in flight" { (w.in_flight) }
                                td.num data-label="processed" { (w.processed) }
                            }
                        }
                    }
                }
            }
        }
        @if allowed(&viewer).is_ok() && departed > 0 {
            p { a.button href="/ui/workers/prune" { "Prune stopped and lost workers…" } }
        }
    };
    Ok(page::live_document("Workers", Some(&viewer), Nav::Workers, Some(10), body).into_response())
}

fn allowed(viewer: &Viewer) -> Result<(), UiError> {
    viewer.may(Method::POST, "/workers/prune")
}

/// What a prune would remove now, and the button that does it.
pub async fn preview(State(state): State<AppState>, viewer: Viewer) -> Result<Response, UiError> {
    allowed(&viewer)?;
    let axum::Json(would) =
        prune_workers(State(state), ApiJson(PruneRequest { dry_run: true })).await?;
    let body = html! {
        h1 { "Prune workers" }
        section.panel {
            @if would.pruned.is_empty() {
                p { "No stopped or lost worker: nothing to prune." }
            } @else {
                p { "These workers stopped or were lost; pruning removes them from the registry (a worker that comes back registers again):" }
                ul #prune-preview { @for id in &would.pruned { li.mono { (id) } } }
                p.muted { (would.skipped) " worker(s) up are kept." }
                form method="post" action="/ui/workers/prune" {
                    (page::csrf(&viewer))
                    @for id in &would.pruned { input type="hidden" name="worker" value=(id); }
                    div.actions {
                        button.danger type="submit" { "Prune " (would.pruned.len()) " worker(s)" }
                        a href="/ui/workers" { "Back" }
                    }
                }
            }
        }
    };
    Ok(page::document("Prune workers", Some(&viewer), Nav::Workers, body).into_response())
}

/// Prune what the preview listed, and only that (the form carries the ids): a worker that
/// came back up meanwhile, or was lost after the preview, stays.
pub async fn prune(
    State(state): State<AppState>,
    viewer: Viewer,
    body: axum::body::Bytes,
) -> Result<Response, UiError> {
    let form = FormFields::parse(&body);
    viewer.check_csrf(form.one("csrf").unwrap_or(""))?;
    allowed(&viewer)?;
    let listed: Vec<String> = form
        .all("worker")
        .into_iter()
        .filter(|id| !id.contains('\0'))
        .map(str::to_owned)
        .collect();
    let removed = registry::prune_listed(&state.pool, &listed)
        .await
        .map_err(ApiError::from)?;
    if !removed.is_empty() {
        tracing::info!(count = removed.len(), actor = %viewer.principal.name, "pruned workers from the registry");
    }
    Ok(Redirect::to(&format!("/ui/workers?pruned={}", removed.len())).into_response())
}
