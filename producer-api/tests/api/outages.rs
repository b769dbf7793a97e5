use std::time::Duration;

use producer_api::intake;
use serde_json::Value;
use shared::tasks::TaskKind;
use sqlx::Connection as _;
use test_support::*;

/// A stack whose API reaches RabbitMQ through `proxy`.
async fn behind(proxy: &TcpProxy) -> Stack {
    Stack::start_with(AppOptions {
        amqp_url: Some(amqp_via(proxy.addr)),
        ..Default::default()
    })
    .await
}

/// An API on a database of its own that it reaches through `proxy` (with `options`
/// besides). The database and the broker's names live as long as the returned guards.
pub(crate) async fn on_database_behind(
    proxy: &TcpProxy,
    options: AppOptions,
) -> (TestDb, TestBroker, TestApp) {
    let db = TestDb::create().await;
    let broker = TestBroker::create().await;
    let app = TestApp::spawn(
        &db,
        &broker,
        AppOptions {
            database_url: Some(db.url_via(proxy.addr)),
            ..options
        },
    )
    .await;
    (db, broker, app)
}

/// An API on a database of its own that it reaches through `proxy`, and one task it
/// accepted.
async fn with_database_behind(proxy: &TcpProxy) -> (TestDb, TestBroker, TestApp) {
    let (db, broker, app) = on_database_behind(proxy, AppOptions::default()).await;
    assert_eq!(
        app.post("/maintenance/cleanup-runs", runs_body())
            .await
            .status(),
        202
    );
    (db, broker, app)
}

/// How long `stop` took to end (the harness fails the test past its `STOP_LIMIT`),
/// printed and checked against `limit`.
async fn stops_within(stop: impl std::future::Future<Output = ()>, limit: Duration, what: &str) {
    let asked = std::time::Instant::now();
    stop.await;
    let took = asked.elapsed();
    eprintln!("the API exited {took:?} after it was told to stop");
    assert!(took < limit, "{what}: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_accepted_while_rabbitmq_is_unreachable_are_published_when_it_is_back() {
    // Start with the broker unreachable.
    let proxy = TcpProxy::start(&amqp_address(), false).await;
    let stack = behind(&proxy).await;
    let (app, broker) = (&stack.app, &stack.broker);

    let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
    assert_eq!(
        response.status(),
        202,
        "the ledger alone makes a task durable"
    );
    let ready = app.get_without_token("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["broker"], false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.queue_len(TaskKind::CleanupRuns).await, 0);
    assert_eq!(app.outbox_len().await, 1);

    proxy.restore();
    app.wait_outbox_empty(Duration::from_secs(30)).await;
    assert_eq!(broker.drain(TaskKind::CleanupRuns).await.len(), 1);

    // Now lose the connection of a running relay, enqueue during the outage, restore.
    proxy.cut();
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        accepted.push(body["task_id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(broker.queue_len(TaskKind::CleanupRuns).await, 0);
    proxy.restore();
    app.wait_outbox_empty(Duration::from_secs(60)).await;
    let mut published = broker.drain_ids(TaskKind::CleanupRuns).await;
    published.sort();
    accepted.sort();
    assert_eq!(
        published, accepted,
        "every task accepted during the outage, once"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_answers_503_while_the_database_is_unreachable() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (_db, _broker, app) = with_database_behind(&proxy).await;

    proxy.cut();
    // After a pause, so that the intake does not send on the connection it kept, which
    // the cut broke without an answer: whether an enqueue sent on it had committed, nobody
    // could tell (`an_enqueue_that_cannot_be_tried_again_is_answered_outcome_unknown`).
    tokio::time::sleep(shared::runtime::db::PING_IDLE_AFTER + Duration::from_millis(100)).await;
    for _ in 0..3 {
        let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.headers().contains_key("retry-after"));
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"));
    }
    let ready = app.get_without_token("/readyz").await;
    assert_eq!(ready.status(), 503);

    proxy.restore();
    eventually(Duration::from_secs(10), "enqueue works again", || async {
        app.post("/maintenance/cleanup-runs", runs_body())
            .await
            .status()
            == 202
    })
    .await;
    assert_eq!(
        app.task_count().await,
        2,
        "the refused requests stored nothing"
    );
    app.stop().await;
}

/// The intake keeps its connections from one enqueue to the next. When they have all died
/// since (the database restarted, the network path was reset), the next enqueues are still
/// answered 202, each stored once: the statement is tried again on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_on_kept_connections_that_died_since_are_stored_once_and_answered_202() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (_db, _broker, app) = on_database_behind(&proxy, AppOptions::default()).await;
    stored_once_across(&app, proxy.reset()).await;
    app.stop().await;
}

/// The server ends the sessions of the intake's kept connections (a restart, an operator's
/// `pg_terminate_backend`): the next enqueue on one hears the server's error, which means
/// its statement did not run, and is stored on a new connection, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_on_kept_connections_whose_sessions_were_ended_are_stored_once() {
    let (db, broker) = (TestDb::create().await, TestBroker::create().await);
    let app = TestApp::spawn(&db, &broker, AppOptions::default()).await;
    let end_sessions = async {
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert!(ended >= 1, "no session to end");
    };
    stored_once_across(&app, end_sessions).await;
    app.stop().await;
}

/// The network path to the database goes silent (a firewall drops the connections without
/// a word) after a pause in enqueues: the next enqueue is not sent on a kept connection,
/// which would hang until TCP gives up: the kept one is checked first (within a second),
/// a new one cannot be opened within the connect timeout, and the enqueue is answered 503
/// "nothing was stored" within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_pause_an_enqueue_does_not_hang_on_a_kept_connection_gone_silent() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (_db, _broker, app) = on_database_behind(&proxy, AppOptions::default()).await;
    for _ in 0..intake::IN_FLIGHT {
        assert_eq!(
            app.post("/maintenance/cleanup-runs", runs_body())
                .await
                .status(),
            202
        );
    }
    proxy.freeze();
    tokio::time::sleep(shared::runtime::db::PING_IDLE_AFTER + Duration::from_millis(100)).await;

    let asked = std::time::Instant::now();
    let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:cleanup:problem:ledger-unavailable");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        asked.elapsed()
    );
    proxy.reset().await;
    assert_eq!(app.task_count().await, intake::IN_FLIGHT as i64);
    app.stop().await;
}

