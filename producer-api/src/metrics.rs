//! Prometheus metrics of producer-api; names come from `shared::runtime::metrics`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use shared::runtime::metrics as names;

/// Every metric the API exports, registered in its own registry (tests build many apps).
pub struct Metrics {
    registry: Registry,
    pub tasks_enqueued: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub outbox_backlog: IntGauge,
    pub outbox_published: IntCounter,
    pub outbox_publish_errors: IntCounter,
    pub outbox_publish_duration: Histogram,
    pub outbox_publish_timeouts: IntCounter,
    /// Sessions of enqueue statements the intake gave up on, by what became of them.
    pub enqueue_sessions_given_up: IntCounterVec,
    pub amqp_connected: IntGauge,
    pub amqp_blocked: IntGauge,
    pub queue_messages: IntGaugeVec,
    pub ledger_last_success: prometheus::GaugeVec,
    pub ledger_tasks: IntGaugeVec,
    pub recorder_events: IntCounterVec,
    pub recorder_lag: Histogram,
    pub ledger_pruned: IntCounterVec,
    pub workers_pruned: IntCounter,
    pub schedule_fired: IntCounterVec,
    pub schedule_skipped: IntCounterVec,
    pub schedule_next_fire: prometheus::GaugeVec,
    pub schedule_last_fire: prometheus::GaugeVec,
    pub schedule_last_outcome: IntGaugeVec,
    pub schedule_consecutive_failures: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let tasks_enqueued = IntCounterVec::new(
            Opts::new(names::TASKS_ENQUEUED_TOTAL, "Tasks accepted (202) by kind."),
            &["kind"],
        )
        .expect("valid metric");
        let http_requests = IntCounterVec::new(
            Opts::new(
                names::HTTP_REQUESTS_TOTAL,
                "HTTP requests by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                names::HTTP_REQUEST_DURATION_SECONDS,
                "HTTP request latency by route and method.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method"],
        )
        .expect("valid metric");
        let outbox_backlog = IntGauge::new(
            names::OUTBOX_BACKLOG,
            "Task messages in the outbox not yet confirmed by RabbitMQ (sampled on scrape).",
        )
        .expect("valid metric");
        let outbox_published = IntCounter::new(
            names::OUTBOX_PUBLISHED_TOTAL,
            "Task messages published and confirmed by RabbitMQ.",
        )
        .expect("valid metric");
        let outbox_publish_errors = IntCounter::new(
            names::OUTBOX_PUBLISH_ERRORS_TOTAL,
            "Task messages the broker refused (nack or unroutable); they are retried.",
        )
        .expect("valid metric");
        let outbox_publish_duration = Histogram::with_opts(
            HistogramOpts::new(
                names::OUTBOX_PUBLISH_DURATION_SECONDS,
                "Time to publish and confirm one outbox batch.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )
        .expect("valid metric");
        let amqp_connected = IntGauge::new(
            names::AMQP_CONNECTED,
            "1 while the relay holds a RabbitMQ connection.",
        )
        .expect("valid metric");
        let outbox_publish_timeouts = IntCounter::new(
            names::OUTBOX_PUBLISH_TIMEOUTS_TOTAL,
            "Relay batches not confirmed within RELAY_PUBLISH_TIMEOUT (rolled back, published again later).",
        )
        .expect("valid metric");
        let enqueue_sessions_given_up = IntCounterVec::new(
            Opts::new(
                names::ENQUEUE_SESSIONS_GIVEN_UP_TOTAL,
                "Ledger sessions of enqueue statements given up on (answer overdue, or connection broken mid-statement), by outcome: ended (terminated, or found gone) or left (could not be ended for 5 minutes).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["ended", "left"] {
            enqueue_sessions_given_up.with_label_values(&[outcome]);
        }
        let amqp_blocked = IntGauge::new(
            names::AMQP_BLOCKED,
            "1 while RabbitMQ blocks the relay's connection from publishing (memory or disk alarm).",
        )
        .expect("valid metric");
        let recorder_events = IntCounterVec::new(
            Opts::new(
                names::RECORDER_EVENTS_TOTAL,
                "Worker events applied to the ledger, by type.",
            ),
            &["type"],
        )
        .expect("valid metric");
        let recorder_lag = Histogram::with_opts(
            HistogramOpts::new(
                names::RECORDER_LAG_SECONDS,
                "Time from a worker publishing an event to the ledger applying it.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                names::QUEUE_MESSAGES,
                "Messages ready in RabbitMQ, by queue (task kinds and `dead`); sampled on scrape.",
            ),
            &["queue"],
        )
        .expect("valid metric");
        let ledger_last_success = prometheus::GaugeVec::new(
            Opts::new(
                names::LEDGER_LAST_SUCCESS_TIMESTAMP_SECONDS,
                "Unix time of the last real (not dry-run) task that succeeded, by kind, from the ledger.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let ledger_tasks = IntGaugeVec::new(
            Opts::new(
                names::LEDGER_TASKS,
                "Tasks in the ledger by kind and status (sampled on scrape).",
            ),
            &["kind", "status"],
        )
        .expect("valid metric");
        let ledger_pruned = IntCounterVec::new(
            Opts::new(
                names::LEDGER_PRUNED_TOTAL,
                "Finished tasks deleted from the ledger by retention, by status.",
            ),
            &["status"],
        )
        .expect("valid metric");
        let workers_pruned = IntCounter::new(
            names::WORKERS_PRUNED_TOTAL,
            "Workers stopped or lost longer than WORKER_RETENTION, removed from the registry.",
        )
        .expect("valid metric");
        let schedule_fired = IntCounterVec::new(
            Opts::new(
                names::SCHEDULE_FIRED_TOTAL,
                "Tasks fired by schedules, by schedule.",
            ),
            &["schedule"],
        )
        .expect("valid metric");
        let schedule_skipped = IntCounterVec::new(
            Opts::new(
                names::SCHEDULE_SKIPPED_TOTAL,
                "Schedule windows that fired nothing (overlap, catch_up: skip), by schedule.",
            ),
            &["schedule"],
        )
        .expect("valid metric");
        let schedule_next_fire = prometheus::GaugeVec::new(
            Opts::new(
                names::SCHEDULE_NEXT_FIRE_TIMESTAMP_SECONDS,
                "Unix time of each enabled schedule's next window (sampled on scrape).",
            ),
            &["schedule"],
        )
        .expect("valid metric");
        let schedule_last_fire = prometheus::GaugeVec::new(
            Opts::new(
                names::SCHEDULE_LAST_FIRE_TIMESTAMP_SECONDS,
                "Unix time of the window each schedule last fired a task for (sampled on scrape).",
            ),
            &["schedule"],
        )
        .expect("valid metric");
        let schedule_last_outcome = IntGaugeVec::new(
            Opts::new(
                names::SCHEDULE_LAST_OUTCOME,
                "1 for the status of each schedule's last task (sampled on scrape).",
            ),
            &["schedule", "status"],
        )
        .expect("valid metric");
        let schedule_consecutive_failures = IntGaugeVec::new(
            Opts::new(
                names::SCHEDULE_CONSECUTIVE_FAILURES,
                "Tasks of each schedule that failed or died since its last success (sampled on scrape).",
            ),
            &["schedule"],
        )
        .expect("valid metric");
        let registry = names::registry_with(
            "producer-api",
            vec![
                Box::new(schedule_next_fire.clone()),
                Box::new(schedule_last_fire.clone()),
                Box::new(schedule_last_outcome.clone()),
                Box::new(schedule_consecutive_failures.clone()),
                Box::new(schedule_fired.clone()),
                Box::new(schedule_skipped.clone()),
                Box::new(ledger_pruned.clone()),
                Box::new(workers_pruned.clone()),
                Box::new(recorder_events.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(ledger_last_success.clone()),
                Box::new(ledger_tasks.clone()),
                Box::new(queue_messages.clone()),
                Box::new(recorder_lag.clone()),
                Box::new(tasks_enqueued.clone()),
                Box::new(http_requests.clone()),
                Box::new(http_duration.clone()),
                Box::new(outbox_backlog.clone()),
                Box::new(outbox_published.clone()),
                Box::new(outbox_publish_errors.clone()),
                Box::new(outbox_publish_duration.clone()),
                Box::new(amqp_connected.clone()),
                Box::new(outbox_publish_timeouts.clone()),
                Box::new(enqueue_sessions_given_up.clone()),
                Box::new(amqp_blocked.clone()),
            ],
        );
        Self {
            registry,
            tasks_enqueued,
            http_requests,
            http_duration,
            outbox_backlog,
            outbox_published,
            outbox_publish_errors,
            outbox_publish_duration,
            amqp_connected,
            outbox_publish_timeouts,
            enqueue_sessions_given_up,
            amqp_blocked,
            queue_messages,
            ledger_last_success,
            ledger_tasks,
            recorder_events,
            recorder_lag,
            ledger_pruned,
            workers_pruned,
            schedule_fired,
            schedule_skipped,
            schedule_next_fire,
            schedule_last_fire,
            schedule_last_outcome,
            schedule_consecutive_failures,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        names::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
