//! CURVE on both ends of a relay link: the ZAP handler that admits only allowlisted client
//! keys, the listener (ROUTER, CURVE server) and the connector (DEALER, CURVE client with the
//! server key pinned), with counters for everything refused.
//!
//! Order matters and the types enforce it: a CURVE server in a context without a ZAP handler
//! admits **every** client key, and a handler that is bound but not answering stalls every
//! handshake. [`ZapHandler::start`] returns only once its socket is bound and its thread is
//! serving; [`Listener::bind`] takes the `&ZapHandler`, builds the server in the handler's own
//! context, keeps the handler alive, and sets `ZMQ_ZAP_ENFORCE_DOMAIN` so that even a vanished
//! handler would mean "refuse", not "admit all". Only CURVE is ever accepted: NULL and PLAIN
//! clients fail the greeting (mechanism mismatch) and ZAP refuses any non-CURVE request.
//!
//! Revocation: libzmq cannot kick one peer off a ROUTER, and ZAP runs only at handshake. So
//! (1) every message carries its peer's ZAP `User-Id` and [`Listener::recv`] drops those whose
//! key is no longer allowed (counted in `revoked_messages_dropped`), and (2)
//! [`Listener::replace_allowlist`] (the SIGHUP path) reloads the list and, if keys were
//! revoked, [`Listener::reopen`]s: the socket closes — every connection with it — and binds
//! again; allowed clients reconnect by themselves and pass ZAP again, revoked ones are refused.
//! Reopening costs every peer one reconnect (~100 ms) and drops unacknowledged in-flight
//! frames, which the engine resends.
//!
//! ```
//! use std::sync::Arc;
//! use ipc_zmq::{config::Limits, keys::KeyPair, security::*};
//! let ctx = zmq::Context::new();
//! let (server_keys, client_keys) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
//! let counters = Arc::new(SecurityCounters::default());
//! let allow: Allowlist = [*client_keys.public()].into_iter().collect();
//! let zap = ZapHandler::start(&ctx, "tadpole", allow, counters.clone()).unwrap();
//! let limits = Limits::default();
//! let mut listener = Listener::bind(&zap, &server_keys, "tcp://127.0.0.1:*", &limits).unwrap();
//! let client = Connector::connect(&ctx, &client_keys, server_keys.public(), listener.endpoint(), &limits, counters).unwrap();
//! client.socket().send("hello", 0).unwrap();
//! listener.socket().set_rcvtimeo(5000).unwrap();
//! match listener.recv(0).unwrap() {
//!     Received::Message { peer, frames, .. } => {
//!         assert_eq!(&peer, client_keys.public());
//!         assert_eq!(&frames[0][..], b"hello");
//!     }
//!     Received::Dropped { .. } => unreachable!(),
//! }
//! ```

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Limits;
use crate::keys::{KeyPair, PublicKey};

/// The endpoint libzmq sends ZAP requests to, in each context.
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// How often the handler and monitor threads look at their stop flag.
const POLL_MS: i64 = 100;

/// The set of client public keys a listener admits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist(BTreeSet<PublicKey>);

impl Allowlist {
    /// Whether `key` is admitted.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.0.contains(key)
    }

    /// How many keys are admitted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is admitted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The admitted keys, in order.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.0.iter()
    }
}

impl FromIterator<PublicKey> for Allowlist {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(iter: I) -> Self {
        Allowlist(iter.into_iter().collect())
    }
}

