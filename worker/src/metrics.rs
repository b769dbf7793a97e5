//! Prometheus metrics of the worker; names come from `shared::runtime::metrics`.

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use shared::runtime::metrics as names;

pub struct Metrics {
    registry: Registry,
    pub tasks_started: IntCounterVec,
    /// Labels: kind, outcome (succeeded, failed, retried, continued, cancelled). Poison messages are
    /// counted apart, in `poison`.
    pub tasks_finished: IntCounterVec,
    pub task_duration: HistogramVec,
    pub in_flight: IntGauge,
    /// Labels: kind, class (transient, permanent).
    pub errors: IntCounterVec,
    pub poison: IntCounterVec,
    pub runs_deleted: IntCounterVec,
    pub files_deleted: IntCounterVec,
    pub bytes_freed: IntCounterVec,
    pub last_success: GaugeVec,
    /// Labels: kind, target (table name or root name).
    pub oldest_eligible_age: GaugeVec,
    pub amqp_connected: IntGauge,
    pub amqp_blocked: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let tasks_started = counter(
            names::WORKER_TASKS_STARTED_TOTAL,
            "Task attempts started, by kind.",
            &["kind"],
        );
        let tasks_finished = counter(
            names::WORKER_TASKS_FINISHED_TOTAL,
            "Task attempts finished, by kind and outcome (succeeded, failed, retried, continued, cancelled).",
            &["kind", "outcome"],
        );
        let task_duration = HistogramVec::new(
            HistogramOpts::new(
                names::WORKER_TASK_DURATION_SECONDS,
                "Duration of task attempts, by kind.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(names::WORKER_TASKS_IN_FLIGHT, "Tasks executing now.")
            .expect("valid metric");
        let errors = counter(
            names::WORKER_ERRORS_TOTAL,
            "Failed attempts, by kind and error class.",
            &["kind", "class"],
        );
        let poison = counter(
            names::WORKER_POISON_MESSAGES_TOTAL,
            "Unprocessable messages rejected to the dead-letter queue, by queue kind.",
            &["kind"],
        );
        let runs_deleted = counter(
            names::RUNS_DELETED_TOTAL,
            "Rows of the runs table deleted (a partition dropped whole without being read counts the rows its statistics give: RUNS_PARTITION_COUNT).",
            &["table"],
        );
        let files_deleted = counter(
            names::FILES_DELETED_TOTAL,
            "Temp files deleted, by root.",
            &["root"],
        );
        let bytes_freed = counter(
            names::BYTES_FREED_TOTAL,
            "Bytes of temp files deleted, by root.",
            &["root"],
        );
        let last_success = GaugeVec::new(
            Opts::new(
                names::LAST_SUCCESS_TIMESTAMP_SECONDS,
                "Unix time of the last successful non-dry-run cleanup, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let oldest_eligible_age = GaugeVec::new(
            Opts::new(
                names::OLDEST_ELIGIBLE_AGE_SECONDS,
                "Age of the oldest row or file still eligible for deletion after the last run (0 when none).",
            ),
            &["kind", "target"],
        )
        .expect("valid metric");
        let amqp_connected = IntGauge::new(
            names::AMQP_CONNECTED,
            "1 while the worker holds a RabbitMQ connection.",
        )
        .expect("valid metric");
        let amqp_blocked = IntGauge::new(
            names::AMQP_BLOCKED,
            "1 while RabbitMQ blocks the worker's connection from publishing (memory or disk alarm).",
        )
        .expect("valid metric");
        let registry = names::registry_with(
            "worker",
            vec![
                Box::new(tasks_started.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(tasks_finished.clone()),
                Box::new(task_duration.clone()),
                Box::new(in_flight.clone()),
                Box::new(errors.clone()),
                Box::new(poison.clone()),
                Box::new(runs_deleted.clone()),
                Box::new(files_deleted.clone()),
                Box::new(bytes_freed.clone()),
                Box::new(last_success.clone()),
                Box::new(oldest_eligible_age.clone()),
                Box::new(amqp_connected.clone()),
                Box::new(amqp_blocked.clone()),
            ],
        );
        Self {
            registry,
            tasks_started,
            tasks_finished,
            task_duration,
            in_flight,
            errors,
            poison,
            runs_deleted,
            files_deleted,
            bytes_freed,
            last_success,
            oldest_eligible_age,
            amqp_connected,
            amqp_blocked,
        }
    }

    pub fn render(&self) -> String {
        names::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
