//! Bearer-token authentication, compared in constant time.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// The accepted tokens, kept as SHA-256 digests so that every comparison takes the same
/// time whatever the token's length or content.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
    disabled: bool,
}

impl Tokens {
    pub fn new(tokens: &[String], disabled: bool) -> Self {
        Self {
            digests: tokens.iter().map(|t| digest(t.as_bytes())).collect(),
            disabled,
        }
    }

    /// True when `presented` is one of the tokens. Compares against all of them.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented.as_bytes());
        let mut found = subtle::Choice::from(0);
        for token in &self.digests {
            found |= token.ct_eq(&presented);
        }
        found.into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Middleware: 401 problem unless the request carries an accepted bearer token.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.tokens.disabled {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        Some(token) if state.tokens.accepts(token) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_are_accepted() {
        let tokens = Tokens::new(
            &["first-token-0123456".into(), "second-token-01234".into()],
            false,
        );
        assert!(tokens.accepts("first-token-0123456"));
        assert!(tokens.accepts("second-token-01234"));
        assert!(!tokens.accepts("first-token-012345"));
        assert!(!tokens.accepts(""));
    }
}