/// Everything the security layer refused or saw, as plain counters (monotonic).
#[derive(Debug, Default)]
pub struct SecurityCounters {
    /// ZAP: CURVE clients admitted.
    pub zap_admitted: AtomicU64,
    /// ZAP: CURVE clients refused because their key is not allowlisted.
    pub zap_unknown_key: AtomicU64,
    /// ZAP: requests for a mechanism other than CURVE (NULL, PLAIN, GSSAPI) refused.
    pub zap_wrong_mechanism: AtomicU64,
    /// ZAP: requests from a socket whose ZAP domain is not the handler's, refused.
    pub zap_wrong_domain: AtomicU64,
    /// ZAP: requests that were not well-formed ZAP 1.0, refused.
    pub zap_malformed: AtomicU64,
    /// Listener: messages dropped because their peer's key was revoked after it connected.
    pub revoked_messages_dropped: AtomicU64,
    /// Listener: TCP connections accepted.
    pub server_accepted: AtomicU64,
    /// Listener: handshakes completed.
    pub server_handshakes: AtomicU64,
    /// Listener: handshakes that failed on a protocol error (garbage, NULL/PLAIN clients,
    /// bad greetings) or without detail.
    pub server_handshake_failed_protocol: AtomicU64,
    /// Listener: handshakes refused by ZAP (unknown or revoked key).
    pub server_handshake_failed_auth: AtomicU64,
    /// Listener: connections closed (handshake timeout, oversized frame, peer gone, ...).
    pub server_disconnects: AtomicU64,
    /// Listener: times the socket was closed and bound again to cut revoked connections.
    pub listener_reopened: AtomicU64,
    /// Connectors: handshakes that failed (wrong server key, refused by the server, ...).
    pub client_handshake_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why the ZAP handler could not start.
#[derive(Debug, thiserror::Error)]
pub enum ZapStartError {
    /// Binding `inproc://zeromq.zap.01` failed; `EADDRINUSE` means the context already has a
    /// handler (there can be one per context).
    #[error("cannot bind the ZAP handler at {ZAP_ENDPOINT}: {0}")]
    Bind(zmq::Error),
    /// The handler thread could not be started.
    #[error("cannot start the ZAP handler thread: {0}")]
    Thread(std::io::Error),
}

struct ZapState {
    domain: String,
    allowlist: RwLock<Arc<Allowlist>>,
    /// Bumped on every reload, so listeners re-read the allowlist only when it changed.
    generation: AtomicU64,
    counters: Arc<SecurityCounters>,
}

struct ZapInner {
    ctx: zmq::Context,
    state: Arc<ZapState>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ZapInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The ZAP handler of one `zmq::Context`: admits CURVE clients whose key is allowlisted
/// (`200`, with the key's Z85 as User-Id) and refuses everything else (`400`). Cloning gives
/// another handle to the same handler; it stops when the last handle (and every [`Listener`]
/// using it) is dropped.
#[derive(Clone)]
pub struct ZapHandler {
    inner: Arc<ZapInner>,
}

impl ZapHandler {
    /// Binds the handler in `ctx` and returns once its thread is serving. `domain` is the ZAP
    /// domain the listeners will set; requests for any other domain are refused.
    pub fn start(
        ctx: &zmq::Context,
        domain: &str,
        allowlist: Allowlist,
        counters: Arc<SecurityCounters>,
    ) -> Result<ZapHandler, ZapStartError> {
        let socket = ctx.socket(zmq::REP).map_err(ZapStartError::Bind)?;
        socket.set_linger(0).map_err(ZapStartError::Bind)?;
        socket.bind(ZAP_ENDPOINT).map_err(ZapStartError::Bind)?;
        let state = Arc::new(ZapState {
            domain: domain.to_owned(),
            allowlist: RwLock::new(Arc::new(allowlist)),
            generation: AtomicU64::new(0),
            counters,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tadpole-zap".into())
                .spawn(move || {
                    let _ = ready_tx.send(());
                    serve_zap(&socket, &state, &stop);
                })
                .map_err(ZapStartError::Thread)?
        };
        // The socket is bound before the thread starts; waiting for the thread to run means
        // no handshake can queue behind a handler that never started.
        let _ = ready_rx.recv();
        Ok(ZapHandler { inner: Arc::new(ZapInner { ctx: ctx.clone(), state, stop, thread: Mutex::new(Some(thread)) }) })
    }

    /// The ZAP domain this handler answers for.
    pub fn domain(&self) -> &str {
        &self.inner.state.domain
    }

    /// Whether `key` is currently admitted.
    pub fn allows(&self, key: &PublicKey) -> bool {
        self.allowlist().contains(key)
    }

    /// The current allowlist.
    pub fn allowlist(&self) -> Arc<Allowlist> {
        self.inner.state.allowlist.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the allowlist (e.g. on SIGHUP) and returns the keys that were allowed and are
    /// not any more. New handshakes see the new list at once; messages from revoked peers are
    /// dropped by [`Listener::recv`]; call [`Listener::reopen`] to close their connections.
    pub fn reload(&self, allowlist: Allowlist) -> Vec<PublicKey> {
        let state = &self.inner.state;
        let mut current = state.allowlist.write().unwrap_or_else(|p| p.into_inner());
        let revoked = current.0.difference(&allowlist.0).copied().collect();
        *current = Arc::new(allowlist);
        state.generation.fetch_add(1, Ordering::Release);
        revoked
    }

    /// The context the handler serves; connectors may share it.
    pub fn context(&self) -> &zmq::Context {
        &self.inner.ctx
    }

    /// The counters this handler (and the sockets built with it) update.
    pub fn counters(&self) -> &Arc<SecurityCounters> {
        &self.inner.state.counters
    }
}

fn serve_zap(socket: &zmq::Socket, state: &ZapState, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match socket.poll(zmq::POLLIN, POLL_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => return, // context terminated
        }
        let Ok(request) = socket.recv_multipart(zmq::DONTWAIT) else { continue };
        let (request_id, status, text, user_id) = answer(&request, state);
        // A REP socket must answer every request, or the next handshake stalls.
        let reply: [&[u8]; 6] = [b"1.0", &request_id, status, text, user_id.as_bytes(), b""];
        let _ = socket.send_multipart(reply, 0);
    }
}

/// ZAP 1.0 (RFC 27): version, request id, domain, address, routing id, mechanism,
/// credentials...; for CURVE one credential, the client's 32-byte public key.
fn answer(request: &[Vec<u8>], state: &ZapState) -> (Vec<u8>, &'static [u8], &'static [u8], String) {
    let c = &state.counters;
    let request_id = request.get(1).cloned().unwrap_or_default();
    let refuse = |counter: &AtomicU64, text: &'static [u8]| {
        bump(counter);
        (request_id.clone(), &b"400"[..], text, String::new())
    };
    if request.len() < 6 || request[0] != b"1.0" {
        return refuse(&c.zap_malformed, b"malformed ZAP request");
    }
    if request[2] != state.domain.as_bytes() {
        return refuse(&c.zap_wrong_domain, b"wrong ZAP domain");
    }
    if request[5] != b"CURVE" {
        return refuse(&c.zap_wrong_mechanism, b"only CURVE is accepted");
    }
    let key = match request.get(6).map(|k| <[u8; 32]>::try_from(k.as_slice())) {
        Some(Ok(k)) if request.len() == 7 => PublicKey::from_bytes(k),
        _ => return refuse(&c.zap_malformed, b"malformed CURVE credentials"),
    };
    let allowed = state.allowlist.read().unwrap_or_else(|p| p.into_inner()).contains(&key);
    if !allowed {
        // Name the key so an operator can allow it, but not at the rate a refused peer retries.
        let refused = c.zap_unknown_key.load(Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            let address = String::from_utf8_lossy(&request[3]);
            tracing::warn!(key = %key, %address, refused, "CURVE client refused: key not in the allowlist");
        }
        return refuse(&c.zap_unknown_key, b"key not allowed");
    }
    bump(&c.zap_admitted);
    (request_id, b"200", b"OK", key.to_z85())
}

/// Why a socket could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: {what}: {source}")]
pub struct SocketError {
    /// The endpoint being bound or connected.
    pub endpoint: String,
    /// The step that failed.
    pub what: &'static str,
    /// libzmq's error.
    pub source: zmq::Error,
}

fn step<T>(endpoint: &str, what: &'static str, r: zmq::Result<T>) -> Result<T, SocketError> {
    r.map_err(|source| SocketError { endpoint: endpoint.to_owned(), what, source })
}

/// The options both ends share: frame limit, handshake timeout, heartbeats, no receive
/// high-water mark, no linger.
fn common_options(s: &zmq::Socket, limits: &Limits, ep: &str) -> Result<(), SocketError> {
    step(ep, "ZMQ_MAXMSGSIZE", s.set_maxmsgsize(limits.max_frame_bytes as i64))?;
    step(ep, "ZMQ_HANDSHAKE_IVL", s.set_handshake_ivl(limits.handshake_timeout_ms as i32))?;
    step(ep, "ZMQ_HEARTBEAT_IVL", s.set_heartbeat_ivl(limits.heartbeat_interval_ms as i32))?;
    step(ep, "ZMQ_HEARTBEAT_TIMEOUT", s.set_heartbeat_timeout(limits.idle_timeout_ms as i32))?;
    step(ep, "ZMQ_HEARTBEAT_TTL", s.set_heartbeat_ttl(limits.idle_timeout_ms as i32))?;
    // No receive high-water mark. libzmq (4.3.4, and 4.3.5) aborts the process when a
    // connection whose input stopped at RCVHWM ends and its heartbeat timer then fires
    // ("Assertion failed: !_io_error", stream_engine_base.cpp; libzmq issues #4364, #3937):
    // a receiving relay a thousand DATA messages behind died when its sender was killed.
    // What can queue is bounded without it: the engines read every message as it comes (a
    // full ring answers "busy" and the record is resent, it is not left in the socket), a
    // sender keeps at most its in-flight window unacknowledged, and every frame is at most
    // ZMQ_MAXMSGSIZE.
    step(ep, "ZMQ_RCVHWM", s.set_rcvhwm(0))?;
    // Unsent frames die with the socket: the engine resends what was not acknowledged, and a
    // listener reopened to cut revoked peers must not wait on them.
    step(ep, "ZMQ_LINGER", s.set_linger(0))?;
    Ok(())
}

static MONITOR_ID: AtomicU64 = AtomicU64::new(0);

/// A thread reading a socket's monitor events until the socket closes.
///
/// It must keep reading until libzmq says `MONITOR_STOPPED`: libzmq sends monitor events
/// blocking, from the IO thread, and a monitor PAIR that stopped reading (or was closed) blocks
/// that thread — and with it every socket of the context. A listener reopened under load hung
/// that way: its old connections, revoked ones included, stayed open. So dropping a monitor
/// waits (bounded) for the stop event; drop the watched socket first.
struct Monitor {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
}

/// Longest a dropped monitor waits for `MONITOR_STOPPED` after its socket closed.
const MONITOR_DRAIN: Duration = Duration::from_secs(5);

impl Monitor {
    fn start(
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        ep: &str,
        mut on_event: impl FnMut(u16) + Send + 'static,
    ) -> Result<Monitor, SocketError> {
        let addr = format!("inproc://tadpole.monitor.{}", MONITOR_ID.fetch_add(1, Ordering::Relaxed));
        step(ep, "zmq_socket_monitor", socket.monitor(&addr, zmq::SocketEvent::ALL as i32))?;
        let pair = step(ep, "monitor socket", ctx.socket(zmq::PAIR))?;
        step(ep, "monitor socket", pair.set_linger(0))?;
        // Connected before the watched socket binds or connects, so no event is missed.
        step(ep, "monitor socket", pair.connect(&addr))?;
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let done = finished.clone();
        let thread = std::thread::Builder::new()
            .name("tadpole-zmq-monitor".into())
            .spawn(move || {
                let _done = SetOnDrop(done);
                while !flag.load(Ordering::Relaxed) {
                    match pair.poll(zmq::POLLIN, POLL_MS) {
                        Ok(0) => continue,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                    let Ok(frames) = pair.recv_multipart(zmq::DONTWAIT) else { continue };
                    // Frame 1: u16 event id, u32 value (native endian); frame 2: the address.
                    let Some(event) = frames.first().and_then(|f| f.get(..2)) else { continue };
                    let event = u16::from_ne_bytes([event[0], event[1]]);
                    if event == zmq::SocketEvent::MONITOR_STOPPED.to_raw() {
                        return;
                    }
                    on_event(event);
                }
            })
            .map_err(|_| SocketError { endpoint: ep.to_owned(), what: "monitor thread", source: zmq::Error::ENOMEM })?;
        Ok(Monitor { thread: Some(thread), stop, finished })
    }
}

/// Sets its flag when dropped (the monitor thread's exit, however it returns).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + MONITOR_DRAIN;
        while !self.finished.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is(event: u16, e: zmq::SocketEvent) -> bool {
    event == e.to_raw()
}

/// A message received by a [`Listener`].
#[derive(Debug)]
pub enum Received {
    /// From a peer that is allowed now.
    Message {
        /// The ROUTER routing id of the peer's connection (send it first to address a reply).
        routing_id: zmq::Message,
        /// The peer's CURVE public key, as ZAP admitted it.
        peer: PublicKey,
        /// The frames after the routing id.
        frames: Vec<zmq::Message>,
    },
    /// From a peer whose key was revoked after it connected (or without a User-Id): dropped
    /// and counted in `revoked_messages_dropped`.
    Dropped {
        /// The peer's key, if the message carried one.
        peer: Option<PublicKey>,
    },
}

/// The relay's inbound socket: a ROUTER acting as CURVE server behind the ZAP handler.
pub struct Listener {
    // Field order is drop order: the socket closes before its monitor thread is joined.
    socket: zmq::Socket,
    monitor: Monitor,
    ctx: zmq::Context,
    keys: KeyPair,
    limits: Limits,
    endpoint: String,
    zap: ZapHandler,
    cached: (u64, Arc<Allowlist>),
}

impl Listener {
    /// Builds the ROUTER (CURVE server with `keys`, ZAP domain of `zap`, limits) in `zap`'s
    /// context — a listener in a context without the handler would admit every key — and
    /// binds it to `endpoint` (`tcp://127.0.0.1:*` picks a free port: see
    /// [`Listener::endpoint`]).
    pub fn bind(zap: &ZapHandler, keys: &KeyPair, endpoint: &str, limits: &Limits) -> Result<Listener, SocketError> {
        let ctx = &zap.inner.ctx;
        let (socket, monitor, endpoint) = open_server(ctx, keys, endpoint, limits, zap)?;
        Ok(Listener {
            socket,
            monitor,
            ctx: ctx.clone(),
            keys: keys.clone(),
            limits: limits.clone(),
            endpoint,
            zap: zap.clone(),
            cached: (u64::MAX, Arc::default()),
        })
    }

