//! RabbitMQ's `connection.blocked` / `connection.unblocked`, as a stream of changes.

/// Follow `connection.blocked` / `connection.unblocked` in a connection's events
/// (`Connection::events_listener`; RabbitMQ's memory and disk alarms stop its publishers):
/// `on_change` gets the broker's reason when the connection is blocked, `None` when it is
/// unblocked. A connection that fails or is re-established by lapin's recovery is no
/// longer blocked (RabbitMQ says nothing more of the old one), so that ends a block too.
/// Ends with the events.
pub async fn follow_blocked(
    events: impl futures::Stream<Item = lapin::Event>,
    mut on_change: impl FnMut(Option<String>),
) {
    use futures::StreamExt;
    let mut events = std::pin::pin!(events);
    let mut blocked = false;
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::ConnectionBlocked(reason) => {
                blocked = true;
                on_change(Some(reason));
            }
            lapin::Event::ConnectionUnblocked
            | lapin::Event::Connected
            | lapin::Event::Error(_)
                if blocked =>
            {
                blocked = false;
                on_change(None);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_block_ends_when_lifted_or_when_its_connection_does() {
        use lapin::Event;
        let events = futures::stream::iter([
            Event::Connected,
            Event::ConnectionUnblocked,
            Event::ConnectionBlocked("low on memory".into()),
            Event::Connected, // recovered: a new connection, not blocked
            Event::ConnectionBlocked("low on disk".into()),
            Event::Error(lapin::ErrorKind::ChannelsLimitReached.into()),
            Event::ConnectionBlocked("low on memory".into()),
            Event::ConnectionUnblocked,
            Event::ConnectionUnblocked,
        ]);
        let mut seen = Vec::new();
        follow_blocked(events, |reason| seen.push(reason)).await;
        let blocked = |reason: &str| Some(reason.to_owned());
        assert_eq!(
            seen,
            [
                blocked("low on memory"),
                None,
                blocked("low on disk"),
                None,
                blocked("low on memory"),
                None
            ]
        );
    }
}
