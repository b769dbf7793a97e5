//! The service's pools (`shared::runtime::db::pool_options`) skip sqlx's ping as a
//! connection is taken out when it was given back moments ago, and still ping one that
//! sat idle: a session killed while idle is replaced without an error.

use std::time::Duration;

use shared::runtime::db::{pool_options, PING_IDLE_AFTER};
use sqlx::{Connection, PgConnection, PgPool};
use test_support::*;

/// A pool of one connection on a database of its own, and a connection of an
/// administrator beside it.
async fn one_connection(db: &TestDb) -> (PgPool, PgConnection) {
    let admin = PgConnection::connect(&db.url()).await.unwrap();
    let pool = pool_options()
        .max_connections(1)
        .connect(&db.url())
        .await
        .unwrap();
    (pool, admin)
}

/// The pool's one session, ended by the administrator (as a database restart would) the
/// moment the pool has it back.
async fn kill_its_session(pool: &PgPool, admin: &mut PgConnection) -> i32 {
    let backend = backend_of(pool).await.unwrap();
    // sqlx gives a connection back (with its ping) in a task of its own.
    let back = async {
        while pool.num_idle() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), back)
        .await
        .expect("the connection is back in the pool");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(backend)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(killed, "backend {backend} did not end");
    backend
}

async fn backend_of(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
}

#[tokio::test]
async fn a_connection_killed_while_idle_is_replaced_before_anyone_uses_it() {
    let db = TestDb::create().await;
    let (pool, mut admin) = one_connection(&db).await;
    let backend = kill_its_session(&pool, &mut admin).await;
    tokio::time::sleep(PING_IDLE_AFTER + Duration::from_millis(200)).await;

    let now = backend_of(&pool)
        .await
        .expect("the idle connection is pinged, found dead and replaced");
    assert_ne!(now, backend, "a new session");
}

#[tokio::test]
async fn a_connection_given_back_just_now_is_not_pinged_and_a_dead_one_fails_only_once() {
    let db = TestDb::create().await;
    let (pool, mut admin) = one_connection(&db).await;
    let backend = kill_its_session(&pool, &mut admin).await;

    // Given back moments ago: handed out as it is, so its statement finds it dead.
    let error = backend_of(&pool)
        .await
        .expect_err("a connection used moments ago is taken without a ping");
    assert!(
        shared::runtime::db::is_transient(&error),
        "callers retry it: {error}"
    );
    // Then it is gone, and the next statement runs on a new session.
    let now = backend_of(&pool).await.expect("a new connection");
    assert_ne!(now, backend);
}
