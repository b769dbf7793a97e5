//! Signing in to the console: an API token is exchanged for a session, held by the browser
//! in an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui`. The ledger keeps the
//! SHA-256 of the session id (a stolen database dump opens no session), the SHA-256 of the
//! token (its scope is looked up in `API_TOKENS` on every request: a token removed or
//! narrowed there takes effect at once) and the session's CSRF token, which every
//! state-changing form carries and every POST must present. POSTs from another origin are
//! refused before that (`Sec-Fetch-Site`, `Origin`).

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::page::{self, UiError};
use crate::http::auth::{self, Principal};
use crate::http::AppState;
use crate::ledger::console;

/// The session cookie.
pub const COOKIE: &str = "cleanup_console";
/// How long a session lasts; signing in again makes a new one.
pub const LIFETIME: chrono::Duration = chrono::Duration::hours(12);

/// Who is looking at a page: the token's principal, and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: Principal,
    pub csrf: String,
}

impl Viewer {
    /// The form's CSRF token must be this session's (compared in constant time).
    pub fn check_csrf(&self, presented: &str) -> Result<(), UiError> {
        if bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes())) {
            Ok(())
        } else {
            Err(UiError::forbidden(
                "this form is stale or was not sent by the console (its CSRF token does not \
                 match your session); reload the page and try again",
            ))
        }
    }

    /// 403 page unless the viewer may call this API route: the scope it needs is the API's
    /// own rule ([`auth::needed`]).
    pub fn may(&self, method: Method, api_path: &str) -> Result<(), UiError> {
        let needed = auth::needed(&method, api_path);
        self.principal
            .require(needed, &format!("{method} {api_path}"))
            .map_err(UiError::from)
    }
}

/// Not signed in: a page is sent to the sign-in page, which comes back to it.
#[derive(Debug)]
pub struct SignInFirst(String);

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        Redirect::to(&format!(
            "/ui/sign-in?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("next", &self.0)
                .finish()
        ))
        .into_response()
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let back = if parts.method == Method::GET {
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default()
        } else {
            "/ui".to_owned()
        };
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(cookie) = jar.get(COOKIE) else {
            return Err(SignInFirst(back).into_response());
        };
        let unavailable =
            |e: sqlx::Error| UiError::from(crate::http::error::ApiError::from(e)).into_response();
        let id_digest = sha256(cookie.value());
        let found = console::find_session(&state.pool, &id_digest)
            .await
            .map_err(unavailable)?;
        let Some(session) = found else {
            return Err(SignInFirst(back).into_response());
        };
        let principal = match (&session.token_name, &session.token_mac) {
            (None, _) if state.tokens.disabled() => Some(auth::anonymous()),
            (Some(name), Some(mac)) => state.tokens.for_session(name, cookie.value(), mac),
            _ => None,
        };
        let Some(principal) = principal else {
            // Its token was removed, or given a new secret (or auth was switched on): the
            // session is over for good, even if the token comes back.
            console::end_session(&state.pool, &id_digest)
                .await
                .map_err(unavailable)?;
            return Err(SignInFirst(back).into_response());
        };
        Ok(Viewer {
            principal,
            csrf: session.csrf,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct Next_ {
    next: Option<String>,
}

/// Where to go after signing in: a console page, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if (n == "/ui" || n.starts_with("/ui/") || n.starts_with("/ui?"))
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/ui".to_owned(),
    }
}

pub async fn sign_in_page(State(state): State<AppState>, Query(query): Query<Next_>) -> Response {
    sign_in_form(
        &state,
        &safe_next(query.next.as_deref()),
        None,
        StatusCode::OK,
    )
}

