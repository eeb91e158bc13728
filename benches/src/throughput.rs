//! Throughput between two threads pinned to different CPUs, through one ring in an anonymous
//! shared segment (the same `MAP_SHARED` memory a second process would map).
//!
//! The producer copies each payload from a private buffer into the ring (`try_send`, or
//! `batch().try_push` then one `commit` per batch); the consumer copies each payload out into a
//! private buffer (`try_recv`, or `read_batch`) and checks its sequence number. Both sides touch
//! every byte, so a message counts only once its bytes reached the other core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipc_core::{Consumer, Producer, RingBuilder, TryRecvError, TrySendError};

use crate::{BenchResult, PEER_CPU};

/// Messages the consumer asks `read_batch` for at most.
pub const READ_BATCH_MAX: usize = 256;
/// Messages per producer commit at most in batched mode.
pub const WRITE_BATCH_MAX: usize = 256;

/// How messages are published and consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// `try_send` / `try_recv`: one commit and one release per message.
    Unbatched,
    /// `batch()` + `try_push` + `commit`, and `read_batch`.
    Batched,
}

impl Batching {
    /// Short name used in benchmark ids and report rows.
    pub fn name(self) -> &'static str {
        match self {
            Batching::Unbatched => "unbatched",
            Batching::Batched => "batched",
        }
    }
}

/// Ring data region used for messages of `size` bytes: 256 KiB for small messages, 1 MiB for
/// large ones (16 messages of 64 KiB).
pub fn capacity_for(size: usize) -> usize {
    if size <= 1024 { 256 * 1024 } else { 1024 * 1024 }
}

/// Messages per commit in batched mode: up to [`WRITE_BATCH_MAX`], at most a quarter ring.
pub fn batch_len_for(size: usize) -> usize {
    let record = 8 + size.next_multiple_of(8);
    (capacity_for(size) / 4 / record).clamp(1, WRITE_BATCH_MAX)
}

/// A result of one timed run.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }
}

/// A ring and its two ends, reused for many runs.
pub struct ThroughputRing {
    producer: Producer,
    consumer: Consumer,
    batching: Batching,
    batch_len: usize,
    payload: Vec<u8>,
    sink: Vec<u8>,
    /// Sequence number of the next message.
    seq: u64,
}

impl ThroughputRing {
    /// A ring for `size`-byte messages (at least 8).
    pub fn new(size: usize, batching: Batching) -> BenchResult<ThroughputRing> {
        if size < 8 {
            return Err("payload must hold an 8-byte sequence number".into());
        }
        let segment = RingBuilder::new(capacity_for(size)).create_anonymous()?;
        let producer = segment.producer()?;
        let consumer = segment.consumer()?;
        Ok(ThroughputRing {
            producer,
            consumer,
            batching,
            batch_len: batch_len_for(size),
            payload: (0..size).map(|i| i as u8).collect(),
            sink: vec![0; size],
            seq: 0,
        })
    }

