//! Bearer tokens with a name and a scope, compared in constant time.
//!
//! `API_TOKENS` entries are `name:scope:secret` or a bare `secret` (scope `admin`, named
//! `token-<n>` by its position). Scopes, each including the ones before it:
//! `read` (every GET), `dry-run` (read, and enqueue with `dry_run: true`), `enqueue`
//! (read, and enqueue), `admin` (everything: worker prune, schedules). The token's name is
//! the request's actor: recorded on what it creates and named in logs, never the secret.

use std::fmt;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    DryRun,
    Enqueue,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::DryRun, Scope::Enqueue, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::DryRun => "dry-run",
            Scope::Enqueue => "enqueue",
            Scope::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who makes a request: the token's name and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scope: Scope,
}

impl Principal {
    /// 403 unless this principal's scope includes `needed`.
    pub fn require(&self, needed: Scope, what: &str) -> Result<(), ApiError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token `{}` has scope `{}`; {what} needs scope `{needed}`",
                self.name, self.scope
            )))
        }
    }
}

/// One configured token.
#[derive(Clone)]
struct Token {
    digest: [u8; 32],
    principal: Principal,
}

/// The accepted tokens, kept as SHA-256 digests so that every comparison takes the same
/// time whatever the token's length or content.
#[derive(Clone)]
pub struct Tokens {
    tokens: Vec<Token>,
    disabled: bool,
}

/// A bad `API_TOKENS` entry, by position (the entry itself may hold a secret).
#[derive(Debug, thiserror::Error)]
#[error("API_TOKENS entry #{position}: {message}")]
pub struct TokenError {
    pub position: usize,
    pub message: String,
}

/// The shortest secret accepted.
pub const MIN_SECRET_CHARS: usize = 16;

impl Tokens {
    /// Parse `API_TOKENS` entries (`name:scope:secret`, or a bare secret: `admin`).
    pub fn parse(entries: &[String], disabled: bool) -> Result<Self, TokenError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let position = i + 1;
            let bad = |message: String| TokenError { position, message };
            // A bare secret has no `:`; anything with one is `name:scope:secret` and must
            // say a known scope (a typo must not fall back to an admin token). Nothing of
            // the entry is echoed: it may hold the secret.
            let (name, scope, secret) =
                if entry.contains(':') {
                    let parts: Vec<&str> = entry.splitn(3, ':').collect();
                    match parts.as_slice() {
                        [name, scope, secret] => {
                            match Scope::parse(scope) {
                                Some(scope) => (name.to_string(), scope, *secret),
                                None => return Err(bad(
                                    "its scope (between the first and second `:`) is not one of \
                                 read, dry-run, enqueue, admin"
                                        .to_owned(),
                                )),
                            }
                        }
                        _ => return Err(bad(
                            "an entry with `:` is `name:scope:secret`; a bare secret has no `:`"
                                .to_owned(),
                        )),
                    }
                } else {
                    (format!("token-{position}"), Scope::Admin, entry.as_str())
                };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(bad(
                    "a token's name is letters, digits, `.`, `_` or `-`".to_owned()
                ));
            }
            if secret.chars().count() < MIN_SECRET_CHARS {
                return Err(bad(format!(
                    "the secret is too short ({} characters): use at least {MIN_SECRET_CHARS}",
                    secret.chars().count()
                )));
            }
            if tokens.iter().any(|t| t.principal.name == name) {
                return Err(bad(format!("the name `{name}` is used twice")));
            }
            let digest = digest(secret.as_bytes());
            if let Some(other) = tokens.iter().position(|t| t.digest == digest) {
                return Err(bad(format!(
                    "the same secret as entry #{} (one secret, one scope)",
                    other + 1
                )));
            }
            tokens.push(Token {
                digest,
                principal: Principal { name, scope },
            });
        }
        Ok(Self { tokens, disabled })
    }

    /// The principal `presented` belongs to. Compares against every token.
    pub fn identify(&self, presented: &str) -> Option<Principal> {
        let presented = digest(presented.as_bytes());
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&presented)) {
                found = Some(token.principal.clone());
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether auth is off (`API_AUTH=disabled`): every request is `anonymous`, `admin`.
    pub fn disabled(&self) -> bool {
        self.disabled
    }

    /// The principal `presented` belongs to, and the MAC that binds its secret to the
    /// console session `session_id` (what the ledger keeps instead of the token).
    pub fn identify_for_session(
        &self,
        presented: &str,
        session_id: &str,
    ) -> Option<(Principal, [u8; 32])> {
        let principal = self.identify(presented)?;
        let mac = session_mac(&digest(presented.as_bytes()), session_id);
        Some((principal, mac))
    }

    /// The principal of a console session made with the token called `name`, if that
    /// token is still configured with the same secret (`mac` checks it).
    pub fn for_session(&self, name: &str, session_id: &str, mac: &[u8]) -> Option<Principal> {
        let token = self.tokens.iter().find(|t| t.principal.name == name)?;
        let expected = session_mac(&token.digest, session_id);
        bool::from(expected.as_slice().ct_eq(mac)).then(|| token.principal.clone())
    }
}

/// The principal of every request while auth is disabled.
pub fn anonymous() -> Principal {
    Principal {
        name: "anonymous".to_owned(),
        scope: Scope::Admin,
    }
}

/// HMAC-SHA256 of a console session id, keyed with a token's digest.
fn session_mac(token_digest: &[u8; 32], session_id: &str) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(token_digest).expect("any key length");
    mac.update(session_id.as_bytes());
    mac.finalize().into_bytes().into()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The scope a route needs before its handler looks at the body: every GET `read`; an
