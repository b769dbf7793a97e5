//! An enqueue statement that is not answered in time. A slow server cancels it itself
//! (`ENQUEUE_STATEMENT_TIMEOUT` is the statement's `statement_timeout`): nothing is
//! stored and the client hears so. A network path gone silent under it is given up on a
//! second later, rather than holding the request (and one of the intake's places) until
//! TCP gives up, and the client is never told "nothing was stored" for a task that was.

use std::time::Duration;

use producer_api::intake::ANSWER_GRACE;
use serde_json::Value;
use sqlx::Connection as _;
use test_support::*;

use crate::outages::{on_database_behind, stored_since, HeldEnqueue};

/// The statement timeout these tests give the intake.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Under the requests' own limit (30 s, answered 408), well over what the intake needs:
/// the statement's wait, a new connection, the end of the first session and two
/// statements.
const ANSWERED_WITHIN: Duration = Duration::from_secs(20);

fn options() -> AppOptions {
    AppOptions {
        extra_args: vec![
            format!(
                "--enqueue-statement-timeout={}s",
                STATEMENT_TIMEOUT.as_secs()
            ),
            "--database-acquire-timeout=2s".to_owned(),
        ],
        ..Default::default()
    }
}

/// The answer to `post`, sent at `sent`, within [`ANSWERED_WITHIN`]; and how long it took.
async fn answered(
    post: impl std::future::Future<Output = Result<reqwest::Response, tokio::task::JoinError>>,
    sent: std::time::Instant,
) -> (reqwest::Response, Duration) {
    let response = tokio::time::timeout(ANSWERED_WITHIN, post)
        .await
        .unwrap_or_else(|_| panic!("not answered within {ANSWERED_WITHIN:?}"))
        .unwrap();
    let took = sent.elapsed();
    eprintln!("answered {took:?} after it was sent");
    (response, took)
}

/// `cleanup_enqueue_sessions_given_up_total`: the sessions ended, and those left.
async fn given_up(app: &TestApp) -> (f64, f64) {
    let series =
        |outcome| format!("cleanup_enqueue_sessions_given_up_total{{outcome=\"{outcome}\"}}");
    let ended = app
        .metric(&series("ended"))
        .await
        .expect("the series is there from the start");
    let left = app
        .metric(&series("left"))
        .await
        .expect("the series is there from the start");
    (ended, left)
}

/// Wait, at most `within`, until [`given_up`] counts `ended` sessions ended and none left
/// (a session ended in the background is counted a moment after the answer).
async fn until_ended(app: &TestApp, ended: f64, within: Duration) {
    let what = format!("{ended} sessions counted ended, none left");
    eventually(within, &what, || async {
        given_up(app).await == (ended, 0.0)
    })
    .await;
}

/// An API reaching the database through `proxy`, and an enqueue whose statement commits
/// once `silence` holds back what passes the proxy: its answer, not before the answer was
/// overdue. Also the ids stored before, and the database and broker names to keep.
async fn committed_then_silenced(
    proxy: &TcpProxy,
    silence: impl FnOnce(&TcpProxy),
) -> (
    TestDb,
    TestBroker,
    TestApp,
    Vec<uuid::Uuid>,
    reqwest::Response,
) {
    let (db, broker, app) = on_database_behind(proxy, options()).await;
    let held = HeldEnqueue::start(&db, &app).await;
    silence(proxy);
    let sent = held.sent;
    // The statement commits (its answer held back).
    let (before, post) = held.release(&app).await;
    let (response, took) = answered(post, sent).await;
    assert!(
        took >= STATEMENT_TIMEOUT + ANSWER_GRACE,
        "given up on before the answer was overdue: {took:?}"
    );
    (db, broker, app, before, response)
}

/// The statement commits, then the connection it ran on goes silent before its answer
/// arrives (a firewall forgot the connection; new connections pass): once the answer is
/// overdue the intake tries once more on a new connection, finds the task stored and
/// answers 202 with it, once; and the next enqueue is stored on a new connection too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_connection_goes_silent_after_its_commit_is_answered_with_its_task() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (_db, _broker, app, before, response) =
        committed_then_silenced(&proxy, TcpProxy::freeze_open).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let task_id: uuid::Uuid = body["task_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(stored_since(&app, &before).await, vec![task_id]);
    // Its session was ended before the second try (the server saw the frozen connection
    // as idle), or in the background if that took longer than the wait.
    until_ended(&app, 1.0, Duration::from_secs(10)).await;

    // The connections the intake kept before are silent: it opens new ones.
    let stored = app.task_count().await;
    let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(app.task_count().await, stored + 1);
    proxy.reset().await;
    app.stop().await;
}

