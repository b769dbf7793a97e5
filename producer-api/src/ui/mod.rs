//! The operator console, served by producer-api under `/ui`: pages rendered on the server
//! (each one readable with JavaScript off, or by `curl` with the session cookie), one
//! stylesheet and one small script compiled into the binary.
//!
//! Every action calls the same handler as its API route (`POST /tasks/{id}/cancel` and
//! so on), so the console checks, records and refuses exactly what the API does; what a
//! signed-in user sees and may press follows their token's scope.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::http::AppState;

mod actions;
mod assets;
mod format;
mod new;
mod overview;
mod page;
mod schedules;
mod session;
mod task;
mod tasks;
mod workers;

pub use session::COOKIE;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview::page))
        .route(
            "/ui/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/ui/sign-out", post(session::sign_out))
        .route("/ui/tasks", get(tasks::page))
        .route("/ui/tasks/{id}", get(task::page))
        .route(
            "/ui/tasks/{id}/cancel",
            get(actions::confirm_cancel).post(actions::cancel),
        )
        .route(
            "/ui/tasks/{id}/retry",
            get(actions::confirm_retry).post(actions::retry),
        )
        .route("/ui/tasks/{id}/run", post(actions::run))
        .route("/ui/new", get(new::form).post(new::submit))
        .route("/ui/workers", get(workers::page))
        .route(
            "/ui/workers/prune",
            get(workers::preview).post(workers::prune),
        )
        .route("/ui/schedules", get(schedules::page))
        .route("/ui/schedules/{name}/{action}", post(schedules::act))
        .route("/ui/assets/{file}", get(assets::serve))
        .layer(middleware::from_fn(session::same_origin))
        .layer(middleware::from_fn(security_headers))
}

/// Pages load nothing from elsewhere, run no inline script, and are never framed or cached.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
