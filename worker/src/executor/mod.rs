//! Executors: run one task of a kind and return its result, or an error classified as
//! transient or permanent where it arises.

use std::io;

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::envelope::TaskEnvelope;
use shared::events::{ErrorClass, TaskError};
use shared::results::{RunsResult, TempFilesResult};
use shared::tasks::{TaskKind, TaskSpec, ValidationRules};
use tokio_util::sync::CancellationToken;

mod checkpoint;
pub mod runs;
pub mod temp_files;

pub use checkpoint::{Announcement, Checkpoint};

/// Why an attempt failed, and whether another attempt can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    pub class: ErrorClass,
    pub message: String,
    /// Work the attempt completed before failing, handed to the next attempt so that the
    /// task's counts and caps span every attempt.
    pub progress: Option<serde_json::Value>,
}

impl ExecError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            message: message.into(),
            progress: None,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Transient,
            message: message.into(),
            progress: None,
        }
    }

    /// The task could not be announced (`task.started` was not confirmed): nothing was
    /// written. The worker does not report it; the delivery goes back to its queue.
    pub fn unannounced() -> Self {
        Self::transient("task.started was not confirmed by RabbitMQ; nothing was written")
    }

    /// Attach the progress made before the failure.
    pub fn with_progress(mut self, progress: serde_json::Value) -> Self {
        self.progress = Some(progress);
        self
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// A database error, classified by its kind and SQLSTATE.
    pub fn from_sqlx(context: &str, error: &sqlx::Error) -> Self {
        Self {
            class: classify_sqlx(error),
            message: format!("{context}: {error}"),
            progress: None,
        }
    }

    pub fn from_io(context: &str, error: &io::Error) -> Self {
        Self {
            class: classify_io(error),
            message: format!("{context}: {error}"),
            progress: None,
        }
    }

    pub fn to_task_error(&self) -> TaskError {
        TaskError {
            class: self.class,
            message: self.message.clone(),
        }
    }
}

/// A database error's class (see [`shared::runtime::db::is_transient`]).
pub fn classify_sqlx(error: &sqlx::Error) -> ErrorClass {
    if shared::runtime::db::is_transient(error) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// Missing or inaccessible paths are permanent; interrupted or busy I/O is transient.
pub fn classify_io(error: &io::Error) -> ErrorClass {
    use io::ErrorKind::*;
    match error.kind() {
        Interrupted | WouldBlock | TimedOut | ResourceBusy | OutOfMemory => ErrorClass::Transient,
        _ if error.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error())
            || error.raw_os_error() == Some(rustix::io::Errno::NFILE.raw_os_error()) =>
        {
            ErrorClass::Transient
        }
        _ => ErrorClass::Permanent,
    }
}

/// How a turn of a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Execution {
    /// The task is complete; the result counts the work of every turn.
    Done(Report),
    /// The turn stopped early (shutdown or turn budget): `progress` is what was done so
    /// far, carried by a continuation so that the next turn adds to it.
    Interrupted { progress: Value },
}

/// What a finished task reports: the typed result of its kind. It records its own
/// metrics ([`Report::record`]) and becomes JSON once, for the `task.succeeded` event.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Runs(RunsResult),
    TempFiles(TempFilesResult),
}

impl Report {
    /// The result as the event and the ledger carry it.
    pub fn to_json(&self) -> Value {
        match self {
            Report::Runs(result) => serde_json::to_value(result),
            Report::TempFiles(result) => serde_json::to_value(result),
        }
        .expect("results serialize")
    }

    pub fn dry_run(&self) -> bool {
        match self {
            Report::Runs(result) => result.dry_run,
            Report::TempFiles(result) => result.dry_run,
        }
    }

    /// Count what the task did. `runs_table`: the `table` label of the runs metrics.
    pub fn record(&self, metrics: &crate::metrics::Metrics, runs_table: &str) {
        let kind = match self {
            Report::Runs(result) => {
                metrics
                    .runs_deleted
                    .with_label_values(&[runs_table])
                    .inc_by(result.runs_deleted);
                metrics
                    .oldest_eligible_age
                    .with_label_values(&[TaskKind::CleanupRuns.as_str(), runs_table])
                    .set(result.oldest_remaining_age_seconds.unwrap_or(0.0));
                TaskKind::CleanupRuns
            }
            Report::TempFiles(result) => {
                // Totals are per task; with one root they are that root's.
                let label = match result.roots.as_slice() {
                    [one] => one.as_str(),
                    _ => "all",
                };
                metrics
                    .files_deleted
                    .with_label_values(&[label])
                    .inc_by(result.files_deleted);
                metrics
                    .bytes_freed
                    .with_label_values(&[label])
                    .inc_by(result.bytes_freed);
                metrics
                    .oldest_eligible_age
                    .with_label_values(&[TaskKind::CleanupTempFiles.as_str(), label])
                    .set(result.oldest_remaining_age_seconds.unwrap_or(0.0));
                TaskKind::CleanupTempFiles
            }
        };
        if !self.dry_run() {
            metrics
                .last_success
                .with_label_values(&[kind.as_str()])
                .set(Utc::now().timestamp() as f64);
        }
    }
}

/// The executors this worker is configured with.
pub struct Executors {
    pub runs: Option<runs::RunsExecutor>,
    pub temp_files: Option<temp_files::TempFilesExecutor>,
    pub rules: ValidationRules,
}

