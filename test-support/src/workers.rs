//! Workers in the test's process, on port 0, on the test's AMQP prefix.

use std::fmt::Display;
use std::path::Path;

use clap::Parser;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{amqp_base, TestBroker};
use crate::signing::SIGNING_KEYS;

/// The flags every test worker starts with: the broker, `broker`'s prefix, metrics on
/// port 0.
fn base_args(broker: &TestBroker) -> Vec<String> {
    base_args_via(broker, &amqp_base())
}

/// [`base_args`] on another URL of the broker (through a proxy, say).
fn base_args_via(broker: &TestBroker, amqp_url: &str) -> Vec<String> {
    vec![
        "worker".to_owned(),
        format!("--amqp-url={amqp_url}"),
        format!("--amqp-prefix={}", broker.prefix()),
        "--metrics-addr=127.0.0.1:0".to_owned(),
    ]
}

/// `--runs-database-url=<url>`: the worker cleans the runs table of that database.
pub fn runs_database_flag(url: impl Display) -> String {
    format!("--runs-database-url={url}")
}

/// `--temp-roots=<name>=<path>`: the worker cleans one temp root.
pub fn temp_root_flag(name: &str, path: impl AsRef<Path>) -> String {
    format!("--temp-roots={name}={}", path.as_ref().display())
}

/// A worker running in the test's process, stopped when dropped.
pub struct TestWorker {
    /// Where its `/metrics` and probes answer.
    pub port: u16,
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWorker {
    /// A worker on `broker`'s prefix with these extra flags (`--runs-database-url=…`,
    /// `--temp-roots=…`, ...): concurrency 2, retries after 300 ms without jitter, the
    /// test key ring.
    pub async fn spawn(broker: &TestBroker, extra: &[String]) -> Self {
        Self::spawn_via(broker, &amqp_base(), extra).await
    }

    /// [`TestWorker::spawn`], reaching the broker at `amqp_url` ([`crate::amqp_via`] a
    /// proxy).
    pub async fn spawn_via(broker: &TestBroker, amqp_url: &str, extra: &[String]) -> Self {
        let mut args = base_args_via(broker, amqp_url);
        args.extend([
            "--worker-concurrency=2".to_owned(),
            "--retry-initial-delay=300ms".to_owned(),
            "--retry-jitter=0".to_owned(),
            format!("--task-signing-keys={SIGNING_KEYS}"),
        ]);
        args.extend(extra.iter().cloned());
        let config = ::worker::Config::try_parse_from(args).expect("valid worker config");
        let app = ::worker::Application::build(config)
            .await
            .expect("worker builds");
        let port = app.port();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            port,
            shutdown,
            handle: Some(handle),
        }
    }

    /// The text of its `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Drop the worker without a goodbye, as a crash would (no `worker.stopped`).
    pub fn abandon(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }

    /// Stop the worker and wait for it: it must exit cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            crate::stopped("the worker", handle).await;
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Only build a worker on `broker`'s prefix (the test key ring, these extra flags), to
/// see whether it starts: what it checks at start-up, it checks in `build`.
pub async fn build_worker(
    broker: &TestBroker,
    extra: &[String],
) -> anyhow::Result<::worker::Application> {
    let mut args = base_args(broker);
    args.push(format!("--task-signing-keys={SIGNING_KEYS}"));
    args.extend(extra.iter().cloned());
    ::worker::Application::build(::worker::Config::try_parse_from(args).unwrap()).await
}
