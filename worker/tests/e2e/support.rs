//! Worker-side test harness: a runs database, workers on port 0, waiting for results.

use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// A fresh database holding the shipped runs schema.
pub struct RunsDb {
    pub db: TestDb,
    pub pool: PgPool,
}

impl RunsDb {
    pub async fn create() -> Self {
        let db = TestDb::create().await;
        let pool = PgPool::connect(&db.url()).await.unwrap();
        sqlx::raw_sql(include_str!("../../../deploy/sql/runs-schema.sql"))
            .execute(&pool)
            .await
            .unwrap();
        Self { db, pool }
    }

    /// Insert `count` runs with `status`, finished `age_hours` ago (None: not finished),
    /// each with `logs` child rows. Returns their ids.
    pub async fn insert(
        &self,
        count: i64,
        status: &str,
        age_hours: Option<f64>,
        logs: i64,
    ) -> Vec<i64> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO runs (status, finished_at)
             SELECT $1, CASE WHEN $2::float8 IS NULL THEN NULL
                             ELSE now() - make_interval(secs => $2::float8 * 3600) END
             FROM generate_series(1, $3) RETURNING id",
        )
        .bind(status)
        .bind(age_hours)
        .bind(count)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO run_logs (run_id, line) SELECT r, 'log line ' || g
             FROM unnest($1::bigint[]) r, generate_series(1, $2) g",
        )
        .bind(&ids)
        .bind(logs)
        .execute(&self.pool)
        .await
        .unwrap();
        ids
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

pub struct TestWorker {
    pub port: u16,
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWorker {
    /// A worker on `broker`'s prefix with these extra flags (`--runs-database-url=…`,
    /// `--temp-roots=…`, ...).
    pub async fn spawn(broker: &TestBroker, extra: &[String]) -> Self {
        let mut args = vec![
            "worker".to_owned(),
            format!("--amqp-url={}", amqp_base()),
            format!("--amqp-prefix={}", broker.prefix()),
            "--metrics-addr=127.0.0.1:0".to_owned(),
            "--worker-concurrency=2".to_owned(),
            "--retry-initial-delay=300ms".to_owned(),
            "--retry-jitter=0".to_owned(),
            format!("--task-signing-keys={SIGNING_KEYS}"),
        ];
        args.extend(extra.iter().cloned());
        let config = worker::Config::try_parse_from(args).expect("valid worker config");
        let app = worker::Application::build(config)
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

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Enqueue through the API and return the task id.
pub async fn enqueue(app: &TestApp, path: &str, body: Value) -> String {
    let response = app.post(path, body).await;
    assert_eq!(response.status(), 202, "enqueue {path}");
    let body: Value = response.json().await.unwrap();
    body["task_id"].as_str().unwrap().to_owned()
}

/// Poll `GET /tasks/{id}` until its status is one of `finished`; return the task.
pub async fn wait_for(app: &TestApp, task_id: &str, finished: &[&str], within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let task: Value = app
            .get(&format!("/tasks/{task_id}"))
            .await
            .json()
            .await
            .unwrap();
        if finished.contains(&task["status"].as_str().unwrap_or_default()) {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {task_id} did not reach {finished:?} within {within:?}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const DONE: &[&str] = &["succeeded", "failed", "dead"];
