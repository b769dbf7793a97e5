//! `/schedules`: cleanups declared once and fired by the service on a cron calendar.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::tasks::{TaskKind, TaskSpec, ValidationRules};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Principal;
use super::error::{ApiError, Problem};
use super::json::ApiJson;
use super::{located, AppState};
use crate::ledger::schedules::{self, CatchUp, Overlap, ScheduleRow, ScheduleSpec, Written};
use crate::schedules::calendar::Calendar;

/// Schedules created or changed through the API are `managed_by: api`.
const SOURCE: &str = "api";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/schedules", get(list_schedules).post(create_schedule))
        .route(
            "/schedules/{name}",
            get(get_schedule)
                .put(put_schedule)
                .patch(patch_schedule)
                .delete(delete_schedule),
        )
        .route("/schedules/{name}/trigger", post(trigger_schedule))
}

/// A schedule: what to run (`kind`, `params`, validated like a POST of that kind) and when
/// (`cron` in `timezone`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// Unique name (`POST` only; `PUT` takes it from the path): lowercase letters, digits,
    /// `.`, `_`, `-`, at most 63 characters.
    #[serde(default)]
    pub name: Option<String>,
    pub kind: TaskKind,
    /// The task's parameters, as the POST of that kind takes them.
    pub params: serde_json::Value,
    /// Five fields (minute hour day-of-month month day-of-week) or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`.
    pub cron: String,
    /// IANA time zone the cron expression is read in (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// After downtime: `once` (default) fires one task for the missed windows, `skip`
    /// waits for the next window.
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// While the previous task has not finished: `skip` (default) fires nothing, `allow`
    /// fires anyway.
    #[serde(default)]
    pub overlap: Option<Overlap>,
}

/// `PATCH`: the fields that change alone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulePatch {
    pub enabled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    pub name: String,
    pub kind: String,
    pub params: serde_json::Value,
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
    pub catch_up: String,
    pub overlap: String,
    /// The next window (null while disabled).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The scheduled time of the last window that fired a task.
    pub last_fired_at: Option<DateTime<Utc>>,
    pub last_task_id: Option<Uuid>,
    /// That task's status, while it is in the ledger.
    pub last_task_status: Option<String>,
    /// Windows that fired nothing (overlap, or missed under `catch_up: skip`).
    pub skipped_windows: i64,
    /// `api`, or `file` (SCHEDULES_FILE): only that source may change it.
    pub managed_by: String,
    pub actor: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ScheduleRow> for ScheduleView {
    fn from(r: ScheduleRow) -> Self {
        Self {
            name: r.name,
            kind: r.kind,
            params: r.params,
            cron: r.cron,
            timezone: r.timezone,
            enabled: r.enabled,
            catch_up: r.catch_up,
            overlap: r.overlap,
            next_fire_at: r.next_fire_at,
            last_fired_at: r.last_fired_at,
            last_task_id: r.last_task_id,
            last_task_status: r.last_task_status,
            skipped_windows: r.skipped_windows,
            managed_by: r.managed_by,
            actor: r.actor,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

fn invalid(field: &str, detail: String) -> ApiError {
    ApiError::InvalidParameters {
        detail,
        field: Some(field.to_owned()),
    }
}

/// A valid schedule name.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!(
                "schedule name `{name}` must be 1 to 63 lowercase letters, digits, `.`, `_` or \
                 `-`, starting with a letter or digit"
            ),
        ))
    }
}

/// Check a body as the ledger will store it: the calendar, and the task's parameters
/// exactly as a POST of that kind checks them.
pub fn check(rules: &ValidationRules, body: ScheduleBody) -> Result<ScheduleSpec, ApiError> {
    let timezone = body.timezone.unwrap_or_else(|| "UTC".to_owned());
    let calendar =
        Calendar::parse(&body.cron, &timezone).map_err(|e| invalid(e.field, e.to_string()))?;
    if calendar.next_after(Utc::now()).is_none() {
        return Err(invalid(
            "cron",
            format!("`{}` never fires (no such date)", body.cron.trim()),
        ));
    }
    let task = TaskSpec::from_parts(body.kind, body.params)
        .map_err(|e| invalid("params", format!("invalid params for {}: {e}", body.kind)))?;
    task.validate(rules).map_err(|e| {
        invalid(
            &format!("params.{}", e.field),
            format!("invalid params: {e}"),
        )
    })?;
    Ok(ScheduleSpec {
        task,
        // One spelling per calendar: `0  2 * * *` is `0 2 * * *`.
        cron: body.cron.split_whitespace().collect::<Vec<_>>().join(" "),
        timezone: timezone.trim().to_owned(),
        enabled: body.enabled.unwrap_or(true),
        catch_up: body.catch_up.unwrap_or_default(),
        overlap: body.overlap.unwrap_or_default(),
    })
}

fn managed(name: &str, by: &str) -> ApiError {
    ApiError::Conflict(format!(
        "schedule `{name}` is managed by {}; change it there",
        if by == "file" {
            "the schedules file (SCHEDULES_FILE)".to_owned()
        } else {
            format!("`{by}`")
        }
    ))
}

