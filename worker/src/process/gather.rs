//! Results of tasks that end close together are reported together.
//!
//! RabbitMQ spends several times more CPU on a persistent message that arrives alone than
//! on one that arrives with others: each arrival wakes its connection's and its queue's
//! processes and the quorum queue's log, however many messages it carries. On this
//! project's benchmark machine (`deploy/bench/broker.sh`), 800 messages a second cost 0.33
//! ms of RabbitMQ's CPU each one at a time and 0.10 ms eight at a time. A worker running
//! many short tasks would report each result the moment its task ends, one at a time.
//!
//! So before a running turn reports (its result, its failure, its continuation or its
//! cancellation), it joins the current gathering: the first report to wait opens one that
//! ends `RESULTS_LINGER` later, and every report that is ready before then goes out at
//! that same moment. A gathering ends sooner:
//!
//! - when a report joins it with no other turn running: a lone task, or the last of a
//!   group, reports at once, so the linger costs nothing to a worker with one task;
//! - when it holds half the worker's slots: at least half of them always keep working,
//!   also while a long task runs beside short ones (its turn never ends the gathering),
//!   and eight reports, the most a worker of 16 slots gathers, already cost RabbitMQ about
//!   what sixteen do. With 1 to 3 slots a gathering holds one report: nothing waits.
//!
//! Nothing else changes: each report is still published, confirmed and followed by its
//! delivery's ack (acks asked for at the same moment go out together where they can:
//! `crate::acks`), so a report waits at most one linger and the guarantees (an ack only
//! after a confirmed result) are those of one report alone.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When the reports waiting now go out.
#[derive(Debug)]
pub struct Gathering {
    linger: Duration,
    /// Reports that end a gathering by their number: half the worker's slots.
    full: usize,
    /// The gathering open now, if any.
    open: Mutex<Option<Wave>>,
}

#[derive(Debug)]
struct Wave {
    ends: Instant,
    /// Reports in it so far.
    reports: usize,
    /// Cancelled when the gathering ends early.
    ended: CancellationToken,
}

impl Gathering {
    /// Reports of a worker with `slots` turns at once wait up to `linger` for others;
    /// zero: each goes out at once.
    pub fn new(linger: Duration, slots: usize) -> Self {
        Self {
            linger,
            full: slots / 2,
            open: Mutex::new(None),
        }
    }

    /// Wait until the current gathering ends, opening one if none is open. It ends now
    /// when no other turn is running (`others_running` 0) or when this report fills it.
    pub async fn join(&self, others_running: usize) {
        if self.linger.is_zero() || self.full <= 1 {
            return;
        }
        let (ends, ended) = {
            let mut open = self.open.lock().expect("gathering lock");
            let now = Instant::now();
            let wave = match open.take() {
                Some(wave) if wave.ends > now => wave,
                _ => Wave {
                    ends: now + self.linger,
                    reports: 0,
                    ended: CancellationToken::new(),
                },
            };
            let reports = wave.reports + 1;
            if others_running == 0 || reports >= self.full {
                // The gathering stays closed (`take` above): the next report opens another.
                wave.ended.cancel();
                return;
            }
            let waiting = (wave.ends, wave.ended.clone());
            *open = Some(Wave { reports, ..wave });
            waiting
        };
        tokio::select! {
            _ = tokio::time::sleep_until(ends) => {}
            _ = ended.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(4);
    /// Slots enough that no test below fills a gathering, unless it says so.
    const SLOTS: usize = 64;

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
        let gathering = Gathering::new(LINGER, SLOTS);
        // 0, 1 and 3 ms: one gathering, out at 4 ms. 4 ms finds it over and opens the
        // next (out at 8), which 7 ms joins; 9 ms opens a third.
        let joins = [(0, 5), (1, 5), (3, 5), (4, 5), (7, 5), (9, 5)];
        let released = released_at(&gathering, &joins).await;
        assert_eq!(released, ms(&[4, 4, 4, 8, 8, 13]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_with_no_other_turn_running_goes_out_at_once_and_takes_the_gathering_with_it()
    {
        let gathering = Gathering::new(LINGER, SLOTS);
        assert_eq!(released_at(&gathering, &[(2, 0)]).await, ms(&[2]));
        // Two wait from 0 and 1 ms; the last running turn reports at 2 ms: all three go.
        // The next report opens a gathering of its own.
        let joins = [(0, 2), (1, 1), (2, 0), (3, 1)];
        assert_eq!(released_at(&gathering, &joins).await, ms(&[2, 2, 2, 7]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_waits_one_linger_and_no_more() {
        let gathering = Gathering::new(LINGER, SLOTS);
        assert_eq!(released_at(&gathering, &[(0, 3)]).await, ms(&[4]));
        assert_eq!(released_at(&gathering, &[(2, 3)]).await, ms(&[6]));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_linger_every_report_goes_out_at_once() {
        let gathering = Gathering::new(Duration::ZERO, SLOTS);
        let joins = [(0, 3), (1, 3), (3, 3)];
        assert_eq!(released_at(&gathering, &joins).await, ms(&[0, 1, 3]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gathering_holding_half_the_slots_goes_out_at_once() {
        // Eight slots: the fourth report fills the gathering, the fifth opens the next.
        let gathering = Gathering::new(LINGER, 8);
        let joins = [(0, 7), (1, 7), (1, 7), (2, 7), (2, 7)];
        assert_eq!(released_at(&gathering, &joins).await, ms(&[2, 2, 2, 2, 6]));
    }

    #[tokio::test(start_paused = true)]
    async fn with_fewer_than_four_slots_nothing_waits() {
        for slots in [1, 2, 3] {
            let gathering = Gathering::new(LINGER, slots);
            let joins = [(0, 1), (1, 1)];
            assert_eq!(
                released_at(&gathering, &joins).await,
                ms(&[0, 1]),
                "{slots}"
            );
        }
    }
}
