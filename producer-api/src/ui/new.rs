//! `/ui/new`: a cleanup from a form. The form always enqueues a dry run first; the dry
//! run's page shows what would go and offers to run it for real with the same parameters
//! and cutoff (`POST /tasks/{id}/run`).

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use shared::tasks::{TaskKind, TaskSpec};

use super::page::{self, FormFields, Nav, UiError};
use super::session::Viewer;
use crate::http::error::ApiError;
use crate::http::{tasks, AppState};

/// The kind of cleanup a form is for.
fn form_kind(f: &FormFields) -> TaskKind {
    match f.one("kind") {
        Some("cleanup_temp_files") => TaskKind::CleanupTempFiles,
        _ => TaskKind::CleanupRuns,
    }
}

#[derive(Debug, Deserialize)]
pub struct KindQuery {
    kind: Option<String>,
}

pub async fn form(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<KindQuery>,
) -> Result<Response, UiError> {
    allowed(&viewer)?;
    let mut fields = FormFields::default();
    if let Some(kind) = query.kind {
        fields.0.push(("kind".to_owned(), kind));
    }
    Ok(render(&state, &viewer, &fields, None, StatusCode::OK))
}

/// A dry run: the scope `POST /maintenance/cleanup-runs` needs (either kind's route).
fn allowed(viewer: &Viewer) -> Result<(), UiError> {
    viewer.may(Method::POST, "/maintenance/cleanup-runs")
}

fn render(
    state: &AppState,
    viewer: &Viewer,
    f: &FormFields,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let kind = form_kind(f);
    let rules = &state.rules;
    let number = |name: &str, label: &str, hint: &str, min: &str| -> Markup {
        html! {
            label for=(name) { (label) }
            input id=(name) type="number" name=(name) min=(min) step="any" value=[f.one(name)];
            @if !hint.is_empty() { p.hint { (hint) } }
        }
    };
    let body = html! {
        h1 { "New cleanup" }
        p { "Every cleanup starts as a dry run: nothing is deleted until you have seen what would be, and chosen to run it for real." }
        nav.actions aria-label="Kind" {
            @for k in TaskKind::ALL {
                @if k == kind { strong { (k.as_str()) } }
                @else { a href={ "/ui/new?kind=" (k.as_str()) } { (k.as_str()) } }
            }
        }
        @if let Some(error) = error { (page::notice(true, error)) }
        form.panel method="post" action="/ui/new" {
            (page::csrf(viewer))
            input type="hidden" name="kind" value=(kind.as_str());
            label for="max_age_hours" { "Older than (hours)" }
            input #max_age_hours type="number" name="max_age_hours" required min=(rules.min_age_hours) step="any"
                value=(f.one("max_age_hours").unwrap_or("720"));
            p.hint { "Nothing younger is deleted; at least " (rules.min_age_hours) " h on this deployment." }
            @match kind {
                TaskKind::CleanupRuns => {
                    fieldset {
                        legend { "Statuses (none ticked: every finished status)" }
                        @for s in &rules.terminal_statuses {
                            div.checkbox {
                                input id={ "status-" (s) } type="checkbox" name="statuses" value=(s)
                                    checked[f.all("statuses").contains(&s.as_str())];
                                " " label for={ "status-" (s) } { (s) }
                            }
                        }
                    }
                    @for column in &rules.scope_columns {
                        @let name = format!("scope.{column}");
                        label for=(name) { "Only where " code { (column) } " =" }
                        input id=(name) type="text" name=(name) value=[f.one(&name)];
                    }
                    (number("batch_size", "Batch size (most rows per batch)", "", "1"))
                    (number("max_rows", "At most this many rows", "The oldest first; empty: no cap.", "1"))
                }
                TaskKind::CleanupTempFiles => {
                    label for="root" { "Root (name from the workers' TEMP_ROOTS)" }
                    input #root type="text" name="root" value=[f.one("root")];
                    p.hint { "Empty: every configured root." }
                    label for="patterns" { "File name patterns (one per line)" }
                    textarea #patterns name="patterns" { (f.one("patterns").unwrap_or("")) }
                    (number("max_files", "At most this many files", "Empty: no cap.", "1"))
                    div.checkbox {
                        input #remove_empty_dirs type="checkbox" name="remove_empty_dirs" value="true"
                            checked[f.one("remove_empty_dirs").is_some()];
                        " " label for="remove_empty_dirs" { "Remove directories this cleanup empties" }
                    }
                }
            }
            (number("max_attempts", "Attempts", "Empty: the deployment's default.", "1"))
            div.actions { button.primary type="submit" { "Dry run" } }
        }
    };
    (
        status,
        page::document("New cleanup", Some(viewer), Nav::New, body),
    )
        .into_response()
}

