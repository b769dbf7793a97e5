//! What the two binaries share at run time, apart from the contract: the AMQP connection
//! supervisor and publishing, command-line configuration, database error classes, metric
//! registration, the shutdown runner and logging. Behind the `runtime` feature, so a
//! client of the contract alone (task kinds and parameters, envelope, events, results)
//! does not build sqlx, prometheus, clap or tracing-subscriber.

pub mod amqp;
pub mod config;
pub mod db;
pub mod declare;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
