//! The compared transports, each a [`Transport`]: how the measuring side sets it up and starts
//! its peer, and how the peer (in the re-executed process) opens its end.
//!
//! How each one waits is part of what it is, and is said in [`Kind::about`]: Tadpole and
//! iceoryx2 spin, the kernel sockets and pipes block in `read` (MEASURING.md: a wake-up costs
//! ~20 µs on these VMs), libzmq blocks in `zmq_recv`, crossbeam spins briefly and then parks.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, BinaryArray, RecordBatch};
use ipc_core::{
    Consumer, PayloadAlign, Producer, RingBuilder, RingKey, Segment, TryRecvError, TrySendError, WaitSet, WaitStrategy,
};
use schemas::channel::{BatchReceiver, BatchSender, EnvelopeReceiver, EnvelopeSender};
use schemas::envelope::{EnvelopeHeader, VerifyOptions};
use schemas::fb;

use super::link::{Link, Msg, PeerHandle, QUIT, echo_loop, sink_loop, stamp};
use crate::peer::Peer;
use crate::{BenchResult, PEER_CPU, pin, unique_name};

/// Every transport `tadpole bench` knows, in the order rows are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The floor probe: two processes bouncing one cache line (latency only).
    Floor,
    /// A two-line message: the payload line, then a flag line (latency only).
    Floor2,
    /// The blocking floor: raw futex ping-pong on one shared word (latency only).
    FloorFutex,
    Tadpole,
    TadpolePoll,
    TadpoleWaitSet,
    /// The same with `WaitStrategy::Block`, timed against [`Kind::FloorFutex`].
    TadpoleWaitSetBlock,
    TadpoleBatched,
    TadpoleZeroCopy,
    TadpoleEnvelope,
    TadpoleArrow,
    Iceoryx2,
    Iceoryx2Preloan,
    Uds,
    Pipe,
    ZmqIpc,
    ZmqTcp,
    ZmqTcpCurve,
    Crossbeam,
    TadpoleRelay,
}

impl Kind {
    /// All of them.
    pub const ALL: [Kind; 20] = [
        Kind::Floor,
        Kind::Floor2,
        Kind::FloorFutex,
        Kind::Tadpole,
        Kind::TadpolePoll,
        Kind::TadpoleWaitSet,
        Kind::TadpoleWaitSetBlock,
        Kind::TadpoleBatched,
        Kind::TadpoleZeroCopy,
        Kind::TadpoleEnvelope,
        Kind::TadpoleArrow,
        Kind::Iceoryx2,
        Kind::Iceoryx2Preloan,
        Kind::Uds,
        Kind::Pipe,
        Kind::ZmqIpc,
        Kind::ZmqTcp,
        Kind::ZmqTcpCurve,
        Kind::Crossbeam,
        Kind::TadpoleRelay,
    ];