impl Executors {
    /// Run one attempt of `envelope`. Parameters and the cutoff are checked again with
    /// this worker's own rules: the worker never trusts the producer for safety.
    pub async fn execute(
        &self,
        envelope: &TaskEnvelope,
        cancel: &CancellationToken,
        checkpoint: &Checkpoint,
    ) -> Result<Execution, ExecError> {
        envelope
            .task
            .validate(&self.rules)
            .map_err(|e| ExecError::permanent(format!("invalid parameters: {e}")))?;
        check_cutoff(envelope, self.rules.min_age_hours, Utc::now()).map_err(|refusal| {
            match refusal {
                // A few minutes short of the floor: the clocks of the producer and this
                // worker disagree; later the same cutoff is fine.
                CutoffRefusal::BelowFloor { by, message } if by <= MAX_CLOCK_SKEW => {
                    ExecError::transient(format!("not yet: {message}"))
                }
                other => ExecError::permanent(format!("refused: {other}")),
            }
        })?;
        match &envelope.task {
            TaskSpec::CleanupRuns(params) => match &self.runs {
                Some(executor) => executor.execute(envelope, params, cancel, checkpoint).await,
                None => Err(ExecError::permanent(
                    "this worker has no runs database configured",
                )),
            },
            TaskSpec::CleanupTempFiles(params) => match &self.temp_files {
                Some(executor) => executor.execute(envelope, params, cancel, checkpoint).await,
                None => Err(ExecError::permanent(
                    "this worker has no temp roots configured",
                )),
            },
        }
    }
}

/// Clock difference between producer and worker tolerated as "not yet" rather than
/// refused: a task cut off this little short of the worker's floor is retried later.
const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// Why a task's cutoff is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CutoffRefusal {
    /// The cutoff does not follow from the task's own `enqueued_at` and `max_age_hours`.
    #[error("{0}")]
    Inconsistent(String),
    /// The cutoff is younger than this worker's `MIN_AGE_HOURS` allows now, `by` this much.
    #[error("{message}")]
    BelowFloor {
        by: chrono::Duration,
        message: String,
    },
}

/// The cutoff must be at least as old as the task's own `max_age_hours` from when it was
/// enqueued, and at least `min_age_hours` old now: a message whose cutoff is younger
/// (forged, or from a buggy producer) would delete young data. `cutoff_for` rounds to the
/// millisecond, hence the one-millisecond allowance.
pub fn check_cutoff(
    envelope: &TaskEnvelope,
    min_age_hours: f64,
    now: DateTime<Utc>,
) -> Result<(), CutoffRefusal> {
    let slack = chrono::Duration::milliseconds(1);
    let by_request =
        shared::envelope::cutoff_for(envelope.enqueued_at, envelope.task.max_age_hours());
    if envelope.cutoff > by_request + slack {
        return Err(CutoffRefusal::Inconsistent(format!(
            "the cutoff {} is younger than max_age_hours ({}) allows from enqueued_at {} (at most {})",
            envelope.cutoff,
            envelope.task.max_age_hours(),
            envelope.enqueued_at,
            by_request
        )));
    }
    let floor = shared::envelope::cutoff_for(now, min_age_hours);
    if envelope.cutoff > floor + slack {
        return Err(CutoffRefusal::BelowFloor {
            by: envelope.cutoff - floor,
            message: format!(
                "the cutoff {} is younger than this worker's MIN_AGE_HOURS ({min_age_hours}) \
                 allows now (at most {floor})",
                envelope.cutoff
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::tasks::CleanupRunsParams;

    fn envelope(max_age_hours: f64, enqueued_at: DateTime<Utc>) -> TaskEnvelope {
        let task = TaskSpec::CleanupRuns(CleanupRunsParams {
            max_age_hours,
            dry_run: false,
            statuses: None,
            batch_size: None,
            max_rows: None,
            max_attempts: None,
            scope: None,
        });
        TaskEnvelope::new(uuid::Uuid::now_v7(), task, 3, enqueued_at)
    }

    #[test]
    fn a_cutoff_younger_than_the_request_or_the_floor_is_refused() {
        let now = Utc::now();
        let honest = envelope(24.0, now - chrono::Duration::hours(2));
        assert_eq!(check_cutoff(&honest, 1.0, now), Ok(()));
        // Forged: max_age_hours says 24 h, the cutoff says 10 minutes.
        let mut forged = honest.clone();
        forged.cutoff = now - chrono::Duration::minutes(10);
        let refusal = check_cutoff(&forged, 1.0, now).unwrap_err();
        assert!(
            matches!(refusal, CutoffRefusal::Inconsistent(_)),
            "{refusal}"
        );
        assert!(refusal.to_string().contains("max_age_hours"), "{refusal}");
        // Consistent with itself (enqueued "in the future") but younger than the floor.
        let future = envelope(2.0, now + chrono::Duration::hours(5));
        let refusal = check_cutoff(&future, 1.0, now).unwrap_err();
        assert!(refusal.to_string().contains("MIN_AGE_HOURS"), "{refusal}");
        assert!(
            matches!(refusal, CutoffRefusal::BelowFloor { by, .. } if by == chrono::Duration::hours(4)),
            "{refusal:?}"
        );
        // Exactly at the bounds is fine.
        let edge = envelope(1.0, now);
        assert_eq!(check_cutoff(&edge, 1.0, now), Ok(()));
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(classify_io(&missing), ErrorClass::Permanent);
        let busy = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(classify_io(&busy), ErrorClass::Transient);
        let fds = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        assert_eq!(classify_io(&fds), ErrorClass::Transient);
    }

    #[test]
    fn pool_timeouts_are_transient() {
        assert_eq!(
            classify_sqlx(&sqlx::Error::PoolTimedOut),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_sqlx(&sqlx::Error::RowNotFound),
            ErrorClass::Permanent
        );
    }
}
