//! The baseline of `deploy/bench/pool.sh`: what a pooled connection costs per checkout,
//! one short statement each (as a dry run or an enqueue batch takes one), with sqlx's
//! default (a ping as the connection is taken, besides the one as it goes back) against
//! the worker's runs pool (`shared::runtime::db::pool_options`: no ping on taking a
//! connection given back less than 500 ms ago). The two alternate, ROUNDS times each.
//!
//!   bench-pool DATABASE_URL N ROUNDS
//!
//! Prints, per round and setup, microseconds per statement: the backend's CPU, this
//! process's CPU and the wall time.

use std::time::Instant;

use anyhow::Context;
use sqlx::postgres::{PgPool, PgPoolOptions};
use test_support::cpu::cpu_seconds;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, n, rounds] = args.as_slice() else {
        anyhow::bail!("usage: bench-pool DATABASE_URL N ROUNDS");
    };
    let n: u32 = n.parse().context("N")?;
    let rounds: u32 = rounds.parse().context("ROUNDS")?;
    println!("setup                          backend µs   client µs   wall µs  (per statement)");
    for round in 1..=rounds {
        for (name, options) in [
            ("sqlx default (ping on take)", PgPoolOptions::new()),
            (
                "runs pool (ping after 500 ms)",
                shared::runtime::db::pool_options(),
            ),
        ] {
            let pool = options.max_connections(1).connect(url).await?;
            let figures = measure(&pool, n).await?;
            pool.close().await;
            println!(
                "{name:<30} {:>11.1} {:>11.1} {:>9.1}  (round {round})",
                figures.0, figures.1, figures.2
            );
        }
    }
    Ok(())
}

/// N statements, each on a connection taken from `pool` and given back: microseconds per
/// statement of the backend's CPU, this process's CPU and the wall.
async fn measure(pool: &PgPool, n: u32) -> anyhow::Result<(f64, f64, f64)> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await?;
    let cpu = |pid: &dyn std::fmt::Display| {
        cpu_seconds(pid).with_context(|| format!("reading the CPU time of process {pid}"))
    };
    let (backend_before, own_before) = (cpu(&backend)?, cpu(&"self")?);
    let started = Instant::now();
    for i in 0..n {
        let one: i32 = sqlx::query_scalar("SELECT $1")
            .bind(i as i32)
            .fetch_one(pool)
            .await?;
        anyhow::ensure!(one == i as i32, "the statement answered {one}");
    }
    let wall = started.elapsed().as_secs_f64();
    let per = |seconds: f64| seconds * 1e6 / f64::from(n);
    Ok((
        per(cpu(&backend)? - backend_before),
        per(cpu(&"self")? - own_before),
        per(wall),
    ))
}
