//! Golden files shared with the Python interop test
//! (`tests/python/test_interop.py`, pyarrow + flatbuffers):
//!
//! * `testdata/golden/*.bin`, `stream.arrows` — written by this test
//!   (deterministic); Python reads them.
//! * `testdata/golden/python/*` — written by the Python test; read here.
//!
//! Run with `TADPOLE_BLESS=1` to rewrite the Rust-written files after an
//! intentional schema change; otherwise they must match byte for byte.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, ListBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_buffer::Buffer;
use arrow_schema::{DataType, Field};
use schemas::arrow_frame::{ArrowFrameDecoder, ArrowFrameEncoder, DecodedFrame};
use schemas::envelope::{
    EnvelopeEncoder, EnvelopeHeader, Event, MessageId, SchemaVersion, VerifyOptions, envelope_to_json, verify_envelope,
};
use schemas::fb;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
}

fn check_or_bless(name: &str, bytes: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var_os("TADPOLE_BLESS").is_some() {
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let committed = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with TADPOLE_BLESS=1 to create it", path.display()));
    assert!(
        committed == bytes,
        "{name} differs from the committed golden file; rerun with TADPOLE_BLESS=1 if intended"
    );
}

fn header<'a>(
    n: u128,
    source: &'a str,
    destination: &'a str,
    metadata: &'a [(&'a str, &'a str)],
) -> EnvelopeHeader<'a> {
    let id = MessageId::from_uuid(uuid::Uuid::from_u128(0x0123_4567_89ab_4def_8000_0000_0000_0000 + n));
    EnvelopeHeader {
        message_id: id,
        correlation_id: id,
        timestamp_ns: 1_700_000_000_000_000_000 + n as u64,
        source,
        destination,
        schema_version: SchemaVersion::CURRENT,
        metadata,
    }
}

fn wire_id(n: u128) -> fb::Uuid {
    MessageId::from_uuid(uuid::Uuid::from_u128(0xfeed_0000_0000_4000_8000_0000_0000_0000 + n)).to_wire()
}