    /// The name used on the command line, in the table and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Floor2 => "floor-2line",
            Kind::FloorFutex => "floor-futex",
            Kind::Tadpole => "tadpole",
            Kind::TadpolePoll => "tadpole-poll",
            Kind::TadpoleWaitSet => "tadpole-waitset",
            Kind::TadpoleWaitSetBlock => "tadpole-waitset-block",
            Kind::TadpoleBatched => "tadpole-batched",
            Kind::TadpoleZeroCopy => "tadpole-zerocopy",
            Kind::TadpoleEnvelope => "tadpole-envelope",
            Kind::TadpoleArrow => "tadpole-arrow",
            Kind::Iceoryx2 => "iceoryx2",
            Kind::Iceoryx2Preloan => "iceoryx2-preloan",
            Kind::Uds => "uds",
            Kind::Pipe => "pipe",
            Kind::ZmqIpc => "zmq-ipc",
            Kind::ZmqTcp => "zmq-tcp",
            Kind::ZmqTcpCurve => "zmq-tcp-curve",
            Kind::Crossbeam => "crossbeam",
            Kind::TadpoleRelay => "tadpole-relay",
        }
    }

    /// One line on what the row measures.
    pub fn about(self) -> &'static str {
        match self {
            Kind::Floor => "two processes bounce one cache line (plain loads, no pause): the hardware floor",
            Kind::Floor2 => "a 64-byte payload line, then a flag line, each way: the floor of a two-line message",
            Kind::FloorFutex => {
                "one shared word, store + FUTEX_WAKE, the other side asleep in FUTEX_WAIT, each way, after 200 µs idle: the blocking floor"
            }
            Kind::Tadpole => "ipc-core ring pair, send()/recv() with WaitStrategy::BusySpin",
            Kind::TadpolePoll => "ipc-core ring pair, try_send()/try_recv() in a tight loop (no waiter)",
            Kind::TadpoleWaitSet => {
                "ipc-core ring pair, each side hearing its ring through a WaitSet (BusySpin) of 8 rings, 7 of them idle"
            }
            Kind::TadpoleWaitSetBlock => {
                "as tadpole-waitset with WaitStrategy::Block (spin, then sleep on the set's doorbell), each ping after 200 µs idle; ratio = p50 / floor-futex p50"
            }
            Kind::TadpoleBatched => {
                "ipc-core ring, batch() + try_push + one commit per up to 256 messages, read_batch(256) (throughput only)"
            }
            Kind::TadpoleZeroCopy => {
                "ipc-core ring, each message built in place in a try_reserve() grant (no source buffer), read in place (throughput only)"
            }
            Kind::TadpoleEnvelope => {
                "schemas EnvelopeSender/EnvelopeReceiver (verified), SystemConfigurationChanged with the body as a string"
            }
            Kind::TadpoleArrow => "schemas BatchSender/BatchReceiver (validated), one Binary row holding the message",
            Kind::Iceoryx2 => "iceoryx2 0.10 publish-subscribe [u8], loan + copy + send, subscriber spins on receive()",
            Kind::Iceoryx2Preloan => "iceoryx2 as above, the next sample loaned before waiting for the incoming one",
            Kind::Uds => "Unix stream socket, blocking read/write",
            Kind::Pipe => "two named pipes, blocking read/write",
            Kind::ZmqIpc => "libzmq PAIR over ipc://, blocking",
            Kind::ZmqTcp => "libzmq PAIR over tcp://127.0.0.1, blocking",
            Kind::ZmqTcpCurve => "libzmq PAIR over tcp://127.0.0.1 with CURVE, blocking",
            Kind::Crossbeam => "crossbeam-channel bounded, two threads of one process (in-process reference)",
            Kind::TadpoleRelay => "ring → tadpole relay → tcp/CURVE → tadpole relay → ring (two relay processes)",
        }
    }

    /// Parses a name from [`name`](Self::name).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether the kind has throughput rows (the floors are latency probes only).
    pub fn streams(self) -> bool {
        !matches!(self, Kind::Floor | Kind::Floor2 | Kind::FloorFutex)
    }

    /// Whether the kind has latency rows (one message in flight cannot batch).
    pub fn pings(self) -> bool {
        !matches!(self, Kind::TadpoleBatched | Kind::TadpoleZeroCopy)
    }
}

/// What one row asks of a transport.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub kind: Kind,
    /// Message length in bytes (at least 8).
    pub size: usize,
}

/// What the peer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Echo,
    /// Throughput sink; `true`: copy every message out.
    Sink(bool),
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Echo => "suite-echo",
            Role::Sink(_) => "suite-sink",
        }
    }
}

/// A transport: the measuring side's setup and the peer's.
pub trait Transport {
    type End: Link;

    /// Measuring side: sets the transport up, starts the peer in `role`, returns this end.
    fn start(spec: Spec, role: Role) -> BenchResult<(Self::End, PeerHandle)>;

    /// Peer side: opens its end from the arguments `start` passed.
    fn open(spec: Spec, args: &[String]) -> BenchResult<Self::End>;
}

/// Starts this executable as the peer of `spec` in `role` with the transport's `args`.
fn spawn_peer(spec: Spec, role: Role, args: &[String]) -> BenchResult<Peer> {
    let copy = matches!(role, Role::Sink(true));
    let mut all = vec![spec.kind.name().to_owned(), spec.size.to_string(), (copy as u8).to_string()];
    all.extend_from_slice(args);
    Peer::spawn(role.name(), &all)
}

/// The peer process's entry for the `suite-echo` and `suite-sink` roles.
pub(crate) fn peer_main(role: &str, args: &[String]) -> BenchResult<u64> {
    let [kind, size, copy, rest @ ..] = args else { return Err("suite peer: missing arguments".into()) };
    let kind = Kind::parse(kind).ok_or_else(|| format!("suite peer: unknown transport {kind:?}"))?;
    let spec = Spec { kind, size: size.parse()? };
    let role = match role {
        "suite-echo" => Role::Echo,
        _ => Role::Sink(copy == "1"),
    };
    match kind {
        Kind::Tadpole | Kind::TadpolePoll | Kind::TadpoleBatched | Kind::TadpoleZeroCopy => {
            serve::<Ring>(spec, role, rest)
        }
        Kind::TadpoleWaitSet | Kind::TadpoleWaitSetBlock => serve::<SetRing>(spec, role, rest),
        Kind::TadpoleEnvelope => serve::<Envelope>(spec, role, rest),
        Kind::TadpoleArrow => serve::<Arrow>(spec, role, rest),
        Kind::Iceoryx2 | Kind::Iceoryx2Preloan => serve::<Iceoryx>(spec, role, rest),
        Kind::Uds => serve::<Uds>(spec, role, rest),
        Kind::Pipe => serve::<Pipe>(spec, role, rest),
        Kind::ZmqIpc | Kind::ZmqTcp | Kind::ZmqTcpCurve => serve::<Zmq>(spec, role, rest),
        other => Err(format!("suite peer: {} has no peer process", other.name()).into()),
    }
}

