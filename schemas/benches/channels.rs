//! Typed channel costs against raw ring bytes, measured side by side in one run.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-schemas cargo bench -p tadpole-schemas --bench channels
//! ```
//!
//! (a) Envelope ping-pong: thread A sends one message, thread B receives it and answers with an
//!     8-byte raw ack; A times the round trip. Forward message: raw bytes (a pre-built envelope
//!     copied in), or a typed envelope built, sent, verified (or trusted) and read; both records
//!     have the same length and go through the same ring API. Threads pinned to CPUs 0 and 1,
//!     modes interleaved in rounds so drift hits all of them alike; an atomic ping-pong floor
//!     probe before each round and at the end flags a run whose floor moved (MEASURING.md).
//! (b) Arrow: receive cost for 1 K and 1 M rows, validated and trusted; send of a 1 M-row batch
//!     against a memcpy of the same number of bytes, interleaved.
//!
//! Prints a Markdown report. `TADPOLE_BENCH_QUICK=1` runs a tenth of the iterations.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use ipc_core::{Consumer, PayloadAlign, Producer, RingBuilder};
use schemas::channel::{BatchReceiver, BatchSender, EnvelopeReceiver, EnvelopeSender};
use schemas::envelope::{
    EnvelopeEncoder, EnvelopeHeader, MessageId, SchemaVersion, VerifierKind, VerifyOptions, verify_envelope,
};
use schemas::fb;

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE (we only pin to 0 and 1), so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        eprintln!("warning: could not pin to cpu {cpu}: {}", std::io::Error::last_os_error());
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Summary {
    p50: u64,
    p99: u64,
}

fn summarize(mut samples: Vec<u64>) -> Summary {
    samples.sort_unstable();
    Summary { p50: percentile(&samples, 0.5), p99: percentile(&samples, 0.99) }
}

fn quick() -> bool {
    std::env::var_os("TADPOLE_BENCH_QUICK").is_some()
}

// ---------------------------------------------------------------------------
// (a) Envelope ping-pong

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// The reader touches one byte of the record.
    Raw,
    /// The reader reads every byte (as verification does: every cache line
    /// of the record crosses to the reader's core).
    RawReadAll,
    Verified,
    /// Verified by FlatBuffers' generic verifier (`VerifierKind::FlatBuffers`).
    VerifiedGeneric,
    Trusted,
    /// Verified and read from a private copy (`copy_before_verify`).
    VerifiedCopy,
}

const MODES: [Mode; 6] =
    [Mode::Raw, Mode::RawReadAll, Mode::Verified, Mode::VerifiedGeneric, Mode::Trusted, Mode::VerifiedCopy];

/// The forward message: a trading signal with a fixed header. `seq` must be
/// non-zero (a zero `valid_until_ns` is elided and the record gets shorter), so
/// every encoding has the same length as the raw bytes.
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

fn header() -> EnvelopeHeader<'static> {
    let id = MessageId::new_v4();
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

fn spin_recv_ack(consumer: &mut Consumer) {
    loop {
        if let Ok(g) = consumer.try_recv() {
            black_box(g[0]);
            return;
        }
        std::hint::spin_loop();
    }
}

fn send_ack(producer: &mut Producer, seq: u64) {
    while producer.try_send(&seq.to_le_bytes()).is_err() {
        std::hint::spin_loop();
    }
}

