//! `relay.toml`: what a relay is, whom it admits, and where its records go.
//!
//! A two-host setup needs a handful of lines (see `examples/relay.toml`); everything else has
//! a default. [`RelayConfig::load`] reads the key file and the allowlist file too, so a relay
//! that starts has keys that work; every refusal names the file, the field and the reason.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("tadpole-config-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let _ = std::fs::remove_file(dir.join("a.key")); let _ = std::fs::remove_file(dir.join("a.pub"));
//! use ipc_zmq::{config::RelayConfig, keys::KeyPair};
//! KeyPair::generate().unwrap().write_new(&dir.join("a")).unwrap();
//! let peer = KeyPair::generate().unwrap();
//! std::fs::write(dir.join("relay.toml"), format!(r#"
//!     name = "host-a"
//!     key_file = "a.key"
//!     listen = "tcp://*:7400"
//!     allow = ["{}"]
//! "#, peer.public())).unwrap();
//! let config = RelayConfig::load(&dir.join("relay.toml")).unwrap();
//! assert!(config.allowlist.contains(peer.public()));
//! assert_eq!(config.limits.handshake_timeout_ms, 1000);
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::keys::{KeyFileError, KeyPair, PublicKey, parse_key_lines};
use crate::security::Allowlist;

/// A relay's validated configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The relay's name: the origin id its records carry.
    pub name: String,
    /// The relay's own CURVE key pair, read from `key_file` (a throwaway one for a relay with
    /// JetStream routes and no listener or `route_out`, which needs no `key_file`).
    pub keys: KeyPair,
    /// Where the relay accepts other relays (`tcp://host:port`); `None` for a relay that only
    /// sends.
    pub listen: Option<String>,
    /// The client public keys admitted by the listener: `allow` plus the keys in `allow_file`.
    pub allowlist: Allowlist,
    /// Where `/health` and metrics are served, if anywhere.
    pub health: Option<SocketAddr>,
    /// Local rings drained and forwarded to remote relays.
    pub routes_out: Vec<RouteOut>,
    /// Remote streams written into local rings.
    pub routes_in: Vec<RouteIn>,
    /// Frame size limit and timeouts.
    pub limits: Limits,
    /// Where the JetStream routes connect (`[nats]`); `Some` whenever `jetstream` is not empty.
    pub nats: Option<NatsConfig>,
    /// JetStream routes (`[[jetstream]]`): local rings published into streams, or fed from
    /// durable consumers.
    pub jetstream: Vec<JetStreamRoute>,
}

/// The NATS servers JetStream routes connect to, and how (`[nats]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, e.g. `["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]`; the client fails
    /// over between them and learns the rest of the cluster.
    pub servers: Vec<String>,
    /// Giving up on one connect attempt (default 1000).
    #[serde(default = "default_nats_connect_ms")]
    pub connect_timeout_ms: u32,
    /// First reconnect delay (default 100); doubles up to `reconnect_max_ms` (default 5000).
    #[serde(default = "default_nats_reconnect_min_ms")]
    pub reconnect_min_ms: u32,
    /// Largest reconnect delay.
    #[serde(default = "default_nats_reconnect_max_ms")]
    pub reconnect_max_ms: u32,
    /// How long a publish acknowledgement or JetStream API reply may take (default 5000).
    #[serde(default = "default_nats_request_ms")]
    pub request_timeout_ms: u32,
}

fn default_nats_connect_ms() -> u32 {
    1000
}
fn default_nats_reconnect_min_ms() -> u32 {
    100
}
fn default_nats_reconnect_max_ms() -> u32 {
    5000
}
fn default_nats_request_ms() -> u32 {
    5000
}

/// Which way a JetStream route moves records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JetStreamDirection {
    /// The local ring is drained into the stream (`publish = "<ring>"`).
    Publish,
    /// The local ring is written from a durable consumer of the stream (`feed = "<ring>"`).
    Feed,
}