    /// The socket, for polling and for sending replies (`[routing_id, frames...]`).
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// The endpoint actually bound (with the port chosen for `*`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Receives one message (`flags` as for `zmq::Socket::recv`, e.g. `zmq::DONTWAIT`) and
    /// checks its peer against the current allowlist.
    pub fn recv(&mut self, flags: i32) -> Result<Received, zmq::Error> {
        let mut routing_id = self.socket.recv_msg(flags)?;
        let mut frames = Vec::new();
        while self.socket.get_rcvmore()? {
            frames.push(self.socket.recv_msg(0)?);
        }
        let peer =
            frames.first_mut().unwrap_or(&mut routing_id).gets("User-Id").and_then(|id| PublicKey::from_z85(id).ok());
        let generation = self.zap.inner.state.generation.load(Ordering::Acquire);
        if self.cached.0 != generation {
            self.cached = (generation, self.zap.allowlist());
        }
        match peer {
            Some(peer) if self.cached.1.contains(&peer) => Ok(Received::Message { routing_id, peer, frames }),
            peer => {
                bump(&self.zap.counters().revoked_messages_dropped);
                Ok(Received::Dropped { peer })
            }
        }
    }

    /// What the relay does on SIGHUP: replaces the allowlist and, if that revoked any key,
    /// [`reopen`](Listener::reopen)s so revoked peers lose their open connections too.
    /// Returns the revoked keys.
    pub fn replace_allowlist(&mut self, allowlist: Allowlist) -> Result<Vec<PublicKey>, SocketError> {
        let revoked = self.zap.reload(allowlist);
        if !revoked.is_empty() {
            self.reopen()?;
        }
        Ok(revoked)
    }

