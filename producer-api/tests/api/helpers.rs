//! Test harness: a real producer-api on port 0, against its own fresh PostgreSQL database
//! and its own AMQP name prefix, torn down when the test ends (even by panic).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use producer_api::{Application, Config};
use serde_json::Value;
use shared::tasks::TaskKind;
use shared::topology::Topology;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// The task-signing key ring every test component shares (`TASK_SIGNING_KEYS`): `test-new`
/// signs, both verify (as in the middle of a key rotation).
pub const SIGNING_KEYS: &str = "test-new:new-secret-0123456789abcdef0123456789,\
                                test-old:old-secret-0123456789abcdef0123456789";

/// [`SIGNING_KEYS`] parsed.
pub fn key_ring() -> shared::signing::KeyRing {
    shared::signing::KeyRing::parse(SIGNING_KEYS).unwrap()
}

pub fn pg_base() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn amqp_base() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("test_api_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&format!("{}/postgres", pg_base()))
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (see README)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", pg_base(), self.name)
    }

    /// The same database through another address (a proxy), with the same login.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let base = pg_base();
        let login = match base.rsplit_once('@') {
            Some((login, _host)) => format!("{login}@"),
            None => "postgres://".to_owned(),
        };
        format!("{login}{addr}/{}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we can await in: use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut admin) =
                    PgConnection::connect(&format!("{}/postgres", pg_base())).await
                {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                }
            });
        })
        .join();
    }
}

/// An AMQP prefix of its own for one test; its exchanges and queues are deleted at the end.
pub struct TestBroker {
    pub topology: Topology,
    _connection: Connection,
    pub channel: Channel,
}

impl TestBroker {
    pub async fn create() -> Self {
        Self::with_delivery_limit(5).await
    }

    /// Every component on this prefix must then use `--amqp-delivery-limit=<limit>`.
    pub async fn with_delivery_limit(limit: u32) -> Self {
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        let topology = Topology::new(&prefix, limit).unwrap();
        let connection = Connection::connect(&amqp_base(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (see README)");
        let channel = connection.create_channel().await.unwrap();
        topology.declare(&channel).await.expect("declare topology");
        Self {
            topology,
            _connection: connection,
            channel,
        }
    }

    pub fn prefix(&self) -> &str {
        self.topology.prefix()
    }

    /// Messages ready in the queue of `kind`.
    pub async fn queue_len(&self, kind: TaskKind) -> u32 {
        self.queue_len_named(&self.topology.task_queue(kind)).await
    }

    pub async fn queue_len_named(&self, name: &str) -> u32 {
        let queue = self
            .channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue.message_count()
    }

    /// Take (and ack) every message in the queue of `kind`.
    pub async fn drain(&self, kind: TaskKind) -> Vec<lapin::message::BasicGetMessage> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.topology.task_queue(kind).into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            messages.push(message);
        }
        messages
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(conn) =
                    Connection::connect(&amqp_base(), ConnectionProperties::default()).await
                {
                    if let Ok(channel) = conn.create_channel().await {
                        let _ = topology.delete(&channel).await;
                    }
                    let _ = conn.close(200, "test over".into()).await;
                }
            });
        })
        .join();
    }
}

/// How the test wants the app configured, beyond the defaults.
#[derive(Clone)]
pub struct AppOptions {
    pub database_url: Option<String>,
    pub amqp_url: Option<String>,
    pub relay_enabled: bool,
    pub relay_batch_size: u32,
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

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub shutdown: CancellationToken,
    pub handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
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
            client: reqwest::Client::new(),
            pool,
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

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

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn task_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM cleanup_tasks")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

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

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
        self.pool.close().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Wait until `check` holds, polling; fail with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of a real service that a test can cut and restore, to simulate
/// the service becoming unreachable without stopping it for everyone else.
pub struct TcpProxy {
    pub addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: &str, enabled: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let enabled = Arc::new(AtomicBool::new(enabled));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let upstream = upstream.to_owned();
        let accept = {
            let enabled = enabled.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !enabled.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        Self {
            addr,
            enabled,
            connections,
            accept,
        }
    }

    /// Refuse new connections and cut the open ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

pub fn runs_body() -> Value {
    serde_json::json!({"max_age_hours": 48, "dry_run": true})
}
