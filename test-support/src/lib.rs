//! Test harness shared by the integration tests of `producer-api` and `worker`.
//!
//! Every test gets its own PostgreSQL database ([`TestDb`]) and its own AMQP name prefix
//! ([`TestBroker`]), both removed when the test ends, even by panic; so the tests run in
//! parallel against the same services. `TEST_PG_URL` and `TEST_AMQP_URL` point them at
//! other servers than `127.0.0.1:5432` (user `postgres`) and `127.0.0.1:5672` (guest).
//!
//! The modules, and what each holds:
//! - [`db`]: [`TestDb`], a database of its own; [`pg_base`].
//! - [`broker`]: [`TestBroker`], an AMQP prefix of its own; [`amqp_base`].
//! - [`signing`]: the task-signing key ring every test component shares.
//! - [`app`]: [`TestApp`], a producer-api on port 0, and its [`AppOptions`].
//! - [`workers`]: [`TestWorker`], an in-process worker on port 0; its command-line flags.
//! - [`runs_db`]: [`RunsDb`], a database holding the shipped runs schema.
//! - [`stack`]: [`Stack`], database + prefix + API in one call, the start of most tests.
//! - [`polling`]: [`eventually`], [`enqueue`], [`wait_for`], [`wait_until`], [`DONE`],
//!   [`run_task`].
//! - [`net`]: [`TcpProxy`], to cut a service off for one test; [`free_port`].
//! - [`cpu`]: CPU time of processes from `/proc`, for the benchmark binaries.
//!
//! Everything is also re-exported here: `use test_support::*;`.

pub mod app;
pub mod broker;
pub mod cpu;
pub mod db;
pub mod net;
pub mod polling;
pub mod runs_db;
pub mod signing;
pub mod stack;
pub mod workers;

pub use app::{runs_body, AppOptions, TestApp, TOKEN};
pub use broker::{amqp_address, amqp_base, amqp_via, TestBroker};
pub use db::{pg_base, TestDb};
pub use net::{free_port, TcpProxy};
pub use polling::{enqueue, eventually, run_task, wait_for, wait_until, DONE};
pub use runs_db::RunsDb;
pub use signing::{key_ring, SIGNING_KEYS};
pub use stack::Stack;
pub use workers::{build_worker, runs_database_flag, temp_root_flag, TestWorker};

/// Longest a test waits for a component to stop or for a teardown: a hang there fails the
/// test with a message instead of holding the whole suite until CI gives up.
pub const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Run `cleanup` on a thread and runtime of its own, and wait for it, at most
/// [`STOP_LIMIT`]: a `Drop` runs outside any async context it could await in. What it
/// leaves behind when it times out is said on stderr (the test's output).
fn teardown<F>(what: &'static str, cleanup: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        if rt
            .block_on(async { tokio::time::timeout(STOP_LIMIT, cleanup).await })
            .is_err()
        {
            eprintln!("teardown of {what} did not finish within {STOP_LIMIT:?}; left behind");
        }
    })
    .join();
}

/// Wait for a spawned component (API, worker) to exit, at most [`STOP_LIMIT`]; it must
/// exit cleanly.
async fn stopped(what: &str, handle: tokio::task::JoinHandle<anyhow::Result<()>>) {
    match tokio::time::timeout(STOP_LIMIT, handle).await {
        Ok(exit) => exit
            .unwrap_or_else(|e| panic!("{what} panicked: {e}"))
            .unwrap_or_else(|e| panic!("{what} exited with an error: {e:#}")),
        Err(_) => panic!("{what} did not stop within {STOP_LIMIT:?} of its shutdown"),
    }
}
