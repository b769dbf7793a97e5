//! A JSON body extractor whose rejections are problem documents with a useful `detail`.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

/// Like `axum::Json`, but: a body not declared as JSON is a 415, an oversized one a 413,
/// malformed JSON a 400, and anything but an object, wrong types, unknown or missing
/// fields a 422 naming the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = body(req, state).await?;
        parse(&bytes).map(ApiJson)
    }
}

/// Like [`ApiJson`] for a route whose body may be left out: no body (or only whitespace),
/// whatever its content type, is `None`; a body is checked exactly as `ApiJson` checks it.
pub struct OptionalApiJson<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let json = is_json(&req);
        let bytes = body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalApiJson(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse(&bytes).map(|value| OptionalApiJson(Some(value)))
    }
}

async fn body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(state.max_body_bytes)
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })
}

fn parse<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    // serde also accepts a struct written as an array; a request must be an object.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[') | Some(b'"') | Some(b'0'..=b'9') | Some(b'-') | Some(b't') | Some(b'f')
        | Some(b'n')
            if serde_json::from_slice::<serde_json::Value>(bytes).is_ok() =>
        {
            return Err(ApiError::InvalidParameters {
                detail: "invalid parameters: the body must be a JSON object".into(),
                field: None,
            })
        }
        _ => {}
    }
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(value)) => Ok(value),
        Err(JsonRejection::JsonDataError(e)) => Err(ApiError::InvalidParameters {
            detail: format!("invalid parameters: {}", innermost(&e)),
            field: None,
        }),
        Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(format!(
            "malformed JSON body: {}",
            innermost(&e)
        ))),
        Err(other) => Err(ApiError::BadRequest(other.body_text())),
    }
}

/// `application/json` or any `application/*+json`.
fn is_json(req: &Request) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The serde message with its JSON path (axum wraps serde_path_to_error).
fn innermost(error: &dyn std::error::Error) -> String {
    let mut current: &dyn std::error::Error = error;
    while let Some(source) = current.source() {
        // serde_path_to_error's Display is "path: message"; its source is the bare message.
        if source.source().is_none() {
            return current.to_string();
        }
        current = source;
    }
    current.to_string()
}