/// Round-trip samples (ns) of `iters` messages in `mode`.
fn ping_pong(mode: Mode, iters: usize) -> Vec<u64> {
    let forward = RingBuilder::new(1 << 20).create_anonymous().unwrap();
    let back = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let (fwd_p, fwd_c) = (forward.producer().unwrap(), forward.consumer().unwrap());
    let (back_p, mut back_c) = (back.producer().unwrap(), back.consumer().unwrap());

    let echo = std::thread::spawn(move || {
        pin(1);
        let mut back_p = back_p;
        match mode {
            Mode::Raw | Mode::RawReadAll => {
                let mut c = fwd_c;
                for i in 0..iters {
                    loop {
                        if let Ok(g) = c.try_recv() {
                            if mode == Mode::Raw {
                                // Touch the payload like a reader of one field would.
                                black_box(g[g.len() - 1]);
                            } else {
                                black_box(g.iter().fold(0u8, |a, b| a ^ b));
                            }
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    send_ack(&mut back_p, i as u64);
                }
            }
            Mode::Verified | Mode::VerifiedGeneric | Mode::Trusted | Mode::VerifiedCopy => {
                let mut rx = EnvelopeReceiver::new(fwd_c);
                if mode == Mode::VerifiedCopy {
                    rx = rx.copy_before_verify(1024);
                }
                if mode == Mode::VerifiedGeneric {
                    let generic = VerifyOptions { verifier: VerifierKind::FlatBuffers, ..VerifyOptions::default() };
                    rx = rx.with_verify_options(generic);
                }
                if mode == Mode::Trusted {
                    // SAFETY: the only peer is the EnvelopeSender of this benchmark.
                    rx = unsafe { rx.trust_peer() };
                }
                for i in 0..iters {
                    loop {
                        match rx.try_recv() {
                            Ok(msg) => {
                                let signal = msg.envelope().payload_as_trading_signal_generated().unwrap();
                                black_box(signal.valid_until_ns());
                                break;
                            }
                            Err(schemas::channel::EnvelopeRecvError::Empty) => std::hint::spin_loop(),
                            Err(e) => panic!("{e}"),
                        }
                    }
                    send_ack(&mut back_p, i as u64);
                }
            }
        }
    });

    pin(0);
    let mut samples = Vec::with_capacity(iters);
    match mode {
        Mode::Raw | Mode::RawReadAll => {
            let mut enc = EnvelopeEncoder::new();
            let bytes = enc.encode(&header(), |fbb| build_signal(fbb, 1)).to_vec();
            let mut p = fwd_p;
            for _ in 0..iters {
                let t = Instant::now();
                while p.try_send(&bytes).is_err() {
                    std::hint::spin_loop();
                }
                spin_recv_ack(&mut back_c);
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        Mode::Verified | Mode::VerifiedGeneric | Mode::Trusted | Mode::VerifiedCopy => {
            let mut tx = EnvelopeSender::new(fwd_p);
            for i in 0..iters {
                let t = Instant::now();
                let h = header();
                while tx.try_send(&h, |fbb| build_signal(fbb, i as u64 + 1)).is_err() {
                    std::hint::spin_loop();
                }
                spin_recv_ack(&mut back_c);
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
    }
    echo.join().unwrap();
    samples
}

/// One-thread costs of the typed steps, for context (ns per message, median of 5 runs).
struct Steps {
    len: usize,
    new_id: f64,
    encode: f64,
    verify: f64,
    verify_flatbuffers: f64,
    copy: f64,
    /// Copy into a private buffer, then verify the copy.
    copy_verify: f64,
}

fn envelope_steps() -> Steps {
    let mut enc = EnvelopeEncoder::new();
    let n = if quick() { 20_000 } else { 200_000 };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut new_id = Vec::new();
    let mut encode = Vec::new();
    let mut verify = Vec::new();
    let mut verify_flatbuffers = Vec::new();
    let mut copy = Vec::new();
    let mut copy_verify = Vec::new();
    let bytes = enc.encode(&header(), |fbb| build_signal(fbb, 1)).to_vec();
    let fixed = header();
    let fb_opts = VerifyOptions { verifier: VerifierKind::FlatBuffers, ..VerifyOptions::default() };
    let mut dst = vec![0u8; bytes.len()];
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            black_box(MessageId::new_v4());
        }
        new_id.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        for i in 0..n {
            black_box(enc.encode(&fixed, |fbb| build_signal(fbb, i as u64 + 1)).len());
        }
        encode.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        for _ in 0..n {
            let env = verify_envelope(black_box(&bytes), &fb_opts).unwrap();
            black_box(env.payload_type());
        }
        verify_flatbuffers.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        for _ in 0..n {
            let env = verify_envelope(black_box(&bytes), &VerifyOptions::default()).unwrap();
            black_box(env.payload_type());
        }
        verify.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        for _ in 0..n {
            dst.copy_from_slice(black_box(&bytes));
            black_box(&dst);
        }
        copy.push(t.elapsed().as_nanos() as f64 / n as f64);
        let mut private = vec![0u8; 1024];
        let t = Instant::now();
        for _ in 0..n {
            let src = black_box(&bytes);
            let copy = &mut private[..src.len()];
            copy.copy_from_slice(src);
            let env = verify_envelope(copy, &VerifyOptions::default()).unwrap();
            black_box(env.payload_type());
        }
        copy_verify.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    Steps {
        len: bytes.len(),
        new_id: median(new_id),
        encode: median(encode),
        verify: median(verify),
        verify_flatbuffers: median(verify_flatbuffers),
        copy: median(copy),
        copy_verify: median(copy_verify),
    }
}

/// A `MeshFormed` whose `member_agent_ids` are `count` offsets to one string
/// of `string_len` bytes (issue 11 section 7's worst case).
fn shared_string_mesh(count: usize, string_len: usize) -> Vec<u8> {
    let mut enc = EnvelopeEncoder::with_capacity(count * 4 + string_len + 1024);
    let text = "m".repeat(string_len);
    enc.encode(&header(), |fbb| {
        let member = fbb.create_string(&text);
        let members = fbb.create_vector(&vec![member; count]);
        fb::MeshFormed::create(fbb, &fb::MeshFormedArgs { member_agent_ids: Some(members), ..Default::default() })
    })
    .to_vec()
}

/// An envelope whose `metadata` is `count` offsets to one `KeyValue` table.
fn repeated_table_metadata(count: usize) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let key = fbb.create_string("k");
    let kv = fb::KeyValue::create(&mut fbb, &fb::KeyValueArgs { key: Some(key), value: None });
    let metadata = fbb.create_vector(&vec![kv; count]);
    let id = MessageId::new_v4().to_wire();
    let root = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs { message_id: Some(&id), metadata: Some(metadata), ..Default::default() },
    );
    fbb.finish_size_prefixed(root, Some("TDPL"));
    fbb.finished_data().to_vec()
}

/// Time to reject the worst-case records, by `verify_envelope` with the
/// default (specialised) verifier and with FlatBuffers' own, interleaved:
/// (what, record length, specialised ns, FlatBuffers ns), medians.
fn worst_case_rejection() -> Vec<(&'static str, usize, f64, f64)> {
    let reps = if quick() { 5 } else { 25 };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let fb_opts = VerifyOptions { verifier: VerifierKind::FlatBuffers, ..VerifyOptions::default() };
    let mut rows = Vec::new();
    let records = [
        ("32 K member ids -> one 128 KiB string", shared_string_mesh(32 * 1024, 128 * 1024)),
        ("64 K member ids -> one 256 KiB string", shared_string_mesh(64 * 1024, 256 * 1024)),
        ("200 K metadata entries -> one KeyValue table", repeated_table_metadata(200_000)),
    ];
    for (what, bytes) in records {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            assert!(verify_envelope(black_box(&bytes), &VerifyOptions::default()).is_err());
            ours.push(t.elapsed().as_nanos() as f64);
            let t = Instant::now();
            assert!(verify_envelope(black_box(&bytes), &fb_opts).is_err());
            theirs.push(t.elapsed().as_nanos() as f64);
        }
        rows.push((what, bytes.len(), median(ours), median(theirs)));
    }
    rows
}

/// The hardware floor: p50 round trip of one atomic bounced between the two
/// pinned CPUs (MEASURING.md: it moves between runs, so every row is read
/// against a probe taken just before it).
fn floor_probe() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let iters = if quick() { 2_000 } else { 20_000 };
    let cell = Arc::new(AtomicU64::new(0));
    let echo = {
        let cell = Arc::clone(&cell);
        std::thread::spawn(move || {
            pin(1);
            for i in 0..iters as u64 {
                while cell.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                cell.store(2 * i + 2, Ordering::Release);
            }
        })
    };
    pin(0);
    let mut samples = Vec::with_capacity(iters);
    for i in 0..iters as u64 {
        let t = Instant::now();
        cell.store(2 * i + 1, Ordering::Release);
        while cell.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
        samples.push(t.elapsed().as_nanos() as u64);
    }
    echo.join().unwrap();
    summarize(samples).p50
}

// ---------------------------------------------------------------------------
// (b) Arrow

fn arrow_batch(rows: usize) -> RecordBatch {
    let ids = Int64Array::from_iter_values(0..rows as i64);
    let px = Float64Array::from_iter((0..rows).map(|i| (i % 7 != 0).then_some(i as f64 * 0.5)));
    let sym = StringArray::from_iter_values((0..rows).map(|i| ["BTC-USD", "ETH-USD", "SOL-USD"][i % 3]));
    RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as ArrayRef),
        ("px", Arc::new(px) as ArrayRef),
        ("sym", Arc::new(sym) as ArrayRef),
    ])
    .unwrap()
}

