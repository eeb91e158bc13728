//! `tadpole metrics`: the counters of every ring on the host, read from shared memory, served
//! as Prometheus metrics on `/metrics` (and `/health`) for Prometheus and Grafana
//! (`examples/grafana/tadpole.json`).
//!
//! Each scrape lists `/dev/shm` again and reads each ring's [`RingStatus`] with the reader
//! `tadpole stat` uses ([`Rings`]): rings made since the last scrape appear, removed ones
//! disappear, and a ring that cannot be read (truncated, hostile or half-made header) is skipped
//! and counted. Nothing is attached and nothing written: the hot path pays only for the cache
//! lines a scrape reads. The HTTP server is the relay's (`ipc_zmq::http`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use ipc_core::{PeerState, RingStatus};
use ipc_zmq::http::{CounterSet, HttpEndpoint, Kind, Status};

use crate::exit;
use crate::stat::{Rings, Row, depth_messages};

const AFTER_HELP: &str = "\
Examples:
  tadpole metrics                          serve http://127.0.0.1:9464/metrics
  tadpole metrics --listen 0.0.0.0:9464    for a Prometheus on another host
  curl -s localhost:9464/metrics | grep tadpole_ring_depth_bytes

Prints `serving http://ADDR/metrics` once listening; runs until Ctrl-C or SIGTERM.

Every ring series is labelled ring=\"NAME\": tadpole_ring_capacity_bytes, tadpole_ring_depth_bytes,
tadpole_ring_depth_messages, tadpole_ring_produced_messages_total, tadpole_ring_produced_bytes_total,
tadpole_ring_consumed_messages_total, tadpole_ring_consumed_bytes_total,
tadpole_ring_full_ring_waits_total, tadpole_ring_dead_letters_total{reason},
tadpole_ring_corrupt_records_total, tadpole_ring_leases_held, tadpole_ring_lease_capacity, and
tadpole_ring_alive, tadpole_ring_dead and tadpole_ring_pid by side (creator, producer, consumer).
The exporter's own: tadpole_metrics_rings, tadpole_metrics_rings_unreadable,
tadpole_metrics_rings_skipped_total, tadpole_metrics_scrapes_total. /health is 503 while /dev/shm
cannot be listed. Counters are as fresh as `tadpole stat` says (see `tadpole stat --help`).";

/// `tadpole metrics`'s arguments.
#[derive(clap::Args)]
#[command(after_help = format!("{AFTER_HELP}\n\n{}", exit::EXIT_STATUS_HELP))]
pub struct MetricsArgs {
    /// Address to serve /metrics and /health on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    listen: String,
}

/// Runs `tadpole metrics` until interrupted.
pub fn run(args: &MetricsArgs) -> Result<()> {
    exit::stop_on_interrupt().context("installing the Ctrl-C handler")?;
    let exporter = Arc::new(Exporter::default());
    let endpoint = HttpEndpoint::start(&args.listen, exporter).context("starting the metrics endpoint")?;
    println!("serving http://{}/metrics", endpoint.addr());
    while !exit::interrupted() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The per-ring series of a set of rings, read from shared memory at each scrape: what
/// `tadpole metrics` serves for every ring on the host, and what each agent and relay serves for
/// the rings it uses (same families, same labels).
pub(crate) struct RingSeries {
    rings: Mutex<Rings>,
}

/// What one scrape of a [`RingSeries`] found.
pub(crate) struct RingsRead {
    pub(crate) readable: u64,
    pub(crate) unreadable: u64,
}

impl RingSeries {
    /// Every ring in /dev/shm, as many as there are at each scrape.
    fn all() -> RingSeries {
        RingSeries { rings: Mutex::new(Rings::all()) }
    }

    /// The rings of these names (a process's own), each once however often it is named; one
    /// not there at a scrape has no series.
    pub(crate) fn named<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> RingSeries {
        let mut rings = Rings::named(Vec::new());
        for name in names {
            rings.watch(name.as_ref());
        }
        RingSeries { rings: Mutex::new(rings) }
    }

    /// Adds the ring `name` to those read (a ring [`RingSeries::named`] reads).
    pub(crate) fn watch(&self, name: &str) {
        self.rings.lock().unwrap_or_else(PoisonError::into_inner).watch(name);
    }

    fn read(&self) -> Result<Vec<Row>> {
        // A panic of an earlier scrape left nothing half-updated that matters: the map of
        // mapped rings is refreshed by every reading.
        self.rings.lock().unwrap_or_else(PoisonError::into_inner).read()
    }

    /// Adds every readable ring's series to `set`.
    pub(crate) fn add_to(&self, set: &mut CounterSet) -> Result<RingsRead> {
        let (mut readable, mut unreadable) = (0u64, 0u64);
        for row in &self.read()? {
            match &row.reading {
                Ok(reading) => {
                    readable += 1;
                    add_ring(set, &row.name, &reading.status);
                }
                Err(_) => unreadable += 1,
            }
        }
        Ok(RingsRead { readable, unreadable })
    }
}

/// What the endpoint reads at each scrape.
struct Exporter {
    rings: RingSeries,
    scrapes: AtomicU64,
    /// Rings skipped as unreadable, summed over every scrape.
    skipped: AtomicU64,
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter { rings: RingSeries::all(), scrapes: AtomicU64::new(0), skipped: AtomicU64::new(0) }
    }
}

