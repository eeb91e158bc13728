//! The relay's JetStream routes (`[[jetstream]]`): they run on their own thread and tokio
//! runtime (`ipc_nats::Bridge`), beside the ZeroMQ loop, and show in the same `/metrics`,
//! `/health` and JSON logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use ipc_nats::{
    Bridge, Feeder, FeederConfig, NatsSettings, Publisher, PublisherConfig, Route, RouteStatus, StreamSettings,
};
use ipc_zmq::config::{JetStreamDirection, RelayConfig};
use ipc_zmq::http::{CounterSet, Kind};
use schemas::envelope::{MessageId, VerifyOptions, verify_envelope};
use tracing::info;

/// Starts the JetStream routes of `cfg`, if it has any. A feeder keeps its checkpoint beside
/// the relay's own (`state`).
pub(super) fn start(cfg: &RelayConfig, state: &Path) -> Result<Option<Bridge>> {
    let Some(nats) = cfg.nats.as_ref().filter(|_| !cfg.jetstream.is_empty()) else { return Ok(None) };
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    let mut settings = NatsSettings::new(nats.servers.clone(), &cfg.name);
    settings.connect_timeout = ms(nats.connect_timeout_ms);
    settings.reconnect_min = ms(nats.reconnect_min_ms);
    settings.reconnect_max = ms(nats.reconnect_max_ms);
    settings.request_timeout = ms(nats.request_timeout_ms);
    let mut routes = Vec::with_capacity(cfg.jetstream.len());
    for route in &cfg.jetstream {
        let segment = super::ring(&route.ring)?;
        match route.direction {
            JetStreamDirection::Publish => {
                let consumer =
                    segment.consumer().with_context(|| format!("attaching as consumer of ring {:?}", route.ring))?;
                let subject = route.subject.clone().unwrap_or_else(|| format!("tadpole.{}", route.stream));
                let stream = StreamSettings {
                    name: route.stream.clone(),
                    subjects: vec![subject.clone()],
                    replicas: route.replicas,
                    max_age: Duration::from_secs(route.max_age_secs),
                    duplicate_window: Duration::from_secs(route.duplicate_window_secs),
                };
                let mut config = PublisherConfig::new(&cfg.name, &subject, stream);
                config.max_in_flight = route.max_in_flight;
                config.ordered = route.ordered;
                config.pack_max_records = route.pack_max_records;
                config.pack_max_bytes = route.pack_max_bytes;
                config.retry_min = settings.reconnect_min;
                config.retry_max = settings.reconnect_max;
                config.ack_timeout = settings.request_timeout;
                let ids: Option<ipc_nats::MessageIdFn> = route.envelopes.then(|| {
                    Box::new(|payload: &[u8]| {
                        let envelope = verify_envelope(payload, &VerifyOptions::default()).ok()?;
                        envelope.message_id().map(|id| MessageId::from_wire(id).to_string())
                    }) as ipc_nats::MessageIdFn
                });
                let publisher =
                    Publisher::new(config, consumer, ids).map_err(|e| anyhow!("ring {:?}: {e}", route.ring))?;
                info!(relay = %cfg.name, event = "jetstream_route", direction = "publish", ring = %route.ring, stream = %route.stream, subject = %subject, "publishing ring into JetStream");
                routes.push(Route::Publish { name: route.ring.clone(), stream: route.stream.clone(), publisher });
            }
            JetStreamDirection::Feed => {
                let producer =
                    segment.producer().with_context(|| format!("attaching as producer of ring {:?}", route.ring))?;
                let mut config = FeederConfig::new(&route.stream, &route.durable);
                config.filter_subject = route.subject.clone();
                config.batch = route.batch;
                config.ack_wait = Duration::from_millis(route.ack_wait_ms);
                config.dedup_max_ids = route.dedup_max_ids;
                config.checkpoint = Some(checkpoint_path(state, &route.ring));
                config.retry_min = settings.reconnect_min;
                config.retry_max = settings.reconnect_max;
                let feeder = Feeder::new(config, producer).map_err(|e| anyhow!("ring {:?}: {e}", route.ring))?;
                info!(relay = %cfg.name, event = "jetstream_route", direction = "feed", ring = %route.ring, stream = %route.stream, durable = %route.durable, resume_after = feeder.committed(), "feeding ring from JetStream");
                routes.push(Route::Feed { name: route.ring.clone(), stream: route.stream.clone(), feeder });
            }
        }
    }
    Ok(Some(Bridge::start(settings, routes).map_err(|e| anyhow!("{e}"))?))
}

/// The feeder checkpoint of `ring` beside the relay's state file `state`.
fn checkpoint_path(state: &Path, ring: &str) -> PathBuf {
    let ring: String = ring.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let mut name = state.as_os_str().to_owned();
    name.push(format!(".jetstream.{ring}"));
    PathBuf::from(name)
}

