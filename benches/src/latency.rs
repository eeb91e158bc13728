//! Ping-pong latency through two rings between two processes: the parent sends on ring A, the
//! peer receives it and sends the same payload back on ring B, the parent receives and checks
//! it. One round trip is two one-way trips through the ring; one-way = RTT / 2.
//!
//! Both sides wait with the ring's own `recv` and `send`, so the wait strategy under test is
//! the library's ([`WaitStrategy::BusySpin`] or [`WaitStrategy::Block`]). In blocking mode the
//! parent idles for [`BLOCK_GAP`] (untimed) before each ping so the peer is asleep on its futex
//! when the ping arrives: the figure is then the wake-up path, which is what that mode costs.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ipc_core::{Consumer, Producer, RecvError, RingBuilder, Segment, TryRecvError, WaitStrategy};

use crate::peer::{Peer, signal_ready};
use crate::{BenchResult, unique_name};

/// Data region of each ring: small, so both rings stay in cache.
pub const RING_CAPACITY: usize = 64 * 1024;
/// Untimed pause before each ping in blocking mode, long enough for the peer's waiter to
/// finish spinning and sleep on the futex.
pub const BLOCK_GAP: Duration = Duration::from_micros(100);

/// How both sides wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// [`WaitStrategy::BusySpin`], back-to-back round trips.
    Spin,
    /// [`WaitStrategy::Block`], each ping after [`BLOCK_GAP`] of silence.
    Block,
    /// No wait strategy: both sides call `try_recv` in a tight loop without a pause hint, the
    /// way the floor probe polls. A diagnostic: the gap to [`Mode::Spin`] is the waiter's cost.
    Poll,
}

impl Mode {
    /// Short name used in benchmark ids and report rows.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Spin => "spin",
            Mode::Block => "block",
            Mode::Poll => "poll",
        }
    }

    fn strategy(self) -> WaitStrategy {
        match self {
            Mode::Spin => WaitStrategy::BusySpin,
            Mode::Block => WaitStrategy::Block,
            Mode::Poll => WaitStrategy::BusySpin,
        }
    }

    fn parse(s: &str) -> BenchResult<Mode> {
        match s {
            "spin" => Ok(Mode::Spin),
            "block" => Ok(Mode::Block),
            "poll" => Ok(Mode::Poll),
            other => Err(format!("unknown mode {other:?}").into()),
        }
    }
}

/// What the peer and the rings' counters say at the end of a session.
#[derive(Clone, Copy, Debug)]
pub struct EchoSummary {
    /// Round trips completed (checked against the peer's count).
    pub round_trips: u64,
    /// futex wakes the parent made for the sleeping peer, and the peer for the parent.
    pub wakes: u64,
}

/// The parent's end of a running echo peer.
pub struct EchoSession {
    /// Field order matters: the producer drops first so the peer sees the close and exits.
    producer: Producer,
    consumer: Consumer,
    to_peer: Segment,
    from_peer: Segment,
    peer: Option<Peer>,
    mode: Mode,
    payload: Vec<u8>,
    seq: u64,
}

impl EchoSession {
    /// Creates both rings, starts the peer on the other CPU and unlinks the rings' names.
    /// `size` is the payload length in bytes (at least 8: it carries a sequence number).
    pub fn start(size: usize, mode: Mode) -> BenchResult<EchoSession> {
        if size < 8 {
            return Err("payload must hold an 8-byte sequence number".into());
        }
        let (a, b) = (unique_name("bench-ping"), unique_name("bench-pong"));
        let to_peer = RingBuilder::new(RING_CAPACITY).create_named(&a)?;
        let from_peer = RingBuilder::new(RING_CAPACITY).create_named(&b)?;
        let mut producer = to_peer.producer()?;
        let mut consumer = from_peer.consumer()?;
        producer.set_wait_strategy(mode.strategy());
        consumer.set_wait_strategy(mode.strategy());
        let peer = Peer::spawn("echo", &[a.clone(), b.clone(), mode.name().to_owned()]);
        // The peer has mapped both (or failed): the names are no longer needed either way.
        let _ = Segment::unlink(&a);
        let _ = Segment::unlink(&b);
        let payload = (0..size).map(|i| i as u8).collect();
        Ok(EchoSession { producer, consumer, to_peer, from_peer, peer: Some(peer?), mode, payload, seq: 0 })
    }

