//! Enqueues that arrive together are stored together.
//!
//! Storing one task is one statement and one commit, and under load most of the
//! database's work per task is that statement's and that commit's fixed cost, not the
//! rows'. So the enqueue handlers hand their tasks to [`Intake`], which writes up to
//! [`MAX_BATCH`] of them in one statement ([`ledger::tasks::enqueue_many`]) while at most
//! [`IN_FLIGHT`] such statements run at once. Nothing waits to fill a batch: a task that
//! finds a statement free is written at once, alone; the tasks that arrive while every
//! statement is busy go together in the next one. Each caller hears back only after the
//! statement that stored its task committed, so a 202 still means the task is durable.
//!
//! A task with an idempotency key is written on its own (a key can conflict, and what a
//! conflict means is decided per request). If a batch fails on its data, each of its
//! tasks is tried again alone, so that one task cannot fail the others; if it fails on the
//! connection (the database is down, the pool exhausted), every caller hears so at once.
//! A task whose caller went away before its statement began (the request timed out, the
//! client disconnected) is not stored: that caller was told nothing was.
//!
//! The [`IN_FLIGHT`] statements have connections of their own, not the pool's, which they
//! keep from one batch to the next: the pool checks a connection it hands out and one
//! given back with a round trip each, and at a steady trickle of enqueues, where batches
//! hold a task or two, those round trips cost the database as much as the statement, one
//! of them on the way to every 202. A batch takes the connection used last; one idle for
//! [`PING_IDLE_AFTER`](shared::runtime::db::PING_IDLE_AFTER) or more is checked first
//! with a round trip (within [`PING_TIMEOUT`]), so that one cut off without a word during
//! a pause does not hold the enqueue; one opened `KEEP_AT_MOST` (60 s) ago is replaced
//! when next used.
//!
//! The intake's connections carry a server-side `statement_timeout`
//! ([`Connections::statement_timeout`], `ENQUEUE_STATEMENT_TIMEOUT`): a statement the
//! server is slow to finish (a lock, an overloaded server) is cancelled there, nothing of
//! it is stored, and its callers hear the ledger is unavailable. A statement whose answer
//! does not come within that and [`ANSWER_GRACE`] is given up on, as is one whose
//! connection fails under it (the database restarted, the session was ended): its
//! connection went silent (a network path that drops its packets), or its commit waits,
//! which `statement_timeout` does not reach (a synchronous standby gone). That connection
//! is closed; a new one ends its session (within [`END_WAIT`]), which settles the first
//! try, committed or rolled back, and frees what it held; and the statement is tried once
//! more there, for the callers still waiting. If the first try had committed, the tasks'
//! ids being fixed, the second finds them stored (a primary-key conflict) and answers
//! with the stored rows: each task is stored once and its caller hears so. If the second
//! try cannot tell (no new connection, or it fails too) and the first connection broke
//! without an answer, the callers hear that the outcome is unknown
//! ([`IntakeError::Unknown`], with their task's id), not that nothing was stored; the
//! session of a second try given up on is ended in the background. (A session the server
//! ended, by a restart or a terminated backend, answers with its error: that statement
//! did not commit, and the callers hear the ledger is unavailable.) A caller still
//! waiting 2 s before the request's 30 s limit hears the outcome is unknown, rather than
//! the 408 that would tell it to send the task again while its statement may still
//! commit.
//!
//! On a connection's first use its statement is prepared and then executed, and the
//! server's timeout applies to each, while the intake waits for both together for the
//! timeout and a second: a statement slow at both may be given up on (and its session
//! ended) while it would have finished.

use std::sync::Arc;

use shared::envelope::TaskEnvelope;
use shared::runtime::db::{connection_lost, is_transient, severity};
use sqlx::postgres::PgSeverity;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use crate::ledger::{self, Enqueued, TaskRow};
use crate::metrics::Metrics;

mod again;
mod places;
use again::{again, second_connection, AGAIN_FAILED};
use places::{connection, keep, Place, Places, Slot};
pub use places::{Connections, ANSWER_GRACE, END_WAIT, PING_TIMEOUT};

/// The most tasks one statement stores.
pub const MAX_BATCH: usize = 64;
/// The most enqueue statements running at once (each on a connection of the intake's own).
pub const IN_FLIGHT: usize = 4;

/// How long before the request's own limit an enqueue without a key is answered at the
/// latest (then with an unknown outcome).
pub(crate) const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// A task waiting to be stored, and who to tell.
struct Pending {
    envelope: TaskEnvelope,
    actor: Option<String>,
    reply: oneshot::Sender<Result<TaskRow, IntakeError>>,
}

