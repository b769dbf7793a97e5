//! A running turn's checkpoint: its progress so far, readable from outside the executor,
//! and the executor's way to have its task announced before it writes.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use shared::envelope::TaskEnvelope;

/// The latest progress of a running turn, readable from outside the executor: when an
/// attempt must be reported before its executor returns (it panicked, or it ignored the
/// hard time limit), the report still carries what was deleted so far, so counts and caps
/// span attempts on every path. Also how an executor asks the worker to announce the task
/// (`task.started`) before it writes anything.
#[derive(Default)]
pub struct Checkpoint {
    snapshot: Mutex<Snapshot>,
    /// Set when the task is announced only on demand ([`Checkpoint::announcing`]).
    announcer: Option<Announcer>,
}

/// The executor's side of an announcement: ask, then wait for the worker's answer
/// (whether `task.started` was confirmed).
struct Announcer {
    ask: Arc<tokio::sync::Notify>,
    answer: tokio::sync::watch::Receiver<Option<bool>>,
}

/// The worker's side of an announcement: the executor's ask, and where the answer goes.
pub struct Announcement {
    pub asked: Arc<tokio::sync::Notify>,
    pub answer: tokio::sync::watch::Sender<Option<bool>>,
}

#[derive(Default)]
enum Snapshot {
    #[default]
    Nothing,
    /// Progress as of the last batch.
    Value(Value),
    /// Computes the progress on demand (the temp walk's live counters).
    Source(Box<dyn Fn() -> Value + Send + Sync>),
}

impl Checkpoint {
    /// A checkpoint that starts from the progress of earlier turns and attempts: a
    /// failure before the executor reports anything of its own (the database is down,
    /// the schema check fails) still carries what the task deleted so far, so the next
    /// attempt's caps and counts go on from it instead of starting over.
    pub fn resuming(envelope: &TaskEnvelope) -> Self {
        let checkpoint = Self::default();
        if let Some(progress) = &envelope.progress {
            checkpoint.record(progress.clone());
        }
        checkpoint
    }

    /// From now on the executor must have the task announced before it writes: the
    /// worker answers through the returned [`Announcement`].
    pub fn announcing(&mut self) -> Announcement {
        let asked = Arc::new(tokio::sync::Notify::new());
        let (answer, answers) = tokio::sync::watch::channel(None);
        self.announcer = Some(Announcer {
            ask: asked.clone(),
            answer: answers,
        });
        Announcement { asked, answer }
    }

    /// Before the first write of a real run: make sure the task was announced with
    /// `task.started` and RabbitMQ confirmed it. False: it could not be; write nothing.
    /// (Without an announcer the worker announced the task before it started.)
    pub async fn announce(&self) -> bool {
        let Some(Announcer { ask, answer }) = &self.announcer else {
            return true;
        };
        ask.notify_one();
        let mut answer = answer.clone();
        let answered = answer.wait_for(Option::is_some).await;
        answered.is_ok_and(|answer| *answer == Some(true))
    }

    /// Progress as of now (runs: after each committed batch).
    pub fn record(&self, progress: Value) {
        *self.snapshot.lock().expect("checkpoint lock") = Snapshot::Value(progress);
    }

    /// Progress computed when asked.
    pub fn source(&self, source: impl Fn() -> Value + Send + Sync + 'static) {
        *self.snapshot.lock().expect("checkpoint lock") = Snapshot::Source(Box::new(source));
    }

    pub fn snapshot(&self) -> Option<Value> {
        match &*self
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
        {
            Snapshot::Nothing => None,
            Snapshot::Value(value) => Some(value.clone()),
            Snapshot::Source(source) => Some(source()),
        }
    }
}
