//! Schedules: cleanups declared once and fired by the service itself. The calendar
//! ([`calendar`]) says when; the ledger ([`crate::ledger::schedules`]) claims and fires
//! due windows; [`run`] is the loop every replica runs.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::ledger::schedules::{fire_due, Fired};
use crate::metrics::Metrics;

pub mod calendar;
pub mod file;

/// How often the scheduler looks for due windows.
const TICK: Duration = Duration::from_secs(1);
/// Schedules fired per tick at most (the rest wait one tick).
const PER_TICK: i64 = 100;

/// Fire due windows every second until shutdown.
pub async fn run(
    pool: PgPool,
    rules: Arc<shared::tasks::ValidationRules>,
    max_attempts: u32,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        // The database's clock, the same for every replica: a replica whose clock runs
        // ahead does not fire early (nor compute a later cutoff).
        let now = sqlx::query_scalar::<_, chrono::DateTime<Utc>>("SELECT now()")
            .fetch_one(&pool)
            .await;
        let fired = match now {
            Ok(now) => fire_due(&pool, now, &rules, max_attempts, PER_TICK).await,
            Err(error) => Err(error),
        };
        match fired {
            Ok(fired) => {
                for outcome in fired {
                    match outcome {
                        Fired::Task {
                            schedule,
                            window,
                            task_id,
                            missed,
                        } => {
                            metrics.schedule_fired.with_label_values(&[&schedule]).inc();
                            tracing::info!(%schedule, %window, %task_id, missed, "schedule fired");
                        }
                        Fired::Skipped {
                            schedule,
                            windows,
                            reason,
                        } => {
                            metrics
                                .schedule_skipped
                                .with_label_values(&[&schedule])
                                .inc_by(windows);
                            tracing::info!(%schedule, windows, reason, "schedule window skipped");
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "scheduler round failed; trying again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Apply `SCHEDULES_FILE` again on every SIGHUP (`hangups`, listened to since start-up);
/// a file that does not apply changes nothing (the error is logged).
pub async fn reload_on_sighup(
    pool: PgPool,
    path: std::path::PathBuf,
    mut hangups: tokio::signal::unix::Signal,
    rules: Arc<shared::tasks::ValidationRules>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangups.recv() => {}
        }
        if let Err(error) = file::sync(&pool, &path, &rules).await {
            tracing::error!(error = %format!("{error:#}"), "schedules file not applied; the schedules stay as they were");
        }
    }
}