    /// Closes the socket — and with it every connection, revoked or not — and binds the same
    /// endpoint again. Allowed clients reconnect by themselves and pass ZAP again. Call after a
    /// [`ZapHandler::reload`] that revoked keys.
    pub fn reopen(&mut self) -> Result<(), SocketError> {
        // Drop the old socket (and its monitor) first: the port must be free to bind again.
        let placeholder = step(&self.endpoint, "socket", self.ctx.socket(zmq::ROUTER))?;
        drop(std::mem::replace(&mut self.socket, placeholder));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match open_server(&self.ctx, &self.keys, &self.endpoint, &self.limits, &self.zap) {
                Ok((socket, monitor, _)) => {
                    self.socket = socket;
                    self.monitor = monitor;
                    bump(&self.zap.counters().listener_reopened);
                    return Ok(());
                }
                // libzmq closes sockets asynchronously: the port frees up shortly.
                Err(e) if e.source == zmq::Error::EADDRINUSE && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn open_server(
    ctx: &zmq::Context,
    keys: &KeyPair,
    endpoint: &str,
    limits: &Limits,
    zap: &ZapHandler,
) -> Result<(zmq::Socket, Monitor, String), SocketError> {
    let mut s = step(endpoint, "socket", ctx.socket(zmq::ROUTER))?;
    step(endpoint, "ZMQ_CURVE_SERVER", s.set_curve_server(true))?;
    step(endpoint, "ZMQ_CURVE_SECRETKEY", s.set_curve_secretkey(keys.secret().as_bytes()))?;
    step(endpoint, "ZMQ_ZAP_DOMAIN", s.set_zap_domain(zap.domain()))?;
    enforce_zap(&mut s);
    common_options(&s, limits, endpoint)?;
    let counters = zap.counters().clone();
    let monitor = Monitor::start(ctx, &s, endpoint, move |e| {
        use zmq::SocketEvent::*;
        let c = &counters;
        if is(e, ACCEPTED) {
            bump(&c.server_accepted);
        } else if is(e, HANDSHAKE_SUCCEEDED) {
            bump(&c.server_handshakes);
        } else if is(e, HANDSHAKE_FAILED_AUTH) {
            bump(&c.server_handshake_failed_auth);
        } else if is(e, HANDSHAKE_FAILED_PROTOCOL) || is(e, HANDSHAKE_FAILED_NO_DETAIL) {
            bump(&c.server_handshake_failed_protocol);
        } else if is(e, DISCONNECTED) {
            bump(&c.server_disconnects);
        }
    })?;
    let bound = s.bind(endpoint).map(|()| s.get_last_endpoint());
    match bound {
        Ok(Ok(bound)) => Ok((s, monitor, bound.unwrap_or_else(|_| endpoint.to_owned()))),
        Ok(Err(source)) | Err(source) => {
            let what = if bound.is_err() { "bind" } else { "ZMQ_LAST_ENDPOINT" };
            // The socket first: its monitor waits for the stop event that closing it sends.
            drop(s);
            drop(monitor);
            Err(SocketError { endpoint: endpoint.to_owned(), what, source })
        }
    }
}

/// `ZMQ_ZAP_ENFORCE_DOMAIN` (draft API in libzmq 4.3): without it a CURVE server whose ZAP
/// handler has gone away admits every client. The types already keep the handler alive as
/// long as a listener exists; this is the second lock. A libzmq built without draft options
/// refuses the option (EINVAL) and the first lock alone holds.
fn enforce_zap(socket: &mut zmq::Socket) {
    const ZMQ_ZAP_ENFORCE_DOMAIN: std::ffi::c_int = 93;
    let on: std::ffi::c_int = 1;
    // SAFETY: the socket pointer is live for the call (we hold `&mut` to its owner), and the
    // option value is a c_int read by libzmq for exactly `size_of::<c_int>()` bytes.
    let _ = unsafe {
        zmq_setsockopt(
            socket.as_mut_ptr(),
            ZMQ_ZAP_ENFORCE_DOMAIN,
            (&on as *const std::ffi::c_int).cast(),
            std::mem::size_of::<std::ffi::c_int>(),
        )
    };
}

// Declared here rather than through zmq-sys, which this crate does not depend on directly;
// libzmq is linked by the `zmq` crate.
unsafe extern "C" {
    fn zmq_setsockopt(
        socket: *mut std::ffi::c_void,
        option: std::ffi::c_int,
        value: *const std::ffi::c_void,
        len: usize,
    ) -> std::ffi::c_int;
}

/// Why a connector's last handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No detail from libzmq; with CURVE usually a wrong server key (the server cannot
    /// decrypt the client's HELLO and drops the connection).
    NoDetail,
    /// The peer broke the ZMTP/CURVE protocol (e.g. it is not a CURVE server).
    Protocol,
    /// The server's ZAP handler refused our key.
    Auth,
}

/// A link's state, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No handshake completed yet, and none failed.
    Connecting,
    /// The last handshake succeeded and the connection is up.
    Connected,
    /// Handshakes keep failing: `failures` in a row, the last one for `last`.
    Failing {
        /// Consecutive failed handshakes.
        failures: u64,
        /// Why the last one failed.
        last: HandshakeFailure,
    },
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Connecting => f.write_str("connecting"),
            LinkState::Connected => f.write_str("connected"),
            LinkState::Failing { failures, last } => {
                let hint = match last {
                    HandshakeFailure::NoDetail => "wrong server_key?",
                    HandshakeFailure::Protocol => "not a CURVE server?",
                    HandshakeFailure::Auth => "our key is not in the server's allowlist",
                };
                write!(f, "failing: {failures} handshakes in a row failed ({last:?}: {hint})")
            }
        }
    }
}

#[derive(Debug)]
struct LinkShared {
    state: Mutex<LinkState>,
    total_failures: AtomicU64,
}

/// A cheap handle on a connector's state, for the `/health` thread.
#[derive(Debug, Clone)]
pub struct LinkStatus(Arc<LinkShared>);

impl LinkStatus {
    /// The current state.
    pub fn state(&self) -> LinkState {
        *self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handshake failures since the connector was built.
    pub fn total_failures(&self) -> u64 {
        self.0.total_failures.load(Ordering::Relaxed)
    }
}

/// The relay's outbound socket: a DEALER acting as CURVE client, the server key pinned.
///
/// A wrong server key never surfaces as an error from libzmq: the client just reconnects every
/// `reconnect_min_ms`. The connector watches the socket's monitor, counts the failures
/// ([`LinkStatus`], `client_handshake_failures`, a `tracing` warning) and
/// [`Connector::back_off`] stretches the reconnect interval while they last.
pub struct Connector {
    socket: zmq::Socket,
    _monitor: Monitor,
    endpoint: String,
    status: LinkStatus,
    reconnect_ivl_ms: u32,
    limits: Limits,
    failures_seen: u64,
    restart_pending: bool,
    last_restart: std::time::Instant,
}

impl Connector {
    /// Builds the DEALER (CURVE client with `keys`, `server_key` pinned, limits) and connects
    /// it to `endpoint`. Connecting is asynchronous: see [`Connector::status`].
    pub fn connect(
        ctx: &zmq::Context,
        keys: &KeyPair,
        server_key: &PublicKey,
        endpoint: &str,
        limits: &Limits,
        counters: Arc<SecurityCounters>,
    ) -> Result<Connector, SocketError> {
        let s = step(endpoint, "socket", ctx.socket(zmq::DEALER))?;
        step(endpoint, "ZMQ_CURVE_SERVERKEY", s.set_curve_serverkey(server_key.as_bytes()))?;
        step(endpoint, "ZMQ_CURVE_PUBLICKEY", s.set_curve_publickey(keys.public().as_bytes()))?;
        step(endpoint, "ZMQ_CURVE_SECRETKEY", s.set_curve_secretkey(keys.secret().as_bytes()))?;
        common_options(&s, limits, endpoint)?;
        step(endpoint, "ZMQ_CONNECT_TIMEOUT", s.set_connect_timeout(limits.connect_timeout_ms as i32))?;
        step(endpoint, "ZMQ_RECONNECT_IVL", s.set_reconnect_ivl(limits.reconnect_min_ms as i32))?;
        step(endpoint, "ZMQ_RECONNECT_IVL_MAX", s.set_reconnect_ivl_max(limits.reconnect_max_ms as i32))?;
        let status = LinkStatus(Arc::new(LinkShared {
            state: Mutex::new(LinkState::Connecting),
            total_failures: AtomicU64::new(0),
        }));
        let shared = status.0.clone();
        let ep = endpoint.to_owned();
        let monitor = Monitor::start(ctx, &s, endpoint, move |e| {
            use zmq::SocketEvent::*;
            let failure = if is(e, HANDSHAKE_FAILED_NO_DETAIL) {
                HandshakeFailure::NoDetail
            } else if is(e, HANDSHAKE_FAILED_PROTOCOL) {
                HandshakeFailure::Protocol
            } else if is(e, HANDSHAKE_FAILED_AUTH) {
                HandshakeFailure::Auth
            } else {
                let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
                if is(e, HANDSHAKE_SUCCEEDED) {
                    *state = LinkState::Connected;
                } else if is(e, DISCONNECTED) && *state == LinkState::Connected {
                    *state = LinkState::Connecting;
                }
                return;
            };
            bump(&counters.client_handshake_failures);
            let total = shared.total_failures.fetch_add(1, Ordering::Relaxed) + 1;
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let failures = match *state {
                LinkState::Failing { failures, .. } => failures + 1,
                _ => 1,
            };
            *state = LinkState::Failing { failures, last: failure };
            // Log the first failure and then every power of two: a wrong key must be visible
            // without flooding the log at 5-10 attempts a second.
            if failures.is_power_of_two() {
                tracing::warn!(endpoint = %ep, failures, total, reason = ?failure,
                    "CURVE handshake failed (wrong server_key, or our key not allowed there?)");
            }
        })?;
        if let Err(source) = s.connect(endpoint) {
            // The socket first: its monitor waits for the stop event that closing it sends.
            drop(s);
            drop(monitor);
            return Err(SocketError { endpoint: endpoint.to_owned(), what: "connect", source });
        }
        Ok(Connector {
            socket: s,
            _monitor: monitor,
            endpoint: endpoint.to_owned(),
            status,
            reconnect_ivl_ms: limits.reconnect_min_ms,
            limits: limits.clone(),
            failures_seen: 0,
            restart_pending: false,
            last_restart: std::time::Instant::now(),
        })
    }

