//! `kill -9` of either relay, as real processes: the test re-runs its own binary as the relay
//! to kill (a sender draining a named ring, or a receiver committing into one, over TCP), kills
//! it mid-stream, starts another, and checks what the far consumer saw against PROTOCOL.md.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{drain, fill};
use ipc_core::{RingBuilder, Segment};
use ipc_zmq::engine::{
    self, Backoff, LinkOptions, Receiver, ReceiverConfig, Route, Sender, SenderConfig, recv_message, serve_router,
};

const ROUTE: &str = "killed";
const BATCH: usize = 64;
const ROLE: &str = "TADPOLE_KILL_ROLE";

fn options() -> LinkOptions {
    LinkOptions { io_timeout: Duration::from_millis(1), ..LinkOptions::default() }
}

fn sender_config() -> SenderConfig {
    let mut c = SenderConfig::new("host-a", ROUTE);
    c.max_batch_records = BATCH;
    c.max_in_flight_records = 4 * BATCH;
    c.hello_interval = Duration::from_millis(50);
    c.request_timeout = Duration::from_millis(200);
    c.backoff = Backoff { base: Duration::from_millis(10), factor: 2, max: Duration::from_millis(100) };
    c
}

/// Starts this test binary as a relay of `role`; returns it and the first line it printed.
fn spawn(role: &str, ring: &str, extra: &str) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_relay", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("TADPOLE_KILL_RING", ring)
        .env("TADPOLE_KILL_EXTRA", extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // libtest prints "test child_relay ... " before the child's own line, on the same line.
    let ready = |l: String| l.split_once("READY ").map(|(_, rest)| rest.to_owned());
    let line = lines.find_map(|l| l.ok().and_then(ready)).expect("the child relay did not start");
    (child, line)
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap(); // reaped: its ring sides are judged dead at once
}

/// The relay run in a child process (does nothing as an ordinary test).
#[test]
fn child_relay() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let ring = Segment::open(&std::env::var("TADPOLE_KILL_RING").unwrap()).unwrap();
    let extra = std::env::var("TADPOLE_KILL_EXTRA").unwrap();
    let ctx = zmq::Context::new();
    let stop = Instant::now() + Duration::from_secs(60);
    if role == "sender" {
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        engine::apply_link_options(&dealer, &options()).unwrap();
        dealer.connect(&extra).unwrap();
        let mut sender = Sender::new(sender_config(), ring.consumer().unwrap(), None).unwrap();
        println!("READY sender");
        while Instant::now() < stop {
            let now = Instant::now();
            while let Some(m) = sender.poll(now) {
                let _ = dealer.send_multipart(m, zmq::DONTWAIT);
            }
            while let Some(reply) = recv_message(&dealer).unwrap() {
                sender.handle(&reply, Instant::now());
            }
        }
    } else {
        let router = ctx.socket(zmq::ROUTER).unwrap();
        engine::apply_link_options(&router, &options()).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let routes = [(ROUTE.to_owned(), Route::new(ring.producer().unwrap()))];
        let mut receiver = Receiver::new(ReceiverConfig::default(), routes, Some(extra.as_ref())).unwrap();
        println!("READY {}", router.get_last_endpoint().unwrap().unwrap());
        while Instant::now() < stop {
            serve_router(&router, &mut receiver, Instant::now()).unwrap();
        }
    }
}

fn ring_name(tag: &str) -> String {
    format!("relay-kill-{tag}-{}", std::process::id())
}

#[test]
fn killing_the_sending_relay_mid_stream_loses_nothing_and_duplicates_nothing() {
    let name = ring_name("src");
    let source = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let dest = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    engine::apply_link_options(&router, &options()).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let routes = [(ROUTE.to_owned(), Route::new(dest.producer().unwrap()))];
    let mut receiver = Receiver::new(ReceiverConfig::default(), routes, None).unwrap();
    let mut producer = source.producer().unwrap();
    let mut out = dest.consumer().unwrap();
    let (total, mut next, mut seen) = (20_000u64, 0u64, Vec::new());
    let (mut child, _) = spawn("sender", &name, &endpoint);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(50);
    while (seen.len() as u64) < total {
        assert!(Instant::now() < deadline, "stalled at {}", seen.len());
        fill(&mut producer, &mut next, total);
        serve_router(&router, &mut receiver, Instant::now()).unwrap();
        drain(&mut out, &mut seen);
        if kills < 3 && seen.len() as u64 > (kills + 1) * total / 4 {
            kill(child);
            child = spawn("sender", &name, &endpoint).0;
            kills += 1;
        }
    }
    kill(child);
    assert_eq!(kills, 3);
    assert_eq!(seen, (0..total).collect::<Vec<_>>(), "lost or duplicated across {kills} kills");
    drop(source);
    let _ = Segment::unlink(&name);
}

#[test]
fn killing_the_receiving_relay_mid_stream_loses_nothing_and_repeats_at_most_one_batch_per_kill() {
    let name = ring_name("dst");
    let checkpoint = std::env::temp_dir().join(format!("tadpole-kill-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_file(&checkpoint);
    let dest = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let source = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let mut producer = source.producer().unwrap();
    let mut out = dest.consumer().unwrap();
    let mut sender = Sender::new(sender_config(), source.consumer().unwrap(), None).unwrap();
    let ctx = zmq::Context::new();
    let connect = |endpoint: &str| {
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        engine::apply_link_options(&dealer, &options()).unwrap();
        dealer.connect(endpoint).unwrap();
        dealer
    };
    let ckpt = checkpoint.to_str().unwrap();
    let (mut child, endpoint) = spawn("receiver", &name, ckpt);
    let mut dealer = connect(&endpoint);
    let (total, mut next, mut seen) = (20_000u64, 0u64, Vec::new());
    let (mut kills, mut highest) = (0, 0u64);
    let deadline = Instant::now() + Duration::from_secs(50);
    while highest + 1 < total {
        assert!(Instant::now() < deadline, "stalled at {highest}");
        fill(&mut producer, &mut next, total);
        let now = Instant::now();
        while let Some(m) = sender.poll(now) {
            let _ = dealer.send_multipart(m, zmq::DONTWAIT);
        }
        while let Some(reply) = recv_message(&dealer).unwrap() {
            sender.handle(&reply, Instant::now());
        }
        drain(&mut out, &mut seen);
        highest = seen.iter().copied().max().unwrap_or(0);
        if kills < 3 && highest > (kills + 1) * total / 4 {
            kill(child);
            let (c, endpoint) = spawn("receiver", &name, ckpt);
            child = c;
            dealer = connect(&endpoint);
            sender.on_link_down();
            kills += 1;
        }
    }
    kill(child);
    // Every record, in order, except that after a kill a run of records the dead receiver had
    // committed but not checkpointed may come again: at most one DATA message per kill.
    let (mut expect, mut repeated) = (0u64, 0usize);
    for &seq in &seen {
        if seq == expect {
            expect += 1;
        } else {
            assert!(seq < expect, "record {expect} lost (saw {seq})");
            repeated += 1;
        }
    }
    assert_eq!((expect, kills), (total, 3));
    eprintln!("{repeated} records repeated over {kills} receiver kills");
    assert!(repeated <= kills as usize * BATCH, "{repeated} repeated records over {kills} kills");
    drop(dest);
    let _ = Segment::unlink(&name);
    let _ = std::fs::remove_file(&checkpoint);
}
