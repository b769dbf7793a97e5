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
//! - [`polling`]: [`eventually`], [`enqueue`], [`wait_for`], [`DONE`], [`run_task`].
//! - [`net`]: [`TcpProxy`], to cut a service off for one test; [`free_port`].
//!
//! Everything is also re-exported here: `use test_support::*;`.

pub mod app;
pub mod broker;
pub mod db;
pub mod net;
pub mod polling;
pub mod runs_db;
pub mod signing;
pub mod stack;
pub mod workers;

pub use app::{runs_body, AppOptions, TestApp, TOKEN};
pub use broker::{amqp_base, TestBroker};
pub use db::{pg_base, TestDb};
pub use net::{free_port, TcpProxy};
pub use polling::{enqueue, eventually, run_task, wait_for, DONE};
pub use runs_db::RunsDb;
pub use signing::{key_ring, SIGNING_KEYS};
pub use stack::Stack;
pub use workers::{build_worker, runs_database_flag, temp_root_flag, TestWorker};

/// Run `cleanup` to its end on a thread and runtime of its own, and wait for it: a `Drop`
/// runs outside any async context it could await in.
fn teardown<F>(cleanup: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(cleanup);
    })
    .join();
}
