//! The intake's places: the [`super::IN_FLIGHT`] statements, each with the connection it
//! keeps between batches (see the intake's documentation).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::runtime::db::{connection_lost, PING_IDLE_AFTER};
use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, PgConnection, PgPool, Postgres};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ledger::session::SessionSetup;

/// Where the intake's statements get their connections, and how long one may go
/// unanswered.
#[derive(Clone)]
pub struct Connections {
    /// The ledger pool: a batch's connection is kept from the batch before, or taken from it.
    pub pool: PgPool,
    /// How a connection the intake opens on its own is set up (as the pool's are).
    pub session: SessionSetup,
    /// How long a statement may go unanswered before its connection is taken for lost.
    pub statement_timeout: Duration,
}

impl Connections {
    /// `statement`'s answer, or, if none came within the statement timeout, an I/O error
    /// (`TimedOut`) that [`connection_lost`] counts as lost: the connection is in the
    /// middle of a statement and must not be used again.
    pub(super) async fn answer<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let limit = self.statement_timeout;
        tokio::time::timeout(limit, statement)
            .await
            .unwrap_or_else(|_| Err(timed_out("no answer from the ledger", limit)))
    }

    /// A connection of the intake's own, opened and set up within the pool's acquire
    /// timeout. After a connection failed, the pool's idle ones may have too (a network
    /// path gone silent), and the pool's check of one would take its whole acquire timeout.
    pub(super) async fn open(&self) -> Result<PgConnection, sqlx::Error> {
        let limit = self.pool.options().get_acquire_timeout();
        let opening = async {
            let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
            self.session.apply(&mut conn).await?;
            Ok(conn)
        };
        tokio::time::timeout(limit, opening)
            .await
            .unwrap_or_else(|_| Err(timed_out("no new connection to the ledger", limit)))
    }
}

fn timed_out(what: &str, limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} within {}", humantime::format_duration(limit)),
    ))
}

/// Close a connection the intake opened, in the background (politely, so that the server
/// does not log a lost client, within a second).
pub(super) fn close(conn: PgConnection) {
    tokio::spawn(tokio::time::timeout(Duration::from_secs(1), conn.close()));
}

/// The longest a place keeps one connection before it gives it back to the pool (which
/// retires connections past their lifetime, and after a failover hands out new ones).
pub(super) const KEEP_AT_MOST: Duration = Duration::from_secs(60);

/// One of the [`IN_FLIGHT`](super::IN_FLIGHT) statements' places: the connection it keeps between batches
/// (none before its first batch, or after its connection failed).
pub(super) type Slot = Option<Kept>;

/// A kept connection: when it was taken from the pool, and when last used.
pub(super) struct Kept {
    pub(super) conn: PoolConnection<Postgres>,
    taken: Instant,
    used: Instant,
}

impl Kept {
    pub(super) fn new(conn: PoolConnection<Postgres>, taken: Instant) -> Self {
        Self {
            conn,
            taken,
            used: taken,
        }
    }

    /// Used within [`PING_IDLE_AFTER`] and taken from the pool within [`KEEP_AT_MOST`].
    fn fresh(&self) -> bool {
        self.used.elapsed() < PING_IDLE_AFTER && self.taken.elapsed() < KEEP_AT_MOST
    }
}

/// The places: how many are free, and the connections kept by the free ones, the most
/// recently used last (a batch takes that one: under a trickle of enqueues one warm
/// connection serves them, and the others age out).
pub(super) struct Places {
    free: Arc<Semaphore>,
    kept: Mutex<Vec<Kept>>,
}

impl Places {
    pub(super) fn new(places: usize) -> Self {
        Self {
            free: Arc::new(Semaphore::new(places)),
            kept: Mutex::new(Vec::with_capacity(places)),
        }
    }

    /// Wait until a place is free; it is held as long as the permit.
    pub(super) async fn wait_for_one(&self) -> OwnedSemaphorePermit {
        self.free
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A place taken by a batch. It goes back to the free ones when dropped, with the
/// connection the batch left in it (none if the batch's task panicked while using it).
pub(super) struct Place {
    pub(super) slot: Slot,
    places: Arc<Places>,
    _free: OwnedSemaphorePermit,
}

impl Place {
    /// The free place `free` holds, with the connection used last (taken now that a batch
    /// is ready: the batch before may just have given it back).
    pub(super) fn take(places: &Arc<Places>, free: OwnedSemaphorePermit) -> Self {
        Self {
            slot: places.kept().pop(),
            places: places.clone(),
            _free: free,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut kept = self.places.kept();
        // Those idle too long to be used again go back to the pool now.
        kept.retain(|k| k.fresh());
        kept.extend(self.slot.take());
        // (The permit is given back after this, with the fields.)
    }
}

/// The place's kept connection if it was used within [`PING_IDLE_AFTER`] and taken from
/// the pool within [`KEEP_AT_MOST`]; otherwise one from the pool, which checks it within
/// its acquire timeout (a kept connection idle longer may have been cut off without a
/// word, and a statement on it would wait until TCP gives up).
pub(super) async fn connection(pool: &PgPool, slot: &mut Slot) -> Result<Kept, sqlx::Error> {
    if let Some(kept) = slot.take() {
        if kept.fresh() {
            return Ok(kept);
        }
        // Back to the pool (which retires it if it is past its lifetime) before another
        // is taken: the intake never holds more than one connection per place.
        drop(kept);
    }
    Ok(Kept::new(pool.acquire().await?, Instant::now()))
}

/// Keep `conn` in `slot` for the next batch unless `result` says the connection failed;
/// pass `result` on. A failed one is taken out of the pool and closed: given back, the
/// pool would check it, which on a connection gone silent (or left in the middle of a
/// statement) waits until TCP gives up, holding one of the pool's places.
pub(super) fn keep<T>(
    mut conn: Kept,
    slot: &mut Slot,
    result: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    if matches!(&result, Err(error) if connection_lost(error)) {
        drop(conn.conn.detach());
    } else {
        conn.used = Instant::now();
        *slot = Some(conn);
    }
    result
}