/// Create a schedule.
#[utoipa::path(
    post,
    path = "/schedules",
    tag = "schedules",
    request_body = ScheduleBody,
    responses(
        (status = 201, description = "Created", body = ScheduleView,
            headers(("Location" = String, description = "/schedules/{name}"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, cron, timezone or params (`field` names it)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn create_schedule(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(mut body): ApiJson<ScheduleBody>,
) -> Result<Response, ApiError> {
    let name = body
        .name
        .take()
        .ok_or_else(|| invalid("name", "a schedule needs a `name`".to_owned()))?;
    check_name(&name)?;
    let spec = check(&state.rules, body)?;
    let actor = Some(principal.name.as_str());
    match schedules::write(&state.pool, &name, &spec, false, SOURCE, actor, Utc::now()).await? {
        Written::Created(row) => Ok(located(
            StatusCode::CREATED,
            &format!("/schedules/{name}"),
            ScheduleView::from(row),
        )),
        Written::Exists => Err(ApiError::Conflict(format!(
            "a schedule named `{name}` exists; PUT /schedules/{name} replaces it"
        ))),
        Written::Managed(by) => Err(managed(&name, &by)),
        Written::Replaced(_) => unreachable!("create never replaces"),
    }
}

/// Create or replace a schedule.
#[utoipa::path(
    put,
    path = "/schedules/{name}",
    tag = "schedules",
    request_body = ScheduleBody,
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Replaced", body = ScheduleView),
        (status = 201, description = "Created", body = ScheduleView),
        (status = 409, description = "Managed by the schedules file", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, cron, timezone or params", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn put_schedule(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    if body.name.as_deref().is_some_and(|n| n != name) {
        return Err(invalid(
            "name",
            format!("the body names another schedule than the path (`{name}`)"),
        ));
    }
    let spec = check(&state.rules, body)?;
    let actor = Some(principal.name.as_str());
    match schedules::write(&state.pool, &name, &spec, true, SOURCE, actor, Utc::now()).await? {
        Written::Created(row) => Ok(located(
            StatusCode::CREATED,
            &format!("/schedules/{name}"),
            ScheduleView::from(row),
        )),
        Written::Replaced(row) => {
            Ok((StatusCode::OK, Json(ScheduleView::from(row))).into_response())
        }
        Written::Managed(by) => Err(managed(&name, &by)),
        Written::Exists => unreachable!("replace never reports an existing name"),
    }
}

/// Enable or disable a schedule.
#[utoipa::path(
    patch,
    path = "/schedules/{name}",
    tag = "schedules",
    request_body = SchedulePatch,
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, body = ScheduleView),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Managed by the schedules file", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn patch_schedule(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(patch): ApiJson<SchedulePatch>,
) -> Result<Json<ScheduleView>, ApiError> {
    known_name(&name)?;
    let actor = Some(principal.name.as_str());
    match schedules::set_enabled(&state.pool, &name, patch.enabled, SOURCE, actor, Utc::now())
        .await?
    {
        None => Err(unknown(&name)),
        Some(Written::Managed(by)) => Err(managed(&name, &by)),
        Some(Written::Replaced(row) | Written::Created(row)) => Ok(Json(row.into())),
        Some(Written::Exists) => unreachable!(),
    }
}

fn unknown(name: &str) -> ApiError {
    ApiError::NotFound(format!("no schedule named `{name}`"))
}

/// A name no schedule can have (one holding a NUL would not even reach the ledger) is
/// unknown without asking.
fn known_name(name: &str) -> Result<(), ApiError> {
    check_name(name).map_err(|_| unknown(name))
}

/// One schedule, with its next window and its last task's status.
#[utoipa::path(
    get,
    path = "/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, body = ScheduleView),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn get_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    known_name(&name)?;
    let row = schedules::get(&state.pool, &name)
        .await?
        .ok_or_else(|| unknown(&name))?;
    Ok(Json(row.into()))
}

/// Every schedule, by name.
#[utoipa::path(
    get,
    path = "/schedules",
    tag = "schedules",
    responses(
        (status = 200, body = ScheduleList),
    ),
    security(("bearer" = ["read"]))
)]
pub async fn list_schedules(State(state): State<AppState>) -> Result<Json<ScheduleList>, ApiError> {
    let rows = schedules::list(&state.pool).await?;
    Ok(Json(ScheduleList {
        schedules: rows.into_iter().map(ScheduleView::from).collect(),
    }))
}

/// Delete a schedule (the tasks it fired stay).
#[utoipa::path(
    delete,
    path = "/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Managed by the schedules file", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn delete_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    known_name(&name)?;
    match schedules::delete(&state.pool, &name, SOURCE).await? {
        None => Err(unknown(&name)),
        Some(Written::Managed(by)) => Err(managed(&name, &by)),
        Some(_) => Ok(StatusCode::NO_CONTENT),
    }
}

/// Fire one task now, outside the calendar (its cutoff counts from now).
#[utoipa::path(
    post,
    path = "/schedules/{name}/trigger",
    tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 202, description = "A task was enqueued", body = super::tasks::TaskView,
            headers(("Location" = String, description = "/tasks/{id}"))),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Its stored parameters are no longer valid", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"]))
)]
pub async fn trigger_schedule(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    known_name(&name)?;
    let task_id = schedules::trigger(
        &state.pool,
        &name,
        Utc::now(),
        &state.rules,
        state.max_attempts,
        &principal.name,
    )
    .await?
    .ok_or_else(|| unknown(&name))?
    .map_err(|reason| {
        ApiError::Conflict(format!(
            "schedule `{name}` cannot fire: {reason}; replace it (PUT /schedules/{name})"
        ))
    })?;
    state.outbox_written.notify_one();
    let row = crate::ledger::get_task(&state.pool, task_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("triggered task {task_id} vanished")))?;
    state
        .metrics
        .schedule_fired
        .with_label_values(&[&name])
        .inc();
    Ok(located(
        StatusCode::ACCEPTED,
        &format!("/tasks/{task_id}"),
        super::tasks::TaskView::from(row),
    ))
}
