//! The page every console view renders into, and the console's error page.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::assets;
use super::session::Viewer;
use crate::http::error::ApiError;

/// Which part of the console a page belongs to (highlighted in the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    None,
    Overview,
    Tasks,
    New,
    Workers,
    Schedules,
}

/// A whole HTML document: header with navigation and who is signed in, then `body`.
pub fn document(title: &str, viewer: Option<&Viewer>, nav: Nav, body: Markup) -> Markup {
    live_document(title, viewer, nav, None, body)
}

/// [`document`] for a page that refreshes itself every `refresh` seconds while something
/// on it moves (with JavaScript, only the main content is fetched again; without it, the
/// whole page).
pub fn live_document(
    title: &str,
    viewer: Option<&Viewer>,
    nav: Nav,
    refresh: Option<u32>,
    body: Markup,
) -> Markup {
    let link = |target: Nav, href: &str, label: &str| {
        html! {
            a href=(href) aria-current=[(nav == target).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · cleanup console" }
                link rel="stylesheet" href=(assets::CSS_PATH);
                script src=(assets::JS_PATH) defer {}
                @if let Some(seconds) = refresh {
                    noscript { meta http-equiv="refresh" content=(seconds); }
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui" { "cleanup" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Console" {
                            (link(Nav::Overview, "/ui", "Overview"))
                            (link(Nav::Tasks, "/ui/tasks", "Tasks"))
                            @if viewer.may(Method::POST, "/maintenance/cleanup-runs").is_ok() {
                                (link(Nav::New, "/ui/new", "New cleanup"))
                            }
                            (link(Nav::Workers, "/ui/workers", "Workers"))
                            (link(Nav::Schedules, "/ui/schedules", "Schedules"))
                        }
                        form.who method="post" action="/ui/sign-out" {
                            span { (viewer.principal.name) " · " span.scope { (viewer.principal.scope.as_str()) } }
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main data-refresh=[refresh] {
                    (body)
                }
            }
        }
    }
}

/// An error the console shows as a page of its own.
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> Self {
        if let ApiError::Internal(inner) = &error {
            tracing::error!(error = %inner, "console request failed");
        }
        Self::new(error.status(), error.to_string())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = html! {
            h1 { (title) }
            p.alert.alert-error role="alert" { (self.message) }
            p { a href="/ui" { "Back to the overview" } }
        };
        (self.status, document(title, None, Nav::None, body)).into_response()
    }
}

/// A message at the top of a page: what the last action did, or why it did not.
pub fn notice(error: bool, message: &str) -> Markup {
    html! {
        @if error {
            p.alert.alert-error role="alert" { (message) }
        } @else {
            p.alert.alert-ok role="status" { (message) }
        }
    }
}

/// A status as a coloured badge (colour is never the only signal: the word is there).
pub fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge status-" (status) } { (status) } }
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A form's fields as sent (`application/x-www-form-urlencoded`; a repeated name keeps
/// every value).
#[derive(Debug, Default)]
pub struct FormFields(pub Vec<(String, String)>);

impl FormFields {
    pub fn parse(body: &[u8]) -> Self {
        FormFields(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}
