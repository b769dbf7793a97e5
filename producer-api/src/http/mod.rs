//! The HTTP API: one state, route modules merged here, auth on everything but probes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use shared::tasks::ValidationRules;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::metrics::Metrics;
use crate::relay::BrokerHealth;

pub mod auth;
pub mod cancel;
pub mod copies;
pub mod error;
pub mod health;
mod idempotency;
pub mod json;
pub mod openapi;
pub mod schedules;
pub mod tasks;
pub mod workers;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Stores new tasks, several per statement under load.
    pub intake: crate::intake::Intake,
    pub rules: Arc<ValidationRules>,
    pub max_attempts: u32,
    pub max_body_bytes: usize,
    pub tokens: auth::Tokens,
    pub metrics: Arc<Metrics>,
    pub broker: BrokerHealth,
    pub relay_enabled: bool,
    /// Wakes this process's relay after a handler wrote to the outbox.
    pub outbox_written: Arc<tokio::sync::Notify>,
    pub topology: shared::topology::Topology,
}

/// Requests that take longer are answered 408; the body and the ledger are bounded well below.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(state: AppState) -> Router {
    let protected = tasks::router()
        .merge(workers::router())
        .merge(schedules::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(protected)
        .merge(health::router())
        .merge(openapi::router(&state))
        .merge(crate::ui::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::new())
        // Outermost: whatever answered an error, it goes out as a problem document.
        .layer(middleware::map_response(error::problem_bodies))
        .with_state(state)
}

/// A JSON response with a `Location` header.
pub(crate) fn located(
    status: axum::http::StatusCode,
    location: &str,
    body: impl serde::Serialize,
) -> axum::response::Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::LOCATION,
        axum::http::HeaderValue::from_str(location).expect("a path is a valid header"),
    );
    response
}

async fn not_found(request: Request) -> impl IntoResponse {
    error::ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_duration
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    response
}
