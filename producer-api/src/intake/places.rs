//! The intake's places: the [`super::IN_FLIGHT`] statements, each with the connection it
//! keeps between batches (see the intake's documentation).
//!
//! These connections are the intake's own, not the ledger pool's: each is set up with a
//! server-side `statement_timeout`, so that a statement the server is slow to finish (a
//! lock, an overloaded server) is cancelled there and answered, and only one whose answer
//! does not come (a network path gone silent, a commit waiting) is given up on by the
//! intake. A connection given up on in the middle of a statement is dropped, never
//! reused, and its session ended from another ([`Connections::end`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::runtime::db::PING_IDLE_AFTER;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ledger::session::SessionSetup;

/// The longest a place keeps one connection before it opens a new one (so that a
/// replica follows a failover or a DNS change within a minute).
pub(super) const KEEP_AT_MOST: Duration = Duration::from_secs(60);
/// How long after the server's `statement_timeout` a statement's answer may still come
/// before its connection is taken for lost (the server cancels it in milliseconds).
pub const ANSWER_GRACE: Duration = Duration::from_secs(1);
/// How long the check of a connection idle for [`PING_IDLE_AFTER`] or more may take (a
/// round trip, milliseconds even under load) before another connection is opened.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the server may take to end the session of a statement given up on before the
/// statement is tried again (see `Connections::end`); under the shortest statement
/// timeout allowed, which applies to that wait too.
pub const END_WAIT: Duration = Duration::from_millis(500);
/// How long a session given up on is tried to be ended in the background before it is
/// counted `left` (a database restarting or unreachable meanwhile usually ended it).
pub const END_LATER_FOR: Duration = Duration::from_secs(300);
/// The sessions ended in the background at once (each from a connection of its own).
const ENDING_AT_ONCE: usize = 4;

/// How the intake connects to the ledger, and how long it waits for its statements.
#[derive(Clone)]
pub struct Connections {
    /// The ledger pool: keyed enqueues go through it, and the intake opens its own
    /// connections with its connect options.
    pub pool: PgPool,
    /// How the intake's connections are set up (as the pool's are).
    pub session: SessionSetup,
    /// The server-side `statement_timeout` of the intake's connections.
    pub statement_timeout: Duration,
    /// How long opening (and setting up) a connection may take.
    pub connect_timeout: Duration,
    /// Counts the sessions given up on, by outcome: `ended` or `left`
    /// (`cleanup_enqueue_sessions_given_up_total`).
    given_up: prometheus::IntCounterVec,
    /// Bounds the connections opened to end sessions in the background.
    ending: Arc<Semaphore>,
}

impl Connections {
    pub fn new(
        pool: PgPool,
        session: SessionSetup,
        statement_timeout: Duration,
        connect_timeout: Duration,
        given_up: prometheus::IntCounterVec,
    ) -> Self {
        Self {
            pool,
            session,
            statement_timeout,
            connect_timeout,
            given_up,
            ending: Arc::new(Semaphore::new(ENDING_AT_ONCE)),
        }
    }