/// Why an enqueue has no task to show.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Ledger(#[from] sqlx::Error),
    /// The task may or may not be stored: the writer stopped before it answered (the
    /// runtime is shutting down), or the statement's connection failed and trying again
    /// could not tell (see the module's documentation). `task_id` is the id it has if it
    /// was stored (known to [`Intake::enqueue`], not to the writer).
    #[error("the enqueue's outcome is unknown: {why}")]
    Unknown {
        why: &'static str,
        task_id: Option<Uuid>,
    },
}

impl IntakeError {
    fn unknown(why: &'static str) -> Self {
        IntakeError::Unknown { why, task_id: None }
    }
}

/// What happens once a task is stored, whoever waits for it: this replica's relay is
/// woken and the task counted.
#[derive(Clone)]
struct Stored {
    metrics: Arc<Metrics>,
    outbox_written: Arc<Notify>,
}

impl Stored {
    fn record(&self, row: &TaskRow) {
        self.outbox_written.notify_one();
        self.metrics
            .tasks_enqueued
            .with_label_values(&[row.kind.as_str()])
            .inc();
        tracing::info!(task_id = %row.id, kind = %row.kind.as_str(), actor = row.actor.as_deref().unwrap_or_default(), "task enqueued");
    }
}

/// The handle the enqueue handlers share. Its writer lives as long as any handle.
#[derive(Clone)]
pub struct Intake {
    conns: Connections,
    queue: mpsc::Sender<Pending>,
    stored: Stored,
}

impl Intake {
    /// Start the writer (on the current Tokio runtime), storing through `conns`. Every
    /// task it stores wakes `outbox_written` and counts in `tasks_enqueued`.
    pub fn start(conns: Connections, metrics: Arc<Metrics>, outbox_written: Arc<Notify>) -> Self {
        let (queue, waiting) = mpsc::channel(MAX_BATCH * IN_FLIGHT);
        let stored = Stored {
            metrics,
            outbox_written,
        };
        tokio::spawn(write_batches(conns.clone(), waiting, stored.clone()));
        Self {
            conns,
            queue,
            stored,
        }
    }

