//! One attempt under its time limits: panics and executors that will not stop become
//! transient failures that carry the progress so far.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::executor::{Checkpoint, ExecError, Execution};

/// The time limits of one turn.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub task_timeout: Duration,
    pub stop_grace: Duration,
}

/// Run one turn's execution under the hard time limit, turning a panic or an executor
/// that will not stop into a transient failure. Every failure carries what was deleted
/// before it (from the checkpoint when the executor could not say), so counts and caps
/// span attempts however the attempt ended.
pub async fn run_attempt(
    execution: impl std::future::Future<Output = Result<Execution, ExecError>>,
    turn: &CancellationToken,
    checkpoint: &Checkpoint,
    limits: Limits,
) -> Result<Execution, ExecError> {
    let execution = AssertUnwindSafe(execution).catch_unwind();
    tokio::pin!(execution);
    let result = match tokio::time::timeout(limits.task_timeout, &mut execution).await {
        Ok(result) => result,
        Err(_) => {
            // Past the hard limit: ask the executor to stop and give it time to reach a
            // boundary, so nothing keeps deleting after the attempt is reported. What it
            // returns then (a continuation, or the result) is reported as usual.
            turn.cancel();
            match tokio::time::timeout(limits.stop_grace, &mut execution).await {
                Ok(result) => result,
                Err(_) => Ok(Err(ExecError::transient(format!(
                    "the attempt exceeded the task time limit of {} and did not stop within {}",
                    humantime::format_duration(limits.task_timeout),
                    humantime::format_duration(limits.stop_grace)
                )))),
            }
        }
    };
    let result = match result {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            tracing::error!(%message, "executor panicked");
            Err(ExecError::transient(format!(
                "the executor panicked: {message}"
            )))
        }
    };
    result.map_err(|mut error| {
        if error.progress.is_none() {
            error.progress = checkpoint.snapshot();
        }
        error
    })
}

#[cfg(test)]
#[path = "attempt_tests.rs"]
mod tests;