/// The whole path goes silent under a statement that then commits, new connections
/// included: the caller hears in time that the outcome is unknown, with the id its task
/// has (not "nothing was stored", not a 408 at the requests' 30 s limit), and once the
/// path is back the intake stores again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_whole_path_goes_silent_is_answered_outcome_unknown_in_time() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (_db, _broker, app, before, response) =
        committed_then_silenced(&proxy, TcpProxy::freeze).await;
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:cleanup:problem:outcome-unknown",
        "{problem}"
    );
    let task_id: uuid::Uuid = problem["task_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(stored_since(&app, &before).await, vec![task_id]);

    proxy.reset().await;
    let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
    assert_eq!(response.status(), 202);
    // No new connection could end the first try's session at the time: the background
    // does, once the path is back.
    until_ended(&app, 1.0, Duration::from_secs(15)).await;
    app.stop().await;
}

/// The server is slow, not silent: the statement waits on a lock for longer than the
/// timeout. The server cancels it, so nothing is stored and the client hears 503
/// `ledger-unavailable` at the timeout; no session is left running the statement (the
/// intake neither gives up on the connection nor tries again on another, which would
/// wait on the same lock and leave sessions behind); and once the lock is gone the task
/// is still not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_the_server_is_slow_to_store_is_cancelled_and_answered_503() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (db, _broker, app) = on_database_behind(&proxy, options()).await;
    let mut held = HeldEnqueue::start(&db, &app).await;
    let stored = app.task_count().await;

    let (response, took) = answered(&mut held.post, held.sent).await;
    assert!(took >= STATEMENT_TIMEOUT, "answered after {took:?}");
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:cleanup:problem:ledger-unavailable",
        "{problem}"
    );
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'active'
           AND query LIKE 'WITH input AS%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(running, 0, "a session still runs the enqueue statement");
    // The server cancelled it and answered: no session was given up on.
    assert_eq!(given_up(&app).await, (0.0, 0.0));
    held.unlock().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.task_count().await, stored, "nothing was stored");
    app.stop().await;
}

/// The statement is done but its commit waits (a deferred trigger on a lock here; a
/// synchronous standby gone, in production), where `statement_timeout` does not reach.
/// The intake gives up on it once its answer is overdue, ends its session before trying
/// again (which settles it: rolled back), gives up on the second try in the same way and
/// ends that session too: the caller hears the outcome is unknown, and no session is left
/// behind waiting to commit (each would hold a connection slot of the server until the
/// commit could go on, and then commit a task its caller may have sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_commit_hangs_leaves_no_session_behind() {
    let (db, broker) = (TestDb::create().await, TestBroker::create().await);
    let app = TestApp::spawn(&db, &broker, options()).await;
    let mut locker = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    for statement in [
        "CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock_shared(4343); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON cleanup_outbox
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit()",
        "SELECT pg_advisory_lock(4343)",
    ] {
        sqlx::query(statement).execute(&mut locker).await.unwrap();
    }
    let stored = app.task_count().await;
    let sent = std::time::Instant::now();
    let post = app.post("/maintenance/cleanup-runs", runs_body());

    let (response, took) = answered(async { Ok(post.await) }, sent).await;
    assert!(took >= 2 * (STATEMENT_TIMEOUT + ANSWER_GRACE), "{took:?}");
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:cleanup:problem:outcome-unknown",
        "{problem}"
    );
    eventually(
        Duration::from_secs(10),
        "no session waits to commit the enqueue",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event = 'advisory'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            waiting == 0
        },
    )
    .await;
    // Both tries' sessions were given up on and ended (the second's in the background).
    until_ended(&app, 2.0, Duration::from_secs(10)).await;
    sqlx::query("SELECT pg_advisory_unlock(4343)")
        .execute(&mut locker)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.task_count().await,
        stored,
        "both tries were rolled back"
    );
    app.stop().await;
}
