//! The two scenarios, generic over [`Transport`], plus the rows that are not a [`Link`] (the
//! floors and the relay pair).
//!
//! Latency is a ping-pong with exactly one message in flight: the measuring side sends message
//! `n`, waits for its echo, checks it, reads the clock once and records the interval since the
//! previous read, then sends `n + 1`. Every round trip is recorded (no sampling, nothing
//! dropped, warm-up discarded whole), and since the next send waits for the previous echo, a
//! slow round trip cannot hide the ones that would have queued behind it: there is no
//! schedule to fall behind, so no coordinated omission. One-way = round trip / 2.
//!
//! Throughput streams numbered messages as fast as the transport takes them, then an
//! end-of-run marker; the clock stops when the sink's answer (its count) arrives, so every
//! message is counted only once the other process has seen it. Runs are sized from the rate of
//! the run before, and the median of the timed runs is reported.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::floor2::Floor2;
use super::futex::FutexFloor;
use super::link::{END_OF_RUN, Link, QUIT, pattern, stamp};
use super::transports::{Role, Spec, Transport};
use crate::BenchResult;
use crate::floor::FloorPeer;
use crate::relay_pair::RelayPair;
use crate::stats::{OneWay, rtt_histogram};
use crate::throughput::Rate;

/// How long each part of a row runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Measured time of a latency row (after warm-up).
    pub latency: Duration,
    /// Warm-up of a latency row, discarded.
    pub warm: Duration,
    /// Timed runs per throughput row.
    pub runs: usize,
    /// Length of each timed throughput run.
    pub per_run: Duration,
    /// Each floor probe.
    pub probe: Duration,
    /// The memcpy baseline of a size.
    pub memcpy: Duration,
    /// The two-thread handoff baseline of a size.
    pub handoff: Duration,
}

/// The median throughput run and the range of all of them.
#[derive(Clone, Copy, Debug)]
pub struct Streamed {
    pub median: Rate,
    pub low_msgs_per_s: f64,
    pub high_msgs_per_s: f64,
}

fn summarize(mut rates: Vec<Rate>) -> Streamed {
    rates.sort_by(|a, b| a.messages_per_sec().total_cmp(&b.messages_per_sec()));
    Streamed {
        median: rates[rates.len() / 2],
        low_msgs_per_s: rates[0].messages_per_sec(),
        high_msgs_per_s: rates[rates.len() - 1].messages_per_sec(),
    }
}

/// One latency row of transport `T`.
pub fn latency<T: Transport>(spec: Spec, s: &Settings) -> BenchResult<OneWay> {
    let (mut end, peer) = T::start(spec, Role::Echo)?;
    let mut payload = pattern(spec.size);
    let mut seq = 0u64;
    let mut rtt = rtt_histogram();
    ping_pong(&mut end, &mut payload, &mut seq, s.warm, &mut rtt)?;
    rtt.reset();
    ping_pong(&mut end, &mut payload, &mut seq, s.latency, &mut rtt)?;
    stamp(&mut payload, QUIT);
    end.send(&payload)?;
    let echoed = peer.finish()?;
    if echoed != seq {
        return Err(format!("{}: the peer echoed {echoed} messages, {seq} were sent", spec.kind.name()).into());
    }
    Ok(OneWay::from_rtt(&rtt))
}

fn ping_pong<L: Link>(
    end: &mut L,
    payload: &mut [u8],
    seq: &mut u64,
    duration: Duration,
    rtt: &mut Histogram<u64>,
) -> BenchResult<()> {
    let start = Instant::now();
    let mut prev = start;
    loop {
        *seq += 1;
        stamp(payload, *seq);
        end.send(payload)?;
        let (got, len) = end.recv(|m| (m.seq(), m.len()))?;
        if got != *seq || len != payload.len() {
            return Err(format!("round trip {seq}: the echo was message {got} of {len} bytes").into());
        }
        let now = Instant::now();
        rtt.saturating_record((now - prev).as_nanos() as u64);
        prev = now;
        if now - start >= duration {
            return Ok(());
        }
    }
}

/// Idle time before each round trip of the blocking rows (`floor-futex`,
/// `tadpole-waitset-block`): longer than any spin phase before a sleep (a `WaitSet` with
/// `WaitStrategy::Block` spins and yields for a few microseconds), so the peer is asleep when
/// the ping arrives and the row times its wake-up. Back to back, the next ping would find the
/// peer still spinning after its last echo, and the row would time spinning.
pub const IDLE_BEFORE_PING: Duration = Duration::from_micros(200);

