//! NATS JetStream routes for Tadpole rings, for setups that outgrow relay pairs (many hosts,
//! durable replay, consumers that come and go).
//!
//! - A [`Publisher`] drains a local ring into a JetStream stream subject. Each record stays in
//!   the ring (explicit release) until JetStream acknowledges it as stored; acknowledgements
//!   are pipelined (a bounded window of publishes in flight) and the ring is released
//!   cumulatively, in order. Every message carries a `Nats-Msg-Id` that names the record
//!   (`origin/epoch/position`, or the envelope's `message_id`), so what a crashed relay
//!   publishes again is dropped by the stream's duplicate window.
//! - A [`Feeder`] commits the messages of a durable pull consumer into a local ring, and
//!   acknowledges them only after the commit. A checkpoint file (written before each commit,
//!   checked against the ring's frontier after a crash) and a bounded window of message ids
//!   drop redeliveries, so the ring sees each record once. Deliveries that stop with no error
//!   (a pull lost with a server, a consumer led by a replica that fell behind the stream) are
//!   noticed within seconds and pulled again (see [`Feeder`]).
//! - [`Bridge`] runs a set of routes on a thread and tokio runtime of their own, beside
//!   whatever else the process does (the relay's ZeroMQ loop).
//!
//! The message type of a record travels in the [`MESSAGE_TYPE_HEADER`] header (left out for
//! type 0, which is what a message without it is read as); the payload is carried unchanged.
//! Under load, a raw ring's records travel several to a message ([`PACK_HEADER`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use ipc_core::RingBuilder;
//! use ipc_nats::{Bridge, NatsSettings, Publisher, PublisherConfig, Route, StreamSettings};
//!
//! let ring = RingBuilder::new(1 << 20).create_named("orders")?;
//! let stream = StreamSettings {
//!     name: "ORDERS".into(),
//!     subjects: vec!["tadpole.ORDERS".into()],
//!     replicas: 3,
//!     max_age: Duration::ZERO,
//!     duplicate_window: Duration::from_secs(120),
//! };
//! let config = PublisherConfig::new("host-a", "tadpole.ORDERS", stream);
//! let publisher = Publisher::new(config, ring.consumer()?, None)?;
//! let nats = NatsSettings::new(vec!["nats://127.0.0.1:4222".into()], "host-a");
//! let route = Route::Publish { name: "orders".into(), stream: "ORDERS".into(), publisher };
//! let bridge = Bridge::start(nats, vec![route])?;
//! // The ring's producer writes; each record leaves the ring once JetStream has stored it.
//! drop(bridge); // stops the routes
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bridge;
mod checkpoint;
mod counters;
mod feeder;
mod publisher;
mod settings;

pub use bridge::{Bridge, Route, RouteStatus, StartError};
pub use checkpoint::CheckpointError;
pub use counters::Counters;
pub use feeder::{Feeder, FeederConfig};
pub use publisher::{MessageIdFn, Publisher, PublisherConfig};
pub use settings::{ConnectError, NatsSettings, StreamSettings, connect, ensure_stream};

/// Header carrying a record's ring message type (decimal `u16`); absent means type 0.
pub const MESSAGE_TYPE_HEADER: &str = "Tadpole-Type";

/// Header of a message that carries several records (a pack): their number, decimal, at least
/// 2. The payload is the records one after another, each as its length (`u32`, little
/// endian), its message type (`u16`, little endian) and its bytes; nothing else. A pack's
/// `Nats-Msg-Id` names its last record. The feeder commits a pack's records together, or none
/// of them.
pub const PACK_HEADER: &str = "Tadpole-Pack";

/// Bytes before each record of a pack: its length (`u32`) and message type (`u16`).
pub(crate) const PACK_ENTRY_HEADER: usize = 6;
