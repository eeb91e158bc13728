//! `tadpole relay` between two hosts: two network namespaces joined by a veth pair (made by the
//! test), a relay in each, a producer and a consumer of real rings on each side, streams with
//! sequence numbers and checksums in both directions — through a partition, `kill -9` of each
//! relay and a restart. Nothing is lost; a repeat is allowed only where PROTOCOL.md allows one.

mod support;

use support::record;
use support::relay::{free_port, keygen};

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipc_core::{RingBuilder, Segment, TryRecvError, TrySendError};
use support::netns::NetPair;

const RECORDS: u64 = 120_000;
const DEADLINE: Duration = Duration::from_secs(150);

struct Relay {
    ns: String,
    config: std::path::PathBuf,
    child: Option<Child>,
}

impl Relay {
    fn start(&mut self, net: &NetPair) {
        let child = net
            .command(&self.ns, env!("CARGO_BIN_EXE_tadpole"))
            .args(["relay", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start relay");
        self.child = Some(child);
    }

    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the relay, so this pid is the relay's.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn produce(segment: Segment, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut producer = segment.producer().unwrap();
        let mut buf = Vec::new();
        let mut seq = 0;
        let started = Instant::now();
        while seq < RECORDS && !stop.load(Ordering::Relaxed) {
            assert!(started.elapsed() < DEADLINE, "producer stuck at {seq}");
            record(0, seq, &mut buf);
            match producer.try_send_typed((seq % 7) as u16, &buf) {
                Ok(()) => seq += 1,
                // Backpressure: the relay holds records until the far side has them.
                Err(TrySendError::Full | TrySendError::Disconnected) => std::thread::sleep(Duration::from_micros(200)),
                Err(e) => panic!("{e}"),
            }
        }
    })
}

/// Receives until every record arrived; returns how many repeats were seen.
fn consume(segment: &Segment, what: &str, mut progress: impl FnMut(u64)) -> u64 {
    let mut consumer = segment.consumer().unwrap();
    let (mut next, mut repeats) = (0u64, 0u64);
    let mut expected = Vec::new();
    let started = Instant::now();
    while next < RECORDS {
        assert!(started.elapsed() < DEADLINE, "{what}: stuck at record {next}");
        match consumer.try_recv() {
            Ok(msg) => {
                let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
                record(0, seq, &mut expected);
                assert_eq!(&msg[..], &expected[..], "{what}: record {seq} damaged");
                assert_eq!(msg.message_type(), (seq % 7) as u16, "{what}: record {seq}'s type");
                assert!(seq <= next, "{what}: record {next} lost (got {seq})");
                if seq < next {
                    repeats += 1;
                } else {
                    next += 1;
                    progress(next);
                }
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => panic!("{what}: {e}"),
        }
    }
    repeats
}

#[test]
fn two_relays_in_two_namespaces_lose_nothing_through_a_partition_and_kill_9_of_each() {
    let Some(net) = NetPair::create("rl") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a_pub, b_pub) = (keygen(dir.path(), "a"), keygen(dir.path(), "b"));
    let tag = std::process::id();
    let ring = |name: &str| format!("relay-test-{tag}-{name}");
    let rings: Vec<Segment> = ["a-out", "a-in", "b-out", "b-in"]
        .iter()
        .map(|n| RingBuilder::new(1 << 20).create_named(&ring(n)).unwrap())
        .collect();
    let write_config = |me: &str, my_ip: &str, peer_ip: &str, peer_pub: &str, out: &str, inn: &str| {
        let text = format!(
            "name = \"host-{me}\"\nkey_file = \"{me}.key\"\nlisten = \"tcp://{my_ip}:7400\"\nallow = [\"{peer_pub}\"]\n\n\
             [[route_out]]\nring = \"{out}\"\nconnect = \"tcp://{peer_ip}:7400\"\nserver_key = \"{peer_pub}\"\nstream = \"to-{peer}\"\n\n\
             [[route_in]]\nstream = \"to-{me}\"\nring = \"{inn}\"\n",
            peer = if me == "a" { "b" } else { "a" },
        );
        let path = dir.path().join(format!("{me}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let a_config = write_config("a", &net.a_ip, &net.b_ip, &b_pub, &ring("a-out"), &ring("a-in"));
    let b_config = write_config("b", &net.b_ip, &net.a_ip, &a_pub, &ring("b-out"), &ring("b-in"));
    let mut a = Relay { ns: net.a.clone(), config: a_config, child: None };
    let mut b = Relay { ns: net.b.clone(), config: b_config, child: None };
    a.start(&net);
    b.start(&net);

    let stop = Arc::new(AtomicBool::new(false));
    let producers = [produce(rings[0].clone(), stop.clone()), produce(rings[2].clone(), stop.clone())];
    // B -> A in the background; A -> B here, with the faults injected along the way.
    let a_in = rings[1].clone();
    let reverse = std::thread::spawn(move || consume(&a_in, "b->a", |_| {}));
    let mut step = 0;
    let repeats = consume(&rings[3], "a->b", |n| {
        let fault = [RECORDS / 5, 2 * RECORDS / 5, 3 * RECORDS / 5];
        if step < fault.len() && n >= fault[step] {
            match step {
                0 => {
                    net.set_link(false);
                    std::thread::sleep(Duration::from_secs(5)); // the partition: 5 s down
                    net.set_link(true);
                }
                1 => {
                    a.kill_9();
                    std::thread::sleep(Duration::from_millis(300));
                    a.start(&net);
                }
                _ => {
                    b.kill_9();
                    std::thread::sleep(Duration::from_millis(300));
                    b.start(&net);
                }
            }
            step += 1;
        }
    });
    let reverse_repeats = reverse.join().expect("b->a consumer");
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().expect("producer");
    }
    assert_eq!(step, 3, "every fault was injected");
    // PROTOCOL.md: a receiving relay killed between its commit and its checkpoint repeats at most
    // the one DATA message (at most 512 records) it had committed; nothing else repeats.
    assert!(repeats <= 512, "a->b repeated {repeats} records");
    assert!(reverse_repeats <= 512, "b->a repeated {reverse_repeats} records");
    drop((a, b));
    for r in rings {
        drop(r);
    }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()))
}

