//! One envelope step in a loop, for instruction counts under callgrind (stable on the shared VM,
//! where wall-clock time is not).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-schemas cargo bench -p tadpole-schemas --bench envelope_steps --no-run
//! valgrind --tool=callgrind --dump-instr=no <bench binary> <step> 100000
//! ```
//!
//! `<step>` is `encode`, `verify` (the default verifier), `verify-flatbuffers` (the generic
//! FlatBuffers verifier) or `none` (setup only, to subtract). Divide the difference by the count.
//! The message is the 240-byte `TradingSignalGenerated` of the `channels` bench.

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
        "none" => {}
        other => panic!("unknown step {other}"),
    }
    println!("{step} x{n}: {} bytes, sink {sink}", bytes.len());
}