    /// The socket, for sending and polling.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// The link's state right now.
    pub fn status(&self) -> LinkState {
        self.status.state()
    }

    /// A handle on the link's state to hand to the `/health` thread.
    pub fn status_handle(&self) -> LinkStatus {
        self.status.clone()
    }

    /// The reconnect interval currently in force, in ms.
    pub fn reconnect_interval_ms(&self) -> u32 {
        self.reconnect_ivl_ms
    }

    /// Call regularly (e.g. every poll timeout) from the thread that owns the socket. While
    /// handshakes keep failing it doubles the reconnect interval, up to `reconnect_max_ms`
    /// (libzmq's own backoff only covers refused TCP connects, not failed handshakes), and
    /// restarts the connection to apply it. It also revives a link libzmq gave up on: after
    /// the server refuses our key (`Auth`) or speaks another protocol (`Protocol`) libzmq
    /// never reconnects that endpoint again, so a key added to the server's allowlist later
    /// would never be tried; here it is, at the backoff interval. After a success the next
    /// failure episode starts again from `reconnect_min_ms`. Returns the interval in force.
    pub fn back_off(&mut self) -> Result<u32, SocketError> {
        let total = self.status.total_failures();
        match self.status.state() {
            LinkState::Connected => {
                if self.reconnect_ivl_ms != self.limits.reconnect_min_ms {
                    // Applies to the next connection; the healthy one keeps going.
                    self.reconnect_ivl_ms = self.limits.reconnect_min_ms;
                    let ep = &self.endpoint;
                    step(ep, "ZMQ_RECONNECT_IVL", self.socket.set_reconnect_ivl(self.reconnect_ivl_ms as i32))?;
                }
                self.restart_pending = false;
            }
            LinkState::Failing { last, .. } => {
                if total > self.failures_seen {
                    self.reconnect_ivl_ms = self.reconnect_ivl_ms.saturating_mul(2).min(self.limits.reconnect_max_ms);
                    self.restart_pending = true;
                }
                let gave_up = matches!(last, HandshakeFailure::Auth | HandshakeFailure::Protocol);
                let due = self.last_restart.elapsed() >= Duration::from_millis(self.reconnect_ivl_ms.into());
                if (self.restart_pending || gave_up) && due {
                    self.restart()?;
                }
            }
            LinkState::Connecting => {}
        }
        self.failures_seen = total;
        Ok(self.reconnect_ivl_ms)
    }