/// Two relays on loopback: B listens and allows A's key; A forwards `out_ring` to B's stream
/// `s` (pinning `server_key`, B's by default) and serves /health on `health_port`; B commits
/// into `in_ring`.
struct LoopbackPair {
    dir: tempfile::TempDir,
    out_ring: String,
    in_ring: String,
    health: String,
    _rings: [Segment; 2],
}

impl LoopbackPair {
    fn new(tag: &str, wrong_server_key: bool) -> LoopbackPair {
        let dir = tempfile::tempdir().unwrap();
        let (a_pub, b_pub) = (keygen(dir.path(), "a"), keygen(dir.path(), "b"));
        // A valid key that is not the server's.
        let server_key = if wrong_server_key { keygen(dir.path(), "c") } else { b_pub };
        let (b_port, health_port) = (free_port(), free_port());
        let id = std::process::id();
        let (out_ring, in_ring) = (format!("relay-{tag}-{id}-out"), format!("relay-{tag}-{id}-in"));
        let _rings = [
            RingBuilder::new(1 << 16).create_named(&out_ring).unwrap(),
            RingBuilder::new(1 << 16).create_named(&in_ring).unwrap(),
        ];
        std::fs::write(
            dir.path().join("b.toml"),
            format!("name = \"b\"\nkey_file = \"b.key\"\nlisten = \"tcp://127.0.0.1:{b_port}\"\nallow = [\"{a_pub}\"]\n\n[[route_in]]\nstream = \"s\"\nring = \"{in_ring}\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            format!("name = \"a\"\nkey_file = \"a.key\"\nhealth = \"127.0.0.1:{health_port}\"\n\n[[route_out]]\nring = \"{out_ring}\"\nconnect = \"tcp://127.0.0.1:{b_port}\"\nserver_key = \"{server_key}\"\nstream = \"s\"\n"),
        )
        .unwrap();
        LoopbackPair { dir, out_ring, in_ring, health: format!("127.0.0.1:{health_port}"), _rings }
    }

