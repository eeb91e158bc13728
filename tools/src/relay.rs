//! `tadpole relay --config relay.toml`: the bridge between hosts. One thread runs the event loop
//! over every link: it drains the local rings of the outbound routes into DEALER sockets (CURVE
//! clients with the far relay's key pinned), and commits what its ROUTER (CURVE server behind the
//! ZAP allowlist) receives into the local rings of the inbound routes. Delivery is at least once
//! with deduplication (`ipc-zmq/PROTOCOL.md`); the HTTP endpoint serves `/metrics`, `/health` and
//! `/ready`. SIGHUP reloads the allowlist (revoked keys lose their connections); SIGINT and
//! SIGTERM stop the relay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use ipc_core::{CreateError, OpenError, RingBuilder, Segment, SegmentFault};
use ipc_zmq::config::RelayConfig;
use ipc_zmq::engine::BreakerState;
use ipc_zmq::engine::{
    Counters, DedupConfig, InvalidEnvelope, MessageIds, Receiver, ReceiverConfig, Route, Sender, SenderConfig,
};
use ipc_zmq::http::{CounterSet, HttpEndpoint, Kind, Status};
use ipc_zmq::security::{Connector, LinkState, LinkStatus, Listener, Received, SecurityCounters, ZapHandler};
use ipc_zmq::wire::{self, Frame};
use schemas::envelope::{MessageId, VerifyOptions, verify_envelope};
use tracing::{info, warn};

use crate::metrics::RingSeries;

mod jetstream;

/// The ZAP domain the listener sets and the handler answers for.
const ZAP_DOMAIN: &str = "tadpole-relay";
/// Capacity of a ring the relay creates because it does not exist yet.
const CREATED_RING_BYTES: usize = 4 << 20;
/// Longest the loop sleeps in `zmq::poll` when nothing is happening. Sockets wake it, and so
/// does a record committed into a source ring (its pollable doorbell is in the poll set), so
/// this bounds only the once-a-second housekeeping.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The same for a source ring whose pollable doorbell could not be made: the loop must look at
/// the ring this often.
const IDLE_POLL_WITHOUT_DOORBELL: Duration = Duration::from_millis(1);
/// For this long after the last record or message it handled, the loop yields between turns
/// instead of sleeping: a burst costs no sleep and wake-up per message, and an idle relay
/// costs no CPU.
const SPIN_AFTER_ACTIVITY: Duration = Duration::from_millis(2);
/// How long an ACK that only moves a stream on may wait (`ReceiverConfig::ack_delay`), so
/// that one answers the DATA messages of a stream for that long: while the receiving relay's
/// local consumer answers a record (a ping-pong), its ACK no longer goes out first and holds up
/// the reply on the CPU they share, and a stream of DATA messages costs the link one ACK a
/// millisecond (or per 8192 records or 4 MiB) instead of one each. Far below the request
/// timeout (5 s).
const ACK_DELAY: Duration = Duration::from_millis(1);
/// How often a route stopped at a corrupt source ring looks whether the ring was replaced (a
/// new segment under its name): one open of the name, for stopped routes only.
const SOURCE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::Relaxed);
}

fn install_signals() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let handle = |signal: Signal, handler: extern "C" fn(libc::c_int)| -> Result<()> {
        let action = SigAction::new(SigHandler::Handler(handler), SaFlags::SA_RESTART, SigSet::empty());
        // SAFETY: the handlers only store to a static atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("installing the {signal} handler"))?;
        Ok(())
    };
    handle(Signal::SIGINT, on_stop)?;
    handle(Signal::SIGTERM, on_stop)?;
    handle(Signal::SIGHUP, on_hup)?;
    Ok(())
}

/// Opens the named ring, or creates it (kept after the relay exits) when it does not exist.
fn ring(name: &str) -> Result<Segment> {
    match Segment::open(name) {
        Ok(segment) => return Ok(segment),
        Err(ipc_core::OpenError::NotFound(_)) => {}
        Err(e) => return Err(e).with_context(|| format!("opening ring {name:?}")),
    }
    match RingBuilder::new(CREATED_RING_BYTES).create_named(name) {
        Ok(segment) => {
            segment.keep();
            Ok(segment)
        }
        // Someone else created it meanwhile.
        Err(CreateError::AlreadyExists { .. }) => Segment::open(name).with_context(|| format!("opening ring {name:?}")),
        Err(e) => Err(e).with_context(|| format!("creating ring {name:?}")),
    }
}

/// The `message_id` of each record of an envelope route, read after the record verified as an
/// envelope (the engine rejects what does not as an invalid envelope).
struct EnvelopeIds {
    options: VerifyOptions,
}

impl EnvelopeIds {
    fn new() -> EnvelopeIds {
        EnvelopeIds { options: VerifyOptions::default() }
    }
}

