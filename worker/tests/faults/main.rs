//! Fault injection against the real services: workers killed, RabbitMQ and PostgreSQL
//! restarted, SIGTERM during a long cleanup, a task that crashes every worker, RabbitMQ's
//! memory alarm.
//!
//! These tests stop and start the machine's shared services, so they are `#[ignore]`d in
//! the normal run and run by `deploy/local/test.sh` afterwards, one at a time:
//! `cargo test -p worker --test faults -- --ignored --test-threads=1 --nocapture`.
//! Whatever happens, they leave the services running.

mod harness;
mod scenarios;