fn serve<T: Transport>(spec: Spec, role: Role, args: &[String]) -> BenchResult<u64> {
    let mut end = T::open(spec, args)?;
    crate::peer::signal_ready()?;
    run_role(&mut end, spec, role)
}

fn run_role<L: Link>(end: &mut L, spec: Spec, role: Role) -> BenchResult<u64> {
    match role {
        Role::Echo => echo_loop(end, spec.size),
        Role::Sink(copy) => sink_loop(end, spec.size, copy),
    }
}

fn spin_until<T, E>(mut attempt: impl FnMut() -> Result<Option<T>, E>) -> Result<T, E> {
    loop {
        if let Some(v) = attempt()? {
            return Ok(v);
        }
        std::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------------------------------
// Tadpole rings.

/// Data region of each ring for `size`-byte messages: room for several in flight. The memcpy
/// and handoff baselines use a buffer of the same size, so all three pipeline alike.
pub fn ring_capacity(size: usize) -> usize {
    (4 * (size + 4096)).next_power_of_two().max(256 << 10)
}

/// Two named rings, one each way, created by the measuring side and unlinked once the peer
/// has opened them.
fn ring_pair(spec: Spec, role: Role, align: PayloadAlign) -> BenchResult<(Segment, Segment, PeerHandle)> {
    let (a, b) = (unique_name("suite-ping"), unique_name("suite-pong"));
    let cap = ring_capacity(spec.size);
    let to_peer = RingBuilder::new(cap).payload_align(align).create_named(&a)?;
    let from_peer = RingBuilder::new(cap).payload_align(align).create_named(&b)?;
    let peer = spawn_peer(spec, role, &[a.clone(), b.clone()]);
    let _ = Segment::unlink(&a);
    let _ = Segment::unlink(&b);
    Ok((to_peer, from_peer, PeerHandle::Process(peer?)))
}

fn open_ring_pair(args: &[String]) -> BenchResult<(Segment, Segment)> {
    let [a, b, ..] = args else { return Err("ring peer: expected two ring names".into()) };
    // The peer receives on the measuring side's `to_peer` ring and answers on the other.
    Ok((Segment::open(a)?, Segment::open(b)?))
}

/// Messages per commit and per `read_batch` at most in `tadpole-batched`.
const BATCH_MAX: usize = 256;

/// `tadpole`, `tadpole-poll` and `tadpole-batched`: raw bytes through an ipc-core ring each way.
pub struct Ring {
    /// Field order: the producer drops first, so a peer still waiting sees the close.
    producer: Producer,
    consumer: Consumer,
    /// `try_*` calls in a tight loop instead of the library's waiter.
    poll: bool,
    /// Messages per commit (1 unless batched).
    batch_len: usize,
    /// Streams build each message in a reserved grant instead of copying it in.
    in_place: bool,
    _segments: (Segment, Segment),
}

impl Ring {
    fn new(out: Segment, inn: Segment, spec: Spec) -> BenchResult<Ring> {
        let mut producer = out.producer()?;
        let mut consumer = inn.consumer()?;
        producer.set_wait_strategy(WaitStrategy::BusySpin);
        consumer.set_wait_strategy(WaitStrategy::BusySpin);
        let batch_len = if spec.kind == Kind::TadpoleBatched {
            // At most a quarter ring per commit, so the consumer always has a batch to read
            // while the next one is written.
            let record = 8 + spec.size.next_multiple_of(8);
            (out.capacity() / 4 / record).clamp(1, BATCH_MAX)
        } else {
            1
        };
        let poll = spec.kind != Kind::Tadpole;
        let in_place = spec.kind == Kind::TadpoleZeroCopy;
        Ok(Ring { producer, consumer, poll, batch_len, in_place, _segments: (out, inn) })
    }
}

fn try_send_spin(producer: &mut Producer, msg: &[u8]) -> BenchResult<()> {
    loop {
        match producer.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full) => std::hint::spin_loop(),
            Err(e) => return Err(e.into()),
        }
    }
}

