//! The retry policy: the one place that knows the `backoff` crate.
//!
//! Two uses: the delay between attempts of a task (computed by the worker from the attempt
//! number, stored in the ledger as `next_attempt_at`), and brief in-attempt retries of
//! transient I/O. `backoff` carries an unmaintained advisory (RUSTSEC-2025-0012); swapping
//! it for another crate touches this file only.

use std::future::Future;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use chrono::{DateTime, Utc};

/// Exponential backoff with jitter and a cap, plus the number of attempts allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    pub initial_delay: Duration,
    /// Growth factor per attempt (2.0 doubles the delay each time).
    pub multiplier: f64,
    /// No delay exceeds this.
    pub max_delay: Duration,
    /// Randomization factor in [0, 1): each delay is drawn from `d * (1 ± jitter)`.
    pub jitter: f64,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(2),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
            max_attempts: 3,
        }
    }
}

impl RetryPolicy {
    /// The short policy for transient I/O inside one attempt (reconnects, lock timeouts).
    pub fn in_attempt() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(2),
            jitter: 0.2,
            max_attempts: 5,
        }
    }

    /// Check the numbers make sense; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_delay.is_zero() {
            return Err("retry initial delay must be greater than 0".into());
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "retry multiplier must be at least 1.0, got {}",
                self.multiplier
            ));
        }
        if self.max_delay < self.initial_delay {
            return Err("retry max delay must not be below the initial delay".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(format!(
                "retry jitter must be in [0, 1), got {}",
                self.jitter
            ));
        }
        if self.max_attempts == 0 {
            return Err("max attempts must be at least 1".into());
        }
        Ok(())
    }

    fn exponential(&self) -> ExponentialBackoff {
        ExponentialBackoff {
            current_interval: self.initial_delay,
            initial_interval: self.initial_delay,
            randomization_factor: self.jitter,
            multiplier: self.multiplier,
            max_interval: self.max_delay,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        }
    }

    /// The delay after attempt `failed_attempt` (1-based) failed, before the next one.
    pub fn delay_after(&self, failed_attempt: u32) -> Duration {
        let mut backoff = self.exponential();
        let mut delay = self.initial_delay;
        // Cap the loop: past ~64 doublings every delay is `max_delay` anyway.
        for _ in 0..failed_attempt.clamp(1, 64) {
            delay = backoff.next_backoff().unwrap_or(self.max_delay);
        }
        delay.min(self.max_delay.mul_f64(1.0 + self.jitter))
    }

    /// When the next attempt is due, or `None` when `failed_attempt` was the last one.
    pub fn next_attempt_at(
        &self,
        failed_attempt: u32,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if failed_attempt >= max_attempts {
            return None;
        }
        let delay = chrono::Duration::from_std(self.delay_after(failed_attempt)).ok()?;
        Some(now + delay)
    }

    /// Run `op` until it succeeds, fails with an error `is_transient` rejects, or the
    /// attempts of this policy are used up; sleeps between tries with the policy's delays.
    pub async fn retry<T, E, F, Fut>(
        &self,
        is_transient: impl Fn(&E) -> bool,
        op: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.retry_until(|| false, is_transient, op).await
    }

    /// [`retry`](Self::retry), except that no new try starts once `stopped()` says so:
    /// it is asked after every delay, and the last error is returned instead of trying
    /// again. A try already running is never interrupted.
    pub async fn retry_until<T, E, F, Fut>(
        &self,
        stopped: impl Fn() -> bool,
        is_transient: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = self.exponential();
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if attempt < self.max_attempts && is_transient(&error) => {
                    let delay = backoff.next_backoff().unwrap_or(self.max_delay);
                    tracing::debug!(attempt, ?delay, "transient error; retrying");
                    tokio::time::sleep(delay).await;
                    if stopped() {
                        return Err(error);
                    }
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn exact() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = RetryPolicy {
            max_delay: Duration::from_secs(10),
            ..exact()
        };
        let delays: Vec<u64> = (1..=5).map(|n| p.delay_after(n).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let d = p.delay_after(2).as_secs_f64();
            assert!((3.2..=4.8).contains(&d), "{d}");
        }
    }

    #[test]
    fn no_next_attempt_after_the_last_one() {
        let p = exact();
        let now = Utc::now();
        assert_eq!(
            p.next_attempt_at(1, 3, now),
            Some(now + chrono::Duration::seconds(2))
        );
        assert_eq!(
            p.next_attempt_at(2, 3, now),
            Some(now + chrono::Duration::seconds(4))
        );
        assert_eq!(p.next_attempt_at(3, 3, now), None);
    }

    #[test]
    fn nonsense_settings_are_refused() {
        assert!(RetryPolicy {
            multiplier: 0.5,
            ..exact()
        }
        .validate()
        .is_err());
        assert!(RetryPolicy {
            jitter: 1.0,
            ..exact()
        }
        .validate()
        .is_err());
        assert!(RetryPolicy {
            max_attempts: 0,
            ..exact()
        }
        .validate()
        .is_err());
        assert!(RetryPolicy {
            initial_delay: Duration::ZERO,
            ..exact()
        }
        .validate()
        .is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_growing_sleeps() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<u32, &str> = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::in_attempt()
        }
        .retry(
            |_| true,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 {
                    Err("refused")
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(result, Ok(3));
        // 100 ms + 200 ms of virtual sleep.
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_and_exhaustion_stop_retrying() {
        let calls = AtomicU32::new(0);
        let result: Result<(), &str> = RetryPolicy::in_attempt()
            .retry(
                |e: &&str| *e == "transient",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("permanent")
                },
            )
            .await;
        assert_eq!(result, Err("permanent"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let result: Result<(), &str> = RetryPolicy::in_attempt()
            .retry(
                |_| true,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("transient")
                },
            )
            .await;
        assert_eq!(result, Err("transient"));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    /// A stop that arrives while the policy sleeps between tries means no further try:
    /// nothing starts after a cancelled attempt.
    #[tokio::test(start_paused = true)]
    async fn no_try_starts_after_a_stop() {
        let calls = AtomicU32::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let result: Result<(), &str> = RetryPolicy::in_attempt()
            .retry_until(
                || stop.load(Ordering::SeqCst),
                |_| true,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // The stop arrives during the first try; the try itself finishes.
                    stop.store(true, Ordering::SeqCst);
                    Err("transient")
                },
            )
            .await;
        assert_eq!(result, Err("transient"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
