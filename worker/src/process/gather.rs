//! Results of tasks that end close together are reported together.
//!
//! RabbitMQ spends several times more CPU on a persistent message that arrives alone than
//! on one that arrives with others: each arrival wakes its connection's and its queue's
//! processes and the quorum queue's log, however many messages it carries. On this
//! project's benchmark machine (`deploy/bench/broker.sh`), 800 messages a second cost 0.30
//! ms of RabbitMQ's CPU each one at a time and 0.095 ms in groups of 8. A worker running
//! many short tasks would report each result the moment its task ends, one at a time.
//!
//! So before a turn reports (its result, its failure, its continuation or its
//! cancellation), it joins the current gathering: the first report to wait opens one that
//! ends `RESULTS_LINGER` later, and every report that is ready before then goes out at
//! that same moment. Nothing else changes: each report is still published, confirmed and
//! followed by its delivery's ack on its own, so a report waits at most one linger and
//! the guarantees (an ack only after a confirmed result) are those of one report alone.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When the reports waiting now go out.
#[derive(Debug)]
pub struct Gathering {
    linger: Duration,
    /// The end of the current gathering, once one was opened.
    ends: Mutex<Option<Instant>>,
}

impl Gathering {
    /// Reports wait up to `linger` for others; zero: each goes out at once.
    pub fn new(linger: Duration) -> Self {
        Self {
            linger,
            ends: Mutex::new(None),
        }
    }

    /// Wait until the current gathering ends (opening one if none is open).
    pub async fn join(&self) {
        if self.linger.is_zero() {
            return;
        }
        let ends = self.ends_for(Instant::now());
        tokio::time::sleep_until(ends).await;
    }

    /// The end of the gathering a report ready at `now` joins.
    fn ends_for(&self, now: Instant) -> Instant {
        let mut ends = self.ends.lock().expect("gathering lock");
        match *ends {
            Some(end) if end > now => end,
            _ => *ends.insert(now + self.linger),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(4);

    /// When each report joining at the given offsets (ms from the start) goes out.
    async fn released_at(gathering: &'static Gathering, joins: &[u64]) -> Vec<Duration> {
        let start = Instant::now();
        let reports = joins.iter().map(|&at| async move {
            tokio::time::sleep(Duration::from_millis(at)).await;
            gathering.join().await;
            start.elapsed()
        });
        futures::future::join_all(reports).await
    }

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn reports_ready_within_one_linger_go_out_together() {
        let gathering = Box::leak(Box::new(Gathering::new(LINGER)));
        // 0, 1 and 3 ms: one gathering, out at 4 ms. 4 ms finds it over and opens the
        // next (out at 8), which 7 ms joins; 9 ms opens a third.
        let released = released_at(gathering, &[0, 1, 3, 4, 7, 9]).await;
        assert_eq!(released, ms(&[4, 4, 4, 8, 8, 13]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_alone_waits_one_linger_and_no_more() {
        let gathering = Box::leak(Box::new(Gathering::new(LINGER)));
        assert_eq!(released_at(gathering, &[0]).await, ms(&[4]));
        assert_eq!(released_at(gathering, &[2]).await, ms(&[6]));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_linger_every_report_goes_out_at_once() {
        let gathering = Box::leak(Box::new(Gathering::new(Duration::ZERO)));
        assert_eq!(released_at(gathering, &[0, 1, 3]).await, ms(&[0, 1, 3]));
    }
}
