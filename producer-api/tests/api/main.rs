//! Integration tests of producer-api against the real PostgreSQL and RabbitMQ.

mod auth;
mod cancel;
mod config;
mod console;
mod enqueue;
mod enqueue_silence;
mod idempotency;
mod intake;
mod openapi;
mod outages;
mod recorder;
mod relay;
mod retention;
mod run;
mod schedules;
mod transitions;
mod validation;