/// The form as the API's JSON parameters (`dry_run` always true); why not, if a number is
/// not one.
fn params(f: &FormFields) -> Result<Value, String> {
    let mut p = Map::new();
    p.insert("dry_run".into(), json!(true));
    let number = |name: &str, p: &mut Map<String, Value>| -> Result<(), String> {
        if let Some(text) = f.one(name) {
            let n: f64 = text
                .parse()
                .map_err(|_| format!("{name}: `{text}` is not a number"))?;
            let value = if n.fract() == 0.0 && (0.0..9.0e15).contains(&n) {
                json!(n as u64)
            } else {
                json!(n)
            };
            p.insert(name.to_owned(), value);
        }
        Ok(())
    };
    number("max_age_hours", &mut p)?;
    number("max_attempts", &mut p)?;
    match form_kind(f) {
        TaskKind::CleanupRuns => {
            number("batch_size", &mut p)?;
            number("max_rows", &mut p)?;
            let statuses = f.all("statuses");
            if !statuses.is_empty() {
                p.insert("statuses".into(), json!(statuses));
            }
            let scope: Map<String, Value> =
                f.0.iter()
                    .filter_map(|(n, v)| Some((n.strip_prefix("scope.")?, v.trim())))
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(n, v)| (n.to_owned(), json!(v)))
                    .collect();
            if !scope.is_empty() {
                p.insert("scope".into(), Value::Object(scope));
            }
        }
        TaskKind::CleanupTempFiles => {
            number("max_files", &mut p)?;
            if let Some(root) = f.one("root") {
                p.insert("root".into(), json!(root));
            }
            let patterns: Vec<&str> = f
                .one("patterns")
                .unwrap_or("")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            if !patterns.is_empty() {
                p.insert("patterns".into(), json!(patterns));
            }
            p.insert(
                "remove_empty_dirs".into(),
                json!(f.one("remove_empty_dirs").is_some()),
            );
        }
    }
    Ok(Value::Object(p))
}

pub async fn submit(
    State(state): State<AppState>,
    viewer: Viewer,
    body: Bytes,
) -> Result<Response, UiError> {
    let f = FormFields::parse(&body);
    viewer.check_csrf(f.one("csrf").unwrap_or(""))?;
    allowed(&viewer)?;
    let unprocessable = |message: String| {
        Ok(render(
            &state,
            &viewer,
            &f,
            Some(&message),
            StatusCode::UNPROCESSABLE_ENTITY,
        ))
    };
    let params = match params(&f) {
        Ok(params) => params,
        Err(message) => return unprocessable(message),
    };
    let task = match TaskSpec::from_parts(form_kind(&f), params) {
        Ok(task) => task,
        Err(e) => return unprocessable(format!("invalid parameters: {e}")),
    };
    let enqueued = tasks::enqueue(&state, &viewer.principal, &HeaderMap::new(), task).await;
    match enqueued {
        Ok(response) => Ok(super::actions::to_created(&response)),
        Err(error @ (ApiError::InvalidParameters { .. } | ApiError::Forbidden(_))) => {
            unprocessable(error.to_string())
        }
        Err(error) => Err(error.into()),
    }
}