fn rust_envelopes() -> Vec<(&'static str, Vec<u8>)> {
    let mut enc = EnvelopeEncoder::new();
    let mut out = Vec::new();

    let meta = [("trace_id", "0af7651916cd43dd"), ("priority", "high")];
    let h = header(1, "supervisor", "mesh-coordinator", &meta);
    out.push((
        "envelope_agent_spawned.bin",
        enc.encode(&h, |fbb| {
            let agent_id = fbb.create_string("market-analysis-1");
            let agent_type = fbb.create_string("market-analysis");
            let agent_version = fbb.create_string("1.4.2");
            let host = fbb.create_string("node-a");
            let parent = fbb.create_string("supervisor");
            let caps = [fbb.create_string("ta"), fbb.create_string("orderbook")];
            let capabilities = fbb.create_vector(&caps);
            fb::AgentSpawned::create(
                fbb,
                &fb::AgentSpawnedArgs {
                    agent_id: Some(agent_id),
                    agent_type: Some(agent_type),
                    agent_version: Some(agent_version),
                    host: Some(host),
                    pid: 4242,
                    parent_agent_id: Some(parent),
                    capabilities: Some(capabilities),
                },
            )
        })
        .to_vec(),
    ));

    let h = header(2, "market-analysis-1", "risk-1", &[]);
    out.push((
        "envelope_trading_signal.bin",
        enc.encode(&h, |fbb| {
            let symbol = fbb.create_string("BTC-USD");
            let timeframe = fbb.create_string("15m");
            let strategy = fbb.create_string("momentum");
            let signal_id = wire_id(2);
            fb::TradingSignalGenerated::create(
                fbb,
                &fb::TradingSignalGeneratedArgs {
                    signal_id: Some(&signal_id),
                    symbol: Some(symbol),
                    side: fb::Side::Buy,
                    confidence_e8: 87_500_000,
                    reference_price_e8: 6_512_345_000_000,
                    target_price_e8: 6_600_000_000_000,
                    stop_loss_price_e8: 6_400_000_000_000,
                    timeframe: Some(timeframe),
                    strategy: Some(strategy),
                    valid_until_ns: 1_700_000_000_900_000_000,
                },
            )
        })
        .to_vec(),
    ));

    let h = header(3, "execution-1", "learning-1", &[]);
    out.push((
        "envelope_order_filled.bin",
        enc.encode(&h, |fbb| {
            let venue_order_id = fbb.create_string("V-123");
            let fill_id = fbb.create_string("F-9");
            let account = fbb.create_string("acct-7");
            let symbol = fbb.create_string("ETH-USD");
            let ccy = fbb.create_string("USD");
            let order_id = wire_id(3);
            fb::ExecutionOrderFilled::create(
                fbb,
                &fb::ExecutionOrderFilledArgs {
                    order_id: Some(&order_id),
                    venue_order_id: Some(venue_order_id),
                    fill_id: Some(fill_id),
                    account_id: Some(account),
                    symbol: Some(symbol),
                    side: fb::Side::Sell,
                    fill_quantity_e8: 150_000_000,
                    fill_price_e8: 312_345_000_000,
                    cumulative_quantity_e8: 150_000_000,
                    remaining_quantity_e8: 0,
                    commission_e8: 12_000_000,
                    commission_currency: Some(ccy),
                    liquidity: fb::Liquidity::Taker,
                    filled_at_ns: 1_700_000_000_123_456_789,
                },
            )
        })
        .to_vec(),
    ));

    let h = header(4, "relay-a", "relay-b", &[]);
    out.push((
        "envelope_heartbeat.bin",
        enc.encode(&h, |fbb| {
            fb::Heartbeat::create(
                fbb,
                &fb::HeartbeatArgs { sequence: 42, interval_ns: 100_000_000, status: fb::HealthStatus::Degraded },
            )
        })
        .to_vec(),
    ));
    out
}

/// The batch in `stream.arrows` and (built by pyarrow) `python/stream.arrows`.
fn interop_batch() -> RecordBatch {
    let ints = Int64Array::from(vec![Some(1), None, Some(-3)]);
    let strings = StringArray::from(vec![Some("BTC-USD"), None, Some("ünïcode")]);
    let mut list = ListBuilder::new(Int32Builder::new());
    list.append_value([Some(1), Some(2)]);
    list.append_null();
    list.append_value([Some(3)]);
    let strukt = StructArray::from(vec![
        (
            Arc::new(Field::new("px_e8", DataType::Int64, true)),
            Arc::new(Int64Array::from(vec![Some(100), Some(200), None])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("venue", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("X"), None, Some("Y")])) as ArrayRef,
        ),
    ]);
    let dict: DictionaryArray<Int32Type> = vec![Some("buy"), Some("sell"), Some("buy")].into_iter().collect();
    RecordBatch::try_from_iter([
        ("ints", Arc::new(ints) as ArrayRef),
        ("strings", Arc::new(strings) as ArrayRef),
        ("list", Arc::new(list.finish()) as ArrayRef),
        ("struct", Arc::new(strukt) as ArrayRef),
        ("side", Arc::new(dict) as ArrayRef),
    ])
    .unwrap()
}

/// Splits an IPC stream into frames (one message each), each copied into its
/// own aligned buffer, the way a ring would deliver them.
fn split_stream(mut bytes: &[u8]) -> Vec<Buffer> {
    let mut frames = Vec::new();
    while bytes.len() >= 8 {
        let meta_len = i32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        let body_len = if meta_len == 0 {
            0
        } else {
            arrow_ipc::root_as_message(&bytes[8..8 + meta_len]).unwrap().bodyLength() as usize
        };
        let len = 8 + meta_len + body_len;
        frames.push(Buffer::from_slice_ref(&bytes[..len]));
        bytes = &bytes[len..];
    }
    assert!(bytes.is_empty(), "trailing bytes after the last frame");
    frames
}

