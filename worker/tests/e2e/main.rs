//! End-to-end tests: producer-api, workers, real RabbitMQ, PostgreSQL and temp directories.

#[path = "../../../producer-api/tests/api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod config;
mod lifecycle;
mod support;

mod poison;
mod runs;
mod runs_safety;
mod runs_schema;
mod temp_files;
