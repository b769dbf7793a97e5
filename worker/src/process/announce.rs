//! `task.started` without a round trip per task: a task is announced when its executor
//! asks, before it writes anything, or once it has run for `STARTED_EVENT_AFTER`; a task
//! done sooner is never announced, and reports its start with its result.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::executor::Announcement;

/// Run an attempt, and `publish` its `task.started` when its executor asks or once it has
/// run for `after`, whichever comes first, while it goes on; the executor hears whether
/// the publish succeeded. If it failed, the turn stops at its next batch boundary and the
/// error is returned once it has: no result is reported for a start the ledger never
/// heard of, and the delivery goes back to its queue.
pub(super) async fn announced<T, E>(
    attempt: impl Future<Output = T>,
    after: Duration,
    announcement: Announcement,
    publish: impl Future<Output = Result<(), E>>,
    turn: &CancellationToken,
) -> Result<T, E> {
    let mut attempt = std::pin::pin!(attempt);
    tokio::select! {
        done = &mut attempt => return Ok(done),
        _ = tokio::time::sleep(after) => {}
        _ = announcement.asked.notified() => {}
    }
    let publish = async {
        let published = publish.await;
        announcement.answer.send_replace(Some(published.is_ok()));
        if published.is_err() {
            turn.cancel();
        }
        published
    };
    let (published, done) = tokio::join!(publish, attempt);
    published?;
    Ok(done)
}

#[cfg(test)]
#[path = "announce_tests.rs"]
mod tests;
