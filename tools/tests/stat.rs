//! `tadpole stat` on real rings whose producers are real child processes: the JSON document's
//! fields and values (pids, liveness, counters, rates, leases, full-ring waits), liveness after
//! `kill -9`, the table, and the refreshing view.

mod ops_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::{RingBuilder, Segment, TrySendError};
use ops_support::{ChildProcess, Unlink, forever, stderr, stdout, tadpole, unique};
use serde_json::Value;

const PRODUCE_ENV: &str = "TADPOLE_OPS_STAT_PRODUCE";
const REFUSE_ENV: &str = "TADPOLE_OPS_STAT_REFUSE";

/// Child: attaches as the producer of the ring named in the environment and sends 40-byte
/// messages of type 7, a few every millisecond, waiting on a full ring.
#[test]
fn child_producer_sends_until_killed() {
    let Ok(name) = std::env::var(PRODUCE_ENV) else { return };
    let mut producer = Segment::open(&name).unwrap().producer().unwrap();
    producer.try_send_typed(7, &[1; 40]).unwrap();
    println!("ready");
    forever(Duration::from_millis(1), || {
        for _ in 0..4 {
            match producer.try_send_typed(7, &[1; 40]) {
                Ok(()) | Err(TrySendError::Full) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
}

/// Child: receives envelopes from the ring named in the environment, verifying each, and stays
/// attached (alive) after refusing what is not one.
#[test]
fn child_envelope_receiver_refuses_until_killed() {
    let Ok(name) = std::env::var(REFUSE_ENV) else { return };
    let mut rx = schemas::channel::EnvelopeReceiver::new(Segment::open(&name).unwrap().consumer().unwrap());
    println!("ready");
    forever(Duration::from_millis(1), || match rx.try_recv() {
        Ok(_)
        | Err(schemas::channel::EnvelopeRecvError::Empty | schemas::channel::EnvelopeRecvError::Rejected { .. }) => {}
        Err(e) => panic!("{e}"),
    })
}

/// A record that frames as an envelope (size prefix, `TDPL`) but whose root offset points
/// outside it: the FlatBuffers verifier refuses it.
fn forged_envelope() -> Vec<u8> {
    let mut bytes = vec![0xAB; 32];
    bytes[0..4].copy_from_slice(&28u32.to_le_bytes());
    bytes[4..8].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    bytes[8..12].copy_from_slice(b"TDPL");
    bytes
}

/// A u64 as printed: a number, or a string beyond 2^53.
fn u64_field(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| v.as_str().expect("a number or a string").parse().unwrap())
}

fn stat_json(name: &str) -> Value {
    let out = tadpole(&["stat", name, "--json", "--sample-ms", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    assert_eq!(doc["sampled_over_ms"], 300, "{doc}");
    assert!(doc["freshness"].as_str().unwrap().contains("every 64 producer claims"), "{doc}");
    let rings = doc["rings"].as_array().unwrap();
    assert_eq!(rings.len(), 1, "{doc}");
    rings[0].clone()
}

#[test]
fn stat_json_shows_a_child_producers_pid_liveness_rates_and_held_leases_then_its_death() {
    let name = unique("json");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 20).create_named(&name).unwrap();
    let mut consumer = segment.consumer().unwrap();
    consumer.set_max_leases(8);
    let mut child = ChildProcess::start("child_producer_sends_until_killed", &[(PRODUCE_ENV, &name)], true);
    let mut lease = || consumer.recv_timeout(Duration::from_secs(5)).unwrap().into_lease().unwrap();
    let _held = [lease(), lease()];

    let ring = stat_json(&name);
    let me = std::process::id();
    assert_eq!(ring["name"], name.as_str());
    assert_eq!(ring["capacity"], 1 << 20);
    assert_eq!(ring["payload_align"], 8);
    assert_eq!(u64_field(&ring["epoch"]), segment.epoch(), "{ring}");
    assert_eq!(ring["creator"]["pid"], me);
    assert_eq!(ring["creator"]["alive"], true);
    assert_eq!(ring["producer"]["pid"], child.pid(), "{ring}");
    assert_eq!(ring["producer"]["state"], "alive", "{ring}");
    assert_eq!(ring["consumer"]["pid"], me, "{ring}");
    assert_eq!(ring["consumer"]["state"], "alive", "{ring}");
    assert_eq!(ring["leases_held"], 2, "{ring}");
    assert_eq!(ring["lease_capacity"], 8, "{ring}");
    let produced = ring["produced"]["messages"].as_u64().unwrap();
    assert!(produced > 2, "{ring}");
    // Nothing released: everything committed is still in the ring.
    assert_eq!(ring["depth_bytes"], ring["tail"], "{ring}");
    let depth = ring["depth_bytes"].as_u64().unwrap();
    assert!(depth >= 48 * 2 && depth % 48 == 0, "{ring}");
    assert!(ring["fill_ratio"].as_f64().unwrap() > 0.0, "{ring}");
    assert!(ring["rates"]["messages_per_s"].as_f64().unwrap() > 0.0, "{ring}");

    child.kill();
    let ring = stat_json(&name);
    assert_eq!(ring["producer"]["state"], "dead", "{ring}");
    assert_eq!(ring["producer"]["pid"], child.pid(), "{ring}");
    assert_eq!(ring["rates"]["messages_per_s"], 0.0, "{ring}");
}

#[test]
fn stat_shows_the_dead_letter_a_receiver_in_another_process_counted_for_a_forged_envelope() {
    let name = unique("dead");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    let child = ChildProcess::start("child_envelope_receiver_refuses_until_killed", &[(REFUSE_ENV, &name)], true);
    let read = || {
        let out = tadpole(&["stat", &name, "--json", "--sample-ms", "0"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
        doc["rings"][0].clone()
    };
    assert_eq!(read()["dead_letters"], 0);
    producer.try_send_typed(3, &forged_envelope()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ring = loop {
        let ring = read();
        if ring["dead_letters"] != 0 || Instant::now() > deadline {
            break ring;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ring["dead_letters"], 1, "{ring}");
    assert_eq!(ring["dead_letters_by_reason"]["malformed"], 1, "{ring}");
    assert_eq!(ring["dead_letters_by_reason"]["undeliverable"], 0, "{ring}");
    assert_eq!(ring["consumer"]["pid"], child.pid(), "the refusing process is the consumer: {ring}");
    assert_eq!(ring["head"], ring["tail"], "the refused record was released: {ring}");
    // The table (what --watch redraws) and the detail view show it too.
    let table = stdout(&tadpole(&["stat", "--sample-ms", "0"]));
    assert!(table.lines().next().unwrap().ends_with("DEAD"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
    assert!(row.ends_with(" 1"), "{row}");
    let detail = stdout(&tadpole(&["stat", &name, "--sample-ms", "0"]));
    assert!(detail.contains("1 dead letters (1 malformed, 0 undeliverable)"), "{detail}");
}

#[test]
fn stat_json_counts_an_arrow_frame_a_batch_receiver_refused_as_a_malformed_dead_letter() {
    let name = unique("dead-arrow");
    let _unlink = Unlink(name.clone());
    let segment =
        RingBuilder::new(1 << 16).payload_align(ipc_core::PayloadAlign::SixtyFour).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    let mut rx = schemas::channel::BatchReceiver::new(segment.consumer().unwrap()).unwrap();
    producer.try_send(&[0xFF; 64]).unwrap();
    assert!(matches!(rx.try_recv(), Err(schemas::channel::BatchRecvError::Rejected { .. })));
    let ring = stat_json(&name);
    assert_eq!(ring["dead_letters"], 1, "{ring}");
    assert_eq!(ring["dead_letters_by_reason"]["malformed"], 1, "{ring}");
}

#[test]
fn stat_json_counts_full_ring_waits_of_a_producer_facing_a_full_ring() {
    let name = unique("full");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(4096).create_named(&name).unwrap();
    let _consumer = segment.consumer().unwrap();
    let _child = ChildProcess::start("child_producer_sends_until_killed", &[(PRODUCE_ENV, &name)], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let ring = loop {
        let ring = stat_json(&name);
        if ring["produced"]["full_ring_waits"].as_u64().unwrap() > 0 || Instant::now() > deadline {
            break ring;
        }
    };
    assert!(ring["produced"]["full_ring_waits"].as_u64().unwrap() > 0, "{ring}");
    assert!(ring["rates"]["full_ring_waits_per_s"].as_f64().unwrap() > 0.0, "{ring}");
    assert!(ring["fill_ratio"].as_f64().unwrap() > 0.9, "{ring}");
}

#[test]
fn stat_lists_every_ring_in_a_table_with_liveness_and_says_how_fresh_counters_are() {
    let name = unique("table");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let child = ChildProcess::start("child_producer_sends_until_killed", &[(PRODUCE_ENV, &name)], true);
    let out = tadpole(&["stat", "--sample-ms", "100"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for column in ["RING", "PRODUCER", "CONSUMER", "DEPTH", "CAPACITY", "MSG/S", "BYTES/S", "FULL", "LEASES"] {
        assert!(text.lines().next().unwrap().contains(column), "{text}");
    }
    let row = text.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("no row for {name}:\n{text}"));
    assert!(row.contains(&format!("{} alive", child.pid())), "{row}");
    assert!(row.contains("64.0 KiB"), "{row}");
    assert!(text.contains("rates over 0.10 s") && text.contains("every 256 receives"), "{text}");
    // One ring in detail.
    let out = tadpole(&["stat", &name, "--sample-ms", "100"]);
    let text = stdout(&out);
    assert!(text.contains(&format!("producer pid {} (running)", child.pid())), "{text}");
    assert!(text.contains("rates    in ") && text.contains("msg/s"), "{text}");
    drop(segment);
}

#[test]
fn stat_watch_redraws_the_screen_until_its_pipe_is_closed_then_exits_zero() {
    let name = unique("watch");
    let _unlink = Unlink(name.clone());
    let _segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["stat", "--watch", "--interval-ms", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut screen = watch.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    while seen.windows(7).filter(|w| w == b"\x1b[H\x1b[2J").count() < 3 {
        let n = screen.read(&mut buf).unwrap();
        assert!(n > 0, "stat --watch stopped: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("tadpole stat") && text.contains(&name) && text.contains("Ctrl-C quits"), "{text}");
    drop(screen);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "stat --watch kept running after its pipe closed");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    watch.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn stat_of_a_missing_ring_fails_with_status_1_and_says_how_to_list_rings() {
    let out = tadpole(&["stat", "no-such-ring-anywhere"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no segment named \"no-such-ring-anywhere\""), "{err}");
    assert!(err.contains("hint: `tadpole stat` lists the rings"), "{err}");
}
