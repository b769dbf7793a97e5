//! The consume loop and its supervisor.
//!
//! The supervisor connects (auto-recovery on, heartbeat set), declares the topology,
//! reads the cancellation stream up to now (`crate::cancels`) and follows it, opens one
//! consuming channel per kind with prefetch = concurrency and one confirm
//! channel for events, and runs deliveries concurrently up to the concurrency limit; each
//! consuming channel's acks go out through its `crate::acks::Acks`.
//! When the connection is lost for good it rebuilds everything with backoff. On shutdown
//! it stops consuming, lets in-flight tasks finish, publishes `worker.stopped` and closes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{SelectAll, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionStatus, Consumer};
use shared::events::{Event, WorkerHeartbeat, WorkerStopped};
use shared::runtime::amqp::{self, SessionEnd};
use shared::tasks::TaskKind;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acks::Acks;
use crate::process::{handle_delivery, publish_event, WorkerContext};

/// How the supervisor reaches the broker and how much it runs at once.
#[derive(Clone)]
pub struct ConsumerConfig {
    pub amqp_url: String,
    pub kinds: Vec<TaskKind>,
    pub concurrency: u16,
    pub heartbeat_interval: Duration,
    pub host: String,
    pub started_at: DateTime<Utc>,
}

/// Consume until `shutdown`; reconnect whenever the connection is lost for good.
pub async fn run(
    ctx: Arc<WorkerContext>,
    config: ConsumerConfig,
    connected: watch::Sender<Option<ConnectionStatus>>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let connect = || connect(&ctx, &config);
    let session = |session: Session| {
        let (ctx, config, tasks, shutdown, connected) =
            (&ctx, &config, &tasks, &shutdown, &connected);
        async move {
            let _ = connected.send(Some(session.connection.status().clone()));
            ctx.metrics.amqp_connected.set(1);
            tracing::info!(kinds = ?config.kinds, concurrency = config.concurrency, "worker consuming");
            let end = session.consume(ctx, config, tasks, shutdown).await;
            let _ = connected.send(None);
            ctx.metrics.amqp_connected.set(0);
            // Whatever blocked this connection went with it (the session's token is
            // cancelled by now, so its follower writes no more).
            *ctx.blocked.lock().expect("blocked lock") = None;
            if end == SessionEnd::Shutdown {
                session.finish(ctx, tasks).await;
                return SessionEnd::Shutdown;
            }
            // Deliveries of the old channels are void (RabbitMQ redelivers those tasks).
            // Their work stops at its next batch boundary (the session's token is
            // cancelled): wait for that first, so that no copy of a task still deletes
            // when its redelivery starts. While the old connection still works (the
            // session ended for another reason: a consumer failed, a result was refused),
            // the tasks then report over it as at a stop, so that a continuation is never
            // left without the ack of the delivery it replaces. Once it does not work
            // (lapin holds their acks and confirms for a recovery, an ack without limit),
            // they are not waited for: the old connection is closed, so that it recovers
            // no consumers of its own, and the rebuild goes on. A stop ends the waits.
            tasks.close();
            ctx.executing.close();
            let waits = async {
                let stopped = tokio::time::timeout(ctx.stop_grace, ctx.executing.wait()).await;
                if stopped.is_err() {
                    tracing::warn!(executing = ctx.executing.len(), limit = ?ctx.stop_grace, "work of the lost session did not stop in time; rebuilding without it");
                } else if !reported_while_connected(&session.connection, tasks).await {
                    tracing::warn!(in_flight = tasks.len(), "tasks of the lost session could not report on its connection; rebuilding without them");
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = waits => {}
            }
            amqp::retire(session.connection, "rebuilding").await;
            ctx.executing.reopen();
            tasks.reopen();
            SessionEnd::Lost
        }
    };
    amqp::supervise("worker", &shutdown, connect, session).await;
}

struct Session {
    connection: Connection,
    events: Channel,
    /// The cancellation stream, read up to now, to follow.
    cancels: (Channel, Consumer),
    /// Each kind's consuming channel, its consumer, and the acks of its deliveries.
    consumers: Vec<(Channel, Consumer, TaskKind, Arc<Acks>)>,
}

async fn connect(ctx: &WorkerContext, config: &ConsumerConfig) -> anyhow::Result<Session> {
    let connection = amqp::Setup::new(
        amqp::connect(&config.amqp_url, &format!("worker {}", ctx.worker_id)).await?,
    );
    let events = amqp::confirm_channel(&connection).await?;
    ctx.topology.declare(&events).await?;
    // Every cancellation published so far is known before the first task is taken.
    let cancels = crate::cancels::catch_up(ctx, &connection, &events).await?;
    let mut consumers = Vec::new();
    for kind in &config.kinds {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(config.concurrency, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                ctx.topology.task_queue(*kind).into(),
                format!("{}-{}", ctx.worker_id, kind).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push((channel, consumer, *kind, Arc::new(Acks::new())));
    }
    Ok(Session {
        connection: connection.done(),
        events,
        cancels,
        consumers,
    })
}

impl Session {
    /// Run deliveries until shutdown, or until the connection is lost and auto-recovery
    /// gave up.
    async fn consume(
        &self,
        ctx: &Arc<WorkerContext>,
        config: &ConsumerConfig,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let limit = Arc::new(Semaphore::new(usize::from(config.concurrency)));
        // Cancelled when this session ends for any reason: shutdown stops tasks at a batch
        // boundary (continuation); a lost connection stops them too, since their deliveries
        // are void and will be redelivered.
        let session = shutdown.child_token();
        let _end_session = session.clone().drop_guard();
        let mut watchdog = amqp::RecoveryWatchdog::default();
        let mut watch = tokio::time::interval(Duration::from_secs(2));
        let mut streams: SelectAll<_> = SelectAll::new();
        for (_, consumer, kind, acks) in &self.consumers {
            let (kind, acks) = (*kind, acks.clone());
            streams.push(
                consumer
                    .clone()
                    .map(move |d| (d, kind, acks.clone()))
                    .boxed(),
            );
        }
        // Heartbeats go on while every slot is busy with long tasks.
        let heartbeats = tokio::spawn(heartbeat_loop(
            ctx.clone(),
            config.clone(),
            self.events.clone(),
            tasks.clone(),
        ));
        let _stop_heartbeats = AbortOnDrop(heartbeats);
        // Cancellations are followed apart from deliveries, so that they arrive while
        // every slot is busy; if the stream fails, or a task cannot report its result, the
        // session is rebuilt.
        let session_lost = CancellationToken::new();
        let follower = tokio::spawn({
            let (ctx, consumer, lost) = (ctx.clone(), self.cancels.1.clone(), session_lost.clone());
            async move {
                let error = crate::cancels::follow(&ctx, consumer).await;
                tracing::warn!(%error, "cancellation stream lost; rebuilding the connection");
                lost.cancel();
            }
        });
        let _stop_follower = AbortOnDrop(follower);
        let blocked = tokio::spawn(follow_blocked(
            ctx.clone(),
            self.connection.events_listener(),
            session.clone(),
        ));
        if self.connection.status().blocked() {
            // Blocked before the events were followed (RabbitMQ gives its reason only once).
            set_blocked(ctx, &session, Some("reason not known".to_owned()));
        }
        let _stop_blocked = AbortOnDrop(blocked);
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = session_lost.cancelled() => return SessionEnd::Lost,
                permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            let next = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                    _ = session_lost.cancelled() => return SessionEnd::Lost,
                    _ = watch.tick() => {
                        let mut channels: Vec<&Channel> = self.consumers.iter().map(|(c, ..)| c).collect();
                        channels.push(&self.events);
                        channels.push(&self.cancels.0);
                        if !watchdog.check(&channels) {
                            return SessionEnd::Lost;
                        }
                    }
                    next = streams.next() => break next,
                }
            };
            // Taken in the consumer's order: its place among the channel's acks.
            let (delivery, kind) = match next {
                Some((Ok(delivery), kind, acks)) => (acks.take(delivery), kind),
                // A consumer is not trusted to lapin's recovery (it has been seen to resume
                // without deliveries after a broker restart): rebuild the session. The
                // broker redelivers every unacked task to the new consumers.
                Some((Err(error), _, _)) => {
                    tracing::warn!(%error, "consumer failed; rebuilding the connection");
                    return SessionEnd::Lost;
                }
                None => return SessionEnd::Lost,
            };
            let ctx = ctx.clone();
            let events = self.events.clone();
            let report_failed = session_lost.clone();
            // On shutdown a task stops at its next batch boundary and continues elsewhere.
            let cancel = session.child_token();
            tasks.spawn(async move {
                let _permit = permit;
                match handle_delivery(&ctx, &events, kind, &delivery, &cancel).await {
                    Ok(_) => {}
                    Err(error) => {
                        // The broker cannot take events (a restart in progress, a queue not
                        // yet back): rebuild the connection, with its backoff. No nack: it
                        // would hand the task straight back to a worker that cannot report
                        // either, and every return spends one of the message's deliveries
                        // (a tight loop dead-letters it); the task returns to its queue when
                        // this session's channels close.
                        tracing::warn!(%error, "could not report a result; rebuilding the connection (the task returns to its queue)");
                        report_failed.cancel();
                    }
                }
            });
        }
    }
}

