//! The worker's metrics and probe server: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use lapin::ConnectionStatus;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::process::WorkerContext;

#[derive(Clone)]
pub struct ProbeState {
    pub ctx: Arc<WorkerContext>,
    /// The broker connection's live status (None while reconnecting).
    pub connected: watch::Receiver<Option<ConnectionStatus>>,
    pub runs_pool: Option<PgPool>,
}

pub fn router(state: ProbeState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when consuming from RabbitMQ and, for cleanup_runs, the runs database answers.
async fn readyz(State(state): State<ProbeState>) -> impl IntoResponse {
    let broker = state
        .connected
        .borrow()
        .as_ref()
        .is_some_and(|status| status.connected());
    let database = match &state.runs_pool {
        Some(pool) => Some(
            tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(pool),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
        ),
        None => None,
    };
    let ready = broker && database.unwrap_or(true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Not a reason to be unready: the worker holds its tasks until the alarm lifts.
    let blocked = state.ctx.blocked.lock().expect("blocked lock").clone();
    (
        status,
        Json(json!({"ready": ready, "broker": broker, "database": database, "blocked": blocked})),
    )
}

async fn metrics(State(state): State<ProbeState>) -> impl IntoResponse {
    let blocked = state.ctx.blocked.lock().expect("blocked lock").is_some();
    state.ctx.metrics.amqp_blocked.set(i64::from(blocked));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.ctx.metrics.render(),
    )
}
