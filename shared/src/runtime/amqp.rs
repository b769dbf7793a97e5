//! Connecting to RabbitMQ and publishing with confirms: the rules every publisher follows.
//!
//! Connections enable lapin's auto-recovery and a heartbeat, so a dead peer is noticed in
//! seconds. Recovery can still give up (a long outage); callers run their own supervisor
//! loop around [`connect`] for that case.

use std::str::FromStr;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use tokio_util::sync::CancellationToken;

use crate::envelope::{CONTENT_TYPE, SCHEMA_VERSION};
use crate::retry::RetryPolicy;

mod blocked;
pub use blocked::follow_blocked;

/// AMQP heartbeat in seconds, used unless the URL sets `heartbeat`.
pub const HEARTBEAT_SECS: u16 = 15;
/// TCP connect timeout, used unless the URL sets `connection_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parse an AMQP URL and fill in the heartbeat and connect timeout when it has none.
pub fn amqp_uri(url: &str) -> Result<AMQPUri, String> {
    let mut uri = AMQPUri::from_str(url).map_err(|e| format!("invalid AMQP URL: {e}"))?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    uri.query
        .connection_timeout
        .get_or_insert(CONNECT_TIMEOUT.as_millis() as u64);
    Ok(uri)
}

/// Open a connection with auto-recovery and a heartbeat, named for the broker's UI.
pub async fn connect(url: &str, connection_name: &str) -> anyhow::Result<Connection> {
    let uri = amqp_uri(url).map_err(anyhow::Error::msg)?;
    let properties = ConnectionProperties::default()
        .with_connection_name(connection_name.into())
        .enable_auto_recover();
    let host = format!("{}:{}", uri.authority.host, uri.authority.port);
    Connection::connect_uri(uri, properties)
        .await
        .map_err(|e| anyhow::anyhow!("failed to connect to RabbitMQ at {host}: {e}"))
}

/// A channel in confirm mode: every publish on it is acknowledged by the broker.
pub async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// How long lapin's auto-recovery may take before the supervisor gives up on it and
/// rebuilds the connection itself (recovery has been seen to hang after a broker restart).
pub const RECOVERY_GRACE: Duration = Duration::from_secs(20);

/// Wait for lapin's auto-recovery after `error`, at most [`RECOVERY_GRACE`]. `false` means
/// the session should be rebuilt from scratch.
pub async fn recover(channel: &Channel, error: lapin::Error) -> bool {
    match tokio::time::timeout(RECOVERY_GRACE, channel.wait_for_recovery(error)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, "auto-recovery gave up");
            false
        }
        Err(_) => {
            tracing::warn!(grace = ?RECOVERY_GRACE, "auto-recovery is taking too long");
            false
        }
    }
}

/// Watches channels for a recovery that never completes: `check` returns `false` once
/// any of them has not been connected for [`RECOVERY_GRACE`].
#[derive(Debug, Default)]
pub struct RecoveryWatchdog {
    unhealthy_since: Option<std::time::Instant>,
}

impl RecoveryWatchdog {
    pub fn check(&mut self, channels: &[&Channel]) -> bool {
        if channels.iter().all(|c| c.status().connected()) {
            self.unhealthy_since = None;
            return true;
        }
        let since = *self
            .unhealthy_since
            .get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > RECOVERY_GRACE {
            tracing::warn!(grace = ?RECOVERY_GRACE, "channels still not recovered; rebuilding the connection");
            return false;
        }
        true
    }
}

/// Close a connection, giving up after a few seconds: closing a connection caught in a
/// broker restart may otherwise never return.
pub async fn close(connection: &Connection, reason: &str) {
    let closing = connection.close(200, reason.into());
    if tokio::time::timeout(Duration::from_secs(3), closing)
        .await
        .is_err()
    {
        tracing::debug!("connection close timed out");
    }
}

