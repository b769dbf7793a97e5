//! The runs pool (`shared::runtime::db::pool_options`) skips sqlx's ping as a connection
//! is taken when it was given back moments ago, and still pings one that sat idle; a
//! turn tries every statement again on another connection when its own is dead.

use std::time::Duration;

use shared::runtime::db::{is_transient, pool_options, pool_options_with, PING_IDLE_AFTER};
use sqlx::{Connection, PgConnection, PgPool};
use test_support::*;

use crate::runs_batches::{executor, run_to_the_end, task};
use crate::runs_safety::{count, database};

/// Never pinged as they are taken: what a connection given back moments ago gets.
const NEVER: Duration = Duration::from_secs(3600);

/// A pool of one connection made with `options`, and an administrator's connection.
async fn one_connection(
    db: &TestDb,
    options: sqlx::postgres::PgPoolOptions,
) -> (PgPool, PgConnection) {
    let admin = PgConnection::connect(&db.url()).await.unwrap();
    let pool = options.max_connections(1).connect(&db.url()).await.unwrap();
    (pool, admin)
}

/// The session behind `on` (a pool: the connection it hands out).
async fn backend_of<'c>(on: impl sqlx::PgExecutor<'c>) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(on)
        .await
}

/// End the session `backend` from `admin`, as an administrator or a database restart
/// would.
async fn terminate(admin: &mut PgConnection, backend: i32) {
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(backend)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(ended, "backend {backend} did not end");
}

/// The pool's one session, ended the moment the pool has it back.
async fn kill_its_session(pool: &PgPool, admin: &mut PgConnection) -> i32 {
    let backend = backend_of(pool).await.unwrap();
    // sqlx gives a connection back (after its ping) in a task of its own.
    let back = async {
        while pool.num_idle() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), back)
        .await
        .expect("the connection is back in the pool");
    terminate(admin, backend).await;
    backend
}

#[tokio::test]
async fn a_connection_killed_while_idle_is_replaced_before_anyone_uses_it() {
    let db = TestDb::create().await;
    let (pool, mut admin) = one_connection(&db, pool_options()).await;
    let backend = kill_its_session(&pool, &mut admin).await;
    tokio::time::sleep(PING_IDLE_AFTER + Duration::from_millis(200)).await;

    let now = backend_of(&pool)
        .await
        .expect("the idle connection is pinged, found dead and replaced");
    assert_ne!(now, backend, "a new session");
}

#[tokio::test]
async fn a_connection_given_back_moments_ago_is_not_pinged_and_a_dead_one_fails_only_once() {
    let db = TestDb::create().await;
    let (pool, mut admin) = one_connection(&db, pool_options_with(NEVER)).await;
    let backend = kill_its_session(&pool, &mut admin).await;

    let error = backend_of(&pool)
        .await
        .expect_err("a connection given back moments ago is taken without a ping");
    assert!(is_transient(&error), "its callers retry it: {error}");
    let now = backend_of(&pool).await.expect("then a new connection");
    assert_ne!(now, backend);
}

/// What the pool relies on: sqlx pings a connection as it is given back, and drops it if
/// its session is gone.
#[tokio::test]
async fn a_connection_whose_session_died_while_it_was_out_is_not_given_back() {
    let db = TestDb::create().await;
    let (pool, mut admin) = one_connection(&db, pool_options_with(NEVER)).await;
    let mut out = pool.acquire().await.unwrap();
    let backend = backend_of(&mut *out).await.unwrap();
    terminate(&mut admin, backend).await;
    drop(out);

    let now = backend_of(&pool)
        .await
        .expect("the dead connection was dropped as it came back");
    assert_ne!(now, backend);
}

/// A real run on a connection whose session was killed since the last task: its first
/// statement (reading the table's shape) fails on the dead connection, is tried again on
/// a new one, and the run deletes what it was asked to, no more.
#[tokio::test]
async fn a_real_run_whose_connection_died_since_the_last_task_goes_on_on_a_new_one() {
    let (runs, _setup) = database(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text NOT NULL, finished_at timestamptz);
         INSERT INTO runs SELECT g, 'succeeded', now() - interval '10 days'
         FROM generate_series(1, 30) g;
         INSERT INTO runs SELECT 100 + g, 'succeeded', now() - interval '1 hour'
         FROM generate_series(1, 5) g;",
    )
    .await;
    let (pool, mut admin) = one_connection(&runs, pool_options_with(NEVER)).await;
    let executor = executor(&pool);
    let (envelope, params) = task(false, 4, Some(10));
    assert_eq!(
        run_to_the_end(&executor, &envelope, &params)
            .await
            .runs_deleted,
        10
    );

    kill_its_session(&pool, &mut admin).await;
    let (envelope, params) = task(false, 4, Some(10));
    let result = run_to_the_end(&executor, &envelope, &params).await;

    assert_eq!(result.runs_deleted, 10, "{result:?}");
    let check = PgPool::connect(&runs.url()).await.unwrap();
    assert_eq!(
        count(&check, "SELECT count(*) FROM runs WHERE id <= 30").await,
        10
    );
    assert_eq!(
        count(&check, "SELECT count(*) FROM runs WHERE id > 100").await,
        5
    );
}
