//! Worker processes (the real binary), service restarts that always undo themselves, and
//! a census of task states.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use test_support::*;
use tokio::process::{Child, Command};

/// A `worker` process on a prefix, with its metrics on a port of its own.
pub struct WorkerProcess {
    pub port: u16,
    child: Child,
}

impl WorkerProcess {
    pub fn spawn(broker: &TestBroker, id: &str, env: &[(&str, String)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("cleanup-fault-{id}.log"));
        let log = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_worker"));
        command
            .env("AMQP_URL", amqp_base())
            .env("AMQP_PREFIX", broker.prefix())
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("WORKER_ID", id)
            .env("WORKER_CONCURRENCY", "2")
            .env("WORKER_HEARTBEAT_INTERVAL", "1s")
            .env("RETRY_INITIAL_DELAY", "1s")
            .env("LOG_LEVEL", "info")
            .env("TASK_SIGNING_KEYS", SIGNING_KEYS)
            .env_remove("RUNS_DATABASE_URL")
            .env_remove("TEMP_ROOTS")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        Self {
            port,
            child: command.spawn().expect("worker binary runs"),
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM; returns how long the worker took to exit, and its exit status.
    pub async fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let pid = self.child.id().expect("running").to_string();
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("worker exits after SIGTERM")
            .unwrap();
        (started.elapsed(), status)
    }

    /// A gauge or counter of the worker's `/metrics`, summed over its label sets.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let values: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// Stops RabbitMQ's application; starts it again when dropped, whatever happened.
pub struct RabbitOutage;

impl RabbitOutage {
    pub fn begin() -> Self {
        run("rabbitmqctl", &["stop_app"]);
        RabbitOutage
    }

    pub fn end(self) {
        drop(self);
    }
}

impl Drop for RabbitOutage {
    fn drop(&mut self) {
        run("rabbitmqctl", &["start_app"]);
        run("rabbitmqctl", &["await_startup"]);
    }
}

/// Raises RabbitMQ's memory alarm (a tiny watermark): the broker blocks every publishing
/// connection. Restores the default watermark when dropped, whatever happened.
pub struct MemoryAlarm;

impl MemoryAlarm {
    pub fn begin() -> Self {
        run(
            "rabbitmqctl",
            &["set_vm_memory_high_watermark", "0.0000001"],
        );
        MemoryAlarm
    }

    pub fn end(self) {
        drop(self);
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        run("rabbitmqctl", &["set_vm_memory_high_watermark", "0.4"]);
    }
}

fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .unwrap()
}

/// Stops PostgreSQL; starts it again when dropped, whatever happened.
pub struct PostgresOutage;

impl PostgresOutage {
    pub fn begin() -> Self {
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &pg_version(),
                "main",
                "stop",
                "-m",
                "fast",
            ],
        );
        PostgresOutage
    }

    pub fn end(self) {
        drop(self);
    }
}

impl Drop for PostgresOutage {
    fn drop(&mut self) {
        run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &pg_version(), "main", "start"],
        );
    }
}

/// How many of `ids` are in each status; ids the ledger does not know count as `lost`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Census {
    pub by_status: BTreeMap<String, usize>,
    pub lost: usize,
    /// The errors of the tasks that did not succeed, by message: what a failed run says.
    pub errors: BTreeMap<String, usize>,
}

impl Census {
    pub async fn take(pool: &PgPool, ids: &[uuid::Uuid]) -> Self {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM cleanup_tasks WHERE id = ANY($1) GROUP BY status",
        )
        .bind(ids)
        .fetch_all(pool)
        .await
        .unwrap();
        let known: usize = rows.iter().map(|(_, n)| *n as usize).sum();
        let errors: Vec<(String, i64)> = sqlx::query_as(
            "SELECT coalesce(error->>'message', '(none)'), count(*) FROM cleanup_tasks
             WHERE id = ANY($1) AND status <> 'succeeded' AND error IS NOT NULL
             GROUP BY 1",
        )
        .bind(ids)
        .fetch_all(pool)
        .await
        .unwrap();
        Census {
            by_status: rows.into_iter().map(|(s, n)| (s, n as usize)).collect(),
            lost: ids.len() - known,
            errors: errors.into_iter().map(|(m, n)| (m, n as usize)).collect(),
        }
    }

    pub fn count(&self, status: &str) -> usize {
        self.by_status.get(status).copied().unwrap_or(0)
    }

    pub fn finished(&self) -> usize {
        self.count("succeeded") + self.count("failed") + self.count("dead")
    }

    pub fn report(&self, scenario: &str, enqueued: usize) {
        eprintln!(
            "[{scenario}] enqueued {enqueued}: succeeded {}, failed {}, dead {}, lost {}, unfinished {}",
            self.count("succeeded"),
            self.count("failed"),
            self.count("dead"),
            self.lost,
            enqueued - self.finished() - self.lost,
        );
        for (message, n) in &self.errors {
            eprintln!("[{scenario}]   {n} x {message}");
        }
    }
}

/// Wait until every task is finished; returns the final census.
pub async fn settle(pool: &PgPool, ids: &[uuid::Uuid], within: Duration) -> Census {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let census = Census::take(pool, ids).await;
        if census.finished() + census.lost == ids.len() || tokio::time::Instant::now() > deadline {
            return census;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// POST until the API accepts (a client retrying through a 503), returning the task id.
pub async fn enqueue_retrying(app: &TestApp, path: &str, body: serde_json::Value) -> uuid::Uuid {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await;
        if let Ok(response) = response {
            if response.status() == 202 {
                let body: serde_json::Value = response.json().await.unwrap();
                return body["task_id"].as_str().unwrap().parse().unwrap();
            }
            assert_eq!(response.status(), 503, "only an outage may refuse a task");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API never accepted the task"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Show the logs of the in-process API at `level` (with `--nocapture`).
pub fn show_logs(level: &str) {
    shared::runtime::telemetry::init(&shared::runtime::telemetry::LogArgs {
        log_format: shared::runtime::telemetry::LogFormat::Pretty,
        log_level: level.into(),
    });
}

/// A worker process's `TEMP_ROOTS` setting: `root` as the temp root `scratch`.
pub fn scratch_root(root: &tempfile::TempDir) -> (&'static str, String) {
    ("TEMP_ROOTS", format!("scratch={}", root.path().display()))
}

/// A pseudo-random number in `0..n` (no need for a crate: the tests only vary timing).
pub fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n)) as u64
}
