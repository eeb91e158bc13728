//! `tadpole tap` decoding what passes through real rings: envelopes as JSON lines (u64 beyond
//! 2^53 as strings), unknown payloads as base64, raw records as hex, relay dead letters decoded,
//! Arrow batches to an IPC stream file that arrow-rs and pyarrow read back, `--count` and
//! `--type`; and the ring's real consumer still gets every record.

mod ops_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipc_core::{PayloadAlign, RingBuilder};
use ipc_zmq::engine::DeadLetter;
use ipc_zmq::wire::RejectReason;
use ops_support::{Unlink, stderr, stdout, tadpole, unique};
use schemas::channel::{BatchReceiver, BatchSender, EnvelopeSender};
use schemas::envelope::{EnvelopeEncoder, EnvelopeHeader};
use schemas::fb;
use serde_json::Value;

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

const BIG: u64 = (1 << 60) + 1;

#[test]
fn tap_prints_an_envelope_as_json_with_u64_beyond_2_pow_53_as_strings() {
    let name = unique("env");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut tx = EnvelopeSender::new(segment.producer().unwrap());
    let header = EnvelopeHeader::new("market-analysis", "risk");
    tx.try_send(&header, |fbb| {
        fb::Heartbeat::create(
            fbb,
            &fb::HeartbeatArgs { sequence: BIG, interval_ns: 5_000, status: fb::HealthStatus::Healthy },
        )
    })
    .unwrap();
    let lines = json_lines(&tadpole(&["tap", &name]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["kind"], "envelope", "{line}");
    assert_eq!(line["position"], 0, "{line}");
    assert_eq!(line["message_type"], u16::from(fb::Payload::Heartbeat.0), "{line}");
    let env = &line["envelope"];
    assert_eq!(env["message_type"], "Heartbeat", "{line}");
    assert_eq!(env["source"], "market-analysis", "{line}");
    assert_eq!(env["message_id"], header.message_id.to_string(), "{line}");
    assert_eq!(env["payload"]["sequence"], BIG.to_string(), "a u64 beyond 2^53 is a string: {line}");
    assert_eq!(env["payload"]["interval_ns"], 5_000, "a small one stays a number: {line}");
    assert_eq!(env["payload"]["status"], "Healthy", "{line}");
    assert_eq!(env["timestamp_ns"], header.timestamp_ns.to_string(), "{line}");
}

#[test]
fn tap_prints_an_unknown_payload_as_base64_and_raw_records_as_hex() {
    let name = unique("raw");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    let payload: Vec<u8> = (0..=255u8).chain([0, 0xff, b'x']).collect();
    producer.try_send_typed(999, &payload).unwrap();
    let lines = json_lines(&tadpole(&["tap", &name]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "raw", "{}", lines[0]);
    assert_eq!(lines[0]["message_type"], 999);
    assert_eq!(lines[0]["len"], payload.len());
    let shown = BASE64.decode(lines[0]["payload_base64"].as_str().unwrap()).unwrap();
    assert_eq!(shown, payload);

    let out = tadpole(&["tap", &name, "--format", "hex"]);
    let text = stdout(&out);
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    assert!(text.starts_with(&format!("pos {:>12}  type {:>5}  {:>7} B  ", 0, 999, 259)), "{text}");
    assert!(text.trim_end().ends_with(&hex), "every byte in hex: {text}");
}

#[test]
fn tap_decodes_relay_dead_letters_with_reason_route_ids_and_payload() {
    let name = unique("dead");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    let mut encoder = EnvelopeEncoder::new();
    let header = EnvelopeHeader::new("risk-1", "execution-1");
    let envelope = encoder
        .encode(&header, |fbb| fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence: 3, ..Default::default() }))
        .to_vec();
    let heartbeat = u16::from(fb::Payload::Heartbeat.0);
    // What the relay's sender writes into its dead-letter ring (engine::DeadLetter, the record's
    // message type being the original's).
    let letters = [
        DeadLetter {
            reason: RejectReason::InvalidEnvelope,
            message_type: heartbeat,
            position: 4096,
            epoch: BIG,
            stream: "orders",
            payload: &envelope,
        },
        DeadLetter {
            reason: RejectReason::TooLarge,
            message_type: 12,
            position: 64,
            epoch: 9,
            stream: "ticks",
            payload: b"big",
        },
    ];
    for letter in &letters {
        producer.try_send_typed(letter.message_type, &letter.encode()).unwrap();
    }
    let lines = json_lines(&tadpole(&["tap", &name]));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["kind"], "dead_letter", "{first}");
    let d = &first["dead_letter"];
    assert_eq!(d["reason"], "invalid_envelope", "{first}");
    assert_eq!(d["route"], "orders", "{first}");
    assert_eq!(d["origin"], "risk-1", "{first}");
    assert_eq!(d["message_id"], header.message_id.to_string(), "{first}");
    assert_eq!(d["correlation_id"], header.correlation_id.to_string(), "{first}");
    assert_eq!(d["source_position"], 4096, "{first}");
    assert_eq!(d["source_epoch"], BIG.to_string(), "{first}");
    assert_eq!(d["original_message_type"], heartbeat, "{first}");
    assert_eq!(d["payload"]["kind"], "envelope", "{first}");
    assert_eq!(d["payload"]["envelope"]["payload"]["sequence"], 3, "{first}");
    let second = &lines[1]["dead_letter"];
    assert_eq!(second["reason"], "too_large", "{second}");
    assert_eq!(second["route"], "ticks", "{second}");
    assert_eq!(second["message_id"], Value::Null, "{second}");
    assert_eq!(second["payload"]["kind"], "raw", "{second}");
    assert_eq!(second["payload"]["payload_base64"], BASE64.encode(b"big"), "{second}");
    // Forced, a record that is not one says so instead of guessing.
    producer.try_send_typed(1, b"\x07not a dead letter at all").unwrap();
    let lines = json_lines(&tadpole(&["tap", &name, "--decode", "dead-letter"]));
    assert_eq!(lines[2]["kind"], "invalid", "{}", lines[2]);
    assert!(lines[2]["error"].as_str().unwrap().contains("not a dead-letter record"), "{}", lines[2]);
}