#[test]
fn rust_written_envelopes_match_golden_files() {
    for (name, bytes) in rust_envelopes() {
        let env = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
        assert!(Event::from_envelope(&env).is_ok());
        check_or_bless(name, &bytes);
    }
}

#[test]
fn rust_written_arrow_stream_matches_golden_file() {
    let batch = interop_batch();
    let mut stream = Vec::new();
    let mut enc = ArrowFrameEncoder::new();
    enc.encode(&batch, &mut stream).unwrap();
    enc.encode(&batch, &mut stream).unwrap();
    enc.finish(&mut stream).unwrap();
    check_or_bless("stream.arrows", &stream);
}

fn read_python(name: &str) -> Vec<u8> {
    let path = golden_dir().join("python").join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; generate with `TADPOLE_BLESS=1 pytest schemas/tests/python`", path.display())
    })
}

#[test]
fn reads_python_written_envelopes() {
    let bytes = read_python("envelope_mesh_formed.bin");
    let env = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
    let json = envelope_to_json(&env);
    assert_eq!(json["source"], "py-coordinator");
    assert_eq!(json["destination"], serde_json::Value::Null, "absent, not empty");
    assert_eq!(json["message_id"], "00000000-0000-4000-8000-00000000000a");
    assert_eq!(json["correlation_id"], "00000000-0000-4000-8000-000000000009");
    assert_eq!(json["timestamp_ns"], 1_700_000_000_000_000_010_u64);
    assert_eq!(json["schema_version"], "1.1.0");
    assert_eq!(json["metadata"], serde_json::json!({"a": "1", "b": "2"}));
    let Event::MeshFormed(mesh) = Event::from_envelope(&env).unwrap() else { panic!("wrong event") };
    assert_eq!(mesh.mesh_id(), Some("mesh-7"));
    assert_eq!(mesh.topology(), fb::MeshTopology::FullMesh);
    let members: Vec<&str> = mesh.member_agent_ids().unwrap().iter().collect();
    assert_eq!(members, ["risk-1", "exec-1"]);
    let md = env.metadata().unwrap();
    assert_eq!(md.lookup_by_key("b", |kv, k| kv.key_compare_with_value(k)).unwrap().value(), Some("2"));

    let bytes = read_python("envelope_risk_parameters.bin");
    let env = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
    let Event::RiskParametersUpdated(risk) = Event::from_envelope(&env).unwrap() else { panic!("wrong event") };
    assert_eq!(risk.account_id(), Some("acct-7"));
    assert_eq!(risk.max_position_e8(), 250_000_000_000);
    assert_eq!(risk.max_daily_loss_e8(), -1);
    assert_eq!(risk.risk_per_trade_bp(), 150);
}

#[test]
fn reads_python_written_arrow_stream_zero_copy() {
    let stream = read_python("stream.arrows");
    let frames = split_stream(&stream);
    let mut dec = ArrowFrameDecoder::new();
    let mut batches = Vec::new();
    let mut saw_eos = false;
    for f in &frames {
        match dec.decode(f).unwrap() {
            DecodedFrame::RecordBatch(b) => batches.push(b),
            DecodedFrame::EndOfStream => saw_eos = true,
            _ => {}
        }
    }
    assert!(saw_eos);
    let expected = interop_batch();
    assert_eq!(batches.len(), 1);
    for (got, want) in batches[0].columns().iter().zip(expected.columns()) {
        assert_eq!(got.to_data(), want.to_data());
    }
    // pyarrow pads bodies to 8 bytes, which is all the decoder needs to
    // borrow instead of copy: the values point into the received frames.
    let values = batches[0].column(0).to_data().buffers()[0].as_ptr() as usize;
    assert!(frames.iter().any(|f| (f.as_ptr() as usize..f.as_ptr() as usize + f.len()).contains(&values)));
}