/// enqueue at least `dry-run` (its handler asks `enqueue` for a real run); running a dry
/// run for real `enqueue`; anything else `admin`.
pub(crate) fn needed(method: &Method, path: &str) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else if method == Method::POST
        && matches!(
            path,
            "/maintenance/cleanup-runs" | "/maintenance/cleanup-temp-files"
        )
    {
        Scope::DryRun
    } else if method == Method::POST
        && path
            .strip_prefix("/tasks/")
            .and_then(|rest| rest.strip_suffix("/run"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    {
        Scope::Enqueue
    } else {
        Scope::Admin
    }
}

/// Middleware: 401 problem unless the request carries one accepted bearer token, 403
/// unless its scope allows the route; the principal goes into the request's extensions.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = if state.tokens.disabled {
        anonymous()
    } else {
        let mut headers = request.headers().get_all(AUTHORIZATION).iter();
        let first = headers.next();
        if headers.next().is_some() {
            return Err(ApiError::BadRequest(
                "send one Authorization header, not several".to_owned(),
            ));
        }
        let presented = first.and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        match presented.and_then(|token| state.tokens.identify(token)) {
            Some(principal) => principal,
            None => return Err(ApiError::Unauthorized),
        }
    };
    let needed = needed(request.method(), request.uri().path());
    if principal.scope < needed && needed == Scope::DryRun {
        // The body decides which: say both.
        return Err(ApiError::Forbidden(format!(
            "token `{}` has scope `{}`; {} {} needs scope `dry-run` for a dry run, \
             `enqueue` for a real cleanup",
            principal.name,
            principal.scope,
            request.method(),
            request.uri().path()
        )));
    }
    principal.require(
        needed,
        &format!("{} {}", request.method(), request.uri().path()),
    )?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_a_name_and_a_scope_and_bare_secrets_are_admin() {
        let tokens = Tokens::parse(
            &[
                "first-token-0123456".into(),
                "grafana:read:second-token-01234".into(),
                "ci:dry-run:third:token:with:colons".into(),
            ],
            false,
        )
        .unwrap();
        let who = |t: &str| tokens.identify(t).map(|p| (p.name, p.scope));
        assert_eq!(
            who("first-token-0123456"),
            Some(("token-1".into(), Scope::Admin))
        );
        assert_eq!(
            who("second-token-01234"),
            Some(("grafana".into(), Scope::Read))
        );
        assert_eq!(
            who("third:token:with:colons"),
            Some(("ci".into(), Scope::DryRun))
        );
        assert_eq!(
            who("grafana:read:second-token-01234"),
            None,
            "the secret alone"
        );
        assert_eq!(who("first-token-012345"), None);
        assert_eq!(who(""), None);
    }

    #[test]
    fn bad_entries_are_named_by_position_without_their_secret() {
        for (entry, says) in [
            ("ops:superuser:secret-secret-secret", "is not one of read"),
            ("ci:dry_run:secret-secret-secret", "is not one of read"),
            ("grafana:Read:secret-secret-secret", "is not one of read"),
            ("ci:secret-secret-secret", "a bare secret has no `:`"),
            (
                "ops:admin:fine-token-0123456789",
                "the same secret as entry #1",
            ),
            ("ops:admin:short", "too short"),
            ("o p:admin:secret-secret-secret", "a token's name"),
        ] {
            let error = Tokens::parse(&["fine-token-0123456789".into(), entry.into()], false)
                .err()
                .unwrap()
                .to_string();
            assert!(error.starts_with("API_TOKENS entry #2: "), "{error}");
            assert!(error.contains(says), "{error}");
            assert!(!error.contains("secret-secret"), "{error}");
            assert!(
                !error.contains("dry_run") && !error.contains("Read"),
                "{error}"
            );
        }
        let twice = Tokens::parse(
            &[
                "a:read:secret-secret-secret-1".into(),
                "a:admin:secret-secret-secret-2".into(),
            ],
            false,
        );
        assert!(twice.err().unwrap().to_string().contains("used twice"));
    }

    #[test]
    fn a_console_session_holds_while_its_token_keeps_its_name_and_secret() {
        let before = Tokens::parse(&["ops:admin:first-secret-0123456789".into()], false).unwrap();
        let (principal, mac) = before
            .identify_for_session("first-secret-0123456789", "session-a")
            .unwrap();
        assert_eq!(principal.name, "ops");
        assert_eq!(
            before.for_session("ops", "session-a", &mac),
            Some(principal)
        );
        // Another session's id, another name, a forged MAC: nothing.
        assert_eq!(before.for_session("ops", "session-b", &mac), None);
        assert_eq!(before.for_session("other", "session-a", &mac), None);
        assert_eq!(before.for_session("ops", "session-a", &[0; 32]), None);
        // The same name with a new secret, or the token gone: the session is over.
        let rotated = Tokens::parse(&["ops:admin:second-secret-0123456789".into()], false).unwrap();
        assert_eq!(rotated.for_session("ops", "session-a", &mac), None);
        let gone = Tokens::parse(&["ci:read:third-secret-0123456789".into()], false).unwrap();
        assert_eq!(gone.for_session("ops", "session-a", &mac), None);
    }

    #[test]
    fn scopes_include_the_ones_before() {
        let ci = Principal {
            name: "ci".into(),
            scope: Scope::DryRun,
        };
        assert!(ci.require(Scope::Read, "x").is_ok());
        assert!(ci.require(Scope::DryRun, "x").is_ok());
        let refused = ci.require(Scope::Admin, "POST /workers/prune").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "token `ci` has scope `dry-run`; POST /workers/prune needs scope `admin`"
        );
    }
}
