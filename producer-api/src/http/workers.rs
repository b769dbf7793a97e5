//! The worker registry over HTTP: `GET /workers`, `POST /workers/prune`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::json::ApiJson;
use super::AppState;
use crate::ledger::workers::{self as registry, WorkerView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workers", get(list_workers))
        .route("/workers/prune", post(prune_workers))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkerFilter {
    /// Only workers in this status: up, stopped or lost.
    #[param(value_type = Option<WorkerState>)]
    pub status: Option<String>,
}

/// A worker's status: `up` (heartbeats arrive), `stopped` (it said so), `lost` (heartbeats
/// stopped).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Up,
    Stopped,
    Lost,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub items: Vec<WorkerView>,
}

/// Workers known from their heartbeats.
#[utoipa::path(get, path = "/workers", tag = "workers", params(WorkerFilter),
    responses((status = 200, body = WorkerList),
        (status = 400, description = "An unknown status, an unknown or repeated parameter", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub async fn list_workers(
    State(state): State<AppState>,
    query: Result<Query<WorkerFilter>, QueryRejection>,
) -> Result<Json<WorkerList>, ApiError> {
    let Query(filter) =
        query.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    if let Some(status) = &filter.status {
        if !["up", "stopped", "lost"].contains(&status.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown worker status `{status}`; expected up, stopped or lost"
            )));
        }
    }
    let items = registry::list(&state.pool, filter.status.as_deref()).await?;
    Ok(Json(WorkerList { items }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Say what would be removed without removing it.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PruneResponse {
    /// Ids of the stopped and lost workers removed (or that would be, in a dry run).
    pub pruned: Vec<String>,
    /// Workers kept because they are up.
    pub skipped: i64,
    pub dry_run: bool,
}

/// Remove stopped and lost workers from the registry.
#[utoipa::path(post, path = "/workers/prune", tag = "workers", request_body = PruneRequest,
    responses((status = 200, body = PruneResponse)),
    security(("bearer" = ["admin"])))]
pub async fn prune_workers(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PruneRequest>,
) -> Result<Json<PruneResponse>, ApiError> {
    let (pruned, skipped) = registry::prune(&state.pool, request.dry_run).await?;
    if !request.dry_run && !pruned.is_empty() {
        tracing::info!(count = pruned.len(), "pruned workers from the registry");
    }
    Ok(Json(PruneResponse {
        pruned,
        skipped,
        dry_run: request.dry_run,
    }))
}