impl Link for Ring {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        if self.poll { try_send_spin(&mut self.producer, msg) } else { Ok(self.producer.send(msg)?) }
    }

    #[inline]
    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        if self.poll {
            loop {
                match self.consumer.try_recv() {
                    Ok(msg) => return Ok(f(Msg::Bytes(&msg))),
                    Err(TryRecvError::Empty) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let msg = self.consumer.recv()?;
        Ok(f(Msg::Bytes(&msg)))
    }

    fn send_run(&mut self, payload: &mut [u8], first: u64, end: u64) -> BenchResult<()> {
        if self.in_place {
            for seq in first..end {
                let mut grant = loop {
                    match self.producer.try_reserve(payload.len()) {
                        Ok(grant) => break grant,
                        Err(TrySendError::Full) => std::hint::spin_loop(),
                        Err(e) => return Err(e.into()),
                    }
                };
                // Every byte written where the reader will find it, none read from elsewhere.
                grant[8..].fill(seq as u8);
                grant[..8].copy_from_slice(&seq.to_le_bytes());
                grant.commit();
            }
            return Ok(());
        }
        if self.batch_len == 1 {
            for seq in first..end {
                stamp(payload, seq);
                self.send(payload)?;
            }
            return Ok(());
        }
        let mut seq = first;
        while seq < end {
            let mut batch = self.producer.batch();
            while seq < end && batch.len() < self.batch_len {
                stamp(payload, seq);
                match batch.try_push(payload) {
                    Ok(()) => seq += 1,
                    Err(TrySendError::Full) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            if batch.is_empty() {
                std::hint::spin_loop();
            } else {
                batch.commit();
            }
        }
        Ok(())
    }

    fn recv_burst(&mut self, mut f: impl FnMut(Msg<'_>)) -> BenchResult<()> {
        if self.batch_len == 1 {
            return self.recv(f);
        }
        loop {
            match self.consumer.read_batch(BATCH_MAX) {
                Ok(batch) => {
                    for record in batch.iter() {
                        f(Msg::Bytes(record.payload));
                    }
                    return Ok(());
                }
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends the reply straight from the received record, as a forwarding agent would.
    fn echo(&mut self, _buf: &mut [u8]) -> BenchResult<u64> {
        let Ring { producer, consumer, poll, .. } = self;
        let msg = if *poll {
            loop {
                match consumer.try_recv() {
                    Ok(msg) => break msg,
                    Err(TryRecvError::Empty) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            consumer.recv()?
        };
        let seq = Msg::Bytes(&msg).seq();
        if seq != QUIT {
            if *poll { try_send_spin(producer, &msg)? } else { producer.send(&msg)? }
        }
        Ok(seq)
    }
}

impl Transport for Ring {
    type End = Ring;

    fn start(spec: Spec, role: Role) -> BenchResult<(Ring, PeerHandle)> {
        let (to_peer, from_peer, peer) = ring_pair(spec, role, PayloadAlign::Eight)?;
        Ok((Ring::new(to_peer, from_peer, spec)?, peer))
    }

    fn open(spec: Spec, args: &[String]) -> BenchResult<Ring> {
        let (inn, out) = open_ring_pair(args)?;
        Ring::new(out, inn, spec)
    }
}

/// Rings beside the measured one in each side's `WaitSet` (`tadpole-waitset`): what one thread
/// hearing a pipeline's agents scans.
const IDLE_RINGS: usize = 7;

/// `tadpole-waitset` and `tadpole-waitset-block`: raw bytes through an ipc-core ring each way,
/// each side waiting on its incoming ring through a [`WaitSet`] that also holds [`IDLE_RINGS`]
/// rings with no traffic, spinning or (`-block`) sleeping on the set's doorbell.
pub struct SetRing {
    producer: Producer,
    set: WaitSet,
    key: RingKey,
    /// `-block`: a full ring makes the producer sleep too, instead of spinning.
    blocking: bool,
    /// The idle rings' producers (alive, so the set does not report them gone) and segments.
    _idle: Vec<(Producer, Segment)>,
    _segments: (Segment, Segment),
}

impl SetRing {
    fn new(out: Segment, inn: Segment, kind: Kind) -> BenchResult<SetRing> {
        let wait = if kind == Kind::TadpoleWaitSetBlock { WaitStrategy::Block } else { WaitStrategy::BusySpin };
        let mut producer = out.producer()?;
        producer.set_wait_strategy(wait);
        let mut set = WaitSet::new(wait)?;
        let mut idle = Vec::with_capacity(IDLE_RINGS);
        for _ in 0..IDLE_RINGS {
            let ring = RingBuilder::new(4096).create_anonymous()?;
            set.insert(ring.consumer()?);
            idle.push((ring.producer()?, ring));
        }
        // Inserted last, so it is not simply the first ring every scan looks at.
        let key = set.insert(inn.consumer()?);
        let blocking = wait == WaitStrategy::Block;
        Ok(SetRing { producer, set, key, blocking, _idle: idle, _segments: (out, inn) })
    }
}

impl Link for SetRing {
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        if self.blocking { Ok(self.producer.send(msg)?) } else { try_send_spin(&mut self.producer, msg) }
    }

    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        loop {
            let ours = self.set.wait(Duration::from_secs(1)).contains(&self.key);
            if !ours {
                continue;
            }
            let consumer = self.set.get_mut(self.key).ok_or("tadpole-waitset: the ring left the set")?;
            match consumer.try_recv() {
                Ok(msg) => return Ok(f(Msg::Bytes(&msg))),
                Err(TryRecvError::Empty) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Transport for SetRing {
    type End = SetRing;

    fn start(spec: Spec, role: Role) -> BenchResult<(SetRing, PeerHandle)> {
        let (to_peer, from_peer, peer) = ring_pair(spec, role, PayloadAlign::Eight)?;
        Ok((SetRing::new(to_peer, from_peer, spec.kind)?, peer))
    }

    fn open(spec: Spec, args: &[String]) -> BenchResult<SetRing> {
        let (inn, out) = open_ring_pair(args)?;
        SetRing::new(out, inn, spec.kind)
    }
}

// ---------------------------------------------------------------------------------------------
// Typed channels.

/// `tadpole-envelope`: a `SystemConfigurationChanged` envelope per message, the sequence number
/// in `config_version` and `size - 8` bytes of body in `new_value`; verified on receipt.
pub struct Envelope {
    tx: EnvelopeSender,
    rx: EnvelopeReceiver,
    body: String,
    _segments: (Segment, Segment),
}

impl Envelope {
    fn new(out: Segment, inn: Segment, size: usize) -> BenchResult<Envelope> {
        let mut producer = out.producer()?;
        let mut consumer = inn.consumer()?;
        producer.set_wait_strategy(WaitStrategy::BusySpin);
        consumer.set_wait_strategy(WaitStrategy::BusySpin);
        Ok(Envelope {
            tx: EnvelopeSender::new(producer),
            // The default limit (1 MiB visited) refuses the largest bodies this bench sends.
            rx: EnvelopeReceiver::new(consumer).with_verify_options(VerifyOptions {
                max_apparent_size: VerifyOptions::default().max_apparent_size.max(2 * size + 4096),
                ..VerifyOptions::default()
            }),
            body: "x".repeat(size - 8),
            _segments: (out, inn),
        })
    }
}

impl Link for Envelope {
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        let seq = Msg::Bytes(msg).seq();
        let Envelope { tx, body, .. } = self;
        let header = EnvelopeHeader::new("bench-a", "bench-b");
        tx.send(&header, |fbb| {
            let value = fbb.create_string(body);
            fb::SystemConfigurationChanged::create(
                fbb,
                &fb::SystemConfigurationChangedArgs {
                    new_value: Some(value),
                    config_version: seq,
                    ..Default::default()
                },
            )
        })?;
        Ok(())
    }

    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        let msg = self.rx.recv()?;
        let envelope = msg.envelope();
        let change = envelope.payload_as_system_configuration_changed().ok_or("envelope of another type")?;
        let rest = change.new_value().unwrap_or("").as_bytes();
        Ok(f(Msg::Parts { seq: change.config_version(), rest }))
    }
}

impl Transport for Envelope {
    type End = Envelope;

    fn start(spec: Spec, role: Role) -> BenchResult<(Envelope, PeerHandle)> {
        let (to_peer, from_peer, peer) = ring_pair(spec, role, PayloadAlign::Eight)?;
        Ok((Envelope::new(to_peer, from_peer, spec.size)?, peer))
    }

    fn open(spec: Spec, args: &[String]) -> BenchResult<Envelope> {
        let (inn, out) = open_ring_pair(args)?;
        Envelope::new(out, inn, spec.size)
    }
}

/// `tadpole-arrow`: each message is a one-row record batch with a `Binary` column holding it;
/// validated on receipt, read in place.
pub struct Arrow {
    tx: BatchSender,
    rx: BatchReceiver,
    schema: arrow_schema::SchemaRef,
    _segments: (Segment, Segment),
}

impl Arrow {
    fn new(out: Segment, inn: Segment) -> BenchResult<Arrow> {
        let mut producer = out.producer()?;
        let mut consumer = inn.consumer()?;
        producer.set_wait_strategy(WaitStrategy::BusySpin);
        consumer.set_wait_strategy(WaitStrategy::BusySpin);
        let field = arrow_schema::Field::new("msg", arrow_schema::DataType::Binary, false);
        Ok(Arrow {
            tx: BatchSender::new(producer)?,
            rx: BatchReceiver::new(consumer)?,
            schema: Arc::new(arrow_schema::Schema::new(vec![field])),
            _segments: (out, inn),
        })
    }
}

impl Link for Arrow {
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        let column = BinaryArray::from_vec(vec![msg]);
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(column)])?;
        self.tx.send(&batch)?;
        Ok(())
    }

    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        let batch = self.rx.recv()?;
        let column = batch.column(0).as_any().downcast_ref::<BinaryArray>().ok_or("batch column is not Binary")?;
        if column.len() != 1 {
            return Err(format!("batch of {} rows, 1 expected", column.len()).into());
        }
        Ok(f(Msg::Bytes(column.value(0))))
    }

    /// Sends the received batch back as it is (its arrays point into the ring).
    fn echo(&mut self, _buf: &mut [u8]) -> BenchResult<u64> {
        let batch = self.rx.recv()?;
        let column = batch.column(0).as_any().downcast_ref::<BinaryArray>().ok_or("batch column is not Binary")?;
        let seq = Msg::Bytes(column.value(0)).seq();
        if seq != QUIT {
            self.tx.send(&batch)?;
        }
        Ok(seq)
    }
}

impl Transport for Arrow {
    type End = Arrow;

    fn start(spec: Spec, role: Role) -> BenchResult<(Arrow, PeerHandle)> {
        let (to_peer, from_peer, peer) = ring_pair(spec, role, PayloadAlign::SixtyFour)?;
        Ok((Arrow::new(to_peer, from_peer)?, peer))
    }

    fn open(_spec: Spec, args: &[String]) -> BenchResult<Arrow> {
        let (inn, out) = open_ring_pair(args)?;
        Arrow::new(out, inn)
    }
}

// ---------------------------------------------------------------------------------------------
// iceoryx2.

type IoxPublisher = iceoryx2::port::publisher::Publisher<iceoryx2::service::ipc::Service, [u8], ()>;
type IoxSubscriber = iceoryx2::port::subscriber::Subscriber<iceoryx2::service::ipc::Service, [u8], ()>;
type IoxLoan = iceoryx2::sample_mut_uninit::SampleMutUninit<iceoryx2::service::ipc::Service, [MaybeUninit<u8>], ()>;

/// `iceoryx2` and `iceoryx2-preloan`: one publish-subscribe service each way.
pub struct Iceoryx {
    // Field order: ports before the node that owns them.
    next: Option<IoxLoan>,
    publisher: IoxPublisher,
    subscriber: IoxSubscriber,
    _node: iceoryx2::node::Node<iceoryx2::service::ipc::Service>,
    size: usize,
    preloan: bool,
}

impl Iceoryx {
    /// Samples a subscriber may hold queued: enough for streaming, bounded in memory.
    fn queue(size: usize) -> usize {
        ((8 << 20) / size).clamp(4, 256)
    }

    fn new(spec: Spec, out: &str, inn: &str) -> BenchResult<Iceoryx> {
        use iceoryx2::prelude::*;
        set_log_level(LogLevel::Error);
        let node = NodeBuilder::new().create::<ipc::Service>()?;
        let queue = Self::queue(spec.size);
        // Lossless: a full subscriber queue makes the publisher retry, as a ring's producer
        // waits, instead of overwriting the oldest sample (iceoryx2's default).
        let service = |name: &str| {
            node.service_builder(&ServiceName::new(name)?)
                .publish_subscribe::<[u8]>()
                .enable_safe_overflow(false)
                .subscriber_max_buffer_size(queue)
                .subscriber_max_borrowed_samples(2)
                .history_size(0)
                .max_publishers(1)
                .max_subscribers(1)
                .open_or_create()
                .map_err(|e| -> crate::BenchError { format!("iceoryx2 service {name}: {e:?}").into() })
        };
        let (out_service, in_service) = (service(out)?, service(inn)?);
        let publisher = out_service
            .publisher_builder()
            .initial_max_slice_len(spec.size)
            .max_loaned_samples(2)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .map_err(|e| format!("iceoryx2 publisher: {e:?}"))?;
        let subscriber = in_service
            .subscriber_builder()
            .buffer_size(queue)
            .create()
            .map_err(|e| format!("iceoryx2 subscriber: {e:?}"))?;
        Ok(Iceoryx {
            next: None,
            publisher,
            subscriber,
            _node: node,
            size: spec.size,
            preloan: spec.kind == Kind::Iceoryx2Preloan,
        })
    }

    fn loan(&self, len: usize) -> BenchResult<IoxLoan> {
        self.publisher.loan_slice_uninit(len).map_err(|e| format!("iceoryx2 loan: {e:?}").into())
    }
}

impl Link for Iceoryx {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        let loan = match self.next.take() {
            Some(l) if l.payload().len() == msg.len() => l,
            _ => self.loan(msg.len())?,
        };
        loan.write_from_slice(msg).send().map_err(|e| format!("iceoryx2 send: {e:?}"))?;
        Ok(())
    }

    #[inline]
    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        if self.preloan && self.next.is_none() {
            self.next = Some(self.loan(self.size)?);
        }
        let sample = spin_until(|| self.subscriber.receive().map_err(|e| format!("iceoryx2 receive: {e:?}")))?;
        Ok(f(Msg::Bytes(sample.payload())))
    }
}

impl Transport for Iceoryx {
    type End = Iceoryx;

    fn start(spec: Spec, role: Role) -> BenchResult<(Iceoryx, PeerHandle)> {
        let (a, b) = (unique_name("tadpole-bench/ping"), unique_name("tadpole-bench/pong"));
        let end = Iceoryx::new(spec, &a, &b)?;
        let peer = spawn_peer(spec, role, &[a, b])?;
        Ok((end, PeerHandle::Process(peer)))
    }

    fn open(spec: Spec, args: &[String]) -> BenchResult<Iceoryx> {
        let [a, b, ..] = args else { return Err("iceoryx2 peer: expected two service names".into()) };
        Iceoryx::new(spec, b, a)
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel byte streams: a Unix socket, two named pipes.

/// Reads exactly one message of the link's size into `buf` and hands it out.
fn read_message<R>(reader: &mut impl Read, buf: &mut [u8], f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
    reader.read_exact(buf)?;
    Ok(f(Msg::Bytes(buf)))
}

fn scratch_dir() -> BenchResult<PathBuf> {
    let dir = std::env::temp_dir().join(unique_name("tadpole-bench"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `uds`: one Unix stream socket, blocking.
pub struct Uds {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Link for Uds {
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        Ok(self.stream.write_all(msg)?)
    }

    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        read_message(&mut self.stream, &mut self.buf, f)
    }
}

impl Transport for Uds {
    type End = Uds;

    fn start(spec: Spec, role: Role) -> BenchResult<(Uds, PeerHandle)> {
        let dir = scratch_dir()?;
        let path = dir.join("socket");
        let listener = UnixListener::bind(&path)?;
        let peer = spawn_peer(spec, role, &[path.display().to_string()]);
        // The peer connected before saying ready, so accept returns at once.
        let accepted = peer.as_ref().map(|_| listener.accept());
        let _ = std::fs::remove_dir_all(&dir);
        let (stream, _) = accepted.map_err(|e| e.to_string())??;
        Ok((Uds { stream, buf: vec![0; spec.size] }, PeerHandle::Process(peer?)))
    }

    fn open(spec: Spec, args: &[String]) -> BenchResult<Uds> {
        let path = args.first().ok_or("uds peer: expected a socket path")?;
        Ok(Uds { stream: UnixStream::connect(path)?, buf: vec![0; spec.size] })
    }
}

/// `pipe`: two FIFOs, one each way, blocking.
pub struct Pipe {
    out: File,
    inn: File,
    buf: Vec<u8>,
}

impl Link for Pipe {
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        Ok(self.out.write_all(msg)?)
    }

    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        read_message(&mut self.inn, &mut self.buf, f)
    }
}

/// Opens a FIFO read-write: Linux lets that succeed at once, so neither side waits in `open`
/// for the other.
fn open_fifo(path: &str) -> BenchResult<File> {
    Ok(std::fs::OpenOptions::new().read(true).write(true).open(path)?)
}

impl Transport for Pipe {
    type End = Pipe;

    fn start(spec: Spec, role: Role) -> BenchResult<(Pipe, PeerHandle)> {
        let dir = scratch_dir()?;
        let (a, b) = (dir.join("ping").display().to_string(), dir.join("pong").display().to_string());
        for path in [&a, &b] {
            let c = std::ffi::CString::new(path.as_str())?;
            // SAFETY: a valid C string and a constant mode.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(format!("mkfifo {path}: {}", std::io::Error::last_os_error()).into());
            }
        }
        let end = Pipe { out: open_fifo(&a)?, inn: open_fifo(&b)?, buf: vec![0; spec.size] };
        let peer = spawn_peer(spec, role, &[a, b]);
        let _ = std::fs::remove_dir_all(&dir);
        Ok((end, PeerHandle::Process(peer?)))
    }

    fn open(spec: Spec, args: &[String]) -> BenchResult<Pipe> {
        let [a, b, ..] = args else { return Err("pipe peer: expected two FIFO paths".into()) };
        Ok(Pipe { out: open_fifo(b)?, inn: open_fifo(a)?, buf: vec![0; spec.size] })
    }
}

// ---------------------------------------------------------------------------------------------
// libzmq.

/// `zmq-ipc`, `zmq-tcp`, `zmq-tcp-curve`: one PAIR socket each side, blocking sends and receives.
pub struct Zmq {
    socket: zmq::Socket,
    msg: zmq::Message,
    _ctx: zmq::Context,
    /// The `ipc://` socket file the measuring side bound, removed on drop (not earlier: libzmq
    /// connects in the background, after the peer already said it is ready).
    bound_file: Option<PathBuf>,
}

impl Drop for Zmq {
    fn drop(&mut self) {
        if let Some(path) = self.bound_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Link for Zmq {
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        Ok(self.socket.send(msg, 0)?)
    }

    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        self.socket.recv(&mut self.msg, 0)?;
        Ok(f(Msg::Bytes(&self.msg)))
    }
}

impl Transport for Zmq {
    type End = Zmq;

    /// Binds (the CURVE server, with a fresh key pair) and passes the endpoint, and for CURVE
    /// the server's public key and a client key pair, to the peer, which connects.
    fn start(spec: Spec, role: Role) -> BenchResult<(Zmq, PeerHandle)> {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::PAIR)?;
        socket.set_linger(0)?;
        let mut args = Vec::new();
        let endpoint = match spec.kind {
            Kind::ZmqIpc => {
                let path = std::env::temp_dir().join(format!("{}.zmq", unique_name("tadpole-bench")));
                format!("ipc://{}", path.display())
            }
            _ => "tcp://127.0.0.1:*".to_owned(),
        };
        if spec.kind == Kind::ZmqTcpCurve {
            let (server, client) = (zmq::CurveKeyPair::new()?, zmq::CurveKeyPair::new()?);
            socket.set_curve_server(true)?;
            socket.set_curve_secretkey(&server.secret_key)?;
            for key in [server.public_key, client.public_key, client.secret_key] {
                args.push(zmq::z85_encode(&key)?);
            }
        }
        socket.bind(&endpoint)?;
        let bound = socket.get_last_endpoint()?.map_err(|_| "zmq endpoint not UTF-8")?;
        args.insert(0, bound.clone());
        let bound_file = bound.strip_prefix("ipc://").map(PathBuf::from);
        let end = Zmq { socket, msg: zmq::Message::new(), _ctx: ctx, bound_file };
        let peer = spawn_peer(spec, role, &args)?;
        Ok((end, PeerHandle::Process(peer)))
    }

    fn open(spec: Spec, args: &[String]) -> BenchResult<Zmq> {
        let endpoint = args.first().ok_or("zmq peer: expected an endpoint")?;
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::PAIR)?;
        socket.set_linger(0)?;
        if spec.kind == Kind::ZmqTcpCurve {
            let [_, server, public, secret, ..] = args else { return Err("zmq peer: expected CURVE keys".into()) };
            let decode = |k: &str| zmq::z85_decode(k).map_err(|e| format!("zmq peer: bad key: {e:?}"));
            socket.set_curve_serverkey(&decode(server)?)?;
            socket.set_curve_publickey(&decode(public)?)?;
            socket.set_curve_secretkey(&decode(secret)?)?;
        }
        socket.connect(endpoint)?;
        Ok(Zmq { socket, msg: zmq::Message::new(), _ctx: ctx, bound_file: None })
    }
}

// ---------------------------------------------------------------------------------------------
// crossbeam-channel: the in-process reference.

/// `crossbeam`: two bounded channels of owned buffers between two threads of this process.
pub struct Crossbeam {
    tx: crossbeam_channel::Sender<Vec<u8>>,
    rx: crossbeam_channel::Receiver<Vec<u8>>,
}

impl Link for Crossbeam {
    fn send(&mut self, msg: &[u8]) -> BenchResult<()> {
        self.tx.send(msg.to_vec()).map_err(|_| "crossbeam: peer gone")?;
        Ok(())
    }

    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R> {
        let msg = self.rx.recv().map_err(|_| "crossbeam: peer gone")?;
        Ok(f(Msg::Bytes(&msg)))
    }

    /// Sends the received buffer itself back (channels move ownership, no copy).
    fn echo(&mut self, _buf: &mut [u8]) -> BenchResult<u64> {
        let msg = self.rx.recv().map_err(|_| "crossbeam: peer gone")?;
        let seq = Msg::Bytes(&msg).seq();
        if seq != QUIT {
            self.tx.send(msg).map_err(|_| "crossbeam: peer gone")?;
        }
        Ok(seq)
    }
}

impl Transport for Crossbeam {
    type End = Crossbeam;

    fn start(spec: Spec, role: Role) -> BenchResult<(Crossbeam, PeerHandle)> {
        let depth = ((8 << 20) / spec.size).clamp(4, 1024);
        let (to_peer, peer_rx) = crossbeam_channel::bounded(depth);
        let (peer_tx, from_peer) = crossbeam_channel::bounded(depth);
        let mut peer_end = Crossbeam { tx: peer_tx, rx: peer_rx };
        let thread = std::thread::spawn(move || {
            pin::pin_to_cpu(PEER_CPU)?;
            run_role(&mut peer_end, spec, role)
        });
        Ok((Crossbeam { tx: to_peer, rx: from_peer }, PeerHandle::Thread(thread)))
    }

    fn open(_spec: Spec, _args: &[String]) -> BenchResult<Crossbeam> {
        Err("crossbeam runs in-process".into())
    }
}
