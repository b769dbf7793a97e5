//! The network path to the ledger goes silent while an enqueue statement waits for its
//! answer: the intake gives up on that connection after `ENQUEUE_STATEMENT_TIMEOUT`
//! rather than holding the request (and one of its statements' places) until TCP gives
//! up, and still never answers "nothing was stored" for a task that was.

use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::*;

use crate::outages::{on_database_behind, stored_since, HeldEnqueue};

/// The deadline these tests give the enqueue statement.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Well under the requests' own limit (30 s, answered 408), well over what the intake
/// needs: the deadline, a new connection (at most the acquire timeout) and two statements.
const ANSWERED_WITHIN: Duration = Duration::from_secs(12);

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

/// The request `post`, answered within [`ANSWERED_WITHIN`] of `asked`.
async fn answered(
    post: tokio::task::JoinHandle<reqwest::Response>,
    asked: Instant,
) -> reqwest::Response {
    let response = tokio::time::timeout(ANSWERED_WITHIN, post)
        .await
        .unwrap_or_else(|_| panic!("not answered within {ANSWERED_WITHIN:?}"))
        .unwrap();
    eprintln!("answered {:?} after the path went silent", asked.elapsed());
    assert!(
        asked.elapsed() >= STATEMENT_TIMEOUT,
        "answered before the deadline: {:?}",
        asked.elapsed()
    );
    response
}

/// The statement commits, then the connection it ran on goes silent before its answer
/// arrives (a firewall forgot the connection; new connections pass): after the deadline
/// the intake tries once more on a new connection, finds the task stored and answers 202
/// with it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_connection_goes_silent_after_its_commit_is_answered_with_its_task() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (db, _broker, app) = on_database_behind(&proxy, options()).await;
    let held = HeldEnqueue::start(&db, &app).await;
    proxy.freeze_open();
    let asked = Instant::now();
    let (before, post) = held.release(&app).await;

    let response = answered(post, asked).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let task_id: uuid::Uuid = body["task_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(stored_since(&app, &before).await, vec![task_id]);

    // The intake goes on, on new connections.
    let stored = app.task_count().await;
    let response = app.post("/maintenance/cleanup-runs", runs_body()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(app.task_count().await, stored + 1);
    proxy.reset().await;
    app.stop().await;
}

/// The whole path goes silent under a statement that then commits, new connections
/// included: the caller hears within the deadline and the acquire timeout that the
/// outcome is unknown, with the id its task has (not "nothing was stored", not a 408 at
/// the requests' 30 s limit), and once the path is back the intake stores again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_whole_path_goes_silent_is_answered_outcome_unknown_in_time() {
    let proxy = TcpProxy::start("127.0.0.1:5432", true).await;
    let (db, _broker, app) = on_database_behind(&proxy, options()).await;
    let held = HeldEnqueue::start(&db, &app).await;
    proxy.freeze();
    let asked = Instant::now();
    let (before, post) = held.release(&app).await;

    let response = answered(post, asked).await;
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
    app.stop().await;
}