    /// `statement`'s answer, or, if none came within the server's `statement_timeout` and
    /// [`ANSWER_GRACE`], an I/O error
    /// (`TimedOut`) that [`connection_lost`] counts as lost: the connection is in the
    /// middle of a statement and must not be used again.
    pub(super) async fn answer<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        within(self.statement_timeout + ANSWER_GRACE, statement).await
    }

    /// A new connection of the intake's, opened and set up within the connect timeout.
    pub(super) async fn open(&self) -> Result<Kept, sqlx::Error> {
        let limit = self.connect_timeout;
        let opening = async {
            let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
            self.session.apply(&mut conn).await?;
            let (pid, started, _): (i32, String, String) = sqlx::query_as(
                "SELECT a.pid, a.backend_start::text,
                        set_config('statement_timeout', $1, false)
                 FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()",
            )
            .bind(format!("{}ms", self.statement_timeout.as_millis()))
            .fetch_one(&mut conn)
            .await?;
            Ok((conn, Session { pid, started }))
        };
        let (conn, session) = tokio::time::timeout(limit, opening)
            .await
            .unwrap_or_else(|_| Err(timed_out("no new connection to the ledger", limit)))?;
        let now = Instant::now();
        Ok(Kept {
            conn,
            session,
            opened: now,
            used: now,
        })
    }

    /// End `session` (one whose statement the intake gave up on) from `conn`, waiting up
    /// to [`END_WAIT`] for it to end (and [`ANSWER_GRACE`] more for the answer): its
    /// transaction is then over, committed or not, and no longer holds the locks its
    /// statement took. (A statement whose answer is overdue may be waiting to commit,
    /// where `statement_timeout` does not reach: for a synchronous standby, say.) False if
    /// it is still there.
    pub(super) async fn end(
        &self,
        conn: &mut PgConnection,
        session: &Session,
    ) -> Result<bool, sqlx::Error> {
        // The session's start tells it from a later one that took over its process id.
        let ending = sqlx::query_scalar(
            "SELECT pg_terminate_backend(a.pid, $3) FROM pg_stat_activity a
             WHERE a.pid = $1 AND a.backend_start = $2::timestamptz",
        )
        .bind(session.pid)
        .bind(&session.started)
        .bind(END_WAIT.as_millis() as i64)
        .fetch_optional(&mut *conn);
        let ended: Option<bool> = within(END_WAIT + ANSWER_GRACE, ending).await?;
        if ended.is_none() {
            tracing::info!(
                pid = session.pid,
                "the session of an enqueue statement given up on had already ended"
            );
        }
        let ended = ended.unwrap_or(true);
        if ended {
            self.given_up.with_label_values(&["ended"]).inc();
        }
        Ok(ended)
    }

    /// [`Self::end`] from a new connection, in the background: for a session given up on
    /// whose end nothing waits for any more. Tried again with growing pauses (1 s, 2 s,
    /// ... 30 s) for [`END_LATER_FOR`], then counted `left`. (Not from the pool, whose
    /// idle connections may have gone silent with this one.)
    pub(super) fn end_later(&self, session: Session) {
        let conns = self.clone();
        tokio::spawn(async move {
            let since = Instant::now();
            let mut pause = Duration::from_secs(1);
            for attempt in 1.. {
                let ended = match conns.ending.clone().acquire_owned().await {
                    Ok(_permit) => match conns.open().await {
                        Ok(mut new) => {
                            let ended = conns.end(&mut new.conn, &session).await;
                            close(new.conn);
                            ended
                        }
                        Err(error) => Err(error),
                    },
                    Err(_) => return,
                };
                match ended {
                    Ok(true) => return,
                    Ok(false) => tracing::warn!(
                        pid = session.pid,
                        attempt,
                        "the session of an enqueue statement given up on did not end in time"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, pid = session.pid, attempt, "could not end the session of an enqueue statement given up on")
                    }
                }
                if since.elapsed() + pause > END_LATER_FOR {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            conns.given_up.with_label_values(&["left"]).inc();
            tracing::error!(
                pid = session.pid,
                "the session of an enqueue statement given up on could not be ended; it may hold its locks until PostgreSQL finds its connection gone"
            );
        });
    }
}

/// Which server session a connection is: its process id and when it started.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) pid: i32,
    started: String,
}

/// `statement`'s answer, or a `TimedOut` I/O error if none came within `limit`.
async fn within<T>(
    limit: Duration,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(limit, statement)
        .await
        .unwrap_or_else(|_| Err(timed_out("no answer from the ledger", limit)))
}

fn timed_out(what: &str, limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} within {}", humantime::format_duration(limit)),
    ))
}

/// One of the [`IN_FLIGHT`](super::IN_FLIGHT) statements' places: the connection it
/// keeps between batches (none before its first batch, or after its connection failed).
pub(super) type Slot = Option<Kept>;

/// A kept connection: its session, when it was opened, and when last used.
pub(super) struct Kept {
    pub(super) conn: PgConnection,
    pub(super) session: Session,
    opened: Instant,
    used: Instant,
}

/// The places: how many are free, and the connections kept by the free ones, the most
/// recently used last (a batch takes that one: under a trickle of enqueues one warm
/// connection serves them).
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
        self.places.kept().extend(self.slot.take());
        // (The permit is given back after this, with the fields.)
    }
}

/// The place's kept connection, checked with a round trip (within [`PING_TIMEOUT`]) if
/// it sat idle for [`PING_IDLE_AFTER`] or more: one cut off without a word meanwhile
/// would hold a statement until the intake gives up on it. A new one if there is none,
/// the check fails, or it was opened [`KEEP_AT_MOST`] ago.
pub(super) async fn connection(conns: &Connections, slot: &mut Slot) -> Result<Kept, sqlx::Error> {
    let Some(mut kept) = slot.take() else {
        return conns.open().await;
    };
    if kept.opened.elapsed() >= KEEP_AT_MOST {
        close(kept.conn);
        return conns.open().await;
    }
    if kept.used.elapsed() < PING_IDLE_AFTER
        || matches!(
            tokio::time::timeout(PING_TIMEOUT, kept.conn.ping()).await,
            Ok(Ok(()))
        )
    {
        return Ok(kept);
    }
    // (A connection whose check failed is dropped: closed without a word.)
    conns.open().await
}

/// Close a connection of the intake's in the background, politely (so that the server
/// does not log a lost client), within a second.
fn close(conn: PgConnection) {
    tokio::spawn(tokio::time::timeout(Duration::from_secs(1), conn.close()));
}

/// Keep `conn` in `slot` for the next batch. (A connection not kept is dropped, which
/// closes it.)
pub(super) fn keep(mut conn: Kept, slot: &mut Slot) {
    conn.used = Instant::now();
    *slot = Some(conn);
}
