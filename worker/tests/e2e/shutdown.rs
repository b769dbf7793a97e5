//! Stopping a worker: it exits in bounded time, whatever its broker connection does.

use std::time::{Duration, Instant};

use test_support::*;

/// The broker stops answering the worker (a partition: the connection stays open, nothing
/// passes) while it deletes, and the worker is told to stop right after: its consumers'
/// cancels, its acks, its continuation and its goodbye go unanswered (lapin holds them,
/// then waits for a recovery). It must still exit, and what it did not finish goes on
/// with the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_broker_stops_answering_as_it_stops_still_exits() {
    const ROWS: i64 = 1_000_000;
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    runs.insert(ROWS, "succeeded", Some(100.0), 0).await;
    let proxy = TcpProxy::start(&amqp_address(), true).await;
    let worker = TestWorker::spawn_via(
        &stack.broker,
        &amqp_via(proxy.addr),
        &[runs_database_flag(runs.db.url())],
    )
    .await;
    let id = stack
        .cleanup_under_way(&runs, Duration::from_secs(30))
        .await;

    proxy.freeze();
    let asked = Instant::now();
    // Fails the test if the worker has not exited within the harness's STOP_LIMIT.
    worker.stop().await;
    eprintln!(
        "the worker exited {:?} after it was told to stop",
        asked.elapsed()
    );

    // The task goes on with a worker that can reach the broker.
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;
    let task = wait_for(&stack.app, &id, DONE, Duration::from_secs(120)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["result"]["runs_deleted"], ROWS,
        "every row counted once: {task}"
    );
    assert_eq!(runs.count("SELECT count(*) FROM runs").await, 0);
    worker.stop().await;
    stack.stop().await;
}

/// A connection still in use when the process stops (a statement the database does not
/// answer) does not hold the exit: closing the pool gives up after its limit.
#[tokio::test]
async fn closing_a_pool_with_a_connection_in_use_gives_up_after_its_limit() {
    use shared::runtime::db;
    let test_db = TestDb::create().await;
    let pool = sqlx::PgPool::connect(&test_db.url()).await.unwrap();
    let held = pool.acquire().await.unwrap();
    let asked = Instant::now();
    assert!(!db::close(&pool, "test", Duration::from_millis(300)).await);
    let waited = asked.elapsed();
    assert!(waited < Duration::from_secs(5), "close waited {waited:?}");
    assert!(pool.is_closed());
    drop(held);
    // Once nothing holds a connection, it closes at once.
    let pool = sqlx::PgPool::connect(&test_db.url()).await.unwrap();
    assert!(db::close(&pool, "test", Duration::from_secs(5)).await);
}
