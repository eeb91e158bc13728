//! `tadpole chaos`: a short run injects every kind of fault into real agent and relay processes
//! (two of them at once in the overlapping kinds, a corrupt record header in a ring's shared
//! memory), finds each in the metrics and no violation; and the checks are shown to bite: a record the
//! producer drops behind their back makes the run fail.

use std::process::{Command, Output};

const FAULTS: [&str; 11] = [
    "kill -9 agent",
    "kill -9 relay",
    "stalled consumer",
    "producer flood",
    "corrupt records",
    "corrupt header",
    "corrupt relayed header",
    "partition",
    "kill -9 in partition",
    "agent kill in partition",
    "stall during flood",
];

fn chaos(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole")).arg("chaos").args(args).output().expect("run tadpole chaos");
    let text =
        format!("{}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// The `injected detected violations` numbers of a summary row (`-` reads as 0).
fn row(text: &str, label: &str) -> Option<[u64; 3]> {
    let line = text.lines().map(str::trim_start).find(|l| l.starts_with(label))?;
    let fields: Vec<u64> = line[label.len()..].split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    fields.try_into().ok()
}

#[test]
fn a_short_chaos_run_injects_every_fault_sees_each_in_the_metrics_and_finds_no_violation() {
    // 1000 records/s: a receiving relay starved of CPU by a busy CI machine queues fewer DATA
    // messages, away from the libzmq abort reproduced below.
    // Six agents: the relayed pair and two local pairs, so faults land on pairs beyond the first.
    let (out, text) = chaos(&["--seconds", "40", "--seed", "7", "--rate", "1000", "--agents", "6"]);
    assert!(out.status.success(), "{text}");
    let mut dead_rings = 0;
    for stream in ["cross-host:", "local:", "local2:"] {
        let line = text.lines().map(str::trim_start).find(|l| l.starts_with(stream));
        let line = line.unwrap_or_else(|| panic!("no {stream} stream line:\n{text}"));
        // The only records a stream may lose are those left in a ring dead of a corrupt header
        // (a local stream's, or the relayed one's), counted exactly; every such header is refused.
        let number_before = |what: &str| -> Option<u64> {
            let at = line.find(what)?;
            line[..at].split_whitespace().last()?.trim_start_matches('(').parse().ok()
        };
        let lost = number_before(" lost").unwrap_or_else(|| panic!("{line}"));
        match number_before(" records left in the dead rings") {
            Some(left) => {
                dead_rings += 1;
                assert_eq!(lost, left, "{line}");
                let refused = number_before(" corrupt headers refused").unwrap();
                let written = line.split(" refused of ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap();
                assert_eq!(refused.to_string(), written, "{line}");
            }
            None => assert_eq!(lost, 0, "{line}"),
        }
    }
    // One on a local stream, one on the relayed stream (`corrupt-header-relayed`) at least.
    assert!(dead_rings >= 2, "no corrupt header landed on a local stream, or none on the relayed one:\n{text}");
    assert!(text.contains("seed 7"), "the seed is printed:\n{text}");
    for label in FAULTS {
        let [injected, detected, violations] = row(&text, label).unwrap_or_else(|| panic!("no {label:?} row:\n{text}"));
        assert!(injected >= 1, "{label} never injected:\n{text}");
        assert_eq!(detected, injected, "{label}: not every one seen in the metrics:\n{text}");
        assert_eq!(violations, 0, "{label}:\n{text}");
    }
    for check in ["delivery", "repeats", "checksums", "memory", "process exits"] {
        assert_eq!(row(&text, check).map(|r| r[2]), Some(0), "{check}:\n{text}");
    }
    assert!(text.contains("no violations"), "{text}");
}

#[test]
fn an_odd_or_too_small_number_of_agents_is_a_usage_error() {
    for n in ["5", "2", "66"] {
        let (out, text) = chaos(&["--agents", n, "--seconds", "1"]);
        assert_eq!(out.status.code(), Some(2), "--agents {n}:\n{text}");
        assert!(text.contains("give an even number from 4 to 64"), "--agents {n}:\n{text}");
    }
}

#[test]
fn a_record_dropped_behind_the_checks_back_is_reported_lost_and_fails_the_run() {
    let (out, text) = chaos(&["--seconds", "3", "--faults", "none", "--inject-loss"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("VIOLATION: local: 1 records lost"), "{text}");
    assert_eq!(row(&text, "delivery").map(|r| r[2]), Some(1), "{text}");
    assert!(text.contains("chaos: 1 violation(s)"), "{text}");
    // A failed run keeps its logs for the operator; this one was meant to fail.
    if let Some(dir) = text.lines().find_map(|l| l.trim().strip_prefix("logs and state in ")) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Found by `tadpole chaos --minutes 5` (relay-b died of SIGABRT, "Assertion failed: !_io_error
/// (src/stream_engine_base.cpp:331)", when relay-a was killed): libzmq (4.3.4 here; pyzmq's
/// 4.3.5 too) aborts the whole process when a connection's input is stopped because the
/// socket's receive queue is at its high-water mark, the peer's connection then ends, and the
/// ZMTP heartbeat timer fires (its `out_event` asserts that no I/O error happened). A receiving
/// relay that fell 1000 DATA messages behind (the default RCVHWM) died when a sending relay was
/// killed. The relay's sockets now have no receive high-water mark (see
/// `ipc_zmq::security`): here the listener never reads at all, the client sends 5000 messages
/// and dies, and the listener's process must live on.
#[test]
fn a_listener_survives_a_client_killed_while_the_listeners_receive_queue_is_full() {
    use ipc_zmq::config::Limits;
    use ipc_zmq::keys::KeyPair;
    use ipc_zmq::security::{Connector, Listener, SecurityCounters, ZapHandler};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const ROLE: &str = "TADPOLE_ZMQ_REPRO_ROLE";
    let limits = Limits::default();
    match std::env::var(ROLE).as_deref() {
        // The listener: binds, says where, and never reads.
        Ok("server") => {
            let dir = std::path::PathBuf::from(std::env::var("TADPOLE_ZMQ_REPRO_DIR").unwrap());
            let keys = KeyPair::load(&dir.join("s.key")).unwrap();
            let client = KeyPair::load(&dir.join("c.key")).unwrap();
            let ctx = zmq::Context::new();
            let counters = Arc::new(SecurityCounters::default());
            let zap = ZapHandler::start(&ctx, "repro", [*client.public()].into_iter().collect(), counters).unwrap();
            let listener = Listener::bind(&zap, &keys, "tcp://127.0.0.1:*", &limits).unwrap();
            println!("{}", listener.endpoint());
            std::thread::sleep(Duration::from_secs(30));
            std::process::exit(0);
        }
        // The client: more messages than the listener's queue holds.
        Ok("client") => {
            let dir = std::path::PathBuf::from(std::env::var("TADPOLE_ZMQ_REPRO_DIR").unwrap());
            let keys = KeyPair::load(&dir.join("c.key")).unwrap();
            let server = KeyPair::load(&dir.join("s.key")).unwrap();
            let endpoint = std::env::var("TADPOLE_ZMQ_REPRO_ENDPOINT").unwrap();
            let ctx = zmq::Context::new();
            let counters = Arc::new(SecurityCounters::default());
            let link = Connector::connect(&ctx, &keys, server.public(), &endpoint, &limits, counters).unwrap();
            let started = Instant::now();
            let mut sent = 0;
            while sent < 5000 && started.elapsed() < Duration::from_secs(5) {
                if link.socket().send(&[0u8; 100][..], 0).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_secs(30));
            std::process::exit(0);
        }
        _ => {}
    }
    let dir = tempfile::tempdir().unwrap();
    KeyPair::generate().unwrap().write_new(&dir.path().join("s")).unwrap();
    KeyPair::generate().unwrap().write_new(&dir.path().join("c")).unwrap();
    let me = std::env::current_exe().unwrap();
    let child = |role: &str, endpoint: &str| {
        Command::new(&me)
            .args(["--exact", "a_listener_survives_a_client_killed_while_the_listeners_receive_queue_is_full"])
            .args(["--nocapture", "--quiet"])
            .env(ROLE, role)
            .env("TADPOLE_ZMQ_REPRO_DIR", dir.path())
            .env("TADPOLE_ZMQ_REPRO_ENDPOINT", endpoint)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut server = child("server", "");
    // The test harness prints its own lines first; the pipe stays open until the end.
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("tcp://") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "the listener said nothing");
    }
    let endpoint = line.trim().to_owned();
    let mut client = child("client", &endpoint);
    // The client fills the listener's queue, then dies; the heartbeat timer (1 s) fires after.
    std::thread::sleep(Duration::from_secs(3));
    client.kill().unwrap();
    client.wait().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let status = server.try_wait().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(status, None, "the listener's process died: {status:?}");
}
