//! Every metric name, in one place, following Prometheus conventions: the `cleanup_`
//! prefix, base units (seconds, bytes), `_total` on counters, and labels with few values.

pub const BUILD_INFO: &str = "cleanup_build_info";

// producer-api
pub const TASKS_ENQUEUED_TOTAL: &str = "cleanup_tasks_enqueued_total";
pub const HTTP_REQUESTS_TOTAL: &str = "cleanup_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "cleanup_http_request_duration_seconds";
pub const OUTBOX_BACKLOG: &str = "cleanup_outbox_backlog";
pub const OUTBOX_PUBLISHED_TOTAL: &str = "cleanup_outbox_published_total";
pub const OUTBOX_PUBLISH_ERRORS_TOTAL: &str = "cleanup_outbox_publish_errors_total";
pub const OUTBOX_PUBLISH_DURATION_SECONDS: &str = "cleanup_outbox_publish_duration_seconds";
pub const AMQP_CONNECTED: &str = "cleanup_amqp_connected";