/// The routes' counters, in `/metrics`.
pub(super) fn add_metrics(set: &mut CounterSet, relay: &str, routes: &[RouteStatus]) {
    use ipc_nats::Counters as C;
    type Field = fn(&C) -> &std::sync::atomic::AtomicU64;
    let series: [(&str, &str, Kind, Field); 17] = [
        (
            "tadpole_relay_jetstream_published",
            "Records published to JetStream (republished ones included)",
            Kind::Counter,
            |c| &c.published,
        ),
        (
            "tadpole_relay_jetstream_packs_published",
            "JetStream messages published carrying more than one record",
            Kind::Counter,
            |c| &c.packs_published,
        ),
        ("tadpole_relay_jetstream_acked", "Records whose publish JetStream acknowledged", Kind::Counter, |c| &c.acked),
        (
            "tadpole_relay_jetstream_acked_duplicates",
            "Records acknowledged by JetStream as already stored",
            Kind::Counter,
            |c| &c.acked_duplicates,
        ),
        (
            "tadpole_relay_jetstream_found_stored",
            "Records found already stored when publishing resumed, released without publishing them again",
            Kind::Counter,
            |c| &c.found_stored,
        ),
        (
            "tadpole_relay_jetstream_republishes",
            "Rewinds to publish again what was not acknowledged",
            Kind::Counter,
            |c| &c.republishes,
        ),
        (
            "tadpole_relay_jetstream_stray_acks",
            "Replies on the acknowledgement subscription naming no record that awaits one (ignored)",
            Kind::Counter,
            |c| &c.stray_acks,
        ),
        ("tadpole_relay_jetstream_in_flight", "Messages published and not acknowledged", Kind::Gauge, |c| &c.in_flight),
        (
            "tadpole_relay_jetstream_committed",
            "Records committed into the local ring from JetStream",
            Kind::Counter,
            |c| &c.committed,
        ),
        ("tadpole_relay_jetstream_redelivered", "Messages JetStream delivered more than once", Kind::Counter, |c| {
            &c.redelivered
        }),
        ("tadpole_relay_jetstream_duplicates_dropped", "Messages dropped as already committed", Kind::Counter, |c| {
            &c.duplicates_dropped
        }),
        (
            "tadpole_relay_jetstream_malformed",
            "Messages dropped: bad type or pack header, or too large for the ring",
            Kind::Counter,
            |c| &c.malformed,
        ),
        (
            "tadpole_relay_jetstream_pull_restarts",
            "Pulls started again from the checkpoint because deliveries stopped (heartbeats missed, or messages waiting and none delivered)",
            Kind::Counter,
            |c| &c.pull_restarts,
        ),
        (
            "tadpole_relay_jetstream_leader_stepdowns",
            "Consumer leaderships handed to another replica because the leader had fallen behind the stream",
            Kind::Counter,
            |c| &c.leader_stepdowns,
        ),
        ("tadpole_relay_jetstream_reconnects", "Connections to NATS made again after a loss", Kind::Counter, |c| {
            &c.reconnects
        }),
        ("tadpole_relay_jetstream_errors", "JetStream errors, each retried after a backoff", Kind::Counter, |c| {
            &c.errors
        }),
        ("tadpole_relay_jetstream_connected", "1 while connected to NATS", Kind::Gauge, |c| &c.connected),
    ];
    for route in routes {
        let labels = [
            ("relay", relay),
            ("ring", route.name.as_str()),
            ("stream", route.stream.as_str()),
            ("direction", route.direction),
        ];
        for (name, help, kind, field) in series {
            let counters = route.counters.clone();
            set.add(name, help, kind, &labels, move || field(&counters).load(Ordering::Relaxed));
        }
    }
}

/// The routes in `/health`: healthy while every route is connected to NATS.
pub(super) fn health(routes: &[RouteStatus]) -> (bool, serde_json::Value) {
    let healthy = routes.iter().all(|r| r.counters.connected.load(Ordering::Relaxed) == 1);
    let list: Vec<serde_json::Value> = routes
        .iter()
        .map(|r| {
            let c = &r.counters;
            serde_json::json!({
                "ring": r.name,
                "stream": r.stream,
                "direction": r.direction,
                "connected": c.connected.load(Ordering::Relaxed) == 1,
                "reconnects": c.reconnects.load(Ordering::Relaxed),
                "in_flight": c.in_flight.load(Ordering::Relaxed),
                "errors": c.errors.load(Ordering::Relaxed),
            })
        })
        .collect();
    (healthy, serde_json::Value::Array(list))
}