fn sign_in_form(state: &AppState, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let disabled = state.tokens.disabled();
    let body = html! {
        section.sign-in {
            h1 { "Sign in" }
            @if let Some(error) = error {
                p.alert.alert-error role="alert" { (error) }
            }
            form method="post" action="/ui/sign-in" {
                input type="hidden" name="next" value=(next);
                @if disabled {
                    p { "Authentication is disabled on this API (" code { "--auth-disabled" } "): you act as "
                        strong { "anonymous" } " with every permission." }
                } @else {
                    label for="token" { "API token" }
                    input #token type="password" name="token" required autocomplete="current-password"
                        autofocus spellcheck="false";
                    p.hint { "A token from " code { "API_TOKENS" } ". What you can see and do follows its scope (read, dry-run, enqueue, admin). The token itself is not stored: the browser keeps a session cookie for "
                        (LIFETIME.num_hours()) " hours." }
                }
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    (
        status,
        page::document("Sign in", None, page::Nav::None, body),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<SignInForm>,
) -> Result<Response, UiError> {
    let next = safe_next(form.next.as_deref());
    let id = random_hex();
    let token = if state.tokens.disabled() {
        None
    } else {
        match state.tokens.identify_for_session(form.token.trim(), &id) {
            Some((principal, mac)) => {
                tracing::info!(actor = %principal.name, "console sign-in");
                Some((principal.name, mac))
            }
            None => {
                tracing::info!("console sign-in refused: unknown token");
                return Ok(sign_in_form(
                    &state,
                    &next,
                    Some("That token is not accepted by this API."),
                    StatusCode::UNAUTHORIZED,
                ));
            }
        }
    };
    // A new session never continues an old one (whoever set that cookie).
    if let Some(old) = jar.get(COOKIE) {
        console::end_session(&state.pool, &sha256(old.value()))
            .await
            .map_err(crate::http::error::ApiError::from)?;
    }
    let csrf = random_hex();
    console::create_session(
        &state.pool,
        &sha256(&id),
        token
            .as_ref()
            .map(|(name, mac)| (name.as_str(), mac.as_slice())),
        &csrf,
        LIFETIME,
    )
    .await
    .map_err(crate::http::error::ApiError::from)?;
    let cookie = Cookie::build((COOKIE, id))
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(is_https(&headers))
        .max_age(cookie::time::Duration::seconds(LIFETIME.num_seconds()))
        .build();
    Ok((CookieJar::new().add(cookie), Redirect::to(&next)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn sign_out(
    State(state): State<AppState>,
    viewer: Viewer,
    jar: CookieJar,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    viewer.check_csrf(&form.csrf)?;
    if let Some(cookie) = jar.get(COOKIE) {
        console::end_session(&state.pool, &sha256(cookie.value()))
            .await
            .map_err(crate::http::error::ApiError::from)?;
    }
    let gone = Cookie::build((COOKIE, "")).path("/ui").build();
    Ok((jar.remove(gone), Redirect::to("/ui/sign-in")).into_response())
}

/// Middleware: a request that changes something must come from the console's own pages.
/// Browsers say where a request comes from (`Sec-Fetch-Site`, `Origin`); another site's
/// form is refused here, before the CSRF token is even read.
pub async fn same_origin(request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let headers = request.headers();
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let cross_site = matches!(site, Some("cross-site" | "same-site"));
    // This server's name as the client addressed it (HTTP/2 carries it in the URI).
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    // Every `Origin` given must be this host (`null`, an opaque origin, is not).
    let foreign_origin = headers.get_all(header::ORIGIN).iter().any(|origin| {
        let origin = origin.to_str().unwrap_or("null");
        match (origin.split_once("://").map(|(_, rest)| rest), host) {
            (Some(origin), Some(host)) => !origin.eq_ignore_ascii_case(host),
            // Unknown host: only the browser's own verdict (below) can refuse.
            (Some(_), None) => false,
            (None, _) => true,
        }
    });
    if cross_site || foreign_origin {
        tracing::warn!(path = %request.uri().path(), "console POST from another origin refused");
        return UiError::forbidden("this request came from another site; the console accepts changes only from its own pages")
            .into_response();
    }
    next.run(request).await
}

fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// 256 random bits from the operating system, as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_pages_are_followed_after_sign_in() {
        assert_eq!(
            safe_next(Some("/ui/tasks?status=failed")),
            "/ui/tasks?status=failed"
        );
        assert_eq!(safe_next(Some("/ui")), "/ui");
        for bad in [
            "https://evil.example/ui",
            "//evil.example/ui",
            "/uix",
            "/ui\\..\\x",
            "/tasks",
            "",
            "/ui/\r\nSet-Cookie: x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/ui");
    }
}