fn arrow_ring() -> ipc_core::Segment {
    RingBuilder::new(128 << 20)
        .payload_align(PayloadAlign::SixtyFour)
        .max_message_len(48 << 20)
        .create_anonymous()
        .unwrap()
}

/// Receive latency samples (ns) for `rows`-row batches. With `cold`, caches are flushed (a
/// 64 MiB buffer is streamed through) before each receive, so 1 K and 1 M rows start alike:
/// otherwise a 1 M-row frame was just written past the last-level cache and its metadata is
/// cold while a 1 K-row frame's is hot.
fn arrow_receive(rows: usize, trusted: bool, cold: bool, iters: usize) -> Vec<u64> {
    let mut flush = if cold { vec![0u8; 64 << 20] } else { Vec::new() };
    let ring = arrow_ring();
    let mut tx = BatchSender::new(ring.producer().unwrap()).unwrap();
    let mut rx = BatchReceiver::new(ring.consumer().unwrap()).unwrap();
    if trusted {
        // SAFETY: the only peer is the BatchSender of this benchmark.
        rx = unsafe { rx.trust_peer() };
    }
    let batch = arrow_batch(rows);
    tx.send(&batch).unwrap();
    drop(rx.recv().unwrap()); // schema frame consumed, caches warm
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        tx.send(&batch).unwrap();
        if cold {
            flush.iter_mut().step_by(64).for_each(|b| *b = b.wrapping_add(1));
            black_box(&flush);
        }
        let t = Instant::now();
        let got = rx.try_recv().unwrap();
        samples.push(t.elapsed().as_nanos() as u64);
        black_box(got.num_rows());
    }
    samples
}

