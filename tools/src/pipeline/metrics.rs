//! `--metrics-port-base PORT`: every Rust agent, and the collector, serve `/metrics`
//! (Prometheus text) and `/health` (JSON) with the relay's endpoint (`ipc_zmq::http`). The
//! collector is on PORT, then the agents in pipeline order, the breaker last. Counters are plain
//! atomics the agents bump as they work, read at scrape time; each process also serves the
//! series of the rings it uses (`tadpole_ring_*`, as `tadpole metrics` does), read from shared
//! memory at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Context, Result};
use ipc_core::Segment;
use ipc_zmq::http::{CounterSet, HistogramReading, HttpEndpoint, Kind, Status};

use crate::metrics::RingSeries;

/// Bucket upper bounds of the latency histograms, in ns (then +Inf).
const BOUNDS_NS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// A latency histogram that one thread records into and a scrape reads, without a lock.
#[derive(Default)]
pub struct LatencyBuckets {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyBuckets {
    pub fn record(&self, ns: u64) {
        let i = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn reading(&self) -> HistogramReading {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let buckets = BOUNDS_NS.iter().map(|b| *b as f64 / 1e9).chain([f64::MAX]).zip(counts.iter().copied()).collect();
        (self.sum_ns.load(Relaxed) as f64 / 1e9, counts.iter().sum(), buckets)
    }
}

/// What one process of the demo publishes.
pub struct Metrics {
    pub process: String,
    /// Envelopes (or ticks) handled.
    pub handled: AtomicU64,
    /// Refusals this process made (risk limit, or the breaker open).
    pub refused: AtomicU64,
    /// 1 while this process holds orders back because the breaker is open, 2 once halted.
    pub breaker_state: AtomicU64,
    pub heartbeats: AtomicU64,
    pub breaker_trips: AtomicU64,
    pub breaker_emergencies: AtomicU64,
    pub sla_alerts: AtomicU64,
    /// Per hop: (name, histogram).
    pub hops: Vec<(&'static str, LatencyBuckets)>,
    /// The rings this process uses: their series (depth, messages, bytes, full-ring waits, dead
    /// letters, ...) are served with the process's own, as `tadpole metrics` serves them.
    rings: RingSeries,
}

impl Metrics {
    pub fn new(process: &str, hops: &[&'static str]) -> Arc<Metrics> {
        Arc::new(Metrics {
            process: process.to_owned(),
            handled: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            breaker_state: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            breaker_trips: AtomicU64::new(0),
            breaker_emergencies: AtomicU64::new(0),
            sla_alerts: AtomicU64::new(0),
            hops: hops.iter().map(|h| (*h, LatencyBuckets::default())).collect(),
            rings: RingSeries::named(Vec::<String>::new()),
        })
    }

    /// Opens the ring `name`, whose series this process serves from now on.
    pub fn open_ring(&self, name: &str) -> Result<Segment> {
        let segment = Segment::open(name)?;
        self.watch_ring(name);
        Ok(segment)
    }

    /// Serves the series of the ring `name` from now on.
    pub fn watch_ring(&self, name: &str) {
        self.rings.watch(name);
    }
}

struct Published(Arc<Metrics>);

/// One of [`Metrics`]' counters.
type Field = fn(&Metrics) -> &AtomicU64;

impl Status for Published {
    fn metrics(&self) -> CounterSet {
        let mut set = CounterSet::default();
        let labels = [("process", self.0.process.as_str())];
        let values: [(&str, &str, Kind, Field); 7] = [
            ("tadpole_demo_handled", "Messages handled", Kind::Counter, |m| &m.handled),
            ("tadpole_demo_refused", "Orders or signals refused", Kind::Counter, |m| &m.refused),
            ("tadpole_demo_breaker_state", "0 closed, 1 open, 2 halted", Kind::Gauge, |m| &m.breaker_state),
            ("tadpole_demo_heartbeats", "Heartbeats sent (or heard, by the breaker)", Kind::Counter, |m| &m.heartbeats),
            ("tadpole_demo_breaker_trips", "BreakerAgentTriggered notices", Kind::Counter, |m| &m.breaker_trips),
            ("tadpole_demo_breaker_emergencies", "BreakerSystemEmergency notices", Kind::Counter, |m| {
                &m.breaker_emergencies
            }),
            ("tadpole_demo_sla_alerts", "SLA alerts raised", Kind::Counter, |m| &m.sla_alerts),
        ];
        for (name, help, kind, field) in values {
            let m = self.0.clone();
            set.add(name, help, kind, &labels, move || field(&m).load(Relaxed));
        }
        for i in 0..self.0.hops.len() {
            let m = self.0.clone();
            let hop = [("process", self.0.process.as_str()), ("hop", self.0.hops[i].0)];
            set.add_histogram("tadpole_demo_hop_latency_seconds", "Latency of a pipeline hop", &hop, move || {
                m.hops[i].1.reading()
            });
        }
        // A ring that cannot be read now (removed, cut) has no series at this scrape.
        let _ = self.0.rings.add_to(&mut set);
        set
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let state = self.0.breaker_state.load(Relaxed);
        let breaker = ["closed", "open", "halted"].get(state as usize).copied().unwrap_or("halted");
        let detail = serde_json::json!({
            "process": self.0.process,
            "handled": self.0.handled.load(Relaxed),
            "breaker": breaker,
        });
        (state < 2, detail)
    }

    fn ready(&self) -> bool {
        true
    }
}

/// Serves `metrics` on 127.0.0.1:`port` until the endpoint is dropped.
pub fn serve(port: u16, metrics: &Arc<Metrics>) -> Result<HttpEndpoint> {
    HttpEndpoint::start(&format!("127.0.0.1:{port}"), Arc::new(Published(metrics.clone())))
        .with_context(|| format!("--metrics-port-base: the {} process", metrics.process))
}
