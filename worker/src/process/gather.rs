//! Results of tasks that end close together are reported together.
//!
//! RabbitMQ spends several times more CPU on a persistent message that arrives alone than
//! on one that arrives with others: each arrival wakes its connection's and its queue's
//! processes and the quorum queue's log, however many messages it carries. On this
//! project's benchmark machine (`deploy/bench/broker.sh`), 800 messages a second cost 0.33
//! ms of RabbitMQ's CPU each one at a time and 0.10 ms eight at a time. A worker running
//! many short tasks would report each result the moment its task ends, one at a time.
//!
//! So before a turn reports (its result, its failure, its continuation or its
//! cancellation), it joins the current gathering: the first report to wait opens one that
//! ends `RESULTS_LINGER` later, and every report that is ready before then goes out at
//! that same moment. A gathering ends sooner when no other turn is still running, since
//! no more reports can join it: a lone task, or the last of a group, reports at once, so
//! the linger costs nothing when the worker is idle and never keeps every slot waiting.
//! Nothing else changes: each report is still published, confirmed and followed by its
//! delivery's ack on its own, so a report waits at most one linger and the guarantees (an
//! ack only after a confirmed result) are those of one report alone.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When the reports waiting now go out.
#[derive(Debug)]
pub struct Gathering {
    linger: Duration,
    /// The gathering open now, if any.
    open: Mutex<Option<Wave>>,
}

#[derive(Debug, Clone)]
struct Wave {
    ends: Instant,
    /// Cancelled when the gathering ends early.
    ended: CancellationToken,
}

impl Gathering {
    /// Reports wait up to `linger` for others; zero: each goes out at once.
    pub fn new(linger: Duration) -> Self {
        Self {
            linger,
            open: Mutex::new(None),
        }
    }

    /// Wait until the current gathering ends, opening one if none is open. With no other
    /// turn running (`others_running` 0), it ends now, for every report in it.
    pub async fn join(&self, others_running: usize) {
        if self.linger.is_zero() {
            return;
        }
        let wave = {
            let mut open = self.open.lock().expect("gathering lock");
            let now = Instant::now();
            let wave = match &*open {
                Some(wave) if wave.ends > now => wave.clone(),
                _ => open
                    .insert(Wave {
                        ends: now + self.linger,
                        ended: CancellationToken::new(),
                    })
                    .clone(),
            };
            if others_running == 0 {
                wave.ended.cancel();
                *open = None;
                return;
            }
            wave
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wave.ends) => {}
            _ = wave.ended.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(4);

    /// When each report goes out, given when it joins (ms from the start) and how many
    /// other turns are running then.
    async fn released_at(gathering: &Gathering, joins: &[(u64, usize)]) -> Vec<Duration> {
        let start = Instant::now();
        let reports = joins.iter().map(|&(at, others)| async move {
            tokio::time::sleep(Duration::from_millis(at)).await;
            gathering.join(others).await;
            start.elapsed()
        });
        futures::future::join_all(reports).await
    }

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn reports_ready_within_one_linger_go_out_together() {
        let gathering = Gathering::new(LINGER);
        // 0, 1 and 3 ms: one gathering, out at 4 ms. 4 ms finds it over and opens the
        // next (out at 8), which 7 ms joins; 9 ms opens a third.
        let joins = [(0, 5), (1, 5), (3, 5), (4, 5), (7, 5), (9, 5)];
        let released = released_at(&gathering, &joins).await;
        assert_eq!(released, ms(&[4, 4, 4, 8, 8, 13]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_with_no_other_turn_running_goes_out_at_once_and_takes_the_gathering_with_it()
    {
        let gathering = Gathering::new(LINGER);
        assert_eq!(released_at(&gathering, &[(2, 0)]).await, ms(&[2]));
        // Two wait from 0 and 1 ms; the last running turn reports at 2 ms: all three go.
        // The next report opens a gathering of its own.
        let joins = [(0, 2), (1, 1), (2, 0), (3, 1)];
        assert_eq!(released_at(&gathering, &joins).await, ms(&[2, 2, 2, 7]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_waits_one_linger_and_no_more() {
        let gathering = Gathering::new(LINGER);
        assert_eq!(released_at(&gathering, &[(0, 3)]).await, ms(&[4]));
        assert_eq!(released_at(&gathering, &[(2, 3)]).await, ms(&[6]));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_linger_every_report_goes_out_at_once() {
        let gathering = Gathering::new(Duration::ZERO);
        let joins = [(0, 3), (1, 3), (3, 3)];
        assert_eq!(released_at(&gathering, &joins).await, ms(&[0, 1, 3]));
    }
}
