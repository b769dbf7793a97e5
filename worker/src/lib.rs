//! The worker: a stateless executor of cleanup tasks. It consumes task queues, runs the
//! executors, publishes results as events and exposes metrics and probes.

pub mod acks;
pub mod attempt;
pub mod cancels;
pub mod config;
pub mod consumer;
pub mod executor;
pub mod http;
pub mod metrics;
pub mod process;
pub mod startup;

pub use config::Config;
pub use startup::Application;
