//! The intake's places: the [`super::IN_FLIGHT`] statements, each with the connection it
//! keeps between batches (see the intake's documentation).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::runtime::db::{connection_lost, PING_IDLE_AFTER};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
/// pass `result` on.
pub(super) fn keep<T>(
    mut conn: Kept,
    slot: &mut Slot,
    result: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    if !matches!(&result, Err(error) if connection_lost(error)) {
        conn.used = Instant::now();
        *slot = Some(conn);
    }
    result
}