/// How long stopped tasks get to report: a continuation or result and its confirm, then
/// the ack.
const REPORT_LIMIT: Duration = amqp::CONFIRM_TIMEOUT.saturating_add(amqp::STOP_REQUEST_TIMEOUT);

/// Wait for `tasks` to end, at most [`REPORT_LIMIT`] and for as long as `connection`
/// works; false when they did not.
async fn reported_while_connected(connection: &Connection, tasks: &TaskTracker) -> bool {
    let reported = async {
        let ended = tasks.wait();
        tokio::pin!(ended);
        let mut look = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = &mut ended => return true,
                _ = look.tick() => if !connection.status().connected() {
                    return false;
                }
            }
        }
    };
    tokio::time::timeout(REPORT_LIMIT, reported)
        .await
        .unwrap_or(false)
}

/// Follow RabbitMQ's `connection.blocked` / `unblocked` for a session: logged, exported as
/// `cleanup_amqp_blocked`, shown by `/readyz`. Meanwhile the worker's publishes wait: a
/// result for at most its confirm timeout, after which the session is rebuilt and the
/// task returns to its queue.
async fn follow_blocked(
    ctx: Arc<WorkerContext>,
    events: impl futures::Stream<Item = lapin::Event>,
    session: CancellationToken,
) {
    amqp::follow_blocked(events, |reason| {
        match &reason {
            Some(reason) => tracing::warn!(%reason, "RabbitMQ blocks publishing on the worker's connection (memory or disk alarm); results wait until it lifts"),
            None => tracing::info!("RabbitMQ no longer blocks the worker's connection; results go out again"),
        }
        set_blocked(&ctx, &session, reason);
    })
    .await
}

