//! The start of most end-to-end tests: a ledger database, an AMQP prefix and a
//! producer-api on them, each the test's own.

use std::time::Duration;

use serde_json::Value;

use crate::app::{AppOptions, TestApp};
use crate::broker::TestBroker;
use crate::db::TestDb;
use crate::polling::{enqueue, eventually, run_task};
use crate::runs_db::RunsDb;
use crate::workers::TestWorker;

/// A [`TestDb`], a [`TestBroker`] and a [`TestApp`] on them. Dropping it stops the API,
/// deletes the prefix and drops the database, in that order; [`Stack::stop`] first waits
/// for the API to exit cleanly.
///
/// Workers are the test's to start ([`Stack::worker`]) and stop: many tests stop and
/// start them, or look at their metrics.
pub struct Stack {
    pub app: TestApp,
    pub broker: TestBroker,
    pub db: TestDb,
}

impl Stack {
    /// A fresh database and prefix, and the API on them with the default options.
    pub async fn start() -> Self {
        Self::start_with(AppOptions::default()).await
    }

    /// A fresh database and prefix, and the API on them with `options`.
    pub async fn start_with(options: AppOptions) -> Self {
        Self::start_on(TestBroker::create().await, options).await
    }

    /// A fresh database, the API on it and on `broker` (a prefix with another delivery
    /// limit, say) with `options`.
    pub async fn start_on(broker: TestBroker, options: AppOptions) -> Self {
        let db = TestDb::create().await;
        let app = TestApp::spawn(&db, &broker, options).await;
        Self { app, broker, db }
    }

    /// Another API on the same database and prefix (a replica, a relay).
    pub async fn another_app(&self, options: AppOptions) -> TestApp {
        TestApp::spawn(&self.db, &self.broker, options).await
    }

    /// A worker on the stack's prefix with these extra flags ([`TestWorker::spawn`]).
    pub async fn worker(&self, extra: &[String]) -> TestWorker {
        TestWorker::spawn(&self.broker, extra).await
    }

    /// Enqueue a real `cleanup_runs` (rows older than 24 h, batches of 1,000) and wait,
    /// at most `within`, until its worker has deleted some of the rows `runs` holds; the
    /// task id.
    pub async fn cleanup_under_way(&self, runs: &RunsDb, within: Duration) -> String {
        let count = "SELECT count(*) FROM runs";
        let before = runs.count(count).await;
        let id = self
            .enqueue(
                "/maintenance/cleanup-runs",
                serde_json::json!({"max_age_hours": 24, "batch_size": 1000}),
            )
            .await;
        eventually(within, "the cleanup is deleting", || async {
            runs.count(count).await < before
        })
        .await;
        id
    }

    /// [`enqueue`] through the stack's API; the task id.
    pub async fn enqueue(&self, path: &str, body: Value) -> String {
        enqueue(&self.app, path, body).await
    }

    /// Enqueue a task and wait up to 30 s for it to end ([`run_task`]); the task.
    pub async fn run(&self, path: &str, body: Value) -> Value {
        run_task(&self.app, path, body, Duration::from_secs(30)).await
    }

    /// Stop the API (it must exit cleanly), then delete the prefix and the database.
    pub async fn stop(self) {
        self.app.stop().await;
    }
}