/// The enqueue statement commits, and its answer is lost with its connection: the client
/// is still answered 202 with that task, stored once (not 503 "nothing was stored", which
/// would make it send the task again). The statement is held on a lock until the proxy
/// holds every byte back, so that it commits while its answer cannot reach the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_answer_is_lost_after_its_commit_is_answered_with_its_task() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (db, _broker, app) = on_database_behind(&proxy, AppOptions::default()).await;
    let held = HeldEnqueue::start(&db, &app).await;
    proxy.freeze();
    let (before, post) = held.release(&app).await;
    // Its answer is held back; now its connection ends.
    proxy.reset().await;

    let response = post.await.unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let answered: uuid::Uuid = body["task_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        stored_since(&app, &before).await,
        vec![answered],
        "the task answered is the one stored, once"
    );
    let messages: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM cleanup_outbox WHERE task_id = $1)
              + (SELECT count(*) FROM cleanup_tasks WHERE id = $1 AND published_at IS NOT NULL)",
    )
    .bind(answered)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(messages, 1, "its one message is in the outbox or published");
    app.stop().await;
}

/// The enqueue statement's connection fails while it waits, and no new connection can be
/// had to try again: the client hears that the outcome is unknown, not "nothing was
/// stored", and indeed the statement still commits once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_that_cannot_be_tried_again_is_answered_outcome_unknown() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (db, _broker, app) = on_database_behind(&proxy, AppOptions::default()).await;
    let mut held = HeldEnqueue::start(&db, &app).await;

    proxy.cut();
    let response = (&mut held.post).await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(!response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:cleanup:problem:outcome-unknown",
        "{problem}"
    );
    // And yet it commits, with the id the answer gave.
    let (before, _) = held.release(&app).await;
    assert_eq!(
        stored_since(&app, &before).await,
        vec![problem["task_id"]
            .as_str()
            .unwrap()
            .parse::<uuid::Uuid>()
            .unwrap()]
    );
    proxy.restore();
    app.stop().await;
}

