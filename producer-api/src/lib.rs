//! producer-api: the control plane of the cleanup service. It accepts tasks over HTTP,
//! keeps the task ledger in PostgreSQL and relays tasks to RabbitMQ through an outbox.

pub mod config;
pub mod http;
pub mod intake;
pub mod ledger;
pub mod metrics;
pub mod recorder;
pub mod relay;
pub mod schedules;
pub mod startup;
pub mod ui;

pub use config::Config;
pub use startup::Application;