/// Close a connection the supervisor is replacing. One caught in lapin's auto-recovery
/// (the broker restarting) cannot be closed yet, and recovery may still bring it back
/// later, with its consumers re-registered: they would then take deliveries that nobody
/// reads and never ack (a recorder's events, a worker's tasks), until the process ends.
/// So when the first close fails, the connection is watched for a while and closed as soon
/// as it is back; what its consumers took is then redelivered to the live session.
pub async fn retire(connection: Connection, reason: &str) {
    let closing = connection.close(200, reason.into());
    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(3), closing).await {
        return;
    }
    let reason = reason.to_owned();
    tokio::spawn(async move {
        let deadline = std::time::Instant::now() + RETIRE_WATCH;
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let status = connection.status();
            if status.closed() || status.errored() {
                return;
            }
            if status.connected() {
                tracing::info!("a replaced connection recovered on its own; closing it");
                let closing = connection.close(200, reason.as_str().into());
                let _ = tokio::time::timeout(Duration::from_secs(3), closing).await;
                return;
            }
        }
    });
}

/// A connection whose session is being set up: retired ([`retire`]) if the setup fails or
/// is abandoned (past [`SETUP_LIMIT`], on shutdown), so that a recovery lapin completes
/// later cannot bring back consumers that nobody reads.
pub struct Setup(Option<Connection>);

impl Setup {
    pub fn new(connection: Connection) -> Self {
        Self(Some(connection))
    }

    /// The setup succeeded: the session owns the connection from now on.
    pub fn done(mut self) -> Connection {
        self.0.take().expect("a setup is done once")
    }
}

impl std::ops::Deref for Setup {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.0.as_ref().expect("a setup is done once")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let (Some(connection), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(retire(connection, "session setup failed"));
        }
    }
}

/// How long a replaced connection is watched for a late recovery ([`retire`]).
const RETIRE_WATCH: Duration = Duration::from_secs(300);

/// Longest a supervisor waits for `connect` to set a session up: longer than any step's
/// own limit (a worker reads the cancellation stream up to now for at most 60 s).
pub const SETUP_LIMIT: Duration = Duration::from_secs(90);

/// How a session on one connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Shutdown was requested: the supervisor returns.
    Shutdown,
    /// The connection is gone and auto-recovery gave up: the supervisor reconnects.
    Lost,
}

/// The supervisor every long-lived AMQP user runs: `connect`, run `session` on the
/// connection until it ends, and reconnect with capped exponential backoff when the
/// connection is lost for good (lapin's auto-recovery handles the short blips). Returns
/// when `shutdown` fires or a session ends with [`SessionEnd::Shutdown`].
pub async fn supervise<T, C, CF, S, SF>(
    name: &str,
    shutdown: &CancellationToken,
    mut connect: C,
    mut session: S,
) where
    C: FnMut() -> CF,
    CF: std::future::Future<Output = anyhow::Result<T>>,
    S: FnMut(T) -> SF,
    SF: std::future::Future<Output = SessionEnd>,
{
    let reconnect = RetryPolicy {
        max_delay: Duration::from_secs(30),
        ..RetryPolicy::in_attempt()
    };
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        // Setting up a session may wait on a broker that accepts TCP but does not answer.
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = tokio::time::timeout(SETUP_LIMIT, connect()) => connected
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no session within {SETUP_LIMIT:?}"))),
        };
        match connected {
            Ok(connected) => {
                failures = 0;
                match session(connected).await {
                    SessionEnd::Shutdown => return,
                    SessionEnd::Lost => {
                        tracing::warn!("{name} lost its broker connection; reconnecting")
                    }
                }
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(error = %format!("{error:#}"), failures, "{name} cannot reach RabbitMQ");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(reconnect.delay_after(failures.max(1))) => {}
        }
    }
}

/// Why a message was not accepted by the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error(
        "unroutable message: no queue is bound to exchange `{exchange}` with key `{routing_key}`"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    /// No confirmation came (the connection died with the publish pending, and lapin's
    /// recovery keeps it waiting): the message may or may not have arrived.
    #[error("no confirmation from the broker within {0:?}")]
    Unconfirmed(Duration),
}

