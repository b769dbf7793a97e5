//! What the producer API and the workers must agree on: task kinds and their parameters,
//! the message envelope, events, AMQP topology, the retry policy, configuration, telemetry
//! and metric names.

pub mod amqp;
pub mod config;
pub mod db;
pub mod envelope;
pub mod events;
pub mod metrics;
pub mod retry;
pub mod shutdown;
pub mod signing;
pub mod tasks;
pub mod telemetry;
pub mod topology;

/// Version of this build, reported by `cleanup_build_info` and worker heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
