//! Probes and metrics: `/healthz`, `/readyz`, `/metrics` (no authentication).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::ledger;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub database: bool,
    /// Null when this replica runs no relay and so needs no broker. False while the relay
    /// has no connection, or while RabbitMQ blocks it from publishing.
    pub broker: Option<bool>,
    /// Why the replica is not ready; absent when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Ready when the ledger answers and (if this replica relays) RabbitMQ is connected and
/// does not block publishing (`connection.blocked`: a memory or disk alarm).
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let mut reasons = Vec::new();
    if !database {
        reasons.push("the ledger database does not answer".to_owned());
    }
    let broker = state.relay_enabled.then(|| {
        if !state.broker.is_connected() {
            reasons.push("the relay has no RabbitMQ connection".to_owned());
            false
        } else if let Some(reason) = state.broker.blocked() {
            reasons.push(format!(
                "RabbitMQ blocks publishing (connection.blocked: {reason}); tasks wait in the outbox"
            ));
            false
        } else {
            true
        }
    });
    let ready = database && broker.unwrap_or(true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            database,
            broker,
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        }),
    )
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(Ok(backlog)) =
        tokio::time::timeout(PROBE_TIMEOUT, ledger::outbox::backlog(&state.pool)).await
    {
        state.metrics.outbox_backlog.set(backlog);
    }
    if let Ok(Ok(rows)) =
        tokio::time::timeout(PROBE_TIMEOUT, ledger::last_successes(&state.pool)).await
    {
        for (kind, at) in rows {
            state
                .metrics
                .ledger_last_success
                .with_label_values(&[&kind])
                .set(at.timestamp_millis() as f64 / 1000.0);
        }
    }
    if let Ok(Ok(rows)) =
        tokio::time::timeout(PROBE_TIMEOUT, ledger::task_counts(&state.pool)).await
    {
        state.metrics.ledger_tasks.reset();
        for (kind, status, count) in rows {
            state
                .metrics
                .ledger_tasks
                .with_label_values(&[&kind, &status])
                .set(count);
        }
    }
    let schedules =
        tokio::time::timeout(PROBE_TIMEOUT, crate::ledger::schedules::health(&state.pool)).await;
    {
        let m = &state.metrics;
        // Deleted schedules disappear from the series; and when the ledger does not
        // answer, none is shown rather than stale ones (an old next window would look
        // overdue).
        m.schedule_next_fire.reset();
        m.schedule_last_fire.reset();
        m.schedule_last_outcome.reset();
        m.schedule_consecutive_failures.reset();
        let rows = match schedules {
            Ok(Ok(rows)) => rows,
            _ => Vec::new(),
        };
        for row in rows {
            let name = row.name.as_str();
            if let Some(at) = row.next_fire_at {
                m.schedule_next_fire
                    .with_label_values(&[name])
                    .set(at.timestamp_millis() as f64 / 1000.0);
            }
            if let Some(at) = row.last_fired_at {
                m.schedule_last_fire
                    .with_label_values(&[name])
                    .set(at.timestamp_millis() as f64 / 1000.0);
            }
            if let Some(status) = &row.last_task_status {
                m.schedule_last_outcome
                    .with_label_values(&[name, status])
                    .set(1);
            }
            m.schedule_consecutive_failures
                .with_label_values(&[name])
                .set(row.consecutive_failures);
        }
    }
    let topology = &state.topology;
    let mut queues: Vec<(String, String)> = shared::tasks::TaskKind::ALL
        .iter()
        .map(|k| (k.as_str().to_owned(), topology.task_queue(*k)))
        .collect();
    queues.push(("dead".to_owned(), topology.dead_queue()));
    for (label, queue) in queues {
        if let Some(depth) = state.broker.queue_depth(&queue).await {
            state
                .metrics
                .queue_messages
                .with_label_values(&[&label])
                .set(i64::from(depth));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