/// One `[[jetstream]]` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamRoute {
    /// Publish or feed.
    pub direction: JetStreamDirection,
    /// The local ring.
    pub ring: String,
    /// The JetStream stream.
    pub stream: String,
    /// Publish: the subject records go to. Feed: the filter subject (default: publish
    /// `tadpole.<stream>`; feed every subject of the stream).
    pub subject: Option<String>,
    /// Publish: the stream's replicas (default 1).
    pub replicas: usize,
    /// Publish: the stream's `max_age` in seconds, 0 for none (default 0).
    pub max_age_secs: u64,
    /// Publish: the stream's duplicate window in seconds (default 120).
    pub duplicate_window_secs: u64,
    /// Publish: the ring carries envelopes, whose `message_id` is the `Nats-Msg-Id` (default
    /// false: `origin/epoch/position`).
    pub envelopes: bool,
    /// Publish: most publishes awaiting acknowledgement (default 1024).
    pub max_in_flight: usize,
    /// Publish: chain publishes so that no record is stored before an earlier one (default
    /// true; needs the stream to itself).
    pub ordered: bool,
    /// Publish: most records carried by one JetStream message (default 128; 1: one record a
    /// message). Raw rings with `ordered` only: see `ipc_nats::PublisherConfig`.
    pub pack_max_records: usize,
    /// Publish: a pack is closed once its records reach this many bytes (default 65536).
    pub pack_max_bytes: usize,
    /// Feed: the durable consumer's name (default `<relay name>-<ring>`, sanitised).
    pub durable: String,
    /// Feed: most messages delivered and unacknowledged, and per ring commit (default 256).
    pub batch: usize,
    /// Feed: the consumer's ack wait in ms (default 30000).
    pub ack_wait_ms: u64,
    /// Feed: most message ids remembered to drop duplicates (default 100000).
    pub dedup_max_ids: usize,
}

/// A local ring forwarded to a stream of a remote relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOut {
    /// The local ring drained.
    pub ring: String,
    /// The remote relay's listen endpoint (`tcp://host:port`).
    pub connect: String,
    /// The remote relay's public key, pinned: any other server is refused.
    pub server_key: PublicKey,
    /// The stream name the remote relay routes on (default: the ring's name).
    pub stream: String,
    /// The local ring that records the far side rejects are written into (opened, or created
    /// when missing), as `engine::DeadLetter` records; `None`: they are only counted.
    pub dead_letters: Option<String>,
}

/// A remote stream written into a local ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteIn {
    /// The stream name senders use.
    pub stream: String,
    /// The local ring written (default: the stream's name).
    pub ring: String,
    /// Whether the stream carries envelopes: each record must verify as one (else it is
    /// rejected as an invalid envelope) and one whose `message_id` was seen within the dedup
    /// window is dropped as a duplicate (default `false`).
    pub envelopes: bool,
    /// How long an envelope's `message_id` is remembered, in seconds (default 86400).
    pub dedup_window_secs: u64,
    /// Most `message_id`s remembered; the oldest is forgotten first (default 1 000 000).
    pub dedup_max_ids: usize,
}

/// Default of [`RouteIn::dedup_window_secs`]: a day.
pub const DEFAULT_DEDUP_WINDOW_SECS: u64 = 86_400;
/// Default of [`RouteIn::dedup_max_ids`] (about 40 MB of ids).
pub const DEFAULT_DEDUP_MAX_IDS: usize = 1_000_000;

/// Frame size limit and timeouts, applied to every ZeroMQ socket of the relay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame accepted (`ZMQ_MAXMSGSIZE`); a peer sending more is disconnected.
    pub max_frame_bytes: u64,
    /// A connection that has not finished its CURVE handshake by then is closed
    /// (`ZMQ_HANDSHAKE_IVL`).
    pub handshake_timeout_ms: u32,
    /// Giving up on one TCP connect attempt (`ZMQ_CONNECT_TIMEOUT`).
    pub connect_timeout_ms: u32,
    /// How long the engine waits for an acknowledgement before resending.
    pub request_timeout_ms: u32,
    /// A peer silent this long (not even heartbeats) is disconnected (`ZMQ_HEARTBEAT_TIMEOUT`,
    /// `ZMQ_HEARTBEAT_TTL`).
    pub idle_timeout_ms: u32,
    /// ZMTP heartbeat period (`ZMQ_HEARTBEAT_IVL`).
    pub heartbeat_interval_ms: u32,
    /// First reconnect delay (`ZMQ_RECONNECT_IVL`).
    pub reconnect_min_ms: u32,
    /// Largest reconnect delay after repeated failures (`ZMQ_RECONNECT_IVL_MAX`, and the cap
    /// of the handshake-failure backoff).
    pub reconnect_max_ms: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 4 << 20,
            handshake_timeout_ms: 1000,
            connect_timeout_ms: 1000,
            request_timeout_ms: 5000,
            idle_timeout_ms: 30_000,
            heartbeat_interval_ms: 1000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
        }
    }
}