/// Waits `d` on the clock without sleeping (this side's own wake-up stays out of the row).
pub fn idle_for(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// One blocking latency row of transport `T`: like [`latency`], but each round trip starts
/// after [`IDLE_BEFORE_PING`] without traffic and is timed on its own (two clock reads).
pub fn latency_after_idle<T: Transport>(spec: Spec, s: &Settings) -> BenchResult<OneWay> {
    let (mut end, peer) = T::start(spec, Role::Echo)?;
    let mut payload = pattern(spec.size);
    let mut seq = 0u64;
    let mut rtt = rtt_histogram();
    for (phase, duration) in [(0, s.warm), (1, s.latency)] {
        rtt.reset();
        let start = Instant::now();
        while start.elapsed() < duration || (phase == 1 && rtt.len() < MIN_IDLE_SAMPLES) {
            idle_for(IDLE_BEFORE_PING);
            seq += 1;
            stamp(&mut payload, seq);
            let t0 = Instant::now();
            end.send(&payload)?;
            let (got, len) = end.recv(|m| (m.seq(), m.len()))?;
            rtt.saturating_record(t0.elapsed().as_nanos() as u64);
            if got != seq || len != payload.len() {
                return Err(format!("round trip {seq}: the echo was message {got} of {len} bytes").into());
            }
        }
    }
    stamp(&mut payload, QUIT);
    end.send(&payload)?;
    let echoed = peer.finish()?;
    if echoed != seq {
        return Err(format!("{}: the peer echoed {echoed} messages, {seq} were sent", spec.kind.name()).into());
    }
    Ok(OneWay::from_rtt(&rtt))
}

/// Round trips a blocking row records at least, however short the row (`--row-ms 5`).
pub(crate) const MIN_IDLE_SAMPLES: u64 = 50;

/// The blocking floor as a row: raw futex ping-pong, each round trip after the same idle time
/// as [`latency_after_idle`]'s.
pub fn futex_row(s: &Settings) -> BenchResult<OneWay> {
    let mut floor = FutexFloor::start()?;
    let mut rtt = rtt_histogram();
    floor.record_for(s.warm, IDLE_BEFORE_PING, &mut rtt)?;
    rtt.reset();
    floor.record_for(s.latency, IDLE_BEFORE_PING, &mut rtt)?;
    floor.stop()?;
    Ok(OneWay::from_rtt(&rtt))
}

/// Messages of the warm-up run for `size`: a few MiB, at most 20 000 messages.
fn warm_messages(size: usize) -> u64 {
    ((4 << 20) / size).clamp(16, 20_000) as u64
}

/// One throughput row of transport `T`; with `copy` the sink copies every message out.
pub fn throughput<T: Transport>(spec: Spec, copy: bool, s: &Settings) -> BenchResult<Streamed> {
    let (mut end, peer) = T::start(spec, Role::Sink(copy))?;
    let mut payload = pattern(spec.size);
    let mut seq = 0u64;
    let mut rate = stream(&mut end, &mut payload, &mut seq, warm_messages(spec.size))?.messages_per_sec();
    let mut rates = Vec::with_capacity(s.runs);
    for _ in 0..s.runs {
        let n = ((rate * s.per_run.as_secs_f64()) as u64).max(16);
        let r = stream(&mut end, &mut payload, &mut seq, n)?;
        rate = r.messages_per_sec();
        rates.push(r);
    }
    stamp(&mut payload, QUIT);
    end.send(&payload)?;
    let received = peer.finish()?;
    if received != seq {
        return Err(format!("{}: the sink received {received} messages, {seq} were sent", spec.kind.name()).into());
    }
    Ok(summarize(rates))
}

fn stream<L: Link>(end: &mut L, payload: &mut [u8], seq: &mut u64, n: u64) -> BenchResult<Rate> {
    let start = Instant::now();
    end.send_run(payload, *seq, *seq + n)?;
    *seq += n;
    stamp(payload, END_OF_RUN);
    end.send(payload)?;
    let counted = end.recv(|m| m.seq())?;
    let elapsed = start.elapsed();
    if counted != n {
        return Err(format!("the sink counted {counted} messages of a run of {n}").into());
    }
    Ok(Rate { messages: n, bytes: n * payload.len() as u64, elapsed })
}

/// The one-line floor as a row: the probe, run as long as a latency row.
pub fn floor_row(s: &Settings) -> BenchResult<OneWay> {
    let mut floor = FloorPeer::start()?;
    let mut rtt = rtt_histogram();
    floor.record_for(s.warm, &mut rtt);
    rtt.reset();
    floor.record_for(s.latency, &mut rtt);
    floor.stop()?;
    Ok(OneWay::from_rtt(&rtt))
}

/// The two-line floor as a row.
pub fn floor2_row(s: &Settings) -> BenchResult<OneWay> {
    let mut floor = Floor2::start()?;
    let mut rtt = rtt_histogram();
    floor.record_for(s.warm, &mut rtt)?;
    rtt.reset();
    floor.record_for(s.latency, &mut rtt)?;
    floor.stop()?;
    Ok(OneWay::from_rtt(&rtt))
}

/// A latency row through the relay pair.
pub fn relay_latency(pair: &mut RelayPair, size: usize, s: &Settings) -> BenchResult<OneWay> {
    let mut rtt = rtt_histogram();
    pair.record_for(s.warm, size, &mut rtt)?;
    rtt.reset();
    pair.record_for(s.latency, size, &mut rtt)?;
    Ok(OneWay::from_rtt(&rtt))
}

/// A throughput row through the relay pair.
pub fn relay_throughput(pair: &mut RelayPair, size: usize, copy: bool, s: &Settings) -> BenchResult<Streamed> {
    let warm = pair.run(warm_messages(size), size, copy)?;
    let mut rate = warm.per_sec();
    let mut rates = Vec::with_capacity(s.runs);
    for _ in 0..s.runs {
        let n = ((rate * s.per_run.as_secs_f64()) as u64).max(16);
        let r = pair.run(n, size, copy)?;
        rate = r.per_sec();
        rates.push(Rate { messages: r.records, bytes: r.records * size as u64, elapsed: r.elapsed });
    }
    Ok(summarize(rates))
}

/// Row counts of the Arrow receive rows: the receive must cost the same for both.
pub const ARROW_ROWS: [usize; 2] = [1_000, 1_000_000];

/// A record batch of `rows` rows as a user would stream one: an `Int64` id, a nullable
/// `Float64` price and a `Utf8` symbol.
fn arrow_rows_batch(rows: usize) -> BenchResult<arrow_array::RecordBatch> {
    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    let ids = Int64Array::from_iter_values(0..rows as i64);
    let px = Float64Array::from_iter((0..rows).map(|i| (i % 7 != 0).then_some(i as f64 * 0.5)));
    let sym = StringArray::from_iter_values((0..rows).map(|i| ["BTC-USD", "ETH-USD", "SOL-USD"][i % 3]));
    Ok(RecordBatch::try_from_iter([
        ("id", std::sync::Arc::new(ids) as ArrayRef),
        ("px", std::sync::Arc::new(px) as ArrayRef),
        ("sym", std::sync::Arc::new(sym) as ArrayRef),
    ])?)
}

/// A `tadpole-arrow-recv` row for `rows` rows: how long one `BatchReceiver::try_recv` of a
/// committed batch takes (the frame checked, arrays built over the ring: no copy), in one
/// process, the batch sent just before each receive (untimed). Each sample is one receive
/// timed on its own (two clock reads, ~20 ns of the figure). Returns the batch's size in bytes
/// (its arrays' memory) and the receive times.
///
/// `trusted`: the receiver skips validation of array data (`trust_peer`), and before each
/// receive 64 MiB are streamed through the caches and then a 1-row batch of the same schema is
/// received from a second ring: so a 1 k-row and a 1 M-row receive start with the frame's bytes
/// equally cold (otherwise the 1 M-row send has just pushed the frame's metadata out of the
/// last-level cache while the 1 k-row frame's stays hot: cache state, not work) and the receive
/// code equally warm, as in a receiver's steady state (a cold-code receive is ~100 instruction
/// cache misses whatever the rows, and their spread hid the comparison).
/// Validated receive checks every offset, UTF-8 byte and null, so it grows with the rows.
pub fn arrow_receive_row(rows: usize, trusted: bool, s: &Settings) -> BenchResult<(usize, OneWay)> {
    use ipc_core::{PayloadAlign, RingBuilder};
    use schemas::channel::{BatchReceiver, BatchSender};
    let batch = arrow_rows_batch(rows)?;
    let frame_len = batch.get_array_memory_size();
    let segment = RingBuilder::new((4 * frame_len).next_power_of_two().max(1 << 20))
        .payload_align(PayloadAlign::SixtyFour)
        .max_message_len((2 * frame_len).max(1 << 16))
        .create_anonymous()?;
    let mut tx = BatchSender::new(segment.producer()?)?;
    let mut rx = BatchReceiver::new(segment.consumer()?)?;
    let mut flush = Vec::new();
    // The code warm-up of the trusted row: a 1-row batch through a ring of its own.
    let warm_batch = arrow_rows_batch(1)?;
    let warm_segment = RingBuilder::new(1 << 16).payload_align(PayloadAlign::SixtyFour).create_anonymous()?;
    let mut warm_tx = BatchSender::new(warm_segment.producer()?)?;
    let mut warm_rx = BatchReceiver::new(warm_segment.consumer()?)?;
    if trusted {
        // SAFETY: the only peers are the `BatchSender`s above, in this process, which write only
        // frames Arrow's own encoder made.
        rx = unsafe { rx.trust_peer() };
        // SAFETY: as above.
        warm_rx = unsafe { warm_rx.trust_peer() };
        flush = vec![0u8; 64 << 20];
    }
    let mut samples = rtt_histogram();
    for (phase, budget) in [(0, s.warm), (1, s.latency)] {
        let began = Instant::now();
        // At least a few receives even for a 1 M-row batch in a short row.
        let mut n = 0;
        while began.elapsed() < budget || n < 5 {
            tx.send(&batch)?;
            if trusted {
                flush.iter_mut().step_by(64).for_each(|b| *b = b.wrapping_add(1));
                std::hint::black_box(&flush);
                warm_tx.send(&warm_batch)?;
                std::hint::black_box(warm_rx.try_recv()?);
            }
            let t = Instant::now();
            let got = rx.try_recv()?;
            let took = t.elapsed();
            if got.num_rows() != rows {
                return Err(format!("received {} rows, {rows} sent", got.num_rows()).into());
            }
            drop(got);
            if phase == 1 {
                samples.saturating_record(took.as_nanos() as u64);
            }
            n += 1;
        }
    }
    Ok((frame_len, OneWay::from_samples(&samples)))
}
