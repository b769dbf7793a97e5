//! API errors, rendered as `application/problem+json` (RFC 9457).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Every way a request can fail. Each variant names the status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or a query parameter or header is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 403: the token's scope does not allow this request.
    #[error("{0}")]
    Forbidden(String),
    /// 401: no bearer token, or one that is not configured.
    #[error("missing or invalid bearer token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// 404: nothing at this id.
    #[error("{0}")]
    NotFound(String),
    /// 413: the body exceeds the configured limit.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: the body is not declared as JSON.
    #[error("expected a body with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 422: well-formed JSON whose fields are missing, unknown, mistyped or out of range.
    #[error("{detail}")]
    InvalidParameters {
        detail: String,
        field: Option<String>,
    },
    /// 409: the request conflicts with what is stored (a name taken, a schedule managed
    /// by a file).
    #[error("{0}")]
    Conflict(String),
    /// 409: the task finished already, so it cannot be cancelled: its status.
    #[error(
        "task {task_id} is {status} already; only a queued, retrying or running task is cancelled"
    )]
    TaskFinished {
        task_id: Uuid,
        status: crate::ledger::TaskStatus,
    },
    /// 422: the idempotency key was already used for a different request.
    #[error("Idempotency-Key `{key}` was already used for task {task_id} with a different request; use a new key for a new request")]
    IdempotencyKeyReused { key: String, task_id: Uuid },
    /// 503: the ledger is unreachable; nothing was stored, the client should retry.
    #[error("the task ledger is unavailable; nothing was stored, retry later")]
    LedgerUnavailable(#[source] sqlx::Error),
    /// 503: the task may or may not be stored (the ledger connection failed under the
    /// statement storing it, and trying again could not tell). Sending it again may store
    /// it twice; an `Idempotency-Key` makes that safe.
    #[error("the task may or may not have been stored: {why}; look it up by its task_id (GET /tasks/{{task_id}}) before sending it again, or send enqueues with an Idempotency-Key, which makes sending one again safe")]
    OutcomeUnknown {
        why: &'static str,
        /// The id the task has if it was stored.
        task_id: Option<Uuid>,
    },
    /// 500: a bug or an unexpected failure; details are logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<crate::intake::IntakeError> for ApiError {
    fn from(error: crate::intake::IntakeError) -> Self {
        match error {
            crate::intake::IntakeError::Ledger(error) => error.into(),
            crate::intake::IntakeError::Unknown { why, task_id } => {
                ApiError::OutcomeUnknown { why, task_id }
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            ApiError::LedgerUnavailable(error)
        } else {
            ApiError::Internal(error.into())
        }
    }
}

/// Connection-level failures (the database is down, restarting or out of connections),
/// as opposed to a failing statement.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01..03: shutdown / cannot connect now;
            // 53300: too many connections; 57014: cancelled (an enqueue statement past its
            // `statement_timeout`: the ledger was too slow, and nothing was stored).
            code.starts_with("08") || code.starts_with("57P") || code == "53300" || code == "57014"
        }),
        _ => false,
    }
}

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (see the README's error table).
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it, for a person.
    pub detail: String,
    /// The request field at fault, for invalid parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The task an idempotency key already names, the task that finished already, or the
    /// id an enqueue's task has if it was stored (outcome unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    /// The task's status, when it finished already (a cancel answered 409).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_status: Option<crate::ledger::TaskStatus>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::TaskFinished { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidParameters { .. } | ApiError::IdempotencyKeyReused { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::LedgerUnavailable(_) | ApiError::OutcomeUnknown { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TaskFinished { .. } => "task-finished",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::InvalidParameters { .. } => "invalid-parameters",
            ApiError::IdempotencyKeyReused { .. } => "idempotency-key-reused",
            ApiError::LedgerUnavailable(_) => "ledger-unavailable",
            ApiError::OutcomeUnknown { .. } => "outcome-unknown",
            ApiError::Internal(_) => "internal-error",
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            problem_type: format!("urn:cleanup:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            field: match self {
                ApiError::InvalidParameters { field, .. } => field.clone(),
                _ => None,
            },
            task_id: match self {
                ApiError::IdempotencyKeyReused { task_id, .. }
                | ApiError::TaskFinished { task_id, .. } => Some(*task_id),
                ApiError::OutcomeUnknown { task_id, .. } => *task_id,
                _ => None,
            },
            task_status: match self {
                ApiError::TaskFinished { status, .. } => Some(*status),
                _ => None,
            },
        }
    }
}

/// Middleware: every error answer is a problem document, also those no handler wrote (a
/// method the route does not have, a request past the time limit, a path or query that
/// axum's extractors refused, a panic). Only bodies that are not JSON are replaced: the
/// handlers' problems and `/readyz`'s 503 pass unchanged.
pub async fn problem_bodies(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or("").trim();
            essence == "application/json" || essence.ends_with("+json")
        });
    // The console's own error pages are HTML written for a person.
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_json || is_html {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // axum's rejections say what was wrong in a short text; a panic's text is not shown.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && !status.is_server_error());
    let (slug, detail) = match status {
        StatusCode::BAD_REQUEST => ("bad-request", "the request is malformed"),
        StatusCode::NOT_FOUND => ("not-found", "nothing here"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "this route does not take this method; the Allow header lists those it takes",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "request-timeout",
            "the request took longer than the server allows; retry it",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "expected a body with `Content-Type: application/json`",
        ),
        StatusCode::INTERNAL_SERVER_ERROR => ("internal-error", "internal error"),
        _ => ("http-error", ""),
    };
    let problem = Problem {
        problem_type: format!("urn:cleanup:problem:{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: text.unwrap_or_else(|| detail.to_owned()),
        field: None,
        task_id: None,
        task_status: None,
    };
    let body = serde_json::to_vec(&problem).expect("problem serializes");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(error) => {
                tracing::error!(error = %format!("{error:#}"), "request failed")
            }
            ApiError::LedgerUnavailable(error) => {
                tracing::warn!(%error, "ledger unavailable")
            }
            ApiError::OutcomeUnknown { why, task_id } => {
                tracing::error!(why, ?task_id, "an enqueue's outcome is unknown")
            }
            _ => {}
        }
        let status = self.status();
        let body = serde_json::to_vec(&self.problem()).expect("problem serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        match self {
            ApiError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"cleanup\""),
                );
            }
            ApiError::LedgerUnavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}