/// Why a config file was refused. Displays as `<file>: <field>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {field}: {reason}", file.display())]
pub struct ConfigError {
    /// The config file (or the file it points to that was refused).
    pub file: PathBuf,
    /// The field, e.g. `route_out[1].server_key`, or `line N` for a syntax error.
    pub field: String,
    /// What is wrong and, where it helps, what to do.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    key_file: Option<PathBuf>,
    listen: Option<String>,
    #[serde(default)]
    allow: Vec<PublicKey>,
    allow_file: Option<PathBuf>,
    health: Option<String>,
    #[serde(default)]
    route_out: Vec<RawRouteOut>,
    #[serde(default)]
    route_in: Vec<RawRouteIn>,
    #[serde(default)]
    limits: Limits,
    nats: Option<NatsConfig>,
    #[serde(default)]
    jetstream: Vec<RawJetStreamRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJetStreamRoute {
    publish: Option<String>,
    feed: Option<String>,
    stream: String,
    subject: Option<String>,
    replicas: Option<usize>,
    max_age_secs: Option<u64>,
    duplicate_window_secs: Option<u64>,
    envelopes: Option<bool>,
    max_in_flight: Option<usize>,
    ordered: Option<bool>,
    pack_max_records: Option<usize>,
    pack_max_bytes: Option<usize>,
    durable: Option<String>,
    batch: Option<usize>,
    ack_wait_ms: Option<u64>,
    dedup_max_ids: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteOut {
    ring: String,
    connect: String,
    server_key: PublicKey,
    stream: Option<String>,
    dead_letters: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteIn {
    stream: String,
    ring: Option<String>,
    #[serde(default)]
    envelopes: bool,
    dedup_window_secs: Option<u64>,
    dedup_max_ids: Option<usize>,
}

impl RelayConfig {
    /// Reads and validates `path`, the key file and the allowlist file it names (relative
    /// paths are relative to the config file's directory).
    pub fn load(path: &Path) -> Result<RelayConfig, ConfigError> {
        let err = |field: &str, reason: String| ConfigError { file: path.to_owned(), field: field.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err("file", e.to_string()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(&text)).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().and_then(|s| text.get(..s.start)).map(|t| t.matches('\n').count() + 1);
            // serde reports a missing field at its parent: name the field.
            let named = inner.message().strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
            let field = match (field.as_str(), named, line) {
                (".", Some(name), _) => name.to_owned(),
                (_, Some(name), _) => format!("{field}.{name}"),
                (".", None, Some(line)) => format!("line {line}"),
                (".", None, None) => "file".to_owned(),
                _ => field,
            };
            err(&field, inner.message().trim().replace('\n', "; "))
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| if p.is_relative() { dir.join(p) } else { p.to_owned() };

        if raw.name.is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        let keys = match &raw.key_file {
            Some(file) => KeyPair::load(&resolve(file)).map_err(|e: KeyFileError| err("key_file", e.to_string()))?,
            // Only a relay that has JetStream routes and nothing of ZeroMQ may go without.
            None if raw.listen.is_some() || !raw.route_out.is_empty() || raw.jetstream.is_empty() => {
                return Err(err(
                    "key_file",
                    "missing field `key_file` (only a relay with nothing but [[jetstream]] routes may leave it out)"
                        .into(),
                ));
            }
            // Only JetStream routes: no CURVE socket will use it.
            None => KeyPair::generate().map_err(|e| err("key_file", format!("cannot make a key pair: {e}")))?,
        };
        if let Some(listen) = &raw.listen {
            check_endpoint(listen, true).map_err(|r| err("listen", r))?;
        }
        let mut allowlist: Vec<PublicKey> = raw.allow;
        if let Some(file) = &raw.allow_file {
            let file = resolve(file);
            let text =
                std::fs::read_to_string(&file).map_err(|e| err("allow_file", format!("{}: {e}", file.display())))?;
            let keys = parse_key_lines(&text).map_err(|(line, reason)| ConfigError {
                file: file.clone(),
                field: format!("line {line}"),
                reason,
            })?;
            allowlist.extend(keys);
        }
        let allowlist: Allowlist = allowlist.into_iter().collect();
        if raw.listen.is_some() && allowlist.is_empty() {
            return Err(err(
                "allow",
                "the listener would admit no one: list client public keys in `allow` or `allow_file`".into(),
            ));
        }
        let health = raw
            .health
            .map(|h| {
                h.parse::<SocketAddr>()
                    .map_err(|e| err("health", format!("{h:?}: {e} (expected host:port, e.g. \"127.0.0.1:7401\")")))
            })
            .transpose()?;

        let mut routes_out = Vec::with_capacity(raw.route_out.len());
        for (i, r) in raw.route_out.into_iter().enumerate() {
            let at = |f: &str| format!("route_out[{i}].{f}");
            check_name(&r.ring).map_err(|m| err(&at("ring"), m))?;
            check_endpoint(&r.connect, false).map_err(|m| err(&at("connect"), m))?;
            let stream = r.stream.unwrap_or_else(|| r.ring.clone());
            check_name(&stream).map_err(|m| err(&at("stream"), m))?;
            if routes_out.iter().any(|o: &RouteOut| o.ring == r.ring) {
                return Err(err(&at("ring"), format!("ring {:?} is already routed out", r.ring)));
            }
            if let Some(dead) = &r.dead_letters {
                check_name(dead).map_err(|m| err(&at("dead_letters"), m))?;
                if *dead == r.ring {
                    return Err(err(&at("dead_letters"), "must not be the ring the route drains".into()));
                }
            }
            routes_out.push(RouteOut {
                ring: r.ring,
                connect: r.connect,
                server_key: r.server_key,
                stream,
                dead_letters: r.dead_letters,
            });
        }
        let mut routes_in = Vec::with_capacity(raw.route_in.len());
        for (i, r) in raw.route_in.into_iter().enumerate() {
            let at = |f: &str| format!("route_in[{i}].{f}");
            check_name(&r.stream).map_err(|m| err(&at("stream"), m))?;
            let ring = r.ring.unwrap_or_else(|| r.stream.clone());
            check_name(&ring).map_err(|m| err(&at("ring"), m))?;
            if routes_in.iter().any(|o: &RouteIn| o.stream == r.stream) {
                return Err(err(&at("stream"), format!("stream {:?} is already routed in", r.stream)));
            }
            if !r.envelopes && (r.dedup_window_secs.is_some() || r.dedup_max_ids.is_some()) {
                let field = if r.dedup_window_secs.is_some() { "dedup_window_secs" } else { "dedup_max_ids" };
                return Err(err(&at(field), "only applies with `envelopes = true`".into()));
            }
            let dedup_window_secs = r.dedup_window_secs.unwrap_or(DEFAULT_DEDUP_WINDOW_SECS);
            if dedup_window_secs == 0 {
                return Err(err(&at("dedup_window_secs"), "must be at least 1".into()));
            }
            let dedup_max_ids = r.dedup_max_ids.unwrap_or(DEFAULT_DEDUP_MAX_IDS);
            if dedup_max_ids == 0 {
                return Err(err(&at("dedup_max_ids"), "must be at least 1".into()));
            }
            routes_in.push(RouteIn {
                stream: r.stream,
                ring,
                envelopes: r.envelopes,
                dedup_window_secs,
                dedup_max_ids,
            });
        }
        if !routes_in.is_empty() && raw.listen.is_none() {
            return Err(err("listen", "missing: route_in needs a listener to receive on".into()));
        }
        check_limits(&raw.limits).map_err(|(f, m)| err(&format!("limits.{f}"), m))?;
        let jetstream = check_jetstream(&raw.name, raw.jetstream).map_err(|(f, m)| err(&f, m))?;
        if let Some(nats) = &raw.nats {
            check_nats(nats).map_err(|(f, m)| err(&format!("nats.{f}"), m))?;
        } else if !jetstream.is_empty() {
            return Err(err("nats", "missing: [[jetstream]] routes need a [nats] table with `servers`".into()));
        }
        Ok(RelayConfig {
            name: raw.name,
            keys,
            listen: raw.listen,
            allowlist,
            health,
            routes_out,
            routes_in,
            limits: raw.limits,
            nats: raw.nats,
            jetstream,
        })
    }
}

/// A JetStream stream, consumer or subject token: what NATS accepts, and no more.
fn check_nats_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{name:?} is not a JetStream name (1-200 of A-Z a-z 0-9 - _)"));
    }
    Ok(())
}

fn check_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    let tokens_ok = subject.split('.').all(|t| {
        !t.is_empty()
            && (t.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
                || (wildcards && (t == "*" || t == ">")))
    });
    if subject.len() > 255 || !tokens_ok {
        let what = if wildcards { "a subject" } else { "a subject without wildcards" };
        return Err(format!("{subject:?} is not {what} (dot-separated printable tokens)"));
    }
    Ok(())
}

fn check_jetstream(relay: &str, raw: Vec<RawJetStreamRoute>) -> Result<Vec<JetStreamRoute>, (String, String)> {
    let mut routes: Vec<JetStreamRoute> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = |f: &str| format!("jetstream[{i}].{f}");
        let (direction, ring) = match (r.publish, r.feed) {
            (Some(ring), None) => (JetStreamDirection::Publish, ring),
            (None, Some(ring)) => (JetStreamDirection::Feed, ring),
            _ => {
                return Err((
                    at("publish"),
                    "give exactly one of `publish = \"<ring>\"` or `feed = \"<ring>\"`".into(),
                ));
            }
        };
        let ring_field = if direction == JetStreamDirection::Publish { "publish" } else { "feed" };
        check_name(&ring).map_err(|m| (at(ring_field), m))?;
        if routes.iter().any(|o| o.ring == ring) {
            return Err((at(ring_field), format!("ring {ring:?} is already a JetStream route")));
        }
        check_nats_name(&r.stream).map_err(|m| (at("stream"), m))?;
        if let Some(subject) = &r.subject {
            check_subject(subject, direction == JetStreamDirection::Feed).map_err(|m| (at("subject"), m))?;
        }
        let only_publish = [
            ("replicas", r.replicas.is_some()),
            ("max_age_secs", r.max_age_secs.is_some()),
            ("duplicate_window_secs", r.duplicate_window_secs.is_some()),
            ("envelopes", r.envelopes.is_some()),
            ("max_in_flight", r.max_in_flight.is_some()),
            ("ordered", r.ordered.is_some()),
            ("pack_max_records", r.pack_max_records.is_some()),
            ("pack_max_bytes", r.pack_max_bytes.is_some()),
        ];
        let only_feed = [
            ("durable", r.durable.is_some()),
            ("batch", r.batch.is_some()),
            ("ack_wait_ms", r.ack_wait_ms.is_some()),
            ("dedup_max_ids", r.dedup_max_ids.is_some()),
        ];
        let (misplaced, other): (&[(&str, bool)], &str) = match direction {
            JetStreamDirection::Publish => (&only_feed, "feed"),
            JetStreamDirection::Feed => (&only_publish, "publish"),
        };
        if let Some((name, _)) = misplaced.iter().find(|(_, set)| *set) {
            return Err((at(name), format!("only applies to {other} routes")));
        }
        let replicas = r.replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            return Err((at("replicas"), "must be between 1 and 5".into()));
        }
        let duplicate_window_secs = r.duplicate_window_secs.unwrap_or(120);
        if duplicate_window_secs == 0 {
            return Err((at("duplicate_window_secs"), "must be at least 1: the relay's restarts rely on it".into()));
        }
        let max_in_flight = r.max_in_flight.unwrap_or(1024);
        if !(1..=65536).contains(&max_in_flight) {
            return Err((at("max_in_flight"), "must be between 1 and 65536".into()));
        }
        let pack_max_records = r.pack_max_records.unwrap_or(128);
        if !(1..=10_000).contains(&pack_max_records) {
            return Err((at("pack_max_records"), "must be between 1 and 10000".into()));
        }
        // NATS refuses messages above its max_payload (1 MiB by default); a pack is at most
        // this plus one record.
        let pack_max_bytes = r.pack_max_bytes.unwrap_or(64 << 10);
        if !(1..=(512 << 10)).contains(&pack_max_bytes) {
            return Err((
                at("pack_max_bytes"),
                "must be between 1 and 524288 (NATS' default max_payload is 1 MiB)".into(),
            ));
        }
        let durable = match r.durable {
            Some(durable) => {
                check_nats_name(&durable).map_err(|m| (at("durable"), m))?;
                durable
            }
            None => format!("{relay}-{ring}")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                .collect(),
        };
        let batch = r.batch.unwrap_or(256);
        if !(1..=10_000).contains(&batch) {
            return Err((at("batch"), "must be between 1 and 10000".into()));
        }
        let ack_wait_ms = r.ack_wait_ms.unwrap_or(30_000);
        if ack_wait_ms < 100 {
            return Err((at("ack_wait_ms"), "must be at least 100".into()));
        }
        let dedup_max_ids = r.dedup_max_ids.unwrap_or(100_000);
        if dedup_max_ids == 0 {
            return Err((at("dedup_max_ids"), "must be at least 1".into()));
        }
        routes.push(JetStreamRoute {
            direction,
            ring,
            stream: r.stream,
            subject: r.subject,
            replicas,
            max_age_secs: r.max_age_secs.unwrap_or(0),
            duplicate_window_secs,
            envelopes: r.envelopes.unwrap_or(false),
            max_in_flight,
            ordered: r.ordered.unwrap_or(true),
            pack_max_records,
            pack_max_bytes,
            durable,
            batch,
            ack_wait_ms,
            dedup_max_ids,
        });
    }
    Ok(routes)
}