    /// Sends `n` messages from the calling thread to a consumer thread on [`PEER_CPU`] and
    /// times from the consumer being ready to its receiving the last one. The caller should be
    /// pinned to [`MAIN_CPU`](crate::MAIN_CPU).
    pub fn run(&mut self, n: u64) -> BenchResult<Rate> {
        let first = self.seq;
        let end = first + n;
        let ready = AtomicBool::new(false);
        // Set when either side fails, so the other stops waiting for it.
        let abort = AtomicBool::new(false);
        let abort = &abort;
        let ThroughputRing { producer, consumer, batching, batch_len, payload, sink, .. } = self;
        let (batching, batch_len) = (*batching, *batch_len);
        let (start, finished) = std::thread::scope(|s| {
            let reader = s.spawn(|| -> BenchResult<Instant> {
                let pinned = crate::pin::pin_to_cpu(PEER_CPU);
                ready.store(true, Ordering::Release);
                let received = pinned.map_err(Into::into).and_then(|()| match batching {
                    Batching::Unbatched => consume_each(consumer, sink, first, end, abort),
                    Batching::Batched => consume_batches(consumer, sink, first, end, abort),
                });
                if received.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                received.map(|()| Instant::now())
            });
            while !ready.load(Ordering::Acquire) && !reader.is_finished() {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            let sent = match batching {
                Batching::Unbatched => produce_each(producer, payload, first, end, abort),
                Batching::Batched => produce_batches(producer, payload, batch_len, first, end, abort),
            };
            if sent.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            let finished = reader.join().map_err(|_| "consumer thread panicked")?;
            sent?;
            Ok::<_, crate::BenchError>((start, finished?))
        })?;
        self.seq = end;
        Ok(Rate { messages: n, bytes: n * self.payload.len() as u64, elapsed: finished - start })
    }
}

#[inline]
fn stamp(payload: &mut [u8], seq: u64) {
    payload[..8].copy_from_slice(&seq.to_le_bytes());
}

fn aborted(abort: &AtomicBool) -> BenchResult<()> {
    if abort.load(Ordering::Relaxed) { Err("the other side failed".into()) } else { Ok(()) }
}

fn produce_each(
    producer: &mut Producer,
    payload: &mut [u8],
    first: u64,
    end: u64,
    abort: &AtomicBool,
) -> BenchResult<()> {
    for seq in first..end {
        stamp(payload, seq);
        loop {
            match producer.try_send(std::hint::black_box(payload)) {
                Ok(()) => break,
                Err(TrySendError::Full) => {
                    aborted(abort)?;
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn produce_batches(
    producer: &mut Producer,
    payload: &mut [u8],
    batch_len: usize,
    first: u64,
    end: u64,
    abort: &AtomicBool,
) -> BenchResult<()> {
    let mut seq = first;
    while seq < end {
        let mut batch = producer.batch();
        while seq < end && batch.len() < batch_len {
            stamp(payload, seq);
            match batch.try_push(std::hint::black_box(payload)) {
                Ok(()) => seq += 1,
                Err(TrySendError::Full) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if batch.is_empty() {
            aborted(abort)?;
            std::hint::spin_loop();
        } else {
            batch.commit();
        }
    }
    Ok(())
}

#[inline]
fn check(sink: &mut [u8], payload: &[u8], expected: u64) -> BenchResult<()> {
    if payload.len() != sink.len() {
        return Err(format!("message {expected}: {} bytes, expected {}", payload.len(), sink.len()).into());
    }
    sink.copy_from_slice(payload);
    let sink = std::hint::black_box(sink);
    if sink[..8] != expected.to_le_bytes() {
        return Err(format!("message {expected}: wrong sequence number").into());
    }
    Ok(())
}

fn consume_each(consumer: &mut Consumer, sink: &mut [u8], first: u64, end: u64, abort: &AtomicBool) -> BenchResult<()> {
    let mut expected = first;
    while expected < end {
        match consumer.try_recv() {
            Ok(msg) => {
                check(sink, &msg, expected)?;
                expected += 1;
            }
            Err(TryRecvError::Empty) => {
                aborted(abort)?;
                std::hint::spin_loop();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn consume_batches(
    consumer: &mut Consumer,
    sink: &mut [u8],
    first: u64,
    end: u64,
    abort: &AtomicBool,
) -> BenchResult<()> {
    let mut expected = first;
    while expected < end {
        match consumer.read_batch(READ_BATCH_MAX) {
            Ok(batch) => {
                for record in batch.iter() {
                    check(sink, record.payload, expected)?;
                    expected += 1;
                }
            }
            Err(TryRecvError::Empty) => {
                aborted(abort)?;
                std::hint::spin_loop();
            }
            Err(e) => return Err(e.into()),
        }
    }
    if expected != end {
        return Err(format!("received {} messages, {} sent", expected - first, end - first).into());
    }
    Ok(())
}

/// The hardware ceiling for moving `size`-byte blocks between the two CPUs, with no ring: a
/// minimal single-producer/single-consumer handoff of fixed slots in a `region`-byte buffer
/// (the producer copies a block in and bumps a cache-padded counter; the consumer waits for
/// it, copies the block out, checks its sequence number and bumps its own counter). Bytes per
/// second over about `duration`. Any ring moving the same bytes the same way does more work.
pub fn handoff_bandwidth(size: usize, region: usize, duration: Duration) -> BenchResult<f64> {
    use crossbeam_utils::CachePadded;
    use std::sync::atomic::AtomicU64;

    struct Slots(*mut u8);
    // SAFETY: slot `seq % slots` is written only by the producer before `tail` passes `seq`,
    // and read only by the consumer after that and before `head` passes `seq`.
    unsafe impl Sync for Slots {}
    // SAFETY: as above.
    unsafe impl Send for Slots {}
    impl Slots {
        fn at(&self, offset: usize) -> *mut u8 {
            self.0.wrapping_add(offset)
        }
    }

    assert!(size >= 8 && region >= 2 * size);
    let slots = (region / size) as u64;
    let mut buffer = vec![0u8; region];
    // Fault every page in before the clock starts (the rings are populated when mapped; a
    // fresh Vec is not, and a large one would otherwise spend its first lap in page faults).
    buffer.iter_mut().step_by(4096).for_each(|b| *std::hint::black_box(b) = 1);
    let base = Slots(buffer.as_mut_ptr());
    let (tail, head) = (CachePadded::new(AtomicU64::new(0)), CachePadded::new(AtomicU64::new(0)));
    let stop = AtomicBool::new(false);
    let ready = AtomicBool::new(false);
    let slot_ptr = |seq: u64| base.at((seq % slots) as usize * size);
    let (moved, elapsed) = std::thread::scope(|s| {
        let reader = s.spawn(|| -> BenchResult<u64> {
            crate::pin::pin_to_cpu(PEER_CPU)?;
            let mut sink = vec![0u8; size];
            ready.store(true, Ordering::Release);
            let mut seq = 0u64;
            loop {
                let available = tail.load(Ordering::Acquire);
                if available == seq {
                    if stop.load(Ordering::Acquire) && tail.load(Ordering::Acquire) == seq {
                        return Ok(seq);
                    }
                    std::hint::spin_loop();
                    continue;
                }
                while seq < available {
                    // SAFETY: see `Slots`: the producer published this slot and will not reuse
                    // it before `head` passes `seq`.
                    let block = unsafe { std::slice::from_raw_parts(slot_ptr(seq), size) };
                    sink.copy_from_slice(block);
                    if std::hint::black_box(&sink)[..8] != seq.to_le_bytes() {
                        return Err(format!("handoff block {seq}: wrong sequence number").into());
                    }
                    seq += 1;
                    head.store(seq, Ordering::Release);
                }
            }
        });
        while !ready.load(Ordering::Acquire) && !reader.is_finished() {
            std::hint::spin_loop();
        }
        let mut source: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let start = Instant::now();
        let mut seq = 0u64;
        while start.elapsed() < duration && !reader.is_finished() {
            for _ in 0..64 {
                while seq - head.load(Ordering::Acquire) >= slots {
                    std::hint::spin_loop();
                }
                source[..8].copy_from_slice(&seq.to_le_bytes());
                // SAFETY: see `Slots`: the consumer released this slot (head > seq - slots).
                unsafe { std::ptr::copy_nonoverlapping(std::hint::black_box(source.as_ptr()), slot_ptr(seq), size) };
                seq += 1;
                tail.store(seq, Ordering::Release);
            }
        }
        stop.store(true, Ordering::Release);
        let received = reader.join().map_err(|_| "handoff consumer panicked")??;
        let elapsed = start.elapsed();
        if received != seq {
            return Err(format!("handoff: {received} blocks received, {seq} sent").into());
        }
        Ok::<_, crate::BenchError>((received, elapsed))
    })?;
    drop(buffer);
    Ok((moved * size as u64) as f64 / elapsed.as_secs_f64())
}
