//! The `Idempotency-Key` header of the enqueue routes.

use axum::http::HeaderMap;

use super::error::ApiError;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The request's key, if it sent one: 1 to 255 visible ASCII characters, not one of the
/// keys schedules give their tasks.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        ))
    };
    let key = value.to_str().map_err(|_| bad())?.trim();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad());
    }
    // Schedules key their tasks `schedule:<name>:<window>`; a client may not take one.
    if key.starts_with(SCHEDULE_KEY_PREFIX) {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must not start with `{SCHEDULE_KEY_PREFIX}` (reserved for the tasks schedules fire)"
        )));
    }
    Ok(Some(key.to_owned()))
}

/// The prefix of the idempotency keys of scheduled tasks.
pub const SCHEDULE_KEY_PREFIX: &str = "schedule:";
