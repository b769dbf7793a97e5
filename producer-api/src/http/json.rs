//! A JSON body extractor whose rejections are problem documents with a useful `detail`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

/// Like `axum::Json`, but malformed JSON is a 400, wrong types and unknown or missing
/// fields are a 422 naming the field, and an oversized body is a 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(rejection_to_error(rejection, state.max_body_bytes)),
        }
    }
}

fn rejection_to_error(rejection: JsonRejection, limit: usize) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::InvalidParameters {
            detail: format!("invalid parameters: {}", source_text(&e)),
            field: None,
        },
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("malformed JSON body: {}", source_text(&e)))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(limit)
        }
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// The innermost serde message (with the JSON path when axum recorded one).
fn source_text(error: &dyn std::error::Error) -> String {
    let mut current: &dyn std::error::Error = error;
    while let Some(source) = current.source() {
        current = source;
    }
    let inner = current.to_string();
    // axum wraps serde_path_to_error, whose Display is "path: message".
    let mut outer = error.source().map(|s| s.to_string()).unwrap_or_default();
    if outer.is_empty() || !outer.ends_with(&inner) {
        outer = inner;
    }
    outer
}
