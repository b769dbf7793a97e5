//! Executors: run one task of a kind and return its result, or an error classified as
//! transient or permanent where it arises.

use std::io;

use serde_json::Value;
use shared::envelope::TaskEnvelope;
use shared::events::{ErrorClass, TaskError};
use shared::tasks::{TaskSpec, ValidationRules};
use tokio_util::sync::CancellationToken;

pub mod runs;
pub mod temp_files;

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

/// A database error's class (see [`shared::db::is_transient`]).
pub fn classify_sqlx(error: &sqlx::Error) -> ErrorClass {
    if shared::db::is_transient(error) {
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
    Done(Value),
    /// The turn stopped early (shutdown or turn budget): `progress` is what was done so
    /// far, carried by a continuation so that the next turn adds to it.
    Interrupted { progress: Value },
}

/// The executors this worker is configured with.
pub struct Executors {
    pub runs: Option<runs::RunsExecutor>,
    pub temp_files: Option<temp_files::TempFilesExecutor>,
    pub rules: ValidationRules,
}

impl Executors {
    /// Run one attempt of `envelope`. Parameters are validated again with this worker's
    /// own rules: the worker never trusts the producer for safety.
    pub async fn execute(
        &self,
        envelope: &TaskEnvelope,
        cancel: &CancellationToken,
    ) -> Result<Execution, ExecError> {
        envelope
            .task
            .validate(&self.rules)
            .map_err(|e| ExecError::permanent(format!("invalid parameters: {e}")))?;
        match &envelope.task {
            TaskSpec::CleanupRuns(params) => match &self.runs {
                Some(executor) => executor.execute(envelope, params, cancel).await,
                None => Err(ExecError::permanent(
                    "this worker has no runs database configured",
                )),
            },
            TaskSpec::CleanupTempFiles(params) => match &self.temp_files {
                Some(executor) => executor.execute(envelope, params, cancel).await,
                None => Err(ExecError::permanent(
                    "this worker has no temp roots configured",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
