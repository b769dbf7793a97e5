use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::announced;
use crate::executor::Checkpoint;

/// What happened, in order: "publish", "write", "done".
type Log = Arc<Mutex<Vec<&'static str>>>;

/// An executor that asks for the announcement before it writes, as a real run does.
async fn real_run(checkpoint: &Checkpoint, log: &Log) -> bool {
    let announced = checkpoint.announce().await;
    if announced {
        log.lock().unwrap().push("write");
    }
    announced
}

async fn publish(log: Log, outcome: Result<(), &'static str>) -> Result<(), &'static str> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.lock().unwrap().push("publish");
    outcome
}

#[tokio::test]
async fn a_short_task_that_writes_nothing_is_never_announced() {
    let log = Log::default();
    let mut checkpoint = Checkpoint::default();
    let announcement = checkpoint.announcing();
    let attempt = async { log.lock().unwrap().push("done") };
    let turn = CancellationToken::new();
    let hour = Duration::from_secs(3600);
    let result = announced(
        attempt,
        hour,
        announcement,
        publish(log.clone(), Ok(())),
        &turn,
    );
    assert_eq!(result.await, Ok(()));
    assert_eq!(*log.lock().unwrap(), ["done"]);
    drop(checkpoint);
}

#[tokio::test]
async fn a_write_waits_for_the_announcement() {
    let log = Log::default();
    let mut checkpoint = Checkpoint::default();
    let announcement = checkpoint.announcing();
    let turn = CancellationToken::new();
    let hour = Duration::from_secs(3600);
    let attempt = real_run(&checkpoint, &log);
    let result = announced(
        attempt,
        hour,
        announcement,
        publish(log.clone(), Ok(())),
        &turn,
    );
    assert_eq!(result.await, Ok(true));
    assert_eq!(*log.lock().unwrap(), ["publish", "write"]);
    assert!(!turn.is_cancelled());
}

#[tokio::test]
async fn nothing_is_written_when_the_announcement_fails() {
    let log = Log::default();
    let mut checkpoint = Checkpoint::default();
    let announcement = checkpoint.announcing();
    let turn = CancellationToken::new();
    let hour = Duration::from_secs(3600);
    let attempt = real_run(&checkpoint, &log);
    let failed = publish(log.clone(), Err("unroutable"));
    let result = announced(attempt, hour, announcement, failed, &turn);
    assert_eq!(result.await, Err("unroutable"));
    assert_eq!(*log.lock().unwrap(), ["publish"], "no write");
    assert!(turn.is_cancelled(), "the turn is stopped");
}

#[tokio::test]
async fn nothing_is_written_while_the_announcement_is_unconfirmed() {
    let log = Log::default();
    let mut checkpoint = Checkpoint::default();
    let announcement = checkpoint.announcing();
    let turn = CancellationToken::new();
    let hour = Duration::from_secs(3600);
    let attempt = real_run(&checkpoint, &log);
    let never = std::future::pending::<Result<(), &'static str>>();
    let result = announced(attempt, hour, announcement, never, &turn);
    let waited = tokio::time::timeout(Duration::from_millis(300), result).await;
    assert!(waited.is_err(), "still waiting");
    assert!(log.lock().unwrap().is_empty(), "no write");
}

#[tokio::test]
async fn a_task_still_running_after_the_delay_is_announced_while_it_runs() {
    let log = Log::default();
    let mut checkpoint = Checkpoint::default();
    let announcement = checkpoint.announcing();
    let turn = CancellationToken::new();
    let attempt = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        log.lock().unwrap().push("done");
    };
    let delay = Duration::from_millis(10);
    let result = announced(
        attempt,
        delay,
        announcement,
        publish(log.clone(), Ok(())),
        &turn,
    );
    assert_eq!(result.await, Ok(()));
    assert_eq!(
        *log.lock().unwrap(),
        ["publish", "done"],
        "announced while it ran"
    );
}

#[tokio::test]
async fn without_an_announcer_a_write_goes_ahead() {
    // STARTED_EVENT_AFTER=0s: the worker announced the task before it started.
    let log = Log::default();
    assert!(real_run(&Checkpoint::default(), &log).await);
    assert_eq!(*log.lock().unwrap(), ["write"]);
}