/// How long [`publish`] waits for a broker's confirmation.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A persistent JSON message with the service's standard properties.
#[derive(Debug, Clone)]
pub struct OutgoingMessage<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// AMQP `type`: `cleanup.task` or the event type.
    pub message_type: &'a str,
    /// AMQP `message_id`: the task id for tasks, an event id for events.
    pub message_id: String,
    pub body: Vec<u8>,
}

impl OutgoingMessage<'_> {
    fn properties(&self, extra_headers: &[(&str, String)]) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("schema_version".into(), AMQPValue::LongUInt(SCHEMA_VERSION));
        for (key, value) in extra_headers {
            headers.insert((*key).into(), AMQPValue::LongString(value.as_str().into()));
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into())
            .with_type(ShortString::from(self.message_type))
            .with_message_id(ShortString::from(self.message_id.as_str()))
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_app_id("cleanup-service".into())
            .with_headers(headers)
    }
}

/// Start a mandatory publish; await the returned future for the broker's confirmation.
/// Starting many publishes before awaiting them pipelines the confirms.
pub async fn start_publish(
    channel: &Channel,
    message: &OutgoingMessage<'_>,
) -> Result<impl std::future::Future<Output = Result<(), PublishError>> + use<>, PublishError> {
    start_publish_with_headers(channel, message, &[]).await
}

/// [`start_publish`] with extra text headers on the message (a task's signature:
/// [`crate::signing::Signature::headers`]).
pub async fn start_publish_with_headers(
    channel: &Channel,
    message: &OutgoingMessage<'_>,
    extra_headers: &[(&str, String)],
) -> Result<impl std::future::Future<Output = Result<(), PublishError>> + use<>, PublishError> {
    let confirm = channel
        .basic_publish(
            message.exchange.into(),
            message.routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &message.body,
            message.properties(extra_headers),
        )
        .await?;
    let exchange = message.exchange.to_owned();
    let routing_key = message.routing_key.to_owned();
    Ok(async move {
        match confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange,
                routing_key,
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::NotRequested => {
                unreachable!("publishing requires a channel in confirm mode")
            }
        }
    })
}

/// Publish one message and wait for the broker's confirmation, at most
/// [`CONFIRM_TIMEOUT`].
pub async fn publish(channel: &Channel, message: &OutgoingMessage<'_>) -> Result<(), PublishError> {
    publish_with_headers(channel, message, &[]).await
}

/// [`publish`] with extra text headers on the message.
pub async fn publish_with_headers(
    channel: &Channel,
    message: &OutgoingMessage<'_>,
    extra_headers: &[(&str, String)],
) -> Result<(), PublishError> {
    // Only the confirm is bounded: the send waits while RabbitMQ blocks publishers (a
    // memory or disk alarm), and a send given up on would still go out once the alarm
    // clears, so the caller could not treat it as unsent.
    let confirm = start_publish_with_headers(channel, message, extra_headers).await?;
    tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .unwrap_or(Err(PublishError::Unconfirmed(CONFIRM_TIMEOUT)))
}

/// How long a stopping process waits for a consumer's cancel or its goodbye: on a
/// connection caught in a partition they may never be answered (lapin holds them for a
/// recovery).
pub const STOP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl crate::signing::Headers for FieldTable {
    fn text(&self, key: &str) -> Option<String> {
        header_text(self, key)
    }
}

/// A text header (long or short string) of an AMQP message.
pub fn header_text(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_added_unless_the_url_sets_one() {
        let uri = amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.heartbeat, Some(HEARTBEAT_SECS));
        let uri = amqp_uri("amqp://127.0.0.1/%2f?heartbeat=12").unwrap();
        assert_eq!(uri.query.heartbeat, Some(12));
        assert!(amqp_uri("http://[").is_err());
    }
}
