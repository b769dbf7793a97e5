//! The OpenAPI document (`/openapi.json`): generated from the handlers and types, each
//! route listing every answer it can give, then completed with what depends on the
//! deployment (`MIN_AGE_HOURS`, `MAX_ATTEMPTS_LIMIT`, `RUNS_TERMINAL_STATUSES`,
//! `RUNS_SCOPE_COLUMNS`), so that it states exactly what this API accepts.

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use shared::tasks::ValidationRules;
use utoipa::OpenApi;

use super::AppState;

mod answers;
use answers::Answers;
pub(crate) mod cron;
mod deployment;
mod schedules;

#[derive(OpenApi)]
#[openapi(
    info(title = "cleanup-service producer API", description = "Enqueue cleanup tasks and watch them run."),
    paths(
        super::tasks::enqueue_cleanup_runs,
        super::tasks::enqueue_cleanup_temp_files,
        super::tasks::get_task,
        super::tasks::list_tasks,
        super::copies::retry_task,
        super::copies::run_task,
        super::cancel::cancel_task,
        super::workers::list_workers,
        super::workers::prune_workers,
        super::schedules::create_schedule,
        super::schedules::list_schedules,
        super::schedules::get_schedule,
        super::schedules::put_schedule,
        super::schedules::patch_schedule,
        super::schedules::delete_schedule,
        super::schedules::trigger_schedule,
        super::health::healthz,
        super::health::readyz,
    ),
    components(schemas(
        shared::tasks::CleanupRunsParams,
        shared::tasks::CleanupTempFilesParams,
        shared::tasks::GlobPattern,
        shared::tasks::TaskKind,
        crate::ledger::TaskStatus,
        super::tasks::TaskView,
        super::tasks::TaskPage,
        super::copies::RetryBody,
        super::error::Problem,
        super::health::Readiness,
        super::workers::WorkerList,
        super::workers::WorkerState,
        super::workers::PruneRequest,
        super::workers::PruneResponse,
        crate::ledger::workers::WorkerView,
        super::schedules::ScheduleBody,
        super::schedules::SchedulePatch,
        super::schedules::ScheduleView,
        super::schedules::ScheduleList,
        crate::ledger::schedules::CatchUp,
        crate::ledger::schedules::Overlap,
    )),
    modifiers(&Answers)
)]
pub struct ApiDoc;

/// The document of an API that checks requests against `rules`.
pub fn document(rules: &ValidationRules) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    answers::parameters_are_never_null(&mut doc);
    deployment::apply(&mut doc, rules);
    schedules::apply(&mut doc);
    doc
}

/// `GET /openapi.json`: the document, made once for this process's rules.
pub fn router(state: &AppState) -> Router<AppState> {
    let body = Bytes::from(serde_json::to_vec(&document(&state.rules)).expect("serializes"));
    Router::new().route(
        "/openapi.json",
        get(move || {
            let body = body.clone();
            async move { ([(CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

#[cfg(test)]
#[path = "openapi/tests.rs"]
mod tests;