impl MessageIds for EnvelopeIds {
    fn message_id(&self, payload: &[u8]) -> Result<[u8; 16], InvalidEnvelope> {
        let envelope = verify_envelope(payload, &self.options).map_err(|_| InvalidEnvelope)?;
        // verify_envelope refuses an envelope without a (non-nil) message_id.
        let id = envelope.message_id().ok_or(InvalidEnvelope)?;
        Ok(MessageId::from_wire(id).as_uuid().into_bytes())
    }
}

/// One outbound route: its ring's sender and the CURVE client it sends through.
struct Link {
    ring: String,
    stream: String,
    endpoint: String,
    sender: Sender,
    connector: Connector,
    status: LinkStatus,
    was_connected: bool,
    /// The source ring's pollable doorbell, polled beside the socket (`None`: it could not be
    /// made; the ring is then looked at every millisecond).
    doorbell: Option<std::os::fd::RawFd>,
    /// What was last logged: the link's state, the breaker's, the dead letters written, and
    /// whether the route was stopped at a corrupt source ring.
    logged_state: LinkState,
    logged_breaker: BreakerState,
    logged_dead_letters: u64,
    logged_source_stopped: bool,
    /// While the route is stopped at a corrupt source ring: when to look next whether the ring
    /// was replaced, and the epoch of a replacement that could not be attached to (said once).
    next_source_check: Instant,
    refused_epoch: Option<u64>,
}

/// What the HTTP endpoint reads: shared counters plus a snapshot the loop refreshes.
struct RelayStatus {
    name: String,
    security: Arc<SecurityCounters>,
    receiver: Option<Arc<Counters>>,
    links: Vec<(String, String, Arc<Counters>, LinkStatus)>,
    listening: bool,
    ready: AtomicBool,
    loop_turns: AtomicU64,
    origins_refused: Arc<AtomicU64>,
    jetstream: Vec<ipc_nats::RouteStatus>,
    /// The local rings of every route (and dead-letter ring): their series, read from shared
    /// memory at each scrape, as `tadpole metrics` serves them.
    rings: RingSeries,
}