    /// The interval is fixed when a connection is set up: restart it to apply a new one.
    fn restart(&mut self) -> Result<(), SocketError> {
        let ep = &self.endpoint;
        step(ep, "ZMQ_RECONNECT_IVL", self.socket.set_reconnect_ivl(self.reconnect_ivl_ms as i32))?;
        match self.socket.disconnect(ep) {
            // libzmq already dropped an endpoint it gave up on.
            Ok(()) | Err(zmq::Error::ENOENT) => {}
            Err(e) => return Err(SocketError { endpoint: ep.clone(), what: "disconnect", source: e }),
        }
        step(ep, "connect", self.socket.connect(ep))?;
        self.last_restart = std::time::Instant::now();
        self.restart_pending = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Second lock: even if the handler thread were gone, the listener admits no one (a CURVE
    /// server without ZAP would admit every key).
    #[test]
    fn a_listener_whose_zap_handler_stopped_admits_no_one() {
        let ctx = zmq::Context::new();
        let (server, client) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let counters = Arc::new(SecurityCounters::default());
        let zap = ZapHandler::start(&ctx, "t", [*client.public()].into_iter().collect(), counters.clone()).unwrap();
        let limits = Limits::default();
        let mut listener = Listener::bind(&zap, &server, "tcp://127.0.0.1:*", &limits).unwrap();
        zap.inner.stop.store(true, Ordering::Relaxed);
        zap.inner.thread.lock().unwrap().take().unwrap().join().unwrap();
        let stranger = KeyPair::generate().unwrap();
        let conn =
            Connector::connect(&ctx, &stranger, server.public(), listener.endpoint(), &limits, counters).unwrap();
        let _ = conn.socket().send("in", zmq::DONTWAIT);
        listener.socket().set_rcvtimeo(1500).unwrap();
        assert!(matches!(listener.recv(0), Err(zmq::Error::EAGAIN)), "a client was admitted without ZAP");
    }
}
