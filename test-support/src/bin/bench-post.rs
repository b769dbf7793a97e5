//! The load of `deploy/bench/e2e.sh`: N POSTs of one JSON body by C concurrent keep-alive
//! clients; when each request was sent and how long its answer took go to a file, one
//! line of summary to stdout.
//! A Python client took about a tenth of the two cores it shares with what it measures;
//! this one takes a fraction of that.
//!
//!   bench-post URL TOKEN N C BODY LATENCIES_FILE
//!
//! Summary: `<unix time of the first request> <seconds taken> <answers other than 202>
//! <CPU seconds of this process>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, token, n, c, body, out] = args.as_slice() else {
        anyhow::bail!("usage: bench-post URL TOKEN N C BODY LATENCIES_FILE");
    };
    let n: usize = n.parse().context("N")?;
    let c: usize = c.parse().context("C")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(c)
        .build()?;
    let left = Arc::new(AtomicUsize::new(n));
    let errors = Arc::new(AtomicUsize::new(0));
    let started_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..c {
        let (client, left, errors) = (client.clone(), left.clone(), errors.clone());
        let (url, token, body) = (url.clone(), token.clone(), body.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                .is_ok()
            {
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let accepted = match answer {
                    Ok(answer) => {
                        let status = answer.status();
                        let _ = answer.bytes().await;
                        status == reqwest::StatusCode::ACCEPTED
                    }
                    Err(_) => false,
                };
                latencies.push((
                    sent.duration_since(started).as_secs_f64(),
                    sent.elapsed().as_secs_f64(),
                ));
                if !accepted {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for client in clients {
        latencies.extend(client.await?);
    }
    let took = started.elapsed().as_secs_f64();
    // Seconds from the start, seconds to the answer.
    let lines: Vec<String> = latencies
        .iter()
        .map(|(at, took)| format!("{at:.6} {took:.6}"))
        .collect();
    std::fs::write(out, lines.join("\n")).context("writing the latencies")?;
    println!(
        "{started_at} {took} {} {}",
        errors.load(Ordering::Relaxed),
        own_cpu_seconds()
    );
    Ok(())
}

/// User and system CPU of this process, from /proc.
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    test_support::cpu::ticks_in_stat(&stat).unwrap_or(0) as f64
        * test_support::cpu::SECONDS_PER_TICK
}
