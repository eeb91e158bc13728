//! `tadpole relay` features beyond plain forwarding, each with two real relay processes on
//! loopback and real rings: dead-letter rings on outbound routes, envelope deduplication on
//! inbound routes, JSON logs, and bounded memory behind a slow consumer.

mod support;

use support::relay::{free_port, keygen};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::{RingBuilder, TryRecvError};
use ipc_zmq::engine::DeadLetter;
use ipc_zmq::wire::RejectReason;

const DEADLINE: Duration = Duration::from_secs(30);

/// A relay process, killed when dropped.
struct Relay(Child);

impl Relay {
    fn spawn(config: &Path, stderr: Stdio) -> Relay {
        let child = Command::new(env!("CARGO_BIN_EXE_tadpole"))
            .args(["relay", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start relay");
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two relays on loopback: `a` sends (its config gets `a_routes`), `b` listens and receives
/// (its config gets `b_routes`). Returns their config paths.
struct Pair {
    dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
}

impl Pair {
    fn new(a_routes: &str, b_routes: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let (a_pub, b_pub) = (keygen(dir.path(), "a"), keygen(dir.path(), "b"));
        let port = free_port();
        let a_routes =
            a_routes.replace("{B}", &format!("connect = \"tcp://127.0.0.1:{port}\"\nserver_key = \"{b_pub}\""));
        let a = dir.path().join("a.toml");
        std::fs::write(&a, format!("name = \"a\"\nkey_file = \"a.key\"\n\n{a_routes}\n")).unwrap();
        let b = dir.path().join("b.toml");
        std::fs::write(
            &b,
            format!(
                "name = \"b\"\nkey_file = \"b.key\"\nlisten = \"tcp://127.0.0.1:{port}\"\nallow = [\"{a_pub}\"]\n\n{b_routes}\n"
            ),
        )
        .unwrap();
        Pair { dir, a, b }
    }
}

fn ring_name(what: &str) -> String {
    format!("relay-feat-{}-{what}", std::process::id())
}

/// Receives `n` records from `consumer`, waiting at most [`DEADLINE`].
fn receive(consumer: &mut ipc_core::Consumer, n: usize, what: &str) -> Vec<(u16, Vec<u8>)> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < n {
        assert!(started.elapsed() < DEADLINE, "{what}: only {} of {n} records arrived", got.len());
        match consumer.try_recv() {
            Ok(msg) => got.push((msg.message_type(), msg.to_vec())),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("{what}: {e}"),
        }
    }
    got
}

/// Nothing more arrives within a while.
fn assert_quiet(consumer: &mut ipc_core::Consumer, what: &str) {
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty), "{what}: an unexpected record");
}

#[test]
fn records_the_far_relay_rejects_as_unknown_route_land_in_the_dead_letter_ring_with_reason_and_payload() {
    let (out, dead, inn) = (ring_name("dl-out"), ring_name("dl-dead"), ring_name("dl-in"));
    let rings = [
        RingBuilder::new(1 << 16).create_named(&out).unwrap(),
        RingBuilder::new(1 << 16).create_named(&dead).unwrap(),
        RingBuilder::new(1 << 16).create_named(&inn).unwrap(),
    ];
    // B routes in only "elsewhere": stream "nowhere" is unknown to it.
    let pair = Pair::new(
        &format!("[[route_out]]\nring = \"{out}\"\n{{B}}\nstream = \"nowhere\"\ndead_letters = \"{dead}\"\n"),
        &format!("[[route_in]]\nstream = \"elsewhere\"\nring = \"{inn}\"\n"),
    );
    let _b = Relay::spawn(&pair.b, Stdio::null());
    let _a = Relay::spawn(&pair.a, Stdio::null());
    let mut producer = rings[0].producer().unwrap();
    const N: usize = 50;
    for i in 0..N {
        producer.try_send_typed(i as u16 + 1, format!("record {i}").as_bytes()).unwrap();
    }
    let mut letters = rings[1].consumer().unwrap();
    let got = receive(&mut letters, N, "dead letters");
    let mut last_position = None;
    for (i, (message_type, bytes)) in got.iter().enumerate() {
        let letter = DeadLetter::decode(bytes).expect("a dead-letter record");
        assert_eq!(letter.reason, RejectReason::UnknownRoute);
        assert_eq!(letter.stream, "nowhere");
        assert!(last_position < Some(letter.position), "in source-ring order");
        last_position = Some(letter.position);
        assert_eq!(letter.message_type, i as u16 + 1);
        assert_eq!(*message_type, i as u16 + 1, "the dead letter keeps the original type");
        assert_eq!(letter.payload, format!("record {i}").as_bytes());
    }
    assert_quiet(&mut letters, "dead letters");
    let mut delivered = rings[2].consumer().unwrap();
    assert_eq!(delivered.try_recv().err(), Some(TryRecvError::Empty), "nothing reached another route");
    drop(pair.dir);
}

/// A verifiable envelope with a fresh `message_id` (and a payload-less body).
fn envelope(destination: &str) -> Vec<u8> {
    use schemas::envelope::{EnvelopeEncoder, EnvelopeHeader, PayloadOffset};
    let mut enc = EnvelopeEncoder::new();
    let header = EnvelopeHeader::new("relay-test", destination);
    enc.encode(&header, |_| PayloadOffset::none()).to_vec()
}

#[test]
fn an_envelope_route_delivers_a_repeated_message_id_once_and_dead_letters_an_invalid_envelope() {
    let (out, dead, inn) = (ring_name("env-out"), ring_name("env-dead"), ring_name("env-in"));
    let rings = [
        RingBuilder::new(1 << 16).create_named(&out).unwrap(),
        RingBuilder::new(1 << 16).create_named(&dead).unwrap(),
        RingBuilder::new(1 << 16).create_named(&inn).unwrap(),
    ];
    let pair = Pair::new(
        &format!("[[route_out]]\nring = \"{out}\"\n{{B}}\nstream = \"env\"\ndead_letters = \"{dead}\"\n"),
        &format!("[[route_in]]\nstream = \"env\"\nring = \"{inn}\"\nenvelopes = true\ndedup_window_secs = 600\n"),
    );
    let _b = Relay::spawn(&pair.b, Stdio::null());
    let _a = Relay::spawn(&pair.a, Stdio::null());
    let (first, second, third) = (envelope("one"), envelope("two"), envelope("three"));
    let invalid = b"not an envelope at all".to_vec();
    let mut producer = rings[0].producer().unwrap();
    // The producer retries `first` (same bytes, same message_id) after sending `second`.
    for record in [&first, &second, &first, &invalid, &third, &second] {
        producer.try_send(record).unwrap();
    }
    let mut consumer = rings[2].consumer().unwrap();
    let got: Vec<Vec<u8>> = receive(&mut consumer, 3, "envelopes").into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, vec![first, second, third], "each message_id once, in order");
    let mut letters = rings[1].consumer().unwrap();
    let letter = receive(&mut letters, 1, "dead letters").remove(0).1;
    let letter = DeadLetter::decode(&letter).expect("a dead-letter record");
    assert_eq!(letter.reason, RejectReason::InvalidEnvelope);
    assert_eq!(letter.stream, "env");
    assert_eq!(letter.payload, &invalid[..]);
    assert_quiet(&mut consumer, "envelopes");
    assert_quiet(&mut letters, "dead letters");
    drop(pair.dir);
}

