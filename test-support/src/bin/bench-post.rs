//! The load of `deploy/bench/e2e.sh`: N POSTs of one JSON body over keep-alive
//! connections; when each request was due and how long its answer took go to a file, one
//! line of summary to stdout.
//! A Python client took about a tenth of the two cores it shares with what it measures;
//! this one takes a fraction of that.
//!
//!   bench-post URL TOKEN N C BODY LATENCIES_FILE \[RATE\]
//!
//! Without RATE (or with 0), a closed loop: C clients, each sending its next request when
//! its last is answered, as fast as the service answers. Its latency is mostly its own
//! queueing: the mean is C divided by the rate the service reaches (Little's law).
//! With RATE, an open loop: request i is due at i / RATE seconds from the start, whatever
//! the answers before it, at most C in flight. A request's latency counts from when it
//! was due, not from when it could be sent, so a stall shows in full in the latencies of
//! every request due during it (no coordinated omission).
//!
//! Summary: `<unix time of the first request> <seconds taken> <answers other than 202>
//! <CPU seconds of this process>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::Semaphore;

/// What every request needs.
#[derive(Clone)]
struct Post {
    client: reqwest::Client,
    url: String,
    token: String,
    body: String,
}

impl Post {
    /// Send one request; whether it was answered 202.
    async fn send(&self) -> bool {
        let answer = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(self.body.clone())
            .send()
            .await;
        match answer {
            Ok(answer) => {
                let status = answer.status();
                let _ = answer.bytes().await;
                status == reqwest::StatusCode::ACCEPTED
            }
            Err(_) => false,
        }
    }
}

/// Per request: seconds from the start to when it was due, seconds from then to its
/// answer, and whether that answer was a 202.
type Latency = (f64, f64, bool);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, token, n, c, body, out, rate) = match args.as_slice() {
        [url, token, n, c, body, out] => (url, token, n, c, body, out, None),
        [url, token, n, c, body, out, rate] => (url, token, n, c, body, out, Some(rate)),
        _ => anyhow::bail!("usage: bench-post URL TOKEN N C BODY LATENCIES_FILE [RATE]"),
    };
    let n: usize = n.parse().context("N")?;
    let c: usize = c.parse().context("C")?;
    anyhow::ensure!(c > 0, "C must be at least 1");
    let rate: f64 = match rate {
        Some(rate) => rate.parse().context("RATE")?,
        None => 0.0,
    };
    anyhow::ensure!(rate >= 0.0 && rate.is_finite(), "RATE must be 0 or more");
    let post = Post {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(c)
            .build()?,
        url: url.clone(),
        token: token.clone(),
        body: body.clone(),
    };
    let started_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let started = Instant::now();
    let latencies = if rate > 0.0 {
        open_loop(post, n, c, rate, started).await?
    } else {
        closed_loop(post, n, c, started).await?
    };
    let took = started.elapsed().as_secs_f64();
    let errors = latencies
        .iter()
        .filter(|(_, _, accepted)| !accepted)
        .count();
    let lines: Vec<String> = latencies
        .iter()
        .map(|(at, took, _)| format!("{at:.6} {took:.6}"))
        .collect();
    std::fs::write(out, lines.join("\n")).context("writing the latencies")?;
    let cpu = test_support::cpu::cpu_seconds("self").unwrap_or(0.0);
    println!("{started_at} {took} {errors} {cpu}");
    Ok(())
}

/// A request counted from `from` (when it was sent, or when it was due) until now.
fn latency(started: Instant, from: Instant, accepted: bool) -> Latency {
    (
        from.duration_since(started).as_secs_f64(),
        from.elapsed().as_secs_f64(),
        accepted,
    )
}

/// C clients, each sending its next request as soon as its last is answered.
async fn closed_loop(
    post: Post,
    n: usize,
    c: usize,
    started: Instant,
) -> anyhow::Result<Vec<Latency>> {
    let left = Arc::new(AtomicUsize::new(n));
    let mut clients = Vec::new();
    for _ in 0..c {
        let (post, left) = (post.clone(), left.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                .is_ok()
            {
                let sent = Instant::now();
                let accepted = post.send().await;
                latencies.push(latency(started, sent, accepted));
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for client in clients {
        latencies.extend(client.await?);
    }
    Ok(latencies)
}

/// Request i due at i / `rate` seconds from `started`, at most `c` in flight; each
/// latency from when its request was due.
async fn open_loop(
    post: Post,
    n: usize,
    c: usize,
    rate: f64,
    started: Instant,
) -> anyhow::Result<Vec<Latency>> {
    let in_flight = Arc::new(Semaphore::new(c));
    let mut requests = Vec::with_capacity(n);
    for i in 0..n {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        // Late when all `c` are in flight: the wait counts in this request's latency.
        let permit = in_flight.clone().acquire_owned().await?;
        let post = post.clone();
        requests.push(tokio::spawn(async move {
            let accepted = post.send().await;
            drop(permit);
            latency(started, due, accepted)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for request in requests {
        latencies.push(request.await?);
    }
    Ok(latencies)
}
