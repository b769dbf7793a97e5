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
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Every route behind a token answers 401 without one and 403 when its scope does
        // not allow the request: listed on each, once, here.
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.as_ref().is_none_or(|s| s.is_empty()) {
                    continue;
                }
                let responses = &mut operation.responses.responses;
                responses
                    .entry("401".to_owned())
                    .or_insert_with(|| problem("Missing or invalid bearer token").into());
                responses.entry("403".to_owned()).or_insert_with(|| {
                    problem("The token's scope does not allow this request (the detail names the scope needed)").into()
                });
            }
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