impl Status for Exporter {
    fn metrics(&self) -> CounterSet {
        let mut set = CounterSet::default();
        let scrapes = self.scrapes.fetch_add(1, Relaxed) + 1;
        let RingsRead { readable, unreadable } =
            self.rings.add_to(&mut set).unwrap_or(RingsRead { readable: 0, unreadable: 0 });
        let skipped = self.skipped.fetch_add(unreadable, Relaxed) + unreadable;
        let own: [(&str, &str, Kind, u64); 4] = [
            ("tadpole_metrics_rings", "Rings read at this scrape", Kind::Gauge, readable),
            (
                "tadpole_metrics_rings_unreadable",
                "Rings skipped at this scrape: truncated, hostile or not a ring",
                Kind::Gauge,
                unreadable,
            ),
            ("tadpole_metrics_rings_skipped", "Rings skipped as unreadable, over every scrape", Kind::Counter, skipped),
            ("tadpole_metrics_scrapes", "Scrapes served", Kind::Counter, scrapes),
        ];
        for (name, help, kind, value) in own {
            set.add(name, help, kind, &[], move || value);
        }
        set
    }

    fn health(&self) -> (bool, serde_json::Value) {
        match self.rings.read() {
            Ok(rows) => {
                let unreadable: Vec<serde_json::Value> = rows
                    .iter()
                    .filter_map(|r| r.reading.as_ref().err().map(|e| serde_json::json!({ "ring": r.name, "error": e })))
                    .collect();
                (true, serde_json::json!({ "rings": rows.len() - unreadable.len(), "unreadable": unreadable }))
            }
            Err(e) => (false, serde_json::json!({ "error": exit::describe(&e) })),
        }
    }

    fn ready(&self) -> bool {
        true
    }
}

/// Every series of one ring, with the values read now.
fn add_ring(set: &mut CounterSet, name: &str, s: &RingStatus) {
    let ring = [("ring", name)];
    let (p, c) = (&s.produced, &s.consumed);
    let values: [(&str, &str, Kind, u64); 11] = [
        ("tadpole_ring_capacity_bytes", "Bytes in the ring's data region", Kind::Gauge, s.capacity),
        ("tadpole_ring_depth_bytes", "Bytes committed and not yet released", Kind::Gauge, s.used_bytes()),
        ("tadpole_ring_depth_messages", "Messages committed and not yet received", Kind::Gauge, depth_messages(s)),
        ("tadpole_ring_produced_messages", "Messages the producer committed", Kind::Counter, p.messages),
        ("tadpole_ring_produced_bytes", "Payload bytes the producer committed", Kind::Counter, p.bytes),
        ("tadpole_ring_consumed_messages", "Messages the consumer received", Kind::Counter, c.messages),
        ("tadpole_ring_consumed_bytes", "Payload bytes the consumer received", Kind::Counter, c.bytes),
        ("tadpole_ring_full_ring_waits", "Reservation attempts that found the ring full", Kind::Counter, p.full_events),
        ("tadpole_ring_corrupt_records", "Records the consumer refused as corrupt", Kind::Counter, c.corrupt_records),
        ("tadpole_ring_leases_held", "Records the consumer holds as leases", Kind::Gauge, c.leases_held),
        ("tadpole_ring_lease_capacity", "Most leases the consumer may hold", Kind::Gauge, c.lease_capacity),
    ];
    for (metric, help, kind, value) in values {
        set.add(metric, help, kind, &ring, move || value);
    }
    for (reason, value) in [("malformed", c.dead_letters_malformed), ("undeliverable", c.dead_letters_undeliverable)] {
        set.add(
            "tadpole_ring_dead_letters",
            "Records a receiver refused: malformed (not a valid message) or undeliverable",
            Kind::Counter,
            &[("ring", name), ("reason", reason)],
            move || value,
        );
    }
    let creator = if s.creator_alive { PeerState::Attached(s.creator) } else { PeerState::Closed };
    for (side, state) in [("creator", creator), ("producer", s.producer), ("consumer", s.consumer)] {
        let labels = [("ring", name), ("side", side)];
        let alive = u64::from(matches!(state, PeerState::Attached(_)));
        let dead = u64::from(matches!(state, PeerState::Dead(_)));
        let pid = match state {
            PeerState::Attached(id) | PeerState::Dead(id) => u64::from(id.pid),
            PeerState::NeverAttached | PeerState::Closed => 0,
        };
        set.add("tadpole_ring_alive", "1 while the side's process runs", Kind::Gauge, &labels, move || alive);
        set.add(
            "tadpole_ring_dead",
            "1 when the side's process is gone without detaching (crashed or killed)",
            Kind::Gauge,
            &labels,
            move || dead,
        );
        set.add("tadpole_ring_pid", "The side's process id (0: none)", Kind::Gauge, &labels, move || pid);
    }
}
