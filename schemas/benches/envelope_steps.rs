//! One envelope step in a loop, for instruction counts under callgrind (stable on the shared VM,
//! where wall-clock time is not).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-schemas cargo bench -p tadpole-schemas --bench envelope_steps --no-run
//! valgrind --tool=callgrind --dump-instr=no <bench binary> <step> 100000
//! ```
//!
//! `<step>` is `encode`, `verify` (the default verifier), `verify-flatbuffers` (the generic
//! FlatBuffers verifier), `new-id`, `stamp` (the header's clock read), or `none` (setup only, to
//! subtract). Divide the difference by the count. The message is the 240-byte
//! `TradingSignalGenerated` of the `channels` bench.
//!
//! `ring-raw <n> <size>` and `ring-envelope <n> <size>` are one send and one receive on one ring
//! per step, as `tadpole bench`'s `tadpole` and `tadpole-envelope` rows do them on each side
//! (the envelope: a fresh `EnvelopeHeader::new`, a `SystemConfigurationChanged` with the sequence
//! number and `size - 8` bytes of body, verified on receipt, the body read); the difference is
//! the envelope's work per message, without the cross-core transfers.

use std::hint::black_box;

use schemas::envelope::{EnvelopeEncoder, EnvelopeHeader, MessageId, SchemaVersion, VerifyOptions, verify_envelope};
use schemas::fb;

fn build_signal(
    fbb: &mut flatbuffers::FlatBufferBuilder<'static>,
    seq: u64,
) -> flatbuffers::WIPOffset<fb::TradingSignalGenerated<'static>> {
    let symbol = fbb.create_string("BTC-USD");
    let strategy = fbb.create_string("mean-reversion-7");
    fb::TradingSignalGenerated::create(
        fbb,
        &fb::TradingSignalGeneratedArgs {
            symbol: Some(symbol),
            side: fb::Side::Buy,
            confidence_e8: 87_000_000,
            reference_price_e8: 6_512_345_000_000,
            target_price_e8: 6_600_000_000_000,
            strategy: Some(strategy),
            valid_until_ns: seq,
            ..Default::default()
        },
    )
}

fn header(id: MessageId) -> EnvelopeHeader<'static> {
    EnvelopeHeader {
        message_id: id,
        correlation_id: id,
        timestamp_ns: 1,
        source: "market-analysis-1",
        destination: "risk-1",
        schema_version: SchemaVersion::CURRENT,
        metadata: &[],
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let step = args.next().unwrap_or_else(|| "none".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let mut enc = EnvelopeEncoder::new();
    let id = MessageId::new_v4();
    let bytes = enc.encode(&header(id), |fbb| build_signal(fbb, 0)).to_vec();
    let opts = VerifyOptions::default();
    let mut sink = 0u64;
    match step.as_str() {
        "encode" => {
            for i in 0..n {
                sink += enc.encode(&header(id), |fbb| build_signal(fbb, i)).len() as u64;
            }
        }
        "verify" => {
            for _ in 0..n {
                sink += verify_envelope(black_box(&bytes), &opts).unwrap().timestamp_ns();
            }
        }
        "verify-flatbuffers" => {
            let fb_opts = VerifyOptions { verifier: schemas::envelope::VerifierKind::FlatBuffers, ..opts };
            for _ in 0..n {
                sink += verify_envelope(black_box(&bytes), &fb_opts).unwrap().timestamp_ns();
            }
        }
        "new-id" => {
            for _ in 0..n {
                sink += MessageId::new_v4().as_uuid().as_u64_pair().0 & 1;
            }
        }
        "stamp" => {
            for _ in 0..n {
                sink += schemas::envelope::now_unix_ns() & 1;
            }
        }
        "ring-raw" | "ring-envelope" => {
            let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(8);
            sink += ring_round_trips(&step, n, size.max(8));
        }
        "none" => {}
        other => panic!("unknown step {other}"),
    }
    println!("{step} x{n}: {} bytes, sink {sink}", bytes.len());
}

/// `n` sends and receives of `size`-byte messages on one ring, raw or as envelopes; returns a
/// checksum of what was received.
fn ring_round_trips(step: &str, n: u64, size: usize) -> u64 {
    use schemas::channel::{EnvelopeReceiver, EnvelopeSender};
    let ring = ipc_core::RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let mut sink = 0u64;
    if step == "ring-raw" {
        let mut producer = ring.producer().unwrap();
        let mut consumer = ring.consumer().unwrap();
        let mut msg = vec![7u8; size];
        for seq in 0..n {
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            producer.try_send(black_box(&msg)).unwrap();
            let got = consumer.try_recv().unwrap();
            sink += u64::from_le_bytes(got[..8].try_into().unwrap()) + got.len() as u64;
        }
        return sink;
    }
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());
    let body = "x".repeat(size - 8);
    for seq in 0..n {
        let header = EnvelopeHeader::new("bench-a", "bench-b");
        tx.try_send(&header, |fbb| {
            let value = fbb.create_string(&body);
            fb::SystemConfigurationChanged::create(
                fbb,
                &fb::SystemConfigurationChangedArgs {
                    new_value: Some(value),
                    config_version: seq,
                    ..Default::default()
                },
            )
        })
        .unwrap();
        let msg = rx.try_recv().unwrap();
        let change = msg.envelope().payload_as_system_configuration_changed().unwrap();
        sink += change.config_version() + change.new_value().unwrap_or("").len() as u64;
    }
    sink
}
