//! The reliability engine of the relay: at-least-once delivery with deduplication over the
//! [`wire`](crate::wire) protocol (see `ipc-zmq/PROTOCOL.md`).
//!
//! [`Sender`] and [`Receiver`] own no socket: the sender produces messages
//! ([`Sender::poll`]) and consumes replies ([`Sender::handle`]); the receiver turns each message
//! into its reply ([`Receiver::handle`]). The relay's event loop moves the parts over ZeroMQ
//! (a DEALER per outbound link, a ROUTER for inbound; [`serve_router`] does the ROUTER side),
//! after [`apply_link_options`] set heartbeats, timeouts and linger on each socket. Time is
//! passed in (`now`), so every timer is tested with an injected clock.

mod checkpoint;
mod counters;
mod dead_letter;
mod dedup;
mod policy;
mod receiver;
mod sender;

use std::time::{Duration, Instant};

pub use checkpoint::CheckpointError;
pub use counters::{Counters, ROUND_TRIP_BOUNDS, RoundTrips};
pub use dead_letter::{DEAD_LETTER_FIXED_LEN, DEAD_LETTER_VERSION, DeadLetter};
pub use dedup::{DedupConfig, InvalidEnvelope, MessageIds, SeenIds};
pub use policy::{Backoff, Breaker, BreakerConfig, BreakerState, Jitter};
pub use receiver::{Receiver, ReceiverConfig, Route};
pub use sender::{DeadLetterHook, Sender, SenderConfig, SenderError};

/// ZeroMQ options that make a relay socket detect dead links and never hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkOptions {
    /// `ZMQ_HEARTBEAT_IVL`: a PING this often on a quiet connection (default 1 s).
    pub heartbeat_interval: Duration,
    /// `ZMQ_HEARTBEAT_TIMEOUT`: the connection is dropped when no traffic answers a PING this
    /// long (default 5 s).
    pub heartbeat_timeout: Duration,
    /// `ZMQ_HEARTBEAT_TTL`: the far side drops the connection after this long without hearing
    /// from us (the idle timeout, default 30 s).
    pub heartbeat_ttl: Duration,
    /// `ZMQ_CONNECT_TIMEOUT` (default 1 s).
    pub connect_timeout: Duration,
    /// `ZMQ_RECONNECT_IVL` (default 100 ms); reconnects go on forever.
    pub reconnect_interval: Duration,
    /// `ZMQ_RECONNECT_IVL_MAX`: the reconnect backoff's cap (default 10 s).
    pub reconnect_interval_max: Duration,
    /// `ZMQ_MAXMSGSIZE`: a peer sending a larger message is disconnected (default 256 MiB).
    pub max_message_size: i64,
    /// `ZMQ_RCVTIMEO` and `ZMQ_SNDTIMEO` (default 100 ms): no call blocks longer.
    pub io_timeout: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            heartbeat_ttl: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            reconnect_interval: Duration::from_millis(100),
            reconnect_interval_max: Duration::from_secs(10),
            max_message_size: 256 << 20,
            io_timeout: Duration::from_millis(100),
        }
    }
}

fn millis(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// Sets `options` on `socket`, and linger 0 (a closed socket drops what it had queued: the
/// engine resends whatever was not acknowledged).
///
/// ```
/// let ctx = zmq::Context::new();
/// let socket = ctx.socket(zmq::DEALER)?;
/// ipc_zmq::engine::apply_link_options(&socket, &ipc_zmq::engine::LinkOptions::default())?;
/// assert_eq!(socket.get_linger()?, 0);
/// # Ok::<(), zmq::Error>(())
/// ```
pub fn apply_link_options(socket: &zmq::Socket, options: &LinkOptions) -> zmq::Result<()> {
    socket.set_linger(0)?;
    socket.set_heartbeat_ivl(millis(options.heartbeat_interval))?;
    socket.set_heartbeat_timeout(millis(options.heartbeat_timeout))?;
    socket.set_heartbeat_ttl(millis(options.heartbeat_ttl))?;
    socket.set_connect_timeout(millis(options.connect_timeout))?;
    socket.set_reconnect_ivl(millis(options.reconnect_interval))?;
    socket.set_reconnect_ivl_max(millis(options.reconnect_interval_max))?;
    socket.set_maxmsgsize(options.max_message_size)?;
    socket.set_rcvtimeo(millis(options.io_timeout))?;
    socket.set_sndtimeo(millis(options.io_timeout))?;
    Ok(())
}

/// Receives one multipart message, `None` when none came within the socket's receive timeout.
pub fn recv_message(socket: &zmq::Socket) -> zmq::Result<Option<Vec<Vec<u8>>>> {
    match socket.recv_multipart(0) {
        Ok(parts) => Ok(Some(parts)),
        Err(zmq::Error::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Serves one message on a ROUTER `socket`: receives it (waiting at most the receive timeout),
/// hands it to `receiver` without its routing id, and sends the reply back to that peer.
/// Returns whether a message was received.
pub fn serve_router(socket: &zmq::Socket, receiver: &mut Receiver, now: Instant) -> zmq::Result<bool> {
    let Some(mut parts) = recv_message(socket)? else { return Ok(false) };
    if parts.len() < 2 {
        Counters::add(&receiver.counters().malformed, 1);
        return Ok(true);
    }
    let peer = parts.remove(0);
    if let Some(reply) = receiver.handle(&parts, now) {
        let mut out = Vec::with_capacity(reply.len() + 1);
        out.push(peer);
        out.extend(reply);
        // A peer gone meanwhile is not an error of ours: it resends after it reconnects.
        match socket.send_multipart(out, 0) {
            Ok(()) | Err(zmq::Error::EHOSTUNREACH | zmq::Error::EAGAIN) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