    /// Store a new task and its first outbox message (or find the task the idempotency
    /// key names): [`ledger::enqueue`], batched with other enqueues when it has no key.
    pub async fn enqueue(
        &self,
        envelope: TaskEnvelope,
        idempotency_key: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Enqueued, IntakeError> {
        if idempotency_key.is_some() {
            let enqueued =
                ledger::enqueue(&self.conns.pool, &envelope, idempotency_key, actor).await?;
            if let Enqueued::Created(row) = &enqueued {
                self.stored.record(row);
            }
            return Ok(enqueued);
        }
        let task_id = envelope.task_id;
        let (reply, stored) = oneshot::channel();
        let pending = Pending {
            envelope,
            actor: actor.map(str::to_owned),
            reply,
        };
        if self.queue.send(pending).await.is_err() {
            // The writer is gone (the runtime is shutting down): nothing was stored.
            return Err(sqlx::Error::PoolClosed.into());
        }
        // Answered before the request's own limit, past which it would be told to send
        // the task again (408) while its statement might still commit.
        let limit = crate::http::REQUEST_TIMEOUT.saturating_sub(ANSWER_MARGIN);
        let unknown = |why| IntakeError::Unknown {
            why,
            task_id: Some(task_id),
        };
        match tokio::time::timeout(limit, stored).await {
            Err(_) => Err(unknown("the ledger did not answer in time")),
            Ok(Err(_)) => Err(unknown("the writer stopped before answering")),
            Ok(Ok(Err(IntakeError::Unknown { why, .. }))) => Err(unknown(why)),
            Ok(Ok(result)) => Ok(Enqueued::Created(result?)),
        }
    }
}

/// Take the waiting tasks, up to [`MAX_BATCH`] at a time, whenever one of the
/// [`IN_FLIGHT`] places is free, and store each batch in a task of its own (so that a
/// caller that goes away cannot stop a statement its batch shares with others).
async fn write_batches(conns: Connections, mut waiting: mpsc::Receiver<Pending>, stored: Stored) {
    let places = Arc::new(Places::new(IN_FLIGHT));
    loop {
        let free = places.wait_for_one().await;
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Nobody waits for these any more: their callers were told nothing was stored.
        batch.retain(|pending| !pending.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let mut place = Place::take(&places, free);
        let (conns, stored) = (conns.clone(), stored.clone());
        tokio::spawn(async move {
            store(&conns, &mut place.slot, batch, &stored).await;
        });
    }
}

/// Store one batch and answer each of its callers.
async fn store(conns: &Connections, slot: &mut Slot, batch: Vec<Pending>, stored: &Stored) {
    let error = match insert(conns, slot, &batch).await {
        Ok(rows) => return settle(batch, rows, stored),
        Err(error) => error,
    };
    if batch.len() == 1 || !matches!(&error, IntakeError::Ledger(e) if !is_transient(e)) {
        // Tried alone, each would fail the same way (and wait for a connection in turn).
        tracing::warn!(%error, tasks = batch.len(), "enqueue failed");
        return refuse(batch, error);
    }
    tracing::warn!(%error, tasks = batch.len(), "a batch of enqueues failed; storing each on its own");
    for pending in batch {
        if pending.reply.is_closed() {
            continue;
        }
        let one = vec![pending];
        match insert(conns, slot, &one).await {
            Ok(rows) => settle(one, rows, stored),
            Err(error) => {
                tracing::warn!(task_id = %one[0].envelope.task_id, %error, "enqueue failed");
                refuse(one, error)
            }
        }
    }
}

/// The batch's tasks and their outbox messages, in one statement, on the place's kept
/// connection or a new one; if that connection fails, once more on a new one (see the
/// module's documentation).
async fn insert(
    conns: &Connections,
    slot: &mut Slot,
    batch: &[Pending],
) -> Result<Vec<TaskRow>, IntakeError> {
    let tasks: Vec<(&TaskEnvelope, Option<&str>)> = batch
        .iter()
        .map(|p| (&p.envelope, p.actor.as_deref()))
        .collect();
    let mut conn = connection(conns, slot).await?;
    let first = conns
        .answer(ledger::tasks::enqueue_many(&mut conn.conn, &tasks))
        .await;
    let (lost, first_session) = match first {
        // (The connection goes with its session: dropped, which closes it.)
        Err(error) if connection_lost(&error) => (error, conn.session),
        result => {
            keep(conn, slot);
            return Ok(result?);
        }
    };
    // From here the first try may have committed: whatever stops the second from telling
    // leaves the outcome unknown, never "nothing was stored".
    tracing::warn!(error = %lost, tasks = batch.len(), "the connection of an enqueue statement failed; trying once more on a new one");
    // A session the server ended answers the statement with its error (a restart, a
    // terminated backend): that statement did not commit. A connection that broke or went
    // silent without an answer leaves the first try's outcome open, as does a PANIC (which
    // can follow the commit's record).
    let first_unknown = !matches!(&lost, sqlx::Error::Database(e)
        if severity(e.as_ref()) != Some(PgSeverity::Panic));
    // A caller gone since (its request timed out) was told to send it again: not stored
    // now, unless the first try was.
    let (batch, tasks): (Vec<&Pending>, Vec<_>) = batch
        .iter()
        .zip(tasks)
        .filter(|(pending, _)| !pending.reply.is_closed())
        .unzip();
    if batch.is_empty() {
        if first_unknown {
            conns.end_later(first_session);
        }
        return Err(IntakeError::unknown("every caller went away"));
    }
    let first_session = first_unknown.then_some(first_session);
    let mut conn = match second_connection(conns, first_session).await {
        Ok(conn) => conn,
        Err(error) if !first_unknown => return Err(error.into()),
        Err(_) => return Err(IntakeError::unknown(AGAIN_FAILED)),
    };
    let ids: Vec<Uuid> = batch.iter().map(|p| p.envelope.task_id).collect();
    let second = again(conns, &mut conn.conn, &tasks, &ids, first_unknown).await;
    let healthy = match &second {
        Ok(_) => true,
        Err(IntakeError::Ledger(error)) => !connection_lost(error),
        Err(IntakeError::Unknown { .. }) => false,
    };
    if healthy {
        keep(conn, slot);
    } else {
        conns.end_later(conn.session);
    }
    second
}

/// Answer each caller of a stored batch with its own task (matched by id).
fn settle(batch: Vec<Pending>, rows: Vec<TaskRow>, stored: &Stored) {
    let mut rows: std::collections::HashMap<_, _> =
        rows.into_iter().map(|row| (row.id, row)).collect();
    for pending in batch {
        // Never: the statement returns every row it stored.
        let row = rows
            .remove(&pending.envelope.task_id)
            .ok_or(IntakeError::Ledger(sqlx::Error::RowNotFound));
        if let Ok(row) = &row {
            stored.record(row);
        }
        let _ = pending.reply.send(row);
    }
}

/// Tell each caller of a batch that was not stored (or may have been) why: the error
/// itself to a task tried alone; to each of several, its text (a connection-level failure,
/// answered 503) or the same unknown outcome.
fn refuse(mut batch: Vec<Pending>, error: IntakeError) {
    if batch.len() == 1 {
        let pending = batch.pop().expect("one task");
        let _ = pending.reply.send(Err(error));
        return;
    }
    for pending in batch {
        let error = match &error {
            IntakeError::Unknown { why, task_id } => IntakeError::Unknown {
                why,
                task_id: *task_id,
            },
            IntakeError::Ledger(error) => {
                IntakeError::Ledger(sqlx::Error::Io(std::io::Error::other(error.to_string())))
            }
        };
        let _ = pending.reply.send(Err(error));
    }
}
