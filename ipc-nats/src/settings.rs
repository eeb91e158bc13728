//! Connecting to NATS, and the stream a publishing route creates (or updates) at start.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event, ServerAddr};

use crate::counters::Counters;

/// How to reach the NATS servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URLs (`nats://host:port`); the client picks one, fails over to the others, and
    /// learns the rest of the cluster from them.
    pub servers: Vec<String>,
    /// The connection name servers show (`nats server report connections`).
    pub name: String,
    /// Giving up on one connect attempt (default 1 s).
    pub connect_timeout: Duration,
    /// First reconnect delay (default 100 ms); it doubles with each failed attempt.
    pub reconnect_min: Duration,
    /// Largest reconnect delay (default 5 s). Reconnects go on forever.
    pub reconnect_max: Duration,
    /// How long a publish acknowledgement or a JetStream API reply may take (default 5 s).
    pub request_timeout: Duration,
}

impl NatsSettings {
    /// The defaults for `servers`.
    pub fn new(servers: Vec<String>, name: &str) -> NatsSettings {
        NatsSettings {
            servers,
            name: name.to_owned(),
            connect_timeout: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The reconnect delay after `attempts` failed attempts: exponential, capped.
    pub(crate) fn reconnect_delay(&self, attempts: usize) -> Duration {
        let shift = attempts.saturating_sub(1).min(20) as u32;
        self.reconnect_min.saturating_mul(1 << shift).min(self.reconnect_max)
    }
}

/// [`connect`] refused the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A server URL does not parse.
    #[error("invalid NATS server {server:?}: {reason}")]
    BadServer {
        /// The URL.
        server: String,
        /// Why.
        reason: String,
    },
    /// The client could not be made.
    #[error("connecting to NATS: {0}")]
    Client(#[from] async_nats::ConnectError),
}

/// Connects to NATS with reconnects forever (capped exponential backoff), counting losses and
/// recoveries in `counters` (`disconnects`, `reconnects`, the `connected` gauge). Returns at
/// once even when no server is up yet: the client keeps trying in the background and
/// requests wait for it.
pub async fn connect(settings: &NatsSettings, counters: Arc<Counters>) -> Result<async_nats::Client, ConnectError> {
    let servers = settings
        .servers
        .iter()
        .map(|s| {
            s.parse::<ServerAddr>().map_err(|e| ConnectError::BadServer { server: s.clone(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let delays = settings.clone();
    let events = counters.clone();
    let client = ConnectOptions::new()
        .name(&settings.name)
        .connection_timeout(settings.connect_timeout)
        .request_timeout(Some(settings.request_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| delays.reconnect_delay(attempts))
        .event_callback(move |event| {
            let counters = events.clone();
            async move {
                match event {
                    Event::Connected => {
                        // The first connection is not a reconnect.
                        if counters.disconnects.load(Relaxed) > 0 {
                            Counters::add(&counters.reconnects, 1);
                        }
                        counters.connected.store(1, Relaxed);
                        tracing::info!(event = "nats_connected", "connected to NATS");
                    }
                    Event::Disconnected => {
                        Counters::add(&counters.disconnects, 1);
                        counters.connected.store(0, Relaxed);
                        tracing::warn!(event = "nats_disconnected", "connection to NATS lost; reconnecting");
                    }
                    other => tracing::warn!(event = "nats_event", detail = %other, "NATS client event"),
                }
            }
        })
        .connect(servers)
        .await?;
    if client.connection_state() == async_nats::connection::State::Connected {
        counters.connected.store(1, Relaxed);
    }
    Ok(client)
}

/// The stream a publishing route writes into, created or updated at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// The stream's name.
    pub name: String,
    /// The subjects it captures (the route's subject at least).
    pub subjects: Vec<String>,
    /// Copies kept by the cluster (1 to 5; 3 survives the loss of one server).
    pub replicas: usize,
    /// Messages older than this are discarded (`Duration::ZERO`: kept forever).
    pub max_age: Duration,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a message published again with it
    /// (default 2 min): a relay restarted later than this after a crash may store its
    /// unacknowledged window twice.
    pub duplicate_window: Duration,
}

/// Creates the stream `settings` describe, or updates it to them (subjects, replicas, limits);
/// its other settings are kept. File storage: the stream outlives the servers' restarts.
pub async fn ensure_stream(js: &jetstream::Context, settings: &StreamSettings) -> Result<(), String> {
    let config = stream::Config {
        name: settings.name.clone(),
        subjects: settings.subjects.clone(),
        num_replicas: settings.replicas,
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    js.create_or_update_stream(config).await.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_double_from_the_minimum_up_to_the_cap() {
        let mut s = NatsSettings::new(vec![], "t");
        s.reconnect_min = Duration::from_millis(100);
        s.reconnect_max = Duration::from_millis(700);
        let delays: Vec<u128> = (1..=5).map(|a| s.reconnect_delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(s.reconnect_delay(usize::MAX), Duration::from_millis(700));
    }
}