    /// One checked round trip.
    #[inline]
    fn round_trip(&mut self) -> BenchResult<()> {
        self.seq += 1;
        self.payload[..8].copy_from_slice(&self.seq.to_le_bytes());
        let reply = if self.mode == Mode::Poll {
            self.producer.try_send(std::hint::black_box(&self.payload))?;
            loop {
                match self.consumer.try_recv() {
                    Err(TryRecvError::Empty) => {}
                    other => break other?,
                }
            }
        } else {
            self.producer.send(std::hint::black_box(&self.payload))?;
            self.consumer.recv()?
        };
        let ok = reply.len() == self.payload.len()
            && reply[..8] == self.seq.to_le_bytes()
            && reply[reply.len() - 1] == self.payload[self.payload.len() - 1];
        drop(std::hint::black_box(reply));
        if !ok {
            return Err(format!("round trip {}: wrong reply", self.seq).into());
        }
        Ok(())
    }

    fn idle_gap(&self) {
        if self.mode == Mode::Block {
            let until = Instant::now() + BLOCK_GAP;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
    }

    /// Total time of `n` round trips (gaps in blocking mode excluded).
    pub fn time_round_trips(&mut self, n: u64) -> BenchResult<Duration> {
        if self.mode != Mode::Block {
            let start = Instant::now();
            for _ in 0..n {
                self.round_trip()?;
            }
            return Ok(start.elapsed());
        }
        let mut total = Duration::ZERO;
        for _ in 0..n {
            self.idle_gap();
            let start = Instant::now();
            self.round_trip()?;
            total += start.elapsed();
        }
        Ok(total)
    }

    /// Records round trips into `rtt` (ns) for `duration`. Spinning: one clock read per round
    /// trip, each interval holding one round trip. Blocking: two reads around each round trip.
    pub fn record_for(&mut self, duration: Duration, rtt: &mut Histogram<u64>) -> BenchResult<()> {
        let start = Instant::now();
        let mut prev = start;
        loop {
            if self.mode == Mode::Block {
                self.idle_gap();
                prev = Instant::now();
            }
            self.round_trip()?;
            let now = Instant::now();
            rtt.saturating_record((now - prev).as_nanos() as u64);
            prev = now;
            if now - start >= duration {
                return Ok(());
            }
        }
    }

    /// Closes the ring to the peer, checks it echoed every ping, and reads the wake counters.
    pub fn finish(self) -> BenchResult<EchoSummary> {
        let EchoSession { producer, consumer, to_peer, from_peer, mut peer, seq, .. } = self;
        drop(producer);
        let echoed = peer.take().ok_or("echo peer already stopped")?.finish()?;
        drop(consumer);
        if echoed != seq {
            return Err(format!("peer echoed {echoed} messages, {seq} sent").into());
        }
        let wakes = to_peer.status().produced.wakes + from_peer.status().produced.wakes;
        Ok(EchoSummary { round_trips: seq, wakes })
    }
}

/// The peer's side: receive on ring A, send the same bytes on ring B, until A closes.
pub(crate) fn peer_main(args: &[String]) -> BenchResult<u64> {
    let [a, b, mode] = args else { return Err("echo peer: expected <ring-in> <ring-out> <mode>".into()) };
    let mode = Mode::parse(mode)?;
    let (ring_in, ring_out) = (Segment::open(a)?, Segment::open(b)?);
    let mut consumer = ring_in.consumer()?;
    let mut producer = ring_out.producer()?;
    consumer.set_wait_strategy(mode.strategy());
    producer.set_wait_strategy(mode.strategy());
    signal_ready()?;
    let mut echoed = 0u64;
    loop {
        let msg = if mode == Mode::Poll {
            loop {
                match consumer.try_recv() {
                    Ok(msg) => break msg,
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => return Ok(echoed),
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            match consumer.recv() {
                Ok(msg) => msg,
                Err(RecvError::Disconnected) => return Ok(echoed),
                Err(e) => return Err(e.into()),
            }
        };
        if mode == Mode::Poll {
            producer.try_send(&msg)?
        } else {
            producer.send(&msg)?
        }
        echoed += 1;
    }
}