fn check_nats(n: &NatsConfig) -> Result<(), (&'static str, String)> {
    if n.servers.is_empty() {
        return Err(("servers", "list at least one server, e.g. [\"nats://127.0.0.1:4222\"]".into()));
    }
    for server in &n.servers {
        let rest = server.strip_prefix("nats://").or_else(|| server.strip_prefix("tls://")).unwrap_or(server);
        let port_ok = rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err((
                "servers",
                format!("{server:?} is not a NATS server (expected e.g. \"nats://10.0.0.1:4222\")"),
            ));
        }
    }
    let positive = [
        ("connect_timeout_ms", n.connect_timeout_ms),
        ("reconnect_min_ms", n.reconnect_min_ms),
        ("request_timeout_ms", n.request_timeout_ms),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err((name, "must be at least 1".into()));
        }
    }
    if n.reconnect_max_ms < n.reconnect_min_ms {
        return Err(("reconnect_max_ms", "must be at least reconnect_min_ms".into()));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(format!("{name:?} is not a ring or stream name (1-200 printable ASCII characters, no '/')"));
    }
    Ok(())
}

/// Only `tcp://host:port`: ipc/inproc would bypass the network this relay exists for, and a
/// typo caught at start beats a silent reconnect loop.
fn check_endpoint(endpoint: &str, listening: bool) -> Result<(), String> {
    let example = if listening { "tcp://*:7400" } else { "tcp://host-b:7400" };
    let bad = |why: &str| Err(format!("{endpoint:?} {why} (expected e.g. \"{example}\")"));
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return bad("is not a tcp:// endpoint");
    };
    let Some((host, port)) = rest.rsplit_once(':') else {
        return bad("has no port");
    };
    if host.is_empty() || (host == "*" && !listening) {
        return bad("has no host to connect to");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("has no valid port (1-65535)"),
    }
}