#[test]
fn tap_count_stops_after_n_records_of_the_types_asked_for() {
    let name = unique("count");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    for i in 0..10u16 {
        producer.try_send_typed(1 + i % 2, &i.to_le_bytes()).unwrap();
    }
    let all = json_lines(&tadpole(&["tap", &name]));
    assert_eq!(all.len(), 10, "without --follow, tap stops at the end of the ring");
    let lines = json_lines(&tadpole(&["tap", &name, "--count", "3"]));
    assert_eq!(lines.len(), 3);
    let lines = json_lines(&tadpole(&["tap", &name, "--type", "2", "--count", "4"]));
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["message_type"] == 2), "{lines:?}");
    let bytes: Vec<_> = lines.iter().map(|l| BASE64.decode(l["payload_base64"].as_str().unwrap()).unwrap()).collect();
    assert_eq!(bytes, [1u16, 3, 5, 7].map(|i| i.to_le_bytes().to_vec()));
    // Envelope payload names work as types; an unknown name is a usage error that lists them.
    let lines = json_lines(&tadpole(&["tap", &name, "--type", "AgentSpawned"]));
    assert_eq!(lines.len(), 5, "AgentSpawned is payload type 1");
    let out = tadpole(&["tap", &name, "--type", "Bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Heartbeat"), "{}", stderr(&out));
}

fn batch(b: i64) -> RecordBatch {
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values((0..100).map(|i| b * 100 + i)));
    let symbols: ArrayRef = Arc::new(StringArray::from_iter_values((0..100).map(|i| format!("SYM{}", i % 7))));
    RecordBatch::try_from_iter([("id", ids), ("symbol", symbols)]).unwrap()
}

/// Tap starts first (`--follow --new`), the producer then sends its stream; tap writes the
/// file, and the ring's own consumer still receives every batch.
#[test]
fn tap_writes_arrow_batches_to_an_ipc_stream_file_that_arrow_and_pyarrow_read_back() {
    let name = unique("arrow");
    let _unlink = Unlink(name.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticks.arrows");
    let segment = RingBuilder::new(1 << 20).payload_align(PayloadAlign::SixtyFour).create_named(&name).unwrap();
    let mut rx = BatchReceiver::new(segment.consumer().unwrap()).unwrap();
    let mut tx = BatchSender::new(segment.producer().unwrap()).unwrap();
    let mut tap = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["tap", &name, "--follow", "--new", "--count", "4", "--arrow-out", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(tap.stderr.take().unwrap()).lines();
    let ready = err.next().unwrap().unwrap();
    assert!(ready.contains("following"), "{ready}");
    for b in 0..3 {
        tx.send(&batch(b)).unwrap();
    }
    let out = tap.wait_with_output().unwrap();
    let rest: Vec<String> = err.map(Result::unwrap).collect();
    assert!(out.status.success(), "{rest:?}");
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["kind"] == "arrow"), "{lines:?}");
    assert_eq!(lines[0]["arrow"]["frame"], "schema");
    assert_eq!(lines[0]["arrow"]["fields"][0]["name"], "id");
    assert_eq!(lines[1]["arrow"]["frame"], "record_batch");
    assert_eq!(lines[1]["arrow"]["rows"], 100);
    assert!(rest.iter().any(|l| l.contains("wrote 3 dictionary and record batch frames")), "{rest:?}");

    let reader = arrow_ipc::reader::StreamReader::try_new(std::fs::File::open(&file).unwrap(), None).unwrap();
    let read: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(read, (0..3).map(batch).collect::<Vec<_>>());

    let script = "import sys, pyarrow.ipc as ipc\n\
                  t = ipc.open_stream(sys.argv[1]).read_all()\n\
                  print(t.num_rows, t.column_names, t.column('id')[250].as_py())";
    match Command::new("python3").args(["-c", script, file.to_str().unwrap()]).output() {
        Ok(py) if py.status.success() => {
            assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "300 ['id', 'symbol'] 250");
        }
        Ok(py) if String::from_utf8_lossy(&py.stderr).contains("No module named 'pyarrow'") => {
            eprintln!("pyarrow not installed: only arrow-rs read the file back");
        }
        other => panic!("pyarrow could not read the file: {other:?}"),
    }

    // Tap consumed nothing: the ring's consumer receives the whole stream.
    for b in 0..3 {
        assert_eq!(rx.recv_timeout(Some(Duration::from_secs(5))).unwrap(), batch(b));
    }
}

#[test]
fn tap_refuses_to_overwrite_an_arrow_out_file_and_says_so() {
    let name = unique("exists");
    let _unlink = Unlink(name.clone());
    let _segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = tadpole(&["tap", &name, "--arrow-out", file.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("never overwritten"), "{}", stderr(&out));
}