/// Send samples of a 1 M-row batch and memcpy samples of the same byte count, interleaved.
fn arrow_send_vs_memcpy(iters: usize) -> (usize, Vec<u64>, Vec<u64>) {
    let ring = arrow_ring();
    let mut tx = BatchSender::new(ring.producer().unwrap()).unwrap();
    let mut rx = BatchReceiver::new(ring.consumer().unwrap()).unwrap();
    let batch = arrow_batch(1_000_000);
    tx.send(&batch).unwrap(); // schema + first batch
    drop(rx.recv().unwrap());
    let before = ring.status().tail;
    tx.send(&batch).unwrap();
    let frame_bytes = (ring.status().tail - before) as usize;
    drop(rx.recv().unwrap());

    let src = vec![1u8; frame_bytes];
    let mut dst = vec![0u8; frame_bytes];
    let (mut send, mut copy) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        tx.try_send(&batch).unwrap();
        send.push(t.elapsed().as_nanos() as u64);
        drop(rx.try_recv().unwrap());

        let t = Instant::now();
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
        copy.push(t.elapsed().as_nanos() as u64);
    }
    (frame_bytes, send, copy)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let started = Instant::now();
    let scale = if quick() { 10 } else { 1 };

    // (a)
    let rounds = 5;
    let per_round = 40_000 / scale;
    let mut all: Vec<Vec<u64>> = vec![Vec::new(); MODES.len()];
    // Per round: a floor probe, then each mode; each mode's p50 is also read
    // against the probe of its round.
    let mut probes = Vec::new();
    let mut per_round_ratio: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for _ in 0..rounds {
        probes.push(floor_probe());
        let mut p50s = Vec::new();
        for (i, mode) in MODES.iter().enumerate() {
            let mut s = ping_pong(*mode, per_round + 2_000);
            s.drain(..2_000); // warm-up
            p50s.push(summarize(s.clone()).p50 as f64);
            all[i].extend(s);
        }
        for (i, p) in p50s.iter().enumerate() {
            per_round_ratio[i].push(p / p50s[0]);
        }
    }
    let end_probe = floor_probe();
    let sums: Vec<Summary> = all.into_iter().map(summarize).collect();
    let steps = envelope_steps();
    let raw = sums[0].p50 as f64;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("## Envelope channel: ping-pong round trip ({}-byte TradingSignalGenerated envelope)\n", steps.len);
    println!(
        "| forward message | p50 RTT | p99 RTT | p50 ratio vs raw | median of per-round ratios | vs raw (reads all) |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, (mode, s)) in MODES.iter().zip(&sums).enumerate() {
        let label = match mode {
            Mode::Raw => "raw bytes (the same envelope, pre-built, copied in; reader touches 1 byte)",
            Mode::RawReadAll => "raw bytes, reader reads every byte",
            Mode::Verified => "typed: new id + encode + send, verify + read (default)",
            Mode::VerifiedGeneric => "typed: same, FlatBuffers' generic verifier (`VerifierKind::FlatBuffers`)",
            Mode::Trusted => "typed: new id + encode + send, trusted read (`trust_peer`)",
            Mode::VerifiedCopy => {
                "typed: same as default, verified and read from a private copy (`copy_before_verify`)"
            }
        };
        let round = median(per_round_ratio[i].clone());
        let vs_all = s.p50 as f64 / sums[1].p50 as f64;
        println!("| {label} | {} ns | {} ns | {:.2}x | {round:.2}x | {vs_all:.2}x |", s.p50, s.p99, s.p50 as f64 / raw);
    }
    let (first, last) = (probes[0] as f64, end_probe as f64);
    let drift = (last - first).abs() / first;
    println!(
        "\nFloor (atomic ping-pong RTT, p50) per round: {probes:?} ns, at the end {end_probe} ns{}.",
        if drift > 0.2 { format!(" — **floor drifted {:.0}%: rerun**", drift * 100.0) } else { String::new() }
    );
    println!(
        "\nOne-thread step costs: `MessageId::new_v4` {:.0} ns, encode {:.0} ns, verify {:.0} ns \
         (FlatBuffers' generic verifier {:.0} ns), memcpy of {} bytes {:.0} ns, \
         copy into a private buffer + verify the copy {:.0} ns ({:.2}x verify in place).\n",
        steps.new_id,
        steps.encode,
        steps.verify,
        steps.verify_flatbuffers,
        steps.len,
        steps.copy,
        steps.copy_verify,
        steps.copy_verify / steps.verify
    );

    println!("## Envelope verifier: rejecting worst-case records (default limits)\n");
    println!("| record | size | `verify_envelope` (default) | FlatBuffers' verifier | ratio |");
    println!("|---|---|---|---|---|");
    for (what, len, ours, theirs) in worst_case_rejection() {
        let (us, fb_us) = (ours / 1e3, theirs / 1e3);
        println!("| {what} | {} KiB | {us:.1} µs | {fb_us:.1} µs | {:.2}x |", len / 1024, ours / theirs);
    }
    println!();

    // (b)
    let mut rows_table = Vec::new();
    for (rows, iters) in [(1_000usize, 2_000 / scale), (1_000_000, 20 / scale.min(4))] {
        for trusted in [false, true] {
            rows_table.push((rows, trusted, summarize(arrow_receive(rows, trusted, false, iters))));
        }
    }
    let cold: Vec<(usize, Summary)> =
        [1_000usize, 1_000_000].map(|rows| (rows, summarize(arrow_receive(rows, true, true, 20)))).into();
    println!("## Arrow channel: receive (id i64, px f64 nullable, sym utf8)\n");
    println!("| rows | validation | caches | p50 receive | p99 receive |");
    println!("|---|---|---|---|---|");
    for (rows, trusted, s) in &rows_table {
        let v = if *trusted { "trusted (skip)" } else { "validated" };
        println!("| {rows} | {v} | as left by send | {:.1} µs | {:.1} µs |", s.p50 as f64 / 1e3, s.p99 as f64 / 1e3);
    }
    for (rows, s) in &cold {
        println!("| {rows} | trusted (skip) | flushed | {:.1} µs | {:.1} µs |", s.p50 as f64 / 1e3, s.p99 as f64 / 1e3);
    }
    let p50 = |rows: usize, trusted: bool| {
        rows_table.iter().find(|(r, t, _)| *r == rows && *t == trusted).map(|(_, _, s)| s.p50 as f64).unwrap()
    };
    println!(
        "\nTrusted 1 M / 1 K rows: {:.2}x (caches flushed: {:.2}x); validated 1 M / 1 K rows: {:.0}x.\n",
        p50(1_000_000, true) / p50(1_000, true),
        cold[1].1.p50 as f64 / cold[0].1.p50 as f64,
        p50(1_000_000, false) / p50(1_000, false)
    );

    let (bytes, send, copy) = arrow_send_vs_memcpy(30 / scale.min(5));
    let (send, copy) = (summarize(send), summarize(copy));
    println!("## Arrow channel: send of a 1 M-row batch ({:.1} MiB of frames)\n", bytes as f64 / (1 << 20) as f64);
    println!("| operation | p50 | p99 |");
    println!("|---|---|---|");
    println!("| `BatchSender::try_send` | {:.2} ms | {:.2} ms |", send.p50 as f64 / 1e6, send.p99 as f64 / 1e6);
    println!("| `memcpy` of the same bytes | {:.2} ms | {:.2} ms |", copy.p50 as f64 / 1e6, copy.p99 as f64 / 1e6);
    println!("\nSend / memcpy p50: {:.2}x\n", send.p50 as f64 / copy.p50 as f64);
    println!("(total bench time {:.1} s)", started.elapsed().as_secs_f64());
}