fn check_limits(l: &Limits) -> Result<(), (&'static str, String)> {
    if l.max_frame_bytes == 0 || l.max_frame_bytes > i64::MAX as u64 {
        return Err(("max_frame_bytes", "must be between 1 and 2^63-1".into()));
    }
    let positive = [
        ("handshake_timeout_ms", l.handshake_timeout_ms),
        ("connect_timeout_ms", l.connect_timeout_ms),
        ("request_timeout_ms", l.request_timeout_ms),
        ("heartbeat_interval_ms", l.heartbeat_interval_ms),
        ("reconnect_min_ms", l.reconnect_min_ms),
    ];
    for (name, v) in positive {
        if v == 0 || v > i32::MAX as u32 {
            return Err((name, "must be between 1 and 2^31-1 ms".into()));
        }
    }
    // ZMQ_HEARTBEAT_TTL is carried in deciseconds in a u16.
    if l.idle_timeout_ms <= l.heartbeat_interval_ms || l.idle_timeout_ms > 6_553_500 {
        return Err(("idle_timeout_ms", "must exceed heartbeat_interval_ms and be at most 6553500".into()));
    }
    if l.reconnect_max_ms < l.reconnect_min_ms || l.reconnect_max_ms > i32::MAX as u32 {
        return Err(("reconnect_max_ms", "must be at least reconnect_min_ms".into()));
    }
    Ok(())
}

impl fmt::Display for RouteOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ring {} -> {} (stream {})", self.ring, self.connect, self.stream)
    }
}
