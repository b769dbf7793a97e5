//! The OpenAPI document, generated from the handlers and types (`/openapi.json`).

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "cleanup-service producer API", description = "Enqueue cleanup tasks and watch them run."),
    paths(
        super::tasks::enqueue_cleanup_runs,
        super::tasks::enqueue_cleanup_temp_files,
        super::tasks::get_task,
        super::tasks::list_tasks,
        super::tasks::retry_task,
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
        shared::tasks::TaskKind,
        crate::ledger::TaskStatus,
        super::tasks::TaskView,
        super::tasks::TaskPage,
        super::tasks::RetryBody,
        super::error::Problem,
        super::health::Readiness,
        super::workers::WorkerList,
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
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