/// An enqueue held on a lock: the outbox trigger (which runs after the statement's
/// inserts, before its commit) is made to wait for an advisory lock the test holds, then
/// one task is POSTed, until its statement waits there. (A lock on a table would stop the
/// statement's preparation instead, on a connection that has not prepared it, and hold
/// back that answer rather than the commit's.)
pub(crate) struct HeldEnqueue {
    before: Vec<uuid::Uuid>,
    locker: sqlx::PgConnection,
    pub(crate) post: tokio::task::JoinHandle<reqwest::Response>,
    /// When the POST was sent.
    pub(crate) sent: std::time::Instant,
}

/// The advisory lock key the outbox trigger waits for in [`HeldEnqueue`].
const HOLD: i64 = 4242;

impl HeldEnqueue {
    pub(crate) async fn start(db: &TestDb, app: &TestApp) -> Self {
        // A task stored first, so that the intake has a connection that stored one.
        let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
        assert_eq!(response.status(), 202);
        let before = stored_ids(app).await;
        let mut locker = sqlx::PgConnection::connect(&db.url()).await.unwrap();
        sqlx::query(&format!(
            "CREATE OR REPLACE FUNCTION cleanup_outbox_notify() RETURNS trigger
             LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_advisory_xact_lock_shared({HOLD});
                 RETURN NULL;
             END $$"
        ))
        .execute(&mut locker)
        .await
        .unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(HOLD)
            .execute(&mut locker)
            .await
            .unwrap();
        let client = app.client.clone();
        let url = format!("{}/maintenance/cleanup-runs", app.address);
        let sent = std::time::Instant::now();
        let post = tokio::spawn(async move {
            let request = client.post(url).bearer_auth(TOKEN).json(&runs_body());
            request.send().await.unwrap()
        });
        let waiting = "SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event = 'advisory'
                         AND query LIKE 'WITH input AS%'";
        eventually(
            Duration::from_secs(10),
            "the enqueue waits for the lock",
            || async {
                let waiting: i64 = sqlx::query_scalar(waiting)
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
                waiting == 1
            },
        )
        .await;
        Self {
            before,
            locker,
            post,
            sent,
        }
    }

    /// Let the statement go on (if it still waits).
    pub(crate) async fn unlock(&mut self) {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(HOLD)
            .execute(&mut self.locker)
            .await
            .unwrap();
    }

    /// Let the statement go on, and wait until it committed: the tasks stored before it,
    /// and its request.
    pub(crate) async fn release(
        mut self,
        app: &TestApp,
    ) -> (Vec<uuid::Uuid>, tokio::task::JoinHandle<reqwest::Response>) {
        self.unlock().await;
        eventually(Duration::from_secs(10), "the enqueue commits", || async {
            app.task_count().await == self.before.len() as i64 + 1
        })
        .await;
        (self.before, self.post)
    }
}