/// Record whether the session's connection is blocked, unless the session has ended:
/// the session's end clears the state under the same lock, so a late word from an old
/// session's follower cannot outlive it.
fn set_blocked(ctx: &WorkerContext, session: &CancellationToken, reason: Option<String>) {
    let mut blocked = ctx.blocked.lock().expect("blocked lock");
    if !session.is_cancelled() {
        *blocked = reason;
    }
}

/// Aborts a background task when the session that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publish `worker.heartbeat` every interval for as long as the session lives.
async fn heartbeat_loop(
    ctx: Arc<WorkerContext>,
    config: ConsumerConfig,
    events: Channel,
    tasks: TaskTracker,
) {
    let mut ticks = tokio::time::interval(config.heartbeat_interval);
    loop {
        ticks.tick().await;
        let in_flight = tasks.len();
        let event = Event::WorkerHeartbeat(WorkerHeartbeat {
            worker_id: ctx.worker_id.clone(),
            host: config.host.clone(),
            version: shared::VERSION.to_owned(),
            kinds: config.kinds.clone(),
            started_at: config.started_at,
            at: Utc::now(),
            in_flight: in_flight as u32,
            processed: ctx.processed.load(Ordering::Relaxed),
            interval_ms: config.heartbeat_interval.as_millis() as u64,
        });
        if let Err(error) = publish_event(&ctx, &events, &event).await {
            tracing::warn!(%error, "heartbeat not published");
        }
    }
}

impl Session {
    /// Graceful end: stop taking deliveries, let in-flight tasks finish, say goodbye.
    async fn finish(self, ctx: &WorkerContext, tasks: &TaskTracker) {
        // Each cancel is unanswered when the broker stops answering right now (lapin then
        // holds it for a recovery); closing the connection below ends the consumers anyway.
        let cancels = self.consumers.iter().map(|(channel, consumer, ..)| {
            let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
            tokio::time::timeout(amqp::STOP_REQUEST_TIMEOUT, cancel)
        });
        futures::future::join_all(cancels).await;
        tasks.close();
        // A turn stops within the stop grace, then reports. Past that, what is left returns
        // to its queue when the connection closes, as after a crash.
        let limit = ctx.stop_grace + REPORT_LIMIT;
        if tokio::time::timeout(limit, tasks.wait()).await.is_err() {
            tracing::warn!(
                in_flight = tasks.len(),
                ?limit,
                "in-flight tasks did not end in time; they return to their queues"
            );
        }
        let event = Event::WorkerStopped(WorkerStopped {
            worker_id: ctx.worker_id.clone(),
            at: Utc::now(),
            processed: ctx.processed.load(Ordering::Relaxed),
        });
        // A goodbye is a courtesy: without it the ledger marks this worker lost once its
        // heartbeats stop. So it gets only a short wait, and none without a connection.
        let goodbye = async {
            if !self.connection.status().connected() {
                return Err("no broker connection".to_owned());
            }
            let publish = publish_event(ctx, &self.events, &event);
            match tokio::time::timeout(amqp::STOP_REQUEST_TIMEOUT, publish).await {
                Ok(published) => published.map_err(|error| error.to_string()),
                Err(_) => Err(format!(
                    "not confirmed within {:?}",
                    amqp::STOP_REQUEST_TIMEOUT
                )),
            }
        };
        if let Err(error) = goodbye.await {
            tracing::warn!(%error, "worker.stopped not published");
        }
        amqp::close(&self.connection, "worker stopping").await;
        tracing::info!("worker stopped consuming");
    }
}
