//! A real producer-api in the test's process, on port 0, against the test's own
//! database and AMQP prefix.

use std::time::Duration;

use clap::Parser;
use producer_api::{Application, Config};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{amqp_base, TestBroker};
use crate::db::TestDb;
use crate::signing::SIGNING_KEYS;

/// The API token every [`TestApp`] accepts (`API_TOKENS`).
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// How the test wants the app configured, beyond the defaults.
#[derive(Clone)]
pub struct AppOptions {
    /// Instead of the [`TestDb`]'s URL (a [`crate::TcpProxy`] in front of it, say).
    pub database_url: Option<String>,
    /// Instead of [`amqp_base`].
    pub amqp_url: Option<String>,
    /// `--relay-enabled` (default true): false leaves every task in the outbox.
    pub relay_enabled: bool,
    /// `--relay-batch-size` (default 100).
    pub relay_batch_size: u32,
    /// More flags, after the defaults.
    pub extra_args: Vec<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            database_url: None,
            amqp_url: None,
            relay_enabled: true,
            relay_batch_size: 100,
            extra_args: Vec::new(),
        }
    }
}

impl AppOptions {
    /// The defaults with the relay off: every accepted task stays in the outbox.
    pub fn without_relay() -> Self {
        Self {
            relay_enabled: false,
            ..Default::default()
        }
    }

    /// The defaults and these flags (`--max-attempts=4`, ...).
    pub fn with_args(args: &[&str]) -> Self {
        Self {
            extra_args: args.iter().map(|&arg| arg.to_owned()).collect(),
            ..Default::default()
        }
    }
}

/// A producer-api running in the test's process, stopped when dropped.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub client: reqwest::Client,
    /// A pool on the API's ledger database.
    pub pool: PgPool,
    pub shutdown: CancellationToken,
    pub handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Build and start the API on `db` and `broker`'s prefix, with the test key ring and
    /// [`TOKEN`].
    pub async fn spawn(db: &TestDb, broker: &TestBroker, options: AppOptions) -> TestApp {
        let mut args: Vec<String> = vec![
            "producer-api".into(),
            "--listen-addr=127.0.0.1:0".into(),
            format!(
                "--database-url={}",
                options.database_url.clone().unwrap_or_else(|| db.url())
            ),
            "--database-max-connections=8".into(),
            "--database-acquire-timeout=1s".into(),
            format!("--api-tokens={TOKEN}"),
            format!(
                "--amqp-url={}",
                options.amqp_url.clone().unwrap_or_else(amqp_base)
            ),
            format!("--amqp-prefix={}", broker.prefix()),
            format!("--relay-enabled={}", options.relay_enabled),
            format!("--relay-batch-size={}", options.relay_batch_size),
            "--relay-poll-interval=200ms".into(),
            "--max-body-bytes=2048".into(),
            format!("--task-signing-keys={SIGNING_KEYS}"),
        ];
        args.extend(options.extra_args.iter().cloned());
        let config = Config::try_parse_from(args).expect("valid test config");
        let app = Application::build(config).await.expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let pool = PgPool::connect(&db.url()).await.unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestApp {
            address,
            // No request of a test takes a minute: one that does fails instead of hanging.
            client: reqwest::Client::builder()
                .timeout(crate::STOP_LIMIT)
                .build()
                .expect("an HTTP client"),
            pool,
            shutdown,
            handle: Some(handle),
        }
    }

    /// `POST` `body` as JSON, with the token.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST` `body` with the token and an `Idempotency-Key`.
    pub async fn post_with_key(&self, path: &str, body: Value, key: &str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Any method, with the token and an optional JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// `GET` with the token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// `GET` without a token (probes, or to see the API refuse).
    pub async fn get_without_token(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap()
    }

    /// The value of one series of `/metrics`, named with its labels as the text format
    /// writes them (`cleanup_tasks_enqueued_total{kind="cleanup_runs"}`); `None` if absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .get_without_token("/metrics")
            .await
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    /// `POST /tasks/{task_id}/cancel`: the status and the body.
    pub async fn cancel(&self, task_id: &str) -> (u16, Value) {
        let response = self
            .send(
                reqwest::Method::POST,
                &format!("/tasks/{task_id}/cancel"),
                None,
            )
            .await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The task `task_id` as `GET /tasks/{task_id}` shows it.
    pub async fn task(&self, task_id: &str) -> Value {
        self.get(&format!("/tasks/{task_id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Rows in the ledger's `cleanup_tasks`.
    pub async fn task_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM cleanup_tasks")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Rows in the ledger's `cleanup_outbox`.
    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM cleanup_outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Wait until the relay has emptied the outbox.
    pub async fn wait_outbox_empty(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.outbox_len().await == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox still holds {} messages after {within:?}",
                self.outbox_len().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop the API and wait for it: it must exit cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            crate::stopped("the API", handle).await;
        }
        self.pool.close().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A small valid `POST /maintenance/cleanup-runs` body: 48 hours, a dry run.
pub fn runs_body() -> Value {
    serde_json::json!({"max_age_hours": 48, "dry_run": true})
}