/// Enqueue once on each of the intake's connections (one after the other, so that each
/// is used and kept), then `breaking` them, then as many again: every enqueue is answered
/// 202 and stored once.
async fn stored_once_across(app: &TestApp, breaking: impl std::future::Future<Output = ()>) {
    for _ in 0..intake::IN_FLIGHT {
        let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
        assert_eq!(response.status(), 202);
    }
    breaking.await;
    for _ in 0..intake::IN_FLIGHT {
        let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
        assert_eq!(
            response.status(),
            202,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }
    assert_eq!(app.task_count().await, 2 * intake::IN_FLIGHT as i64);
}

/// The ids in the ledger that are not in `before`.
pub(crate) async fn stored_since(app: &TestApp, before: &[uuid::Uuid]) -> Vec<uuid::Uuid> {
    let mut ids = stored_ids(app).await;
    ids.retain(|id| !before.contains(id));
    ids
}

/// The ids in the ledger.
async fn stored_ids(app: &TestApp) -> Vec<uuid::Uuid> {
    sqlx::query_scalar("SELECT id FROM cleanup_tasks")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// RabbitMQ stops answering the API (a partition: its connections stay open, nothing
/// passes) while its relay has a task to publish, and the API is then told to stop: it
/// must still exit, its relay and recorder included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_whose_broker_stops_answering_still_stops() {
    let proxy = TcpProxy::start(&amqp_address(), true).await;
    let stack = behind(&proxy).await;
    let app = &stack.app;
    enqueue(app, "/maintenance/cleanup-runs", runs_body()).await;
    app.wait_outbox_empty(Duration::from_secs(10)).await;

    proxy.freeze();
    enqueue(app, "/maintenance/cleanup-runs", runs_body()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Not a performance bound: a stop that waits out the relay's publish timeout (30 s)
    // instead of giving the batch a short grace is the bug this test is about.
    stops_within(
        stack.stop(),
        Duration::from_secs(25),
        "the API waited out the relay batch",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_idle_longer_than_the_recovery_grace_stops_while_its_broker_does_not_answer() {
    let proxy = TcpProxy::start(&amqp_address(), true).await;
    let stack = behind(&proxy).await;
    // No event for longer than the recorder waits before it asks the broker whether
    // events are stuck; then the broker stops answering, and the recorder asks.
    tokio::time::sleep(shared::runtime::amqp::RECOVERY_GRACE + Duration::from_secs(1)).await;
    proxy.freeze();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stops_within(
        stack.stop(),
        Duration::from_secs(25),
        "the API waited for a broker that does not answer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_whose_database_stops_answering_still_stops() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (_db, _broker, app) = with_database_behind(&proxy).await;
    // Connections stay open and nothing comes back: the relay's, the scheduler's and the
    // sweeper's next statements wait for ever.
    proxy.freeze();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stops_within(
        app.stop(),
        Duration::from_secs(40),
        "the API waited for a database that does not answer",
    )
    .await;
}

/// The relay holds its claimed outbox rows locked while it publishes them. An API cut off
/// from its database in that moment (a partition: the connection stays open, nothing
/// passes) must not keep them locked until PostgreSQL notices the connection is dead
/// (hours, with the default keepalives), for every other replica skips locked rows:
/// PostgreSQL ends the session once it has been idle in its transaction longer than the
/// relay's publish timeout and a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_a_partitioned_relay_held_are_released() {
    let db_proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let amqp_proxy = TcpProxy::start(&amqp_address(), true).await;
    let (_db, _broker, app) = on_database_behind(
        &db_proxy,
        AppOptions {
            amqp_url: Some(amqp_via(amqp_proxy.addr)),
            extra_args: vec!["--relay-publish-timeout=2s".into()],
            ..Default::default()
        },
    )
    .await;
    enqueue(&app, "/maintenance/cleanup-runs", runs_body()).await;
    app.wait_outbox_empty(Duration::from_secs(10)).await;

    // The broker stops answering: the relay claims the next row and waits for a confirm.
    amqp_proxy.freeze();
    enqueue(&app, "/maintenance/cleanup-runs", runs_body()).await;
    let claimable = || async {
        sqlx::query_scalar::<_, i64>(
            "WITH free AS (SELECT id FROM cleanup_outbox FOR UPDATE SKIP LOCKED) \
             SELECT count(*) FROM free",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(app.outbox_len().await == 1 && claimable().await == 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never held the row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now the database is cut off too, in the middle of the relay's transaction.
    db_proxy.freeze();
    let frozen = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while claimable().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the row stayed locked {:?} after the partition",
            frozen.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = frozen.elapsed();
    eprintln!("the row was free again {took:?} after the partition");
    // Not before the publish timeout and its margin: the relay's own wait is allowed.
    assert!(took >= Duration::from_secs(10), "released after {took:?}");
    app.stop().await;
}