    /// Starts B, then A; both are killed when the result is dropped (a failing test too).
    fn start(&self) -> KilledOnDrop<2> {
        let b = spawn_relay(self.dir.path(), "b.toml", None);
        KilledOnDrop([b, spawn_relay(self.dir.path(), "a.toml", None)])
    }
}

#[test]
fn a_wrong_server_key_shows_in_health_and_metrics_and_delivers_nothing() {
    let pair = LoopbackPair::new("wrongkey", true);
    let relays = pair.start();
    let (out_ring, in_ring) = (pair.out_ring.clone(), pair.in_ring.clone());
    let mut producer = Segment::open(&out_ring).unwrap().producer().unwrap();
    producer.try_send(b"never delivered").unwrap();
    let addr = pair.health.clone();
    let started = Instant::now();
    let body = loop {
        assert!(started.elapsed() < Duration::from_secs(20), "health never reported the failing link");
        if let Some((503, body)) = http_get(&addr, "/health") {
            if body.contains("failing") {
                break body;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("handshake"), "{body}");
    let (code, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("tadpole_relay_client_handshake_failures_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "{metrics}");
    let mut consumer = Segment::open(&in_ring).unwrap().consumer().unwrap();
    assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty), "nothing crossed");
    drop(relays);
}

#[test]
fn metrics_show_the_link_round_trip_histogram_acks_and_the_source_rings_series_once_records_crossed() {
    let pair = LoopbackPair::new("rtt", false);
    let relays = pair.start();
    let (out_ring, in_ring) = (pair.out_ring.clone(), pair.in_ring.clone());
    let mut producer = Segment::open(&out_ring).unwrap().producer().unwrap();
    let mut consumer = Segment::open(&in_ring).unwrap().consumer().unwrap();
    let mut buf = Vec::new();
    let (mut sent, mut got) = (0u64, 0u64);
    let started = Instant::now();
    while got < 200 {
        assert!(started.elapsed() < Duration::from_secs(30), "only {got} of 200 records crossed");
        if sent < 200 {
            record(0, sent, &mut buf);
            if producer.try_send(&buf).is_ok() {
                sent += 1;
            }
        }
        match consumer.try_recv() {
            Ok(r) => {
                record(0, got, &mut buf);
                assert_eq!(&r[..], &buf[..], "record {got}");
                got += 1;
            }
            Err(TryRecvError::Empty) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => panic!("{e}"),
        }
    }
    let addr = pair.health.clone();
    let value = |metrics: &str, prefix: &str| {
        metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let metrics = loop {
        let (code, metrics) = http_get(&addr, "/metrics").expect("the health endpoint answers");
        assert_eq!(code, 200);
        if value(&metrics, "tadpole_relay_round_trip_seconds_count").is_some_and(|n| n >= 1.0) {
            break metrics;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no round trip measured:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metrics.contains("# TYPE tadpole_relay_round_trip_seconds histogram"), "{metrics}");
    assert!(value(&metrics, "tadpole_relay_round_trip_seconds_sum").is_some_and(|s| s > 0.0), "{metrics}");
    assert!(value(&metrics, "tadpole_relay_acks_total").is_some_and(|n| n >= 1.0), "{metrics}");
    let inf = metrics.lines().find(|l| l.starts_with("tadpole_relay_round_trip_seconds_bucket{le=\"+Inf\""));
    assert!(inf.is_some(), "{metrics}");
    // The relay serves its source ring's series too, read from shared memory: every record
    // produced was received by the relay, its live consumer.
    let ring = |family: &str, extra: &str| format!("{family}{{ring=\"{out_ring}\"{extra}}}");
    assert_eq!(value(&metrics, &ring("tadpole_ring_produced_messages_total", "")), Some(200.0), "{metrics}");
    assert_eq!(value(&metrics, &ring("tadpole_ring_consumed_messages_total", "")), Some(200.0), "{metrics}");
    assert_eq!(value(&metrics, &ring("tadpole_ring_alive", ",side=\"consumer\"")), Some(1.0), "{metrics}");
    assert!(value(&metrics, &ring("tadpole_ring_full_ring_waits_total", "")).is_some(), "{metrics}");
    drop(relays);
}

/// Starts `tadpole relay --config <dir>/<config> [--state <state>]`, output discarded.
fn spawn_relay(dir: &std::path::Path, config: &str, state: Option<&std::path::Path>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tadpole"));
    cmd.args(["relay", "--config"]).arg(dir.join(config));
    if let Some(state) = state {
        cmd.arg("--state").arg(state);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// Receives from `consumer` until `want` records or `within` passes; returns what came. The
/// ring's producer is a relay that the test restarts: between the kill and the restart the ring
/// says `Disconnected`, which here only means "not yet".
fn receive_for(consumer: &mut ipc_core::Consumer, want: usize, within: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < want && started.elapsed() < within {
        match consumer.try_recv() {
            Ok(r) => got.push(r.to_vec()),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    got
}

#[test]
fn an_origin_stays_bound_to_its_client_key_across_a_restart_of_the_receiving_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (a_pub, b_pub, c_pub) = (keygen(dir.path(), "a"), keygen(dir.path(), "b"), keygen(dir.path(), "c"));
    let tag = std::process::id();
    let b_port = free_port();
    let (a_ring, c_ring, in_ring) =
        (format!("relay-origin-{tag}-a"), format!("relay-origin-{tag}-c"), format!("relay-origin-{tag}-in"));
    let _rings = [
        RingBuilder::new(1 << 16).create_named(&a_ring).unwrap(),
        RingBuilder::new(1 << 16).create_named(&c_ring).unwrap(),
        RingBuilder::new(1 << 16).create_named(&in_ring).unwrap(),
    ];
    // B admits both keys; C is allowlisted but calls itself "a" as well.
    std::fs::write(
        dir.path().join("b.toml"),
        format!("name = \"b\"\nkey_file = \"b.key\"\nlisten = \"tcp://127.0.0.1:{b_port}\"\nallow = [\"{a_pub}\", \"{c_pub}\"]\n\n[[route_in]]\nstream = \"s\"\nring = \"{in_ring}\"\n"),
    )
    .unwrap();
    for (file, key, ring) in [("a.toml", "a.key", &a_ring), ("c.toml", "c.key", &c_ring)] {
        std::fs::write(
            dir.path().join(file),
            format!("name = \"a\"\nkey_file = \"{key}\"\n\n[[route_out]]\nring = \"{ring}\"\nconnect = \"tcp://127.0.0.1:{b_port}\"\nserver_key = \"{b_pub}\"\nstream = \"s\"\n"),
        )
        .unwrap();
    }
    let state = dir.path().join("b.state");
    let mut consumer = Segment::open(&in_ring).unwrap().consumer().unwrap();
    let mut a_producer = Segment::open(&a_ring).unwrap().producer().unwrap();
    let mut c_producer = Segment::open(&c_ring).unwrap().producer().unwrap();

    let mut b = spawn_relay(dir.path(), "b.toml", Some(&state));
    let mut a = spawn_relay(dir.path(), "a.toml", None);
    a_producer.try_send(b"from a, first run").unwrap();
    assert_eq!(receive_for(&mut consumer, 1, Duration::from_secs(20)), vec![b"from a, first run".to_vec()]);
    let _ = a.kill();
    let _ = a.wait();
    let saved = std::fs::read_to_string(dir.path().join("b.state.origins")).expect("the binding is saved");
    assert!(saved.contains(&format!("a\t{a_pub}")), "{saved}");

    // B restarts; the impostor speaks first under A's name: refused, nothing delivered.
    let _ = b.kill();
    let _ = b.wait();
    let mut b = spawn_relay(dir.path(), "b.toml", Some(&state));
    let mut c = spawn_relay(dir.path(), "c.toml", None);
    c_producer.try_send(b"from c, posing as a").unwrap();
    assert!(receive_for(&mut consumer, 1, Duration::from_secs(3)).is_empty(), "the impostor's record was delivered");
    let _ = c.kill();
    let _ = c.wait();
    // The real A still gets through.
    let mut a = spawn_relay(dir.path(), "a.toml", None);
    a_producer.try_send(b"from a, after the restart").unwrap();
    assert_eq!(receive_for(&mut consumer, 1, Duration::from_secs(20)), vec![b"from a, after the restart".to_vec()]);
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_damaged_origins_file_stops_the_relay_at_start_with_the_line_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a_pub) = (keygen(dir.path(), "b"), keygen(dir.path(), "a"));
    let in_ring = format!("relay-origin-bad-{}", std::process::id());
    let _ring = RingBuilder::new(1 << 16).create_named(&in_ring).unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        format!("name = \"b\"\nkey_file = \"b.key\"\nlisten = \"tcp://127.0.0.1:{}\"\nallow = [\"{a_pub}\"]\n\n[[route_in]]\nstream = \"s\"\nring = \"{in_ring}\"\n", free_port()),
    )
    .unwrap();
    let state = dir.path().join("b.state");
    std::fs::write(dir.path().join("b.state.origins"), "tadpole-relay-origins 1\nhost-a\tnot-a-key\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["relay", "--config"])
        .arg(dir.path().join("b.toml"))
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("b.state.origins line 2") && stderr.contains("remove the file"), "{stderr}");
}

/// Receives from `consumer` until `want` records or `within` passes, checking each against
/// `record(route, seq)` for the next `seq` (once, in order, intact); returns how many came.
fn receive_in_order(consumer: &mut ipc_core::Consumer, route: u64, want: u64, within: Duration) -> u64 {
    let (mut next, mut expected) = (0, Vec::new());
    let started = Instant::now();
    while next < want && started.elapsed() < within {
        match consumer.try_recv() {
            Ok(r) => {
                record(route, next, &mut expected);
                assert_eq!(&r[..], &expected[..], "route {route}: record {next} expected (a repeat, a loss or damage)");
                next += 1;
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    next
}

/// The value of the first sample of `name` (with or without labels) on a `/metrics` page.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls `addr`'s `/metrics` until `name` reads `want` (within 10 s); returns the page.
fn await_sample(addr: &str, name: &str, want: u64) -> String {
    let started = Instant::now();
    loop {
        let metrics = http_get(addr, "/metrics").map(|(_, m)| m).unwrap_or_default();
        if sample(&metrics, name) == Some(want) {
            return metrics;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{name} never read {want}:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_route_stopped_at_a_corrupt_source_ring_goes_on_once_the_ring_is_replaced_without_a_restart() {
    use std::os::unix::fs::FileExt;
    const FIRST: u64 = 50;
    let RunningPair { pair, relays, a_log, source, producer, mut consumer } = running_pair("replaced", FIRST);
    let addr = pair.health.clone();
    // Once they are acknowledged and released, relay A polls the (zero) header slot at the
    // ring's tail. A hostile producer writes a header there that fails the check for that
    // position: the last record's, its check byte changed.
    let started = Instant::now();
    while source.status().head != source.status().tail {
        assert!(started.elapsed() < Duration::from_secs(10), "relay A never released the records");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = source.status();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/{}{}", ipc_core::NAME_PREFIX, pair.out_ring))
        .unwrap();
    let bounds = ipc_core::layout::RecordBounds {
        capacity: status.capacity,
        max_message_len: status.max_message_len,
        payload_align: status.payload_align.bytes(),
    };
    let offset = |pos: u64| ipc_core::layout::HEADER_LEN as u64 + (pos & (status.capacity - 1));
    let word_at = |pos: u64| {
        let mut bytes = [0u8; 8];
        file.read_exact_at(&mut bytes, offset(pos)).unwrap();
        u64::from_le_bytes(bytes)
    };
    let (mut pos, mut last) = (0, 0);
    while pos < status.tail {
        last = pos;
        pos = ipc_core::layout::check_record(pos, word_at(pos), bounds, u64::MAX).unwrap().unwrap().end;
    }
    assert_eq!(word_at(status.tail), 0, "nothing published at the tail");
    let corrupt = (1..=255u64)
        .map(|k| word_at(last) ^ k << 56)
        .find(|&w| ipc_core::layout::check_record(status.tail, w, bounds, u64::MAX).is_err())
        .unwrap();
    file.write_all_at(&corrupt.to_le_bytes(), offset(status.tail)).unwrap();

    let metrics = await_sample(&addr, "tadpole_relay_source_blocked", 1);
    assert_eq!(sample(&metrics, "tadpole_relay_source_corrupt_records_total"), Some(1), "{metrics}");
    let (code, health) = http_get(&addr, "/health").unwrap();
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("\"source_blocked\":true"), "{health}");
    // Stays stopped (the ring is the same one), counts the record once, and sleeps: the corrupt
    // header is no news to wake the loop for (it would turn hundreds of thousands of times).
    let turns = sample(&metrics, "tadpole_relay_loop_turns_total").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let metrics = http_get(&addr, "/metrics").unwrap().1;
    let idle_turns = sample(&metrics, "tadpole_relay_loop_turns_total").unwrap() - turns;
    assert!(idle_turns < 2000, "relay A's loop turned {idle_turns} times in 1.2 s stopped");
    assert_eq!(sample(&metrics, "tadpole_relay_source_blocked"), Some(1), "{metrics}");
    assert_eq!(sample(&metrics, "tadpole_relay_source_corrupt_records_total"), Some(1), "{metrics}");
    let sent_before = sample(&metrics, "tadpole_relay_records_sent_total").unwrap();

    // The operator's repair: the name unlinked (for a moment there is no ring), then a new ring
    // under it, with the same capacity; its records go on, without restarting either relay.
    drop(producer);
    const SECOND: u64 = 300;
    let replacement = replace_and_stream(&pair.out_ring, &mut consumer, SECOND);
    assert_ne!(replacement.epoch(), source.epoch());
    let metrics = await_sample(&addr, "tadpole_relay_source_blocked", 0);
    assert_eq!(sample(&metrics, "tadpole_relay_source_corrupt_records_total"), Some(1), "a total: {metrics}");
    assert!(sample(&metrics, "tadpole_relay_records_sent_total").unwrap() >= sent_before + SECOND, "{metrics}");
    let (code, health) = http_get(&addr, "/health").unwrap();
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"source_blocked\":false"), "{health}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty), "nothing more, nothing twice");
    drop(relays);
    let log = std::fs::read_to_string(&a_log).unwrap();
    let events = |event: &str| log.lines().filter(|l| l.contains(&format!("\"event\":\"{event}\""))).count();
    assert_eq!(events("source_ring_corrupt"), 1, "{log}");
    assert_eq!(events("source_ring_replaced"), 1, "{log}");
    let replaced = log.lines().find(|l| l.contains("\"event\":\"source_ring_replaced\"")).unwrap();
    assert!(replaced.contains(&format!("{:016x}", replacement.epoch())), "{replaced}");
    assert!(replaced.contains(&format!("{:016x}", source.epoch())), "{replaced}");
    drop(replacement);
}

/// Relays killed (and reaped) when the test ends, a failing one included.
struct KilledOnDrop<const N: usize>([Child; N]);

impl<const N: usize> Drop for KilledOnDrop<N> {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A relay pair on loopback (relay A logging into `a_log`), the producer of A's source ring and
/// the consumer of B's destination ring.
struct RunningPair {
    pair: LoopbackPair,
    relays: KilledOnDrop<2>,
    a_log: std::path::PathBuf,
    source: Segment,
    producer: ipc_core::Producer,
    consumer: ipc_core::Consumer,
}

/// Starts a [`RunningPair`] and sends `first` records of route 0 across it, received in order.
fn running_pair(tag: &str, first: u64) -> RunningPair {
    let pair = LoopbackPair::new(tag, false);
    let b = spawn_relay(pair.dir.path(), "b.toml", None);
    let a_log = pair.dir.path().join("a.log");
    let relays = KilledOnDrop([b, spawn_relay_logged(&pair.dir.path().join("a.toml"), &a_log)]);
    let source = Segment::open(&pair.out_ring).unwrap();
    let mut producer = source.producer().unwrap();
    let mut consumer = Segment::open(&pair.in_ring).unwrap().consumer().unwrap();
    let mut buf = Vec::new();
    for seq in 0..first {
        record(0, seq, &mut buf);
        producer.try_send(&buf).unwrap();
    }
    assert_eq!(receive_in_order(&mut consumer, 0, first, Duration::from_secs(20)), first, "the first records crossed");
    RunningPair { pair, relays, a_log, source, producer, consumer }
}

/// Starts `tadpole relay --config <config>`, its log (JSON lines) into `log`.
fn spawn_relay_logged(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["relay", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The operator's repair of ring `name`: unlinked (for a moment there is no ring under the
/// name), then created anew with the same capacity; `count` records of route 1 produced into it
/// must cross to `consumer` once, in order, intact, without either relay restarted. Returns the
/// new ring.
fn replace_and_stream(name: &str, consumer: &mut ipc_core::Consumer, count: u64) -> Segment {
    Segment::unlink(name).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let replacement = RingBuilder::new(1 << 16).create_named(name).unwrap();
    let mut producer = replacement.producer().unwrap();
    let sender = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut seq = 0;
        let started = Instant::now();
        while seq < count {
            assert!(started.elapsed() < Duration::from_secs(20), "the new ring stayed full at {seq}");
            record(1, seq, &mut buf);
            match producer.try_send(&buf) {
                Ok(()) => seq += 1,
                Err(TrySendError::Full | TrySendError::Disconnected) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert_eq!(receive_in_order(consumer, 1, count, Duration::from_secs(20)), count, "the new ring's records crossed");
    sender.join().unwrap();
    replacement
}

#[test]
fn a_route_stopped_by_its_source_rings_file_truncated_goes_on_once_the_ring_is_replaced() {
    let RunningPair { pair, relays, a_log, source, mut producer, mut consumer } = running_pair("truncated", 20);
    let addr = pair.health.clone();
    let mut buf = Vec::new();
    // Relay A stopped, 10 more records committed, and the ring's file cut to nothing by another
    // process: relay A reads zeros where the records were, and must send none of them.
    let stop = |signal| {
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child's.
        unsafe { libc::kill(relays.0[1].id() as libc::pid_t, signal) };
    };
    stop(libc::SIGSTOP);
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", relays.0[1].id())).unwrap_or_default();
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("T")
    };
    let started = Instant::now();
    while !stopped() {
        assert!(started.elapsed() < Duration::from_secs(5), "relay A did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
    for seq in 20..30 {
        record(0, seq, &mut buf);
        producer.try_send(&buf).unwrap();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{}{}", ipc_core::NAME_PREFIX, pair.out_ring))
        .unwrap()
        .set_len(0)
        .unwrap();
    stop(libc::SIGCONT);
    let metrics = await_sample(&addr, "tadpole_relay_source_blocked", 1);
    assert_eq!(sample(&metrics, "tadpole_relay_source_corrupt_records_total"), Some(1), "{metrics}");
    assert_eq!(http_get(&addr, "/health").unwrap().0, 503);
    assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty), "nothing read from the zeros crossed");
    // The test's own handles of the cut ring go too (ipc-core survives the fault here as well).
    drop((producer, source));

    let _replacement = replace_and_stream(&pair.out_ring, &mut consumer, 200);
    let metrics = await_sample(&addr, "tadpole_relay_source_blocked", 0);
    assert_eq!(sample(&metrics, "tadpole_relay_source_corrupt_records_total"), Some(1), "a total: {metrics}");
    assert_eq!(http_get(&addr, "/health").unwrap().0, 200);
    drop(relays);
    let log = std::fs::read_to_string(&a_log).unwrap();
    let events = |event: &str| log.lines().filter(|l| l.contains(&format!("\"event\":\"{event}\""))).count();
    assert_eq!((events("source_ring_corrupt"), events("source_ring_replaced")), (1, 1), "{log}");
}
