//! Every metric name, in one place, following Prometheus conventions: the `cleanup_`
//! prefix, base units (seconds, bytes), `_total` on counters, and labels with few values.

/// The text exposition format of a registry.
pub fn render(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut buffer = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding cannot fail");
    String::from_utf8(buffer).expect("metrics are UTF-8")
}

/// A registry holding `cleanup_build_info{version, component}` = 1 and `collectors`.
pub fn registry_with(
    component: &str,
    collectors: Vec<Box<dyn prometheus::core::Collector>>,
) -> prometheus::Registry {
    let registry = prometheus::Registry::new();
    let build_info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(BUILD_INFO, "Build information; the value is always 1."),
        &["version", "component"],
    )
    .expect("valid metric");
    build_info
        .with_label_values(&[crate::VERSION, component])
        .set(1);
    registry
        .register(Box::new(build_info))
        .expect("unique metric names");
    for collector in collectors {
        registry.register(collector).expect("unique metric names");
    }
    registry
}

pub const BUILD_INFO: &str = "cleanup_build_info";

// producer-api
pub const TASKS_ENQUEUED_TOTAL: &str = "cleanup_tasks_enqueued_total";
pub const HTTP_REQUESTS_TOTAL: &str = "cleanup_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "cleanup_http_request_duration_seconds";
pub const OUTBOX_BACKLOG: &str = "cleanup_outbox_backlog";
pub const OUTBOX_PUBLISHED_TOTAL: &str = "cleanup_outbox_published_total";
pub const OUTBOX_PUBLISH_ERRORS_TOTAL: &str = "cleanup_outbox_publish_errors_total";
pub const OUTBOX_PUBLISH_DURATION_SECONDS: &str = "cleanup_outbox_publish_duration_seconds";
pub const OUTBOX_PUBLISH_TIMEOUTS_TOTAL: &str = "cleanup_outbox_publish_timeouts_total";
pub const ENQUEUE_SESSIONS_GIVEN_UP_TOTAL: &str = "cleanup_enqueue_sessions_given_up_total";
pub const AMQP_CONNECTED: &str = "cleanup_amqp_connected";
pub const AMQP_BLOCKED: &str = "cleanup_amqp_blocked";
pub const QUEUE_MESSAGES: &str = "cleanup_queue_messages";
pub const LEDGER_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "cleanup_ledger_last_success_timestamp_seconds";
pub const LEDGER_TASKS: &str = "cleanup_ledger_tasks";
pub const RECORDER_EVENTS_TOTAL: &str = "cleanup_recorder_events_total";
pub const RECORDER_LAG_SECONDS: &str = "cleanup_recorder_lag_seconds";
pub const LEDGER_PRUNED_TOTAL: &str = "cleanup_ledger_pruned_total";
pub const WORKERS_PRUNED_TOTAL: &str = "cleanup_workers_pruned_total";
pub const SCHEDULE_FIRED_TOTAL: &str = "cleanup_schedule_fired_total";
pub const SCHEDULE_SKIPPED_TOTAL: &str = "cleanup_schedule_skipped_total";
pub const SCHEDULE_NEXT_FIRE_TIMESTAMP_SECONDS: &str =
    "cleanup_schedule_next_fire_timestamp_seconds";
pub const SCHEDULE_LAST_FIRE_TIMESTAMP_SECONDS: &str =
    "cleanup_schedule_last_fire_timestamp_seconds";
pub const SCHEDULE_LAST_OUTCOME: &str = "cleanup_schedule_last_outcome";
pub const SCHEDULE_CONSECUTIVE_FAILURES: &str = "cleanup_schedule_consecutive_failures";

// worker
pub const WORKER_TASKS_STARTED_TOTAL: &str = "cleanup_worker_tasks_started_total";
pub const WORKER_TASKS_FINISHED_TOTAL: &str = "cleanup_worker_tasks_finished_total";
pub const WORKER_TASK_DURATION_SECONDS: &str = "cleanup_worker_task_duration_seconds";
pub const WORKER_TASKS_IN_FLIGHT: &str = "cleanup_worker_tasks_in_flight";
pub const WORKER_ERRORS_TOTAL: &str = "cleanup_worker_errors_total";
pub const WORKER_POISON_MESSAGES_TOTAL: &str = "cleanup_worker_poison_messages_total";
pub const RUNS_DELETED_TOTAL: &str = "cleanup_runs_deleted_total";
pub const FILES_DELETED_TOTAL: &str = "cleanup_files_deleted_total";
pub const BYTES_FREED_TOTAL: &str = "cleanup_bytes_freed_total";
pub const LAST_SUCCESS_TIMESTAMP_SECONDS: &str = "cleanup_last_success_timestamp_seconds";
pub const OLDEST_ELIGIBLE_AGE_SECONDS: &str = "cleanup_oldest_eligible_age_seconds";