impl Status for RelayStatus {
    fn metrics(&self) -> CounterSet {
        let mut set = CounterSet::default();
        // A ring that cannot be read now (removed, cut, not made yet) has no series at this
        // scrape; the route's own counters say why.
        let _ = self.rings.add_to(&mut set);
        let relay = self.name.as_str();
        for (ring, stream, counters, status) in &self.links {
            let labels = [("relay", relay), ("ring", ring.as_str()), ("stream", stream.as_str())];
            let c = counters.clone();
            set.add(
                "tadpole_relay_records_sent",
                "Records sent in DATA messages (resends included)",
                Kind::Counter,
                &labels,
                move || c.records_sent.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add("tadpole_relay_bytes_sent", "Payload bytes sent", Kind::Counter, &labels, move || {
                c.bytes_sent.load(Ordering::Relaxed)
            });
            let c = counters.clone();
            set.add("tadpole_relay_acks", "Acknowledgements that moved a link on", Kind::Counter, &labels, move || {
                c.acks.load(Ordering::Relaxed)
            });
            let c = counters.clone();
            set.add(
                "tadpole_relay_resends",
                "Rewinds to resend what was not acknowledged",
                Kind::Counter,
                &labels,
                move || c.resends.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add("tadpole_relay_dead_letters", "Records the far side rejected", Kind::Counter, &labels, move || {
                c.dead_letters.load(Ordering::Relaxed) + c.dead_letters_dropped.load(Ordering::Relaxed)
            });
            let c = counters.clone();
            set.add(
                "tadpole_relay_in_flight_records",
                "Records sent and not acknowledged",
                Kind::Gauge,
                &labels,
                move || c.in_flight_records.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add(
                "tadpole_relay_source_corrupt_records",
                "Corrupt records met in the source ring (bad header, or the ring's file truncated), each once",
                Kind::Counter,
                &labels,
                move || c.source_corrupt.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add(
                "tadpole_relay_source_blocked",
                "1 while the route is stopped at a corrupt record of its source ring",
                Kind::Gauge,
                &labels,
                move || c.source_blocked.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add(
                "tadpole_relay_breaker_state",
                "Circuit breaker: 0 closed, 1 open, 2 half open",
                Kind::Gauge,
                &labels,
                move || c.breaker_state.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add_histogram(
                "tadpole_relay_round_trip_seconds",
                "From sending a DATA message to the acknowledgement that covers it (resent messages not measured; includes the far side's ACK delay, up to 1 ms)",
                &labels,
                move || (c.round_trips.sum_secs(), c.round_trips.count(), c.round_trips.buckets()),
            );
            let s = status.clone();
            set.add(
                "tadpole_relay_client_handshake_failures",
                "Handshakes of this link that failed (wrong server key, refused)",
                Kind::Counter,
                &labels,
                move || s.total_failures(),
            );
        }
        if let Some(counters) = &self.receiver {
            let labels = [("relay", relay)];
            let c = counters.clone();
            set.add(
                "tadpole_relay_records_committed",
                "Records committed into local rings",
                Kind::Counter,
                &labels,
                move || c.records_committed.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add(
                "tadpole_relay_duplicates_dropped",
                "Records dropped as already committed (position or message id)",
                Kind::Counter,
                &labels,
                move || c.duplicates_dropped.load(Ordering::Relaxed) + c.id_duplicates_dropped.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add(
                "tadpole_relay_malformed_messages",
                "Messages that failed to decode or contradicted the protocol",
                Kind::Counter,
                &labels,
                move || c.malformed.load(Ordering::Relaxed),
            );
            let c = counters.clone();
            set.add(
                "tadpole_relay_unsupported_version_messages",
                "Messages of another relay protocol version, refused (also counted as malformed)",
                Kind::Counter,
                &labels,
                move || c.unsupported_version.load(Ordering::Relaxed),
            );
        }
        let s = &self.security;
        let auth = [
            ("unknown_key", &s.zap_unknown_key),
            ("wrong_mechanism", &s.zap_wrong_mechanism),
            ("wrong_domain", &s.zap_wrong_domain),
            ("malformed_zap", &s.zap_malformed),
            ("revoked", &s.revoked_messages_dropped),
            ("handshake_protocol", &s.server_handshake_failed_protocol),
            ("handshake_auth", &s.server_handshake_failed_auth),
            ("origin_of_another_key", &*self.origins_refused),
        ];
        for (reason, counter) in auth {
            let value = counter.load(Ordering::Relaxed);
            set.add(
                "tadpole_relay_auth_failures",
                "Refused peers and messages, by reason",
                Kind::Counter,
                &[("relay", relay), ("reason", reason)],
                move || value,
            );
        }
        jetstream::add_metrics(&mut set, relay, &self.jetstream);
        let turns = self.loop_turns.load(Ordering::Relaxed);
        set.add(
            "tadpole_relay_loop_turns",
            "Turns of the relay's event loop",
            Kind::Counter,
            &[("relay", relay)],
            move || turns,
        );
        set
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let links: Vec<serde_json::Value> = self
            .links
            .iter()
            .map(|(ring, stream, counters, status)| {
                serde_json::json!({
                    "ring": ring,
                    "stream": stream,
                    "state": status.state().to_string(),
                    "handshake_failures": status.total_failures(),
                    "breaker": counters.breaker_state.load(Ordering::Relaxed),
                    "in_flight": counters.in_flight_records.load(Ordering::Relaxed),
                    "source_blocked": counters.source_blocked.load(Ordering::Relaxed) != 0,
                })
            })
            .collect();
        let failing = self.links.iter().any(|(_, _, counters, status)| {
            matches!(status.state(), LinkState::Failing { .. }) || counters.source_blocked.load(Ordering::Relaxed) != 0
        });
        let (jetstream_ok, jetstream) = jetstream::health(&self.jetstream);
        let body = serde_json::json!({ "relay": self.name, "listening": self.listening, "links": links, "jetstream": jetstream });
        (!failing && jetstream_ok, body)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Runs the relay described by `config` until SIGINT/SIGTERM. `state` is where the inbound
/// side keeps what it has committed (default: next to the config file).
pub fn run(config: &Path, state: Option<PathBuf>) -> Result<()> {
    keep_freed_memory();
    init_logs();
    install_signals()?;
    let cfg = RelayConfig::load(config).map_err(|e| anyhow!("{e}"))?;
    let relay = cfg.name.as_str();
    // Events of the libraries (handshake failures, refused keys) carry the relay's name too.
    let _span = tracing::info_span!("relay", relay).entered();
    info!(
        relay,
        event = "start",
        config = %config.display(),
        routes_out = cfg.routes_out.len(),
        routes_in = cfg.routes_in.len(),
        jetstream_routes = cfg.jetstream.len(),
        "relay starting"
    );
    let state = state.unwrap_or_else(|| default_state_path(relay, config));
    let ctx = zmq::Context::new();
    let security = Arc::new(SecurityCounters::default());
    // The ZAP handler runs before any listener exists (a CURVE server without one admits
    // every key).
    let zap = ZapHandler::start(&ctx, ZAP_DOMAIN, cfg.allowlist.clone(), security.clone())
        .map_err(|e| anyhow!("starting the ZAP handler: {e}"))?;

    let mut receiver = None;
    let mut listener = None;
    if let Some(endpoint) = &cfg.listen {
        let mut routes = Vec::new();
        for route in &cfg.routes_in {
            let producer = ring(&route.ring)?
                .producer()
                .with_context(|| format!("attaching as producer of ring {:?}", route.ring))?;
            let stream = route.stream.clone();
            let route = if route.envelopes {
                let dedup =
                    DedupConfig { max_age: Duration::from_secs(route.dedup_window_secs), max_ids: route.dedup_max_ids };
                Route::with_message_ids(producer, EnvelopeIds::new(), dedup)
            } else {
                Route::new(producer)
            };
            routes.push((stream, route));
        }
        let receiver_config = ReceiverConfig { ack_delay: ACK_DELAY, ..ReceiverConfig::default() };
        receiver = Some(
            Receiver::new(receiver_config, routes, Some(&state))
                .map_err(|e| anyhow!("loading {}: {e}", state.display()))?,
        );
        listener = Some(Listener::bind(&zap, &cfg.keys, endpoint, &cfg.limits).map_err(|e| anyhow!("listening: {e}"))?);
    }

    let mut links = Vec::new();
    for route in &cfg.routes_out {
        let consumer =
            ring(&route.ring)?.consumer().with_context(|| format!("attaching as consumer of ring {:?}", route.ring))?;
        let mut config = SenderConfig::new(&cfg.name, &route.stream);
        config.request_timeout = Duration::from_millis(u64::from(cfg.limits.request_timeout_ms));
        config.hello_interval = Duration::from_millis(u64::from(cfg.limits.connect_timeout_ms));
        let dead_letters = match &route.dead_letters {
            Some(name) => Some(
                ring(name)?
                    .producer()
                    .with_context(|| format!("attaching as producer of dead-letter ring {name:?}"))?,
            ),
            None => None,
        };
        let mut sender =
            Sender::new(config, consumer, dead_letters).map_err(|e| anyhow!("route to {}: {e}", route.connect))?;
        {
            let (relay, route, ring) = (relay.to_owned(), route.stream.clone(), route.ring.clone());
            sender.on_dead_letter(move |letter, kept| {
                let correlation = correlation_id(letter.payload).map(|id| id.to_string());
                warn!(
                    relay = %relay,
                    event = "dead_letter",
                    route = %route,
                    ring = %ring,
                    reason = ?letter.reason,
                    position = letter.position,
                    message_type = letter.message_type,
                    kept,
                    correlation_id = correlation.as_deref().unwrap_or(""),
                    "the far side rejected a record"
                );
            });
        }
        let doorbell = match sender.doorbell_fd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(relay, event = "no_doorbell", ring = %route.ring, error = %e, "cannot make the ring's pollable doorbell; polling it every millisecond");
                None
            }
        };
        let connector =
            Connector::connect(&ctx, &cfg.keys, &route.server_key, &route.connect, &cfg.limits, security.clone())
                .map_err(|e| anyhow!("connecting to {}: {e}", route.connect))?;
        let status = connector.status_handle();
        links.push(Link {
            ring: route.ring.clone(),
            stream: route.stream.clone(),
            endpoint: route.connect.clone(),
            sender,
            connector,
            status,
            was_connected: false,
            doorbell,
            logged_state: LinkState::Connecting,
            logged_breaker: BreakerState::Closed,
            logged_dead_letters: 0,
            logged_source_stopped: false,
            next_source_check: Instant::now(),
            refused_epoch: None,
        });
    }

    // JetStream routes run on a thread of their own; stopped when this is dropped.
    let bridge = jetstream::start(&cfg, &state)?;
    let mut origins = Origins::load(origins_path(&state))?;
    let status = Arc::new(RelayStatus {
        name: cfg.name.clone(),
        security: security.clone(),
        receiver: receiver.as_ref().map(|r: &Receiver| r.counters().clone()),
        links: links
            .iter()
            .map(|l| (l.ring.clone(), l.stream.clone(), l.sender.counters().clone(), l.status.clone()))
            .collect(),
        listening: listener.is_some(),
        ready: AtomicBool::new(false),
        loop_turns: AtomicU64::new(0),
        origins_refused: origins.refused.clone(),
        jetstream: bridge.as_ref().map(|b| b.routes().to_vec()).unwrap_or_default(),
        rings: RingSeries::named(
            cfg.routes_out
                .iter()
                .flat_map(|r| std::iter::once(&r.ring).chain(&r.dead_letters))
                .chain(cfg.routes_in.iter().map(|r| &r.ring))
                .chain(cfg.jetstream.iter().map(|r| &r.ring))
                .cloned(),
        ),
    });
    let _http = match cfg.health {
        Some(addr) => Some(HttpEndpoint::start(&addr.to_string(), status.clone()).map_err(|e| anyhow!("{e}"))?),
        None => None,
    };
    status.ready.store(true, Ordering::Relaxed);
    if let Some(l) = &listener {
        let streams: Vec<&str> = cfg.routes_in.iter().map(|r| r.stream.as_str()).collect();
        info!(relay, event = "listening", endpoint = %l.endpoint(), streams = ?streams, "listening");
    }
    for l in &links {
        info!(relay, event = "route_out", route = %l.stream, ring = %l.ring, peer = %l.endpoint, "forwarding ring");
    }

    let mut last_back_off = Instant::now();
    let mut last_activity = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        status.loop_turns.fetch_add(1, Ordering::Relaxed);
        if RELOAD.swap(false, Ordering::Relaxed) {
            reload(relay, config, &mut listener)?;
        }
        let now = Instant::now();
        let mut busy = false;
        for link in &mut links {
            busy |= drive_link(link, now)?;
            log_link_changes(relay, link);
            if link.sender.is_source_stopped() && now >= link.next_source_check {
                link.next_source_check = now + SOURCE_CHECK_INTERVAL;
                busy |= reattach_if_replaced(relay, link);
            }
        }
        if now.duration_since(last_back_off) >= Duration::from_secs(1) {
            last_back_off = now;
            for link in &mut links {
                link.connector.back_off().map_err(|e| anyhow!("link to {}: {e}", link.endpoint))?;
            }
        }
        if let (Some(listener), Some(receiver)) = (listener.as_mut(), receiver.as_mut()) {
            busy |= serve(relay, listener, receiver, &mut origins, now)?;
            send_acks(listener, receiver, now, false)?;
        }
        if busy {
            last_activity = now;
        } else if now.duration_since(last_activity) < SPIN_AFTER_ACTIVITY {
            std::thread::yield_now();
        } else {
            if let (Some(listener), Some(receiver)) = (listener.as_mut(), receiver.as_mut()) {
                // Nothing held back over a sleep.
                send_acks(listener, receiver, now, true)?;
            }
            wait(&mut links, listener.as_ref(), now)?;
        }
    }
    info!(relay, event = "stop", "relay stopping");
    Ok(())
}

/// Keeps memory that was freed in the process instead of handing it back to the kernel at once.
/// Every DATA message is a fresh buffer (tens to hundreds of KiB) that ZeroMQ's I/O thread frees
/// once it is sent, and every received one is freed by the event loop: with glibc's defaults
/// (trim above 128 KiB of free heap top, mmap for blocks from 128 KiB, adjusted on the fly) the
/// heap shrank and grew again around every message, and page faults with page clearing were a
/// fifth of the sending relay's thread at 64-byte records. Idle, the heap stays at most this big.
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: `mallopt` only sets allocator tunables, and takes any value (it refuses
        // out-of-range ones by returning 0, which leaves the default: harmless).
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        }
    }
}

/// Where the inbound side keeps its checkpoint unless `--state` says otherwise: in `/dev/shm`
/// (tmpfs) beside the rings it describes, which it must outlive no more and no less (a host
/// crash loses both), and where rewriting it after every DATA message costs no disk writeback
/// (on ext4 that writeback stalled the receiving relay for milliseconds at a time). Named after
/// the relay and its config file's absolute path, so two relays on one host never share one.
fn default_state_path(relay: &str, config: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return config.with_extension("state");
    }
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
    let hash = absolute
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let name: String = relay.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    shm.join(format!("tadpole-relay-state.{name}.{hash:016x}"))
}

/// The origins file beside the checkpoint file `state`.
fn origins_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".origins");
    PathBuf::from(name)
}

/// One turn of an outbound link: send what the ring and the timers want sent, handle replies.
/// Returns whether anything moved.
fn drive_link(link: &mut Link, now: Instant) -> Result<bool> {
    let connected = link.status.state() == LinkState::Connected;
    if link.was_connected && !connected {
        link.sender.on_link_down();
    }
    link.was_connected = connected;
    let mut busy = false;
    let socket = link.connector.socket();
    while let Some(parts) = link.sender.poll(now) {
        busy = true;
        match socket.send_multipart(parts, zmq::DONTWAIT) {
            // Not sent now: the sender's timers resend it.
            Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => {}
            Err(e) => return Err(anyhow!("sending to {}: {e}", link.endpoint)),
        }
    }
    loop {
        match socket.recv_multipart(zmq::DONTWAIT) {
            Ok(parts) => {
                busy = true;
                link.sender.handle(&parts, now);
            }
            Err(zmq::Error::EAGAIN) => break,
            Err(e) => return Err(anyhow!("receiving from {}: {e}", link.endpoint)),
        }
    }
    Ok(busy)
}

/// Serves every message waiting on the listener. Returns whether there was any.
fn serve(
    relay: &str,
    listener: &mut Listener,
    receiver: &mut Receiver,
    origins: &mut Origins,
    now: Instant,
) -> Result<bool> {
    let mut busy = false;
    loop {
        match listener.recv(zmq::DONTWAIT) {
            Ok(Received::Message { routing_id, peer, frames }) => {
                busy = true;
                let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
                let head = frames.first().copied().unwrap_or(&[]);
                if let Some(&version) = head.first().filter(|&&v| v != wire::VERSION) {
                    // Counted by the receiver; said once per key and version, in words.
                    if origins.version_warned.len() < MAX_ORIGINS && origins.version_warned.insert((peer, version)) {
                        warn!(relay, event = "unsupported_version", peer = %peer, version, ours = wire::VERSION, "a peer speaks another relay protocol version; its messages are refused: run the same release on both ends");
                    }
                }
                if !origins.admits(relay, &peer, head) {
                    continue;
                }
                let rejected_before = rejects(receiver.counters());
                let reply = receiver.handle_from(&routing_id, &frames, now);
                let new_rejects = rejects(receiver.counters()) - rejected_before;
                if new_rejects > 0 {
                    log_rejects(relay, &peer.to_string(), &frames, reply.as_deref(), new_rejects);
                }
                if let Some(reply) = reply {
                    let mut out: Vec<Vec<u8>> = Vec::with_capacity(reply.len() + 1);
                    out.push(routing_id.to_vec());
                    out.extend(reply);
                    match listener.socket().send_multipart(out, zmq::DONTWAIT) {
                        // A peer gone meanwhile resends after it reconnects.
                        Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => {}
                        Err(e) => return Err(anyhow!("replying: {e}")),
                    }
                }
            }
            Ok(Received::Dropped { .. }) => busy = true,
            Err(zmq::Error::EAGAIN) => return Ok(busy),
            Err(e) => return Err(anyhow!("receiving: {e}")),
        }
    }
}

/// Sends the ACKs the receiver held back that are due (all of them with `all`).
fn send_acks(listener: &Listener, receiver: &mut Receiver, now: Instant, all: bool) -> Result<()> {
    for (routing_id, ack) in receiver.due_acks(now, all) {
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(ack.len() + 1);
        out.push(routing_id);
        out.extend(ack);
        match listener.socket().send_multipart(out, zmq::DONTWAIT) {
            // A peer gone meanwhile resends after it reconnects (its WELCOME says where to).
            Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => {}
            Err(e) => return Err(anyhow!("acknowledging: {e}")),
        }
    }
    Ok(())
}

/// Which client key each origin name belongs to: the first key to open a stream under a name
/// keeps it, so an allowlisted client cannot speak for another relay (and move that relay's
/// streams, which are keyed by origin, back or forth). Messages naming an origin held by another
/// key are dropped and counted. The bindings are kept in a file beside the checkpoint (written
/// when one is made, which is rare), so a restart does not hand the names to whoever speaks
/// first; they are kept as long as the checkpoint they protect.
#[derive(Default)]
struct Origins {
    owners: std::collections::HashMap<String, ipc_zmq::keys::PublicKey>,
    /// Keys (and versions) already warned about speaking another protocol version.
    version_warned: std::collections::HashSet<(ipc_zmq::keys::PublicKey, u8)>,
    refused: Arc<AtomicU64>,
    path: Option<PathBuf>,
}

/// Most origin names remembered (one per sending relay, in practice a handful).
const MAX_ORIGINS: usize = 4096;
/// First line of the origins file.
const ORIGINS_MAGIC: &str = "tadpole-relay-origins 1";

impl Origins {
    /// The bindings saved at `path` (none if it does not exist). A file that is not one, or
    /// holds a bad name or key, is refused with the line: the relay does not start on it.
    fn load(path: PathBuf) -> Result<Origins> {
        let mut origins = Origins { path: Some(path.clone()), ..Origins::default() };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(origins),
            Err(e) => return Err(anyhow!("reading {}: {e}", path.display())),
        };
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some(ORIGINS_MAGIC) {
            return Err(anyhow!(
                "{} is not a tadpole relay origins file (first line must be {ORIGINS_MAGIC:?}); remove it to start over",
                path.display()
            ));
        }
        for (i, line) in lines {
            let bad = |why: &str| anyhow!("{} line {}: {why}; remove the file to start over", path.display(), i + 1);
            let (name, key) = line.split_once('\t').ok_or_else(|| bad("expected <origin>TAB<client public key>"))?;
            if !wire::valid_name(name) {
                return Err(bad("invalid origin name"));
            }
            let key = ipc_zmq::keys::PublicKey::from_z85(key).map_err(|e| bad(&format!("invalid key: {e}")))?;
            if origins.owners.len() >= MAX_ORIGINS {
                return Err(bad("more origins than a relay keeps"));
            }
            origins.owners.insert(name.to_owned(), key);
        }
        Ok(origins)
    }

    /// Rewrites the file (temporary file, then rename: a reader sees the old or the new).
    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut text = format!("{ORIGINS_MAGIC}\n");
        let mut owners: Vec<_> = self.owners.iter().collect();
        owners.sort();
        for (name, key) in owners {
            text.push_str(&format!("{name}\t{key}\n"));
        }
        let tmp = path.with_extension("origins.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    fn admits(&mut self, relay: &str, peer: &ipc_zmq::keys::PublicKey, head: &[u8]) -> bool {
        let Some(origin) = wire::origin_of(head) else { return true };
        match self.owners.get(&origin) {
            Some(owner) if owner == peer => true,
            Some(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                warn!(relay, event = "origin_refused", origin = %origin, peer = %peer, "origin belongs to another client key");
                false
            }
            None if self.owners.len() >= MAX_ORIGINS => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
            None => {
                self.owners.insert(origin.clone(), *peer);
                if let Err(e) = self.save() {
                    // The binding holds for this run; after a restart the name is free again.
                    warn!(relay, event = "origins_not_saved", origin = %origin, error = %e, "cannot save the origin binding");
                }
                true
            }
        }
    }
}

fn rejects(counters: &Counters) -> u64 {
    counters.rejects.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Logs each record this DATA message had rejected (the last `count` of the ACK's rejects are
/// the new ones), with the envelope's correlation id where the payload is a valid envelope.
/// Off the fast path: only messages that rejected something come here.
fn log_rejects(relay: &str, peer: &str, frames: &[&[u8]], reply: Option<&[Vec<u8>]>, count: u64) {
    let (Ok(Frame::Data(data)), Some(Ok(Frame::Ack(ack)))) = (wire::decode(frames), reply.map(wire::decode)) else {
        warn!(relay, event = "rejected", peer, count, "records rejected");
        return;
    };
    let new = ack.rejects.len().saturating_sub(count as usize);
    for rejected in &ack.rejects[new..] {
        let payload = data.records.iter().find(|r| r.position == rejected.position).map(|r| r.payload);
        let correlation_id = payload.and_then(correlation_id);
        warn!(
            relay,
            event = "rejected",
            route = %data.stream,
            origin = %data.origin,
            peer,
            position = rejected.position,
            reason = ?rejected.reason,
            correlation_id = correlation_id.map(tracing::field::display),
            "record rejected"
        );
    }
}

/// The correlation id of `payload` if it is a valid envelope.
fn correlation_id(payload: &[u8]) -> Option<MessageId> {
    let envelope = verify_envelope(payload, &VerifyOptions::default()).ok()?;
    envelope.correlation_id().map(MessageId::from_wire)
}

/// For a route stopped at a corrupt source ring: if the ring's name now holds another segment
/// (a new epoch: the operator replaced the ring), the sender starts over on it, with its
/// counters, dead-letter ring and socket kept, and its doorbell re-armed. A name unlinked and
/// not yet recreated, a segment still being made or refused, or the same (corrupt) ring: it
/// keeps waiting. Returns whether it re-attached.
fn reattach_if_replaced(relay: &str, link: &mut Link) -> bool {
    let old_epoch = link.sender.epoch();
    let segment = match Segment::open(&link.ring) {
        Ok(segment) if segment.epoch() != old_epoch => segment,
        // Not replaced yet; or the name is gone until the new ring is created, or its creator
        // is still writing the header: looked at again later.
        Ok(_) | Err(OpenError::NotFound(_) | OpenError::Invalid(SegmentFault::NotInitialized)) => return false,
        // Something under the name that is no ring (the old one's file truncated, another
        // layout version): said once, and looked at again later.
        Err(e) => {
            refuse_once(relay, link, None, &e.to_string());
            return false;
        }
    };
    let new_epoch = segment.epoch();
    let replaced = match segment.consumer() {
        Ok(consumer) => link.sender.replace_source(consumer).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = replaced {
        refuse_once(relay, link, Some(new_epoch), &e);
        return false;
    }
    link.refused_epoch = None;
    link.logged_source_stopped = false;
    if link.doorbell.is_some() {
        // The old consumer's doorbell closed with it.
        link.doorbell = match link.sender.doorbell_fd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(relay, event = "no_doorbell", ring = %link.ring, error = %e, "cannot make the new ring's pollable doorbell; polling it every millisecond");
                None
            }
        };
    }
    let c = link.sender.counters();
    info!(
        relay,
        event = "source_ring_replaced",
        ring = %link.ring,
        stream = %link.stream,
        peer = %link.endpoint,
        old_epoch = format_args!("{old_epoch:016x}"),
        new_epoch = format_args!("{new_epoch:016x}"),
        source_corrupt_records = c.source_corrupt.load(Ordering::Relaxed),
        "the source ring was replaced: the route goes on from the new ring's first record"
    );
    true
}

/// Says once per replacement ring (or once while what is under the name cannot be opened as a
/// ring) why the stopped route could not re-attach.
fn refuse_once(relay: &str, link: &mut Link, epoch: Option<u64>, error: &str) {
    let key = epoch.unwrap_or(0);
    if link.refused_epoch != Some(key) {
        link.refused_epoch = Some(key);
        warn!(
            relay,
            event = "source_ring_not_attached",
            ring = %link.ring,
            stream = %link.stream,
            new_epoch = epoch.map(|e| tracing::field::display(format!("{e:016x}"))),
            error,
            "the route's source ring cannot be attached to yet; trying again"
        );
    }
}

/// Logs what changed on `link` since the last turn: its connection, its breaker, dead letters,
/// a stop at a corrupt source ring.
fn log_link_changes(relay: &str, link: &mut Link) {
    let state = link.status.state();
    if state != link.logged_state {
        match &state {
            LinkState::Connected => {
                info!(relay, event = "link_connected", route = %link.stream, peer = %link.endpoint, "link connected")
            }
            LinkState::Failing { failures, last } => warn!(
                relay,
                event = "link_failing",
                route = %link.stream,
                peer = %link.endpoint,
                failures,
                handshake_failure = ?last,
                reason = %state,
                "link failing"
            ),
            LinkState::Connecting => {
                info!(relay, event = "link_connecting", route = %link.stream, peer = %link.endpoint, "link connecting")
            }
        }
        link.logged_state = state;
    }
    let breaker = link.sender.breaker_state();
    if breaker != link.logged_breaker {
        warn!(
            relay,
            event = "breaker",
            route = %link.stream,
            peer = %link.endpoint,
            from = ?link.logged_breaker,
            to = ?breaker,
            "circuit breaker changed state"
        );
        link.logged_breaker = breaker;
    }
    let c = link.sender.counters();
    let dead = c.dead_letters.load(Ordering::Relaxed) + c.dead_letters_dropped.load(Ordering::Relaxed);
    if dead != link.logged_dead_letters {
        warn!(
            relay,
            event = "dead_letters",
            route = %link.stream,
            peer = %link.endpoint,
            count = dead - link.logged_dead_letters,
            kept = c.dead_letters.load(Ordering::Relaxed),
            dropped = c.dead_letters_dropped.load(Ordering::Relaxed),
            "records rejected by the far side were dead-lettered"
        );
        link.logged_dead_letters = dead;
    }
    let stopped = link.sender.is_source_stopped();
    if stopped && !link.logged_source_stopped {
        tracing::error!(
            relay,
            event = "source_ring_corrupt",
            ring = %link.ring,
            stream = %link.stream,
            peer = %link.endpoint,
            epoch = format_args!("{:016x}", link.sender.epoch()),
            acknowledged = link.sender.acknowledged(),
            source_corrupt_records = c.source_corrupt.load(Ordering::Relaxed),
            "the source ring has a corrupt record (or its file was truncated): the route is stopped; replace the ring (a new one under the same name) and the relay goes on from it"
        );
    }
    link.logged_source_stopped = stopped;
}

/// JSON lines on stderr, one per event; `RUST_LOG` sets the level (default `info`).
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second `run` in one process keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Sleeps until a socket has something to read, a source ring gains a record the link could
/// send, a sender's timer is due, or [`IDLE_POLL`] passes. Returns at once when records are
/// already waiting.
fn wait(links: &mut [Link], listener: Option<&Listener>, now: Instant) -> Result<()> {
    let mut timeout = IDLE_POLL;
    let mut records_waiting = false;
    for link in links.iter_mut() {
        match link.doorbell.map(|_| link.sender.arm_doorbell(now)) {
            Some(Ok(true)) => {}
            Some(Ok(false)) => records_waiting = true,
            None | Some(Err(_)) => timeout = timeout.min(IDLE_POLL_WITHOUT_DOORBELL),
        }
        if let Some(due) = link.sender.next_deadline() {
            timeout = timeout.min(due.saturating_duration_since(now));
        }
    }
    let polled = if records_waiting {
        Ok(0)
    } else {
        let mut items: Vec<zmq::PollItem<'_>> =
            links.iter().map(|l| l.connector.socket().as_poll_item(zmq::POLLIN)).collect();
        items.extend(links.iter().filter_map(|l| l.doorbell).map(|fd| zmq::PollItem::from_fd(fd, zmq::POLLIN)));
        if let Some(listener) = listener {
            items.push(listener.socket().as_poll_item(zmq::POLLIN));
        }
        // Rounded up: a deadline 0.3 ms away is a 1 ms sleep, not a spin.
        zmq::poll(&mut items, timeout.as_micros().div_ceil(1000) as i64)
    };
    for link in links.iter_mut() {
        link.sender.disarm_doorbell();
    }
    match polled {
        Ok(_) | Err(zmq::Error::EINTR) => Ok(()),
        Err(e) => Err(anyhow!("polling: {e}")),
    }
}

/// SIGHUP: the allowlist (and nothing else) is read again; revoked keys lose their connections.
/// A config that no longer loads is reported and the old allowlist kept.
fn reload(relay: &str, config: &Path, listener: &mut Option<Listener>) -> Result<()> {
    let cfg = match RelayConfig::load(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            warn!(relay, event = "reload_refused", error = %e, "reload refused, keeping the current allowlist");
            return Ok(());
        }
    };
    if let Some(listener) = listener {
        let revoked = listener.replace_allowlist(cfg.allowlist).map_err(|e| anyhow!("reloading: {e}"))?;
        for key in &revoked {
            warn!(relay, event = "revoked", peer = %key, "key revoked: its connections are closed");
        }
        info!(relay, event = "reload", revoked = revoked.len(), "allowlist reloaded");
    }
    Ok(())
}
