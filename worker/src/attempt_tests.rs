use super::*;
use serde_json::json;

const LIMITS: Limits = Limits {
    task_timeout: Duration::from_secs(60),
    stop_grace: Duration::from_secs(10),
};

#[tokio::test]
async fn a_panicking_executor_fails_transiently_with_its_progress() {
    let checkpoint = Checkpoint::default();
    let turn = CancellationToken::new();
    let execution = async {
        checkpoint.record(json!({"runs_deleted": 700}));
        panic!("index out of bounds");
    };
    let error = run_attempt(execution, &turn, &checkpoint, LIMITS)
        .await
        .unwrap_err();
    assert!(error.is_transient());
    assert!(error.message.contains("index out of bounds"), "{error}");
    assert_eq!(error.progress, Some(json!({"runs_deleted": 700})));
}

#[tokio::test(start_paused = true)]
async fn an_executor_that_ignores_the_hard_limit_fails_with_its_progress() {
    let checkpoint = Checkpoint::default();
    let turn = CancellationToken::new();
    let execution = async {
        checkpoint.record(json!({"runs_deleted": 3000}));
        std::future::pending::<()>().await;
        unreachable!()
    };
    let error = run_attempt(execution, &turn, &checkpoint, LIMITS)
        .await
        .unwrap_err();
    assert!(turn.is_cancelled(), "the executor was asked to stop");
    assert!(error.message.contains("did not stop within 10s"), "{error}");
    assert_eq!(error.progress, Some(json!({"runs_deleted": 3000})));
}

#[tokio::test(start_paused = true)]
async fn an_executor_that_stops_after_the_hard_limit_hands_on_its_progress() {
    let checkpoint = Checkpoint::default();
    let turn = CancellationToken::new();
    let execution = async {
        turn.cancelled().await;
        Ok(Execution::Interrupted {
            progress: json!({"runs_deleted": 5}),
        })
    };
    let result = run_attempt(execution, &turn, &checkpoint, LIMITS).await;
    assert_eq!(
        result,
        Ok(Execution::Interrupted {
            progress: json!({"runs_deleted": 5})
        })
    );
}

#[tokio::test]
async fn an_executor_error_without_progress_takes_the_checkpoints() {
    let checkpoint = Checkpoint::default();
    let turn = CancellationToken::new();
    let execution = async {
        checkpoint.record(json!({"runs_deleted": 2}));
        Err(ExecError::permanent("foreign key violation"))
    };
    let error = run_attempt(execution, &turn, &checkpoint, LIMITS)
        .await
        .unwrap_err();
    assert_eq!(error.progress, Some(json!({"runs_deleted": 2})));
}

/// An attempt that fails before its executor reports anything (the database is down,
/// the schema check fails) still carries the progress its message brought: otherwise
/// the ledger hands the next attempt nothing, and `max_rows` starts over.
#[tokio::test]
async fn a_failure_before_the_first_batch_keeps_the_progress_of_earlier_attempts() {
    use shared::tasks::{CleanupRunsParams, TaskSpec};
    let params = CleanupRunsParams {
        max_age_hours: 24.0,
        dry_run: false,
        statuses: None,
        batch_size: None,
        max_rows: Some(1000),
        max_attempts: None,
        scope: None,
    };
    let mut envelope = shared::envelope::TaskEnvelope::new(
        uuid::Uuid::now_v7(),
        TaskSpec::CleanupRuns(params),
        5,
        chrono::Utc::now(),
    );
    envelope.attempt = 2;
    envelope.progress = Some(json!({"runs_deleted": 900}));
    let checkpoint = Checkpoint::resuming(&envelope);
    let turn = CancellationToken::new();
    let execution = async {
        Err(ExecError::transient(
            "cannot check the runs table: pool timed out",
        ))
    };
    let error = run_attempt(execution, &turn, &checkpoint, LIMITS)
        .await
        .unwrap_err();
    assert_eq!(error.progress, Some(json!({"runs_deleted": 900})));
}
