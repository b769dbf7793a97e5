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
//! conflict means is decided per request). If a batch fails, each of its tasks is tried
//! again alone, so that one task cannot fail the others.

use std::sync::Arc;

use shared::envelope::TaskEnvelope;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::ledger::{self, Enqueued, TaskRow};

/// The most tasks one statement stores.
pub const MAX_BATCH: usize = 64;
/// The most enqueue statements running at once (each holds a connection of the pool).
pub const IN_FLIGHT: usize = 4;

/// A task waiting to be stored, and who to tell.
struct Pending {
    envelope: TaskEnvelope,
    actor: Option<String>,
    reply: oneshot::Sender<Result<TaskRow, sqlx::Error>>,
}

/// The handle the enqueue handlers share. Its writer lives as long as any handle.
#[derive(Clone)]
pub struct Intake {
    pool: PgPool,
    queue: mpsc::Sender<Pending>,
}

impl Intake {
    /// Start the writer (on the current Tokio runtime).
    pub fn start(pool: PgPool) -> Self {
        let (queue, waiting) = mpsc::channel(MAX_BATCH * IN_FLIGHT);
        tokio::spawn(write_batches(pool.clone(), waiting));
        Self { pool, queue }
    }

    /// Store a new task and its first outbox message (or find the task the idempotency
    /// key names): [`ledger::enqueue`], batched with other enqueues when it has no key.
    pub async fn enqueue(
        &self,
        envelope: &TaskEnvelope,
        idempotency_key: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Enqueued, sqlx::Error> {
        if idempotency_key.is_some() {
            return ledger::enqueue(&self.pool, envelope, idempotency_key, actor).await;
        }
        let (reply, stored) = oneshot::channel();
        let pending = Pending {
            envelope: envelope.clone(),
            actor: actor.map(str::to_owned),
            reply,
        };
        if self.queue.send(pending).await.is_err() {
            // The writer is gone (the runtime is shutting down): nothing was stored.
            return Err(sqlx::Error::PoolClosed);
        }
        match stored.await {
            Ok(result) => result.map(Enqueued::Created),
            // The writer's task ended without an answer (the runtime is shutting down);
            // its statement may or may not have committed, like a lost connection's.
            Err(_) => Err(sqlx::Error::PoolClosed),
        }
    }
}

/// Take the waiting tasks, up to [`MAX_BATCH`] at a time, whenever one of the
/// [`IN_FLIGHT`] statements is free, and store each batch in a task of its own (so that a
/// caller that goes away cannot stop a statement its batch shares with others).
async fn write_batches(pool: PgPool, mut waiting: mpsc::Receiver<Pending>) {
    let free = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let permit = free
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
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
        let pool = pool.clone();
        tokio::spawn(async move {
            store(&pool, batch).await;
            drop(permit);
        });
    }
}

/// Store one batch and answer each of its callers.
async fn store(pool: &PgPool, batch: Vec<Pending>) {
    if batch.len() > 1 {
        let tasks: Vec<(&TaskEnvelope, Option<&str>)> = batch
            .iter()
            .map(|p| (&p.envelope, p.actor.as_deref()))
            .collect();
        match ledger::tasks::enqueue_many(pool, &tasks).await {
            Ok(rows) => {
                let mut rows: std::collections::HashMap<_, _> =
                    rows.into_iter().map(|row| (row.id, row)).collect();
                for pending in batch {
                    // Never: the statement returns every row it stored.
                    let row = rows
                        .remove(&pending.envelope.task_id)
                        .ok_or(sqlx::Error::RowNotFound);
                    let _ = pending.reply.send(row);
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, tasks = batch.len(), "a batch of enqueues failed; storing each on its own");
            }
        }
    }
    for pending in batch {
        let stored = ledger::enqueue(pool, &pending.envelope, None, pending.actor.as_deref())
            .await
            .and_then(|enqueued| match enqueued {
                Enqueued::Created(row) => Ok(row),
                // Never: without a key nothing can conflict.
                Enqueued::Replayed(_) | Enqueued::KeyConflict(_) => Err(sqlx::Error::RowNotFound),
            });
        let _ = pending.reply.send(stored);
    }
}
