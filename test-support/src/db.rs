//! A PostgreSQL database of its own for each test.

use std::net::SocketAddr;

use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

/// The server the tests use, without a database name: `TEST_PG_URL`, or the local
/// PostgreSQL as user `postgres`.
pub fn pg_base() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// Create an empty database with a fresh name on [`pg_base`].
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

    /// The database's URL, with the login of [`pg_base`].
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
        crate::teardown("the test database", async move {
            if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", pg_base())).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            }
        });
    }
}