/// The JSON lines a relay writes to stderr, collected by a thread as they come.
struct Logs {
    lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Logs {
    fn collect(relay: &mut Relay) -> Logs {
        use std::io::BufRead;
        let stderr = relay.0.stderr.take().expect("stderr piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        Logs { lines }
    }

    /// The first event named `event` that `matches`, waiting for it at most [`DEADLINE`].
    fn wait_for(&self, event: &str, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let started = Instant::now();
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| v["event"] == event && matches(v)) {
                return v.clone();
            }
            let seen: Vec<String> = self.lines.lock().unwrap().iter().map(|v| v.to_string()).collect();
            assert!(started.elapsed() < DEADLINE, "no {event:?} event; logged: {seen:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_relay_logs_json_lines_naming_the_relay_route_peer_and_the_correlation_id_of_a_rejected_envelope() {
    let (out, dead) = (ring_name("log-out"), ring_name("log-dead"));
    let rings =
        [RingBuilder::new(1 << 16).create_named(&out).unwrap(), RingBuilder::new(1 << 16).create_named(&dead).unwrap()];
    let pair = Pair::new(
        &format!("[[route_out]]\nring = \"{out}\"\n{{B}}\nstream = \"nowhere\"\ndead_letters = \"{dead}\"\n"),
        "",
    );
    let mut b = Relay::spawn(&pair.b, Stdio::piped());
    let b_logs = Logs::collect(&mut b);
    let listening = b_logs.wait_for("listening", |_| true);
    assert_eq!(listening["relay"], "b");
    assert_eq!(listening["level"], "INFO");
    assert!(listening["endpoint"].as_str().unwrap().starts_with("tcp://127.0.0.1:"), "{listening}");

    let mut a = Relay::spawn(&pair.a, Stdio::piped());
    let a_logs = Logs::collect(&mut a);
    let record = envelope("somewhere");
    let correlation = {
        let env = schemas::envelope::verify_envelope(&record, &Default::default()).unwrap();
        schemas::envelope::MessageId::from_wire(env.correlation_id().unwrap()).to_string()
    };
    rings[0].producer().unwrap().try_send(&record).unwrap();
    let connected = a_logs.wait_for("link_connected", |_| true);
    assert_eq!((&connected["relay"], &connected["route"]), (&"a".into(), &"nowhere".into()));
    let rejected = b_logs.wait_for("rejected", |_| true);
    assert_eq!(rejected["relay"], "b");
    assert_eq!(rejected["route"], "nowhere");
    assert_eq!(rejected["reason"], "UnknownRoute");
    assert_eq!(rejected["correlation_id"], correlation.as_str());
    assert_eq!(rejected["peer"].as_str().map(str::len), Some(40), "the client's Z85 key: {rejected}");
    let dead_lettered = a_logs.wait_for("dead_letters", |_| true);
    assert_eq!(dead_lettered["relay"], "a");
    assert_eq!(dead_lettered["count"], 1);
    assert!(dead_lettered["peer"].as_str().unwrap().starts_with("tcp://127.0.0.1:"), "{dead_lettered}");
    // The sending side names the rejected record with its correlation id too.
    let letter = a_logs.wait_for("dead_letter", |_| true);
    assert_eq!((&letter["relay"], &letter["route"]), (&"a".into(), &"nowhere".into()));
    assert_eq!(letter["reason"], "UnknownRoute");
    assert_eq!(letter["kept"], true);
    assert_eq!(letter["correlation_id"], correlation.as_str());
    drop((a, b));
    drop(pair.dir);
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB")
}

/// Record `seq`: its sequence number, then 16 bytes derived from it.
fn numbered(seq: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    out[16..].copy_from_slice(&(!seq).to_le_bytes());
    out
}

#[test]
fn a_slow_consumer_pushes_back_to_the_producer_with_bounded_relay_memory_and_nothing_lost_or_repeated() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const RECORDS: u64 = 200_000;
    const GROWTH_LIMIT_KIB: u64 = 64 << 10;
    let deadline = Duration::from_secs(120);
    let (out, inn) = (ring_name("slow-out"), ring_name("slow-in"));
    let source = RingBuilder::new(256 << 10).create_named(&out).unwrap();
    let sink = RingBuilder::new(1 << 20).create_named(&inn).unwrap();
    let pair = Pair::new(
        &format!("[[route_out]]\nring = \"{out}\"\n{{B}}\nstream = \"slow\"\n"),
        &format!("[[route_in]]\nstream = \"slow\"\nring = \"{inn}\"\n"),
    );
    let b = Relay::spawn(&pair.b, Stdio::null());
    let a = Relay::spawn(&pair.a, Stdio::null());
    std::thread::sleep(Duration::from_millis(500));
    let pids = [a.0.id(), b.0.id()];
    let baseline = pids.map(rss_kib);

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for (i, pid) in pids.iter().enumerate() {
                    peak[i].fetch_max(rss_kib(*pid), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let producer = std::thread::spawn(move || {
        let mut producer = source.producer().unwrap();
        let (mut seq, mut full) = (0u64, 0u64);
        let started = Instant::now();
        while seq < RECORDS {
            assert!(started.elapsed() < deadline, "producer stuck at {seq}");
            match producer.try_send(&numbered(seq)) {
                Ok(()) => seq += 1,
                Err(ipc_core::TrySendError::Full) => {
                    full += 1;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(e) => panic!("producer: {e}"),
            }
        }
        full
    });

    let mut consumer = sink.consumer().unwrap();
    let started = Instant::now();
    let mut next = 0u64;
    while next < RECORDS {
        assert!(started.elapsed() < deadline, "consumer stuck at record {next}");
        match consumer.try_recv() {
            Ok(msg) => {
                let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
                assert_eq!(seq, next, "record {next} lost or repeated (got {seq})");
                assert_eq!(&msg[..], &numbered(seq)[..], "record {seq} damaged");
                next += 1;
                // The slow consumer: about 60 000 records a second at most.
                if next % 64 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("consumer: {e}"),
        }
    }
    let full = producer.join().expect("producer");
    assert_quiet(&mut consumer, "after the last record");
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(full > 0, "the producer never saw backpressure (Full)");
    for (i, name) in ["a (sending)", "b (receiving)"].iter().enumerate() {
        let growth = peak[i].load(Ordering::Relaxed).saturating_sub(baseline[i]);
        assert!(growth < GROWTH_LIMIT_KIB, "relay {name} grew by {growth} KiB (from {} KiB)", baseline[i]);
        eprintln!("relay {name}: RSS {} KiB at start, peak +{growth} KiB", baseline[i]);
    }
    eprintln!("producer saw Full {full} times; {RECORDS} records in {:?}", started.elapsed());
    drop((a, b));
    drop(pair.dir);
}

#[test]
fn the_relay_refuses_dedup_settings_without_envelopes_and_a_dead_letter_ring_that_is_the_source() {
    let cases = [
        (
            "[[route_in]]\nstream = \"s\"\ndedup_window_secs = 60\n",
            "route_in[0].dedup_window_secs: only applies with `envelopes = true`",
        ),
        (
            "[[route_in]]\nstream = \"s\"\nenvelopes = true\ndedup_max_ids = 0\n",
            "route_in[0].dedup_max_ids: must be at least 1",
        ),
    ];
    for (routes, expected) in cases {
        let pair = Pair::new("", routes);
        let out =
            Command::new(env!("CARGO_BIN_EXE_tadpole")).args(["relay", "--config"]).arg(&pair.b).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("b.toml: {expected}")), "{stderr}");
    }
    let pair = Pair::new("[[route_out]]\nring = \"x\"\n{B}\ndead_letters = \"x\"\n", "");
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole")).args(["relay", "--config"]).arg(&pair.a).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a.toml: route_out[0].dead_letters: must not be the ring the route drains"), "{stderr}");
}
