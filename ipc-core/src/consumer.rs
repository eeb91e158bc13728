//! The consumer side of a ring: poll the next record header with an acquire load, hand out the
//! payload as a slice borrowed from shared memory, and release the space when the borrow ends.
//! Every header read from shared memory is validated before any byte it describes is touched.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::layout::{
    self, CorruptReason, OWNER_DETACHED, RECORD_ALIGN, RECORD_HEADER_LEN, RecordBounds, SLACK, SegmentHeader, TAG_MASK,
    message_tag, record_len,
};
use crate::lease::{BatchLease, ConsumerAttachment, DEFAULT_MAX_LEASES, Lease, SegmentLeaseQueue};
use crate::pollable::BellListener;
use crate::segment::{PayloadAlign, Segment, check_positions};
use crate::sync::atomic::AtomicU64;
use crate::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use crate::wait::{PeerSchedule, WaitStep, WaitStrategy, Waiter, full_fence, ring_doorbell};
use crate::{AttachError, PeerState, Side, attach_side, detach_side, peer_state};

/// Header loads per full poll while busy-spinning (a few microseconds at most).
const SPIN_BURST: u32 = 1024;

/// Receives between two copies of the consumer's tallies into the segment's counters.
const COUNTER_PUBLISH_INTERVAL: u64 = 256;

/// Why [`Consumer::try_recv`] or [`Consumer::read_batch`] returned nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing committed yet.
    #[error("ring empty")]
    Empty,
    /// No producer is attached (it detached, or its process is gone) and everything it
    /// committed has been received. A producer that attaches later is received from again.
    #[error("producer disconnected")]
    Disconnected,
    /// Too many records are held as [`Lease`]s: drop some before receiving more.
    #[error("{capacity} leases outstanding: drop some before receiving more")]
    LeasesExhausted {
        /// Most leases this consumer may hold ([`Consumer::set_max_leases`]).
        capacity: usize,
    },
    /// A record header in shared memory is invalid: the ring cannot be read past it.
    #[error("corrupt record at position {position}: {reason}")]
    Corrupt {
        /// Position of the bad header.
        position: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
}

/// Why [`Consumer::recv`] returned nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// See [`TryRecvError::Disconnected`].
    #[error("producer disconnected")]
    Disconnected,
    /// See [`TryRecvError::LeasesExhausted`].
    #[error("{capacity} leases outstanding: drop some before receiving more")]
    LeasesExhausted {
        /// Most leases this consumer may hold.
        capacity: usize,
    },
    /// See [`TryRecvError::Corrupt`].
    #[error("corrupt record at position {position}: {reason}")]
    Corrupt {
        /// Position of the bad header.
        position: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
}

/// Why [`Consumer::recv_timeout`] or [`Consumer::read_batch_timeout`] returned nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// Nothing arrived before the timeout passed.
    #[error("timed out waiting for a message")]
    Timeout,
    /// See [`TryRecvError::Disconnected`].
    #[error("producer disconnected")]
    Disconnected,
    /// See [`TryRecvError::LeasesExhausted`].
    #[error("{capacity} leases outstanding: drop some before receiving more")]
    LeasesExhausted {
        /// Most leases this consumer may hold.
        capacity: usize,
    },
    /// See [`TryRecvError::Corrupt`].
    #[error("corrupt record at position {position}: {reason}")]
    Corrupt {
        /// Position of the bad header.
        position: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
}

/// What a wait that ran out of patience says about an empty ring.
fn waited(e: TryRecvError) -> RecvTimeoutError {
    match e {
        TryRecvError::Empty => RecvTimeoutError::Timeout,
        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
        TryRecvError::LeasesExhausted { capacity } => RecvTimeoutError::LeasesExhausted { capacity },
        TryRecvError::Corrupt { position, reason } => RecvTimeoutError::Corrupt { position, reason },
    }
}

/// A wait without a deadline never times out; what else it can return.
fn forever(e: RecvTimeoutError) -> RecvError {
    match e {
        RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected => RecvError::Disconnected,
        RecvTimeoutError::LeasesExhausted { capacity } => RecvError::LeasesExhausted { capacity },
        RecvTimeoutError::Corrupt { position, reason } => RecvError::Corrupt { position, reason },
    }
}

/// When the consumer gives a record's space back to the producer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReleaseMode {
    /// When its [`ReadGuard`] or [`ReadBatch`] drops (or, for a [`Lease`], when that drops).
    #[default]
    OnDrop,
    /// Only when [`Consumer::release_through`] names it or a later record: dropping a guard or
    /// batch only moves delivery on. Records stay in the ring, unreleased and redeliverable with
    /// [`Consumer::rewind`], until acknowledged: what a relay needs to resend after a reconnect.
    /// One store per acknowledgement, however many records it covers. Leases are not available
    /// in this mode (their in-order release would race the acknowledgements).
    Explicit,
}

/// [`Consumer::set_release_mode`] refused: leases are outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{outstanding} leases outstanding: drop them before switching to explicit release")]
pub struct LeasesOutstanding {
    /// Leases (and releases queued behind them) not yet folded.
    pub outstanding: usize,
}

/// [`Consumer::release_through`] refused a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// `position` is not the start of a record this consumer delivered and still holds (beyond
    /// what was delivered, inside a record, or held by a lease in [`ReleaseMode::OnDrop`]).
    #[error("position {position} is not a record this consumer delivered and holds")]
    NotHeld {
        /// The position asked for.
        position: u64,
    },
}

/// Why a record or batch could not become a lease; the guard (or batch) comes back, unreleased.
pub struct LeaseError<G> {
    /// Why.
    pub reason: LeaseRefused,
    guard: G,
}

impl<G> LeaseError<G> {
    /// The guard or batch, still holding its record(s): use or drop it as usual.
    pub fn into_inner(self) -> G {
        self.guard
    }
}

impl<G> std::fmt::Debug for LeaseError<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseError").field("reason", &self.reason).finish_non_exhaustive()
    }
}

impl<G> std::fmt::Display for LeaseError<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.reason.fmt(f)
    }
}

impl<G> std::error::Error for LeaseError<G> {}

/// Why a lease was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRefused {
    /// The consumer already holds as many leases as it may ([`Consumer::set_max_leases`]).
    #[error("{capacity} leases outstanding: drop some first")]
    Exhausted {
        /// Most leases this consumer may hold.
        capacity: usize,
    },
    /// The consumer releases explicitly ([`ReleaseMode::Explicit`]).
    #[error("leases are not available with explicit release")]
    ExplicitRelease,
}

/// Why a receiver refused a record it read from the ring: the reason a dead letter is counted
/// under in the segment ([`Consumer::count_dead_letter`]), for `tadpole stat` and
/// `tadpole metrics` to show whichever process refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Not a valid message: an envelope or Arrow frame that fails verification (framing,
    /// FlatBuffers verifier, Arrow validation), or whose record header contradicts it.
    Malformed,
    /// A valid message that cannot be delivered: a relay's far side has no route for it, or a
    /// ring there too small for it.
    Undeliverable,
}

/// The consumer of a ring: exactly one per ring across all processes.
///
/// ```
/// use ipc_core::{RingBuilder, TryRecvError};
/// let segment = RingBuilder::new(1 << 16).create_anonymous()?;
/// let (mut producer, mut consumer) = (segment.producer()?, segment.consumer()?);
/// assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty));
/// producer.try_send_typed(7, b"tick")?;
/// {
///     let msg = consumer.try_recv()?;     // borrows shared memory, no copy
///     assert_eq!((msg.message_type(), &*msg), (7, &b"tick"[..]));
///     assert_eq!(msg.position(), 0);      // where the record starts in the ring
/// }                                       // space released here
/// drop(producer);
/// assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Disconnected));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A producer that dies without detaching is noticed by every call, polling ones included:
/// `try_recv` and `read_batch` look at its liveness every 64 empty polls, at most every
/// 5 ms by the coarse clock, so a polling consumer gets [`TryRecvError::Disconnected`] within
/// about 20 ms of the death (once it has received everything committed); waiting calls look
/// every 10 ms and when their deadline passes. How a death is judged: [`PeerState`].
pub struct Consumer {
    segment: Segment,
    /// The segment's header page, cached: `segment.header()` goes through the `Arc`.
    header: NonNull<SegmentHeader>,
    data: *const u8,
    mask: u64,
    capacity: u64,
    max_len: u32,
    /// Payload alignment minus one (7 or 63): a payload position must have these bits clear.
    align_mask: u64,
    bounds: RecordBounds,
    /// Next record to hand out.
    read_pos: u64,
    /// Last head stored or seen; a lower bound of the real head (exact in explicit mode).
    head: u64,
    wait: WaitStrategy,
    counters: Tally,
    leases: Option<Arc<SegmentLeaseQueue>>,
    max_leases: usize,
    /// Detaches the consumer side when dropped, after the lease queue (which shares it) too.
    attachment: Arc<ConsumerAttachment>,
    /// Set once a corrupt record is seen: nothing after it can be trusted.
    poisoned: Option<(u64, CorruptReason)>,
    /// [`ReleaseMode::Explicit`].
    explicit: bool,
    /// Releases do not go straight to the head: explicit mode, or a lease queue exists. One
    /// flag for the guard's drop to test, so neither costs the common case anything.
    deferred: bool,
    epoch: u64,
    peer_check: PeerSchedule,
    /// The pollable doorbell, once asked for.
    pollable: Option<BellListener>,
    /// A wait set found the producer gone: the next empty poll looks at once instead of on the
    /// schedule.
    producer_gone_hint: bool,
}

#[derive(Default)]
struct Tally {
    messages: u64,
    bytes: u64,
    releases: u64,
    empty_polls: u64,
    wakes: u64,
    corrupt: u64,
}

// SAFETY: the raw header and data pointers point into the segment's mapping, kept alive by
// `segment`; the header holds only atomics.
unsafe impl Send for Consumer {}

/// What the receive fast path checks a header against, copied out of the [`Consumer`]. A loop
/// over headers keeps this copy in registers: each header is an acquire load, after which the
/// compiler must read the consumer's own fields again, but not a local's.
#[derive(Clone, Copy)]
struct FastChecks {
    data: *const u8,
    mask: u64,
    capacity: u64,
    max_len: u32,
    align_mask: u64,
    head: u64,
}

impl FastChecks {
    /// The header word at `pos` (record-aligned), read with acquire ordering.
    #[inline(always)]
    fn load(&self, pos: u64) -> u64 {
        // SAFETY: as in `Consumer::slot`: `pos & mask` addresses a whole word inside the data
        // region, which the consumer this was copied from keeps mapped.
        unsafe { AtomicU64::from_ptr(self.data.add((pos & self.mask) as usize).cast_mut().cast()) }.load(Acquire)
    }

    /// Starts fetching the line [`BATCH_PREFETCH`] bytes past `pos` into this core's cache. A
    /// batch scan is a chain of dependent loads (each header's length says where the next one
    /// is), and every line it reads was just written on the producer's core: without this,
    /// each of those cross-core misses waits for the one before it.
    #[inline(always)]
    fn prefetch_ahead(&self, pos: u64) {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // In bounds (masked into the data region), though a prefetch never faults anyway.
            let ahead = self.data.wrapping_add((pos.wrapping_add(BATCH_PREFETCH) & self.mask) as usize);
            // SAFETY: a prefetch is only a hint: it reads nothing into the program and cannot
            // fault; SSE, which it needs, is part of the x86_64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.cast()) };
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        let _ = pos;
    }

    /// `word`, read at `pos`, if it is a message (not padding) that passes every check of
    /// [`layout::check_record`] against the producer's space, the checks combined by `&` into a
    /// single branch. `None` for anything else (nothing published, padding, or a fault to
    /// classify), which `check_record` itself then sorts out.
    #[inline(always)]
    fn accept(&self, pos: u64, word: u64) -> Option<Found> {
        let len = word as u32;
        let rec = record_len(u64::from(len));
        let end = pos + rec;
        let valid = (word & TAG_MASK == message_tag(pos))
            & (len <= self.max_len)
            & ((pos & self.mask) + rec <= self.capacity)
            & (end.wrapping_add(SLACK).wrapping_sub(self.head) <= self.capacity)
            & ((pos + RECORD_HEADER_LEN) & self.align_mask == 0);
        valid.then_some(Found { payload_pos: pos + RECORD_HEADER_LEN, len, message_type: (word >> 32) as u16, end })
    }
}

/// How far ahead of its scan `read_batch` prefetches: enough lines in flight to cover a
/// cross-core miss (~70 ns here) while the scan handles the records before it (see
/// [`FastChecks::prefetch_ahead`]).
const BATCH_PREFETCH: u64 = 512;

/// A record found at the read position.
#[derive(Clone, Copy)]
pub(crate) struct Found {
    payload_pos: u64,
    len: u32,
    message_type: u16,
    end: u64,
}

impl Found {
    fn position(&self) -> u64 {
        self.payload_pos - RECORD_HEADER_LEN
    }
}

impl Segment {
    /// Attaches as this ring's consumer, starting at the first unreleased record (so records
    /// a dead consumer held but never released are delivered again: at-least-once).
    pub fn consumer(&self) -> Result<Consumer, AttachError> {
        let claim = attach_side(self, Side::Consumer, crate::ProcessId::current())?;
        let h = self.header();
        let head = h.consumer_position.position.load(Acquire);
        let tail = h.producer_position.position.load(Acquire);
        if let Err(fault) = check_positions(head, tail, self.params.capacity) {
            detach_side(self, &claim);
            return Err(AttachError::Corrupt(fault));
        }
        // A new consumer starts with the default (non-blocking) strategy and no pollable
        // doorbell (a dead predecessor's is gone with its process).
        h.consumer_doorbell.pollable_id.store(0, Relaxed);
        h.consumer_doorbell.sleeping.store(0, Relaxed);
        crate::wait::set_blocking(&h.consumer_doorbell, WaitStrategy::default());
        let c = &h.consumer_counters;
        c.leases_held.store(0, Relaxed);
        c.lease_capacity.store(DEFAULT_MAX_LEASES as u64, Relaxed);
        let align64 = self.params.payload_align == PayloadAlign::SixtyFour;
        Ok(Consumer {
            segment: self.clone(),
            header: NonNull::from(h),
            data: self.data().as_ptr(),
            mask: self.params.capacity - 1,
            capacity: self.params.capacity,
            max_len: self.params.max_message_len,
            align_mask: if align64 { 63 } else { RECORD_ALIGN - 1 },
            bounds: self.record_bounds(),
            read_pos: head,
            head,
            wait: WaitStrategy::default(),
            counters: Tally {
                messages: c.messages.load(Relaxed),
                bytes: c.bytes.load(Relaxed),
                releases: c.releases.load(Relaxed),
                empty_polls: c.empty_polls.load(Relaxed),
                wakes: c.wakes.load(Relaxed),
                corrupt: c.corrupt_records.load(Relaxed),
            },
            leases: None,
            max_leases: DEFAULT_MAX_LEASES,
            attachment: Arc::new(ConsumerAttachment { segment: self.clone(), claim }),
            poisoned: None,
            explicit: false,
            deferred: false,
            epoch: self.epoch(),
            peer_check: PeerSchedule::default(),
            pollable: None,
            producer_gone_hint: false,
        })
    }
}

impl Consumer {
    /// Sets how [`recv`](Self::recv) and [`recv_timeout`](Self::recv_timeout) wait for data.
    /// Default: [`WaitStrategy::SpinThenYield`].
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
        crate::wait::set_blocking(&self.header().consumer_doorbell, wait);
    }

    /// A file descriptor that an event loop (`poll`, `epoll`, `zmq::poll`, asyncio's
    /// `add_reader`) can wait on beside its other sources: it turns readable when the ring gains
    /// a record, or its producer detaches, while this consumer is armed
    /// ([`arm_doorbell`](Self::arm_doorbell)). Made on the first call (an abstract `AF_UNIX`
    /// datagram socket; no file), the same descriptor afterwards; valid while the consumer
    /// lives. The producer pays for it only when it finds the consumer armed: one `sendto`,
    /// where a blocking consumer would cost it a futex wake.
    ///
    /// It works when producer and consumer share a network namespace (abstract socket
    /// addresses belong to one); otherwise the consumer learns of records only when its poll
    /// times out, so always poll with a timeout. A producer killed without detaching rings
    /// nothing either: the next receive after the timeout reports it.
    ///
    /// ```
    /// # use ipc_core::{RingBuilder, TryRecvError};
    /// # let segment = RingBuilder::new(1 << 12).create_anonymous()?;
    /// # let mut producer = segment.producer()?;
    /// let mut consumer = segment.consumer()?;
    /// let fd = consumer.pollable_doorbell()?;
    /// loop {
    ///     match consumer.try_recv() {
    ///         Ok(record) => { assert_eq!(&record[..], b"hi"); break; }
    ///         Err(TryRecvError::Empty) => {}
    ///         Err(e) => return Err(e.into()),
    ///     }
    ///     if consumer.arm_doorbell()? {
    ///         # producer.try_send(b"hi")?;
    ///         let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    ///         // SAFETY: one valid pollfd.
    ///         unsafe { libc::poll(&mut pollfd, 1, 100) };
    ///         consumer.disarm_doorbell();
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pollable_doorbell(&mut self) -> std::io::Result<std::os::fd::RawFd> {
        if let Some(bell) = &self.pollable {
            return Ok(bell.raw_fd());
        }
        let bell = BellListener::bind()?;
        self.header().consumer_doorbell.pollable_id.store(bell.id(), Release);
        let fd = bell.raw_fd();
        self.pollable = Some(bell);
        Ok(fd)
    }

    /// Arms the pollable doorbell (made first if need be) before sleeping on its descriptor:
    /// `Ok(true)` when the ring has nothing for this consumer now, and its producer will make
    /// the descriptor readable on its next commit; `Ok(false)` when a record (or anything else
    /// for [`try_recv`](Self::try_recv) to look at) is already there — receive instead of
    /// sleeping. Call [`disarm_doorbell`](Self::disarm_doorbell) after waking, whatever woke
    /// the loop. The error is the one of [`pollable_doorbell`](Self::pollable_doorbell).
    pub fn arm_doorbell(&mut self) -> std::io::Result<bool> {
        self.pollable_doorbell()?;
        let armed = self.arm_for(None);
        if !armed {
            self.disarm_doorbell();
        }
        Ok(armed)
    }

    /// Arms the doorbell for the bell `id` (a wait set's), or for the one already published
    /// (`None`); `false`, still armed, when something is there already.
    pub(crate) fn arm_for(&mut self, id: Option<u64>) -> bool {
        let bell = &self.header().consumer_doorbell;
        if let Some(id) = id {
            bell.pollable_id.store(id, Relaxed);
        }
        bell.blocking.store(1, Relaxed);
        // Release: a producer that finds it armed reads the id stored before.
        bell.sleeping.store(crate::layout::SLEEPING_ON_FD, Release);
        // The store-load barrier of the doorbell handshake (see `wait.rs`): either the producer
        // sees us armed after its commit, or we see its commit here.
        full_fence();
        !self.has_news()
    }

    /// Stops the producer ringing (a wait set's member; the set drains its own bell).
    pub(crate) fn disarm_for_set(&mut self) {
        let bell = &self.header().consumer_doorbell;
        bell.sleeping.store(0, Relaxed);
        crate::wait::set_blocking(bell, self.wait);
    }

    /// Leaving a wait set: the producer rings this consumer's own pollable doorbell again (or
    /// none).
    pub(crate) fn leave_set(&mut self) {
        self.disarm_for_set();
        let own = self.pollable.as_ref().map_or(0, BellListener::id);
        self.header().consumer_doorbell.pollable_id.store(own, Release);
    }

    /// Whether [`try_recv`](Self::try_recv) has something to look at now (a record, padding, a
    /// bad header): one load, no validation.
    pub(crate) fn has_news(&self) -> bool {
        self.poisoned.is_some() || self.slot(self.read_pos).load(Acquire) != 0
    }

    /// Whether the producer is known gone (closed or dead): a liveness check, not for hot loops.
    /// When it is, the next empty poll looks again at once, so `try_recv` agrees.
    pub(crate) fn producer_is_gone(&mut self) -> bool {
        let gone = self.producer_gone();
        self.producer_gone_hint = gone;
        gone
    }

    /// Ends a sleep on the pollable doorbell: the producer stops ringing it, and what it sent
    /// is read, so the descriptor is quiet until the next arm-and-commit. Harmless when not
    /// armed.
    pub fn disarm_doorbell(&mut self) {
        let Some(listener) = &self.pollable else { return };
        let bell = &self.header().consumer_doorbell;
        bell.sleeping.store(0, Relaxed);
        crate::wait::set_blocking(bell, self.wait);
        listener.drain();
    }

    /// Sets when records are released ([`ReleaseMode::OnDrop`] by default). Switching to
    /// [`ReleaseMode::Explicit`] is refused while leases are outstanding; switching back releases
    /// every held record, cumulatively, when the next guard or batch drops.
    pub fn set_release_mode(&mut self, mode: ReleaseMode) -> Result<(), LeasesOutstanding> {
        if mode == ReleaseMode::Explicit {
            if let Some(queue) = self.leases.as_ref().filter(|queue| !queue.is_idle()) {
                return Err(LeasesOutstanding { outstanding: queue.capacity() - queue.room() });
            }
            // The last lease's fold published the head without telling `self.head`; explicit
            // release needs it exact (rewind and acknowledgements start from it).
            self.leases = None;
            self.head = self.header().consumer_position.position.load(Acquire);
        }
        self.explicit = mode == ReleaseMode::Explicit;
        self.deferred = self.explicit || self.leases.is_some();
        Ok(())
    }

    /// The release mode in force.
    pub fn release_mode(&self) -> ReleaseMode {
        if self.explicit { ReleaseMode::Explicit } else { ReleaseMode::OnDrop }
    }

    /// Sets how many [`Lease`]s this consumer may hold at once (default 4096, at least 1, at
    /// most the records the ring can hold: capacity / 8, since a larger queue could never fill
    /// and would only be allocated). Takes effect now if no lease is outstanding, otherwise once
    /// they are all dropped. Shown by `tadpole stat`.
    pub fn set_max_leases(&mut self, max: usize) {
        let most_records = usize::try_from(self.capacity / RECORD_ALIGN).unwrap_or(usize::MAX);
        self.max_leases = max.clamp(1, most_records.max(1));
        self.header().consumer_counters.lease_capacity.store(self.max_leases as u64, Relaxed);
        if self.leases.as_ref().is_some_and(|queue| queue.is_idle()) {
            self.leases = None;
            self.deferred = self.explicit;
        }
    }

    #[inline]
    fn header(&self) -> &SegmentHeader {
        // SAFETY: points at the header page of `self.segment`'s mapping, which stays mapped (and
        // validated) as long as `self`; the header holds only atomics, so shared access is fine.
        unsafe { self.header.as_ref() }
    }

    /// The segment this consumer reads.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The ring's epoch ([`Segment::epoch`]): with a record's position, it names the record.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Position of the next record to be delivered (after everything handed out so far).
    pub fn read_position(&self) -> u64 {
        self.read_pos
    }

    /// Everything before this position has been released to the producer (lags behind while
    /// leases, or in explicit mode unacknowledged records, are held).
    pub fn release_position(&self) -> u64 {
        self.header().consumer_position.position.load(Acquire)
    }

    /// Whether the producer is attached, detached, dead, or never came.
    pub fn producer_state(&self) -> PeerState {
        peer_state(&self.segment, Side::Producer)
    }

    /// Counts one record this ring's receiver refused (a dead letter) in the segment, where
    /// [`Segment::status`] (and so `tadpole stat` in any process) reads it:
    /// [`ConsumerCounters::dead_letters`](crate::ConsumerCounters::dead_letters). For the layer
    /// above the ring that decides a record is unusable (the typed channels, a relay); the ring
    /// itself never calls it. One relaxed add on a cache line the receive path never writes.
    ///
    /// ```
    /// use ipc_core::{DeadLetterReason, RingBuilder};
    /// let segment = RingBuilder::new(4096).create_anonymous()?;
    /// let (mut producer, mut consumer) = (segment.producer()?, segment.consumer()?);
    /// producer.try_send(b"not what this receiver expects")?;
    /// drop(consumer.try_recv()?); // read, judged unusable, released
    /// consumer.count_dead_letter(DeadLetterReason::Malformed);
    /// assert_eq!(segment.status().consumed.dead_letters(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cold]
    pub fn count_dead_letter(&self, reason: DeadLetterReason) {
        let c = &self.header().consumer_counters;
        let counter = match reason {
            DeadLetterReason::Malformed => &c.dead_letters_malformed,
            DeadLetterReason::Undeliverable => &c.dead_letters_undeliverable,
        };
        counter.fetch_add(1, Relaxed);
    }

    #[inline]
    fn slot(&self, pos: u64) -> &AtomicU64 {
        // SAFETY: `pos` is record-aligned (8), so `pos & mask` addresses a whole word inside
        // the data region, which `self.segment` keeps mapped.
        unsafe { AtomicU64::from_ptr(self.data.add((pos & self.mask) as usize).cast_mut().cast()) }
    }

    /// Looks at the record at `pos`, skipping padding; `Ok(None)` when nothing is published.
    /// A bad header comes back as its position and what is wrong with it, uncounted.
    #[inline(always)]
    fn peek_at(&mut self, pos: u64) -> Result<Option<Found>, (u64, CorruptReason)> {
        let word = self.slot(pos).load(Acquire);
        if let Some(found) = self.accept_message(pos, word) {
            return Ok(Some(found));
        }
        if word == 0 {
            return Ok(None);
        }
        self.peek_word(pos, word)
    }

    /// The common case of [`peek_at`](Self::peek_at); see [`FastChecks::accept`].
    #[inline(always)]
    fn accept_message(&self, pos: u64, word: u64) -> Option<Found> {
        self.fast_checks().accept(pos, word)
    }

    #[inline(always)]
    fn fast_checks(&self) -> FastChecks {
        FastChecks {
            data: self.data,
            mask: self.mask,
            capacity: self.capacity,
            max_len: self.max_len,
            align_mask: self.align_mask,
            head: self.head,
        }
    }

    /// [`peek_at`](Self::peek_at) for a `word` already loaded at `pos`, checked by
    /// [`layout::check_record`] so a fault is reported with its reason.
    #[cold]
    fn peek_word(&mut self, mut pos: u64, mut word: u64) -> Result<Option<Found>, (u64, CorruptReason)> {
        let mut refreshed = false;
        loop {
            let limit = layout::producer_limit(self.head, self.capacity);
            let rec = match layout::check_record(pos, word, self.bounds, limit) {
                Ok(Some(rec)) => rec,
                Ok(None) => return Ok(None),
                // Leases released on other threads may have moved the head on: look once more.
                Err(CorruptReason::OutOfBounds) if !refreshed => {
                    refreshed = true;
                    self.head = self.header().consumer_position.position.load(Acquire);
                    continue;
                }
                Err(reason) => return Err((pos, reason)),
            };
            if rec.header.padding {
                pos = rec.end;
                word = self.slot(pos).load(Acquire);
                continue;
            }
            return Ok(Some(Found {
                payload_pos: pos + RECORD_HEADER_LEN,
                len: rec.header.payload_len,
                message_type: rec.header.message_type,
                end: rec.end,
            }));
        }
    }

    /// [`peek_at`](Self::peek_at), counting a corrupt record and poisoning the consumer.
    #[inline]
    fn checked_peek(&mut self, pos: u64) -> Result<Option<Found>, TryRecvError> {
        self.peek_at(pos).map_err(|(position, reason)| self.corrupt(position, reason))
    }

    #[cold]
    fn corrupt(&mut self, position: u64, reason: CorruptReason) -> TryRecvError {
        self.counters.corrupt = self.counters.corrupt.wrapping_add(1);
        self.header().consumer_counters.corrupt_records.store(self.counters.corrupt, Relaxed);
        self.poisoned = Some((position, reason));
        TryRecvError::Corrupt { position, reason }
    }

    /// The next record when it is a message that the fast path accepts and can be handed out
    /// without looking at leases; `None` sends the caller to [`poll`](Self::poll), which
    /// looks again and settles every other case. Kept free of `Result`s so that the receive
    /// fast path stays in registers.
    #[inline(always)]
    fn poll_fast(&self) -> Option<Found> {
        if self.poisoned.is_some() {
            return None;
        }
        let found = self.accept_message(self.read_pos, self.slot(self.read_pos).load(Acquire))?;
        match &self.leases {
            Some(queue) if !queue.is_idle() => None,
            _ => Some(found),
        }
    }

    /// [`poll`](Self::poll) out of line, for when [`poll_fast`](Self::poll_fast) declined.
    #[cold]
    #[inline(never)]
    fn poll_slow(&mut self) -> Result<Found, TryRecvError> {
        self.poll()
    }

    /// The next record, or why there is none. Empty means the caller may wait.
    #[inline]
    fn poll(&mut self) -> Result<Found, TryRecvError> {
        if let Some((position, reason)) = self.poisoned {
            return Err(TryRecvError::Corrupt { position, reason });
        }
        match self.checked_peek(self.read_pos)? {
            Some(found) => self.reserve_release_slot(found),
            None => self.empty(),
        }
    }

    #[cold]
    fn empty(&mut self) -> Result<Found, TryRecvError> {
        self.counters.empty_polls = self.counters.empty_polls.wrapping_add(1);
        // A clean close is a release store made after the producer's last commit, so once it is
        // seen, one more look at the header settles whether anything is left.
        if self.header().producer_attach.owner.load(Acquire) & OWNER_DETACHED != 0 {
            return self.drain_or_disconnected();
        }
        if self.counters.empty_polls % 64 == 0 || self.producer_gone_hint {
            return self.every_64_empty_polls();
        }
        Err(TryRecvError::Empty)
    }

    /// Counters out, and a death looked for on the schedule (a `kill` and a `/proc` read at most
    /// every few milliseconds, by the coarse clock).
    #[cold]
    #[inline(never)]
    fn every_64_empty_polls(&mut self) -> Result<Found, TryRecvError> {
        self.publish_counters();
        let hinted = std::mem::take(&mut self.producer_gone_hint);
        if (hinted || self.peer_check.due_by_clock()) && self.producer_gone() {
            return self.drain_or_disconnected();
        }
        Err(TryRecvError::Empty)
    }

    /// The producer is gone: a dead process commits nothing more, so what is published now is all
    /// there is. The next record if any, else `Disconnected`.
    #[cold]
    fn drain_or_disconnected(&mut self) -> Result<Found, TryRecvError> {
        if self.segment.map.truncated() {
            return Err(self.truncated());
        }
        match self.checked_peek(self.read_pos)? {
            Some(found) => self.reserve_release_slot(found),
            None => Err(TryRecvError::Disconnected),
        }
    }

    /// Whether the producer is closed or dead, or the ring's file was truncated (found by the
    /// probe, see `sigbus`): either way nothing more will come, and `drain_or_disconnected` tells
    /// which.
    fn producer_gone(&self) -> bool {
        self.segment.probe_truncated() || matches!(self.producer_state(), PeerState::Dead(_) | PeerState::Closed)
    }

    /// The ring's file was truncated: the mapping is zeros now, so the ring ends here for good.
    /// Not counted as a corrupt record: the counters are zeros of this process alone too.
    #[cold]
    fn truncated(&mut self) -> TryRecvError {
        let (position, reason) = (self.read_pos, CorruptReason::Truncated);
        self.poisoned = Some((position, reason));
        TryRecvError::Corrupt { position, reason }
    }

    /// Receives the next message without waiting. The guard borrows the payload in shared
    /// memory; its space is released when the guard drops (see [`ReleaseMode`]).
    #[inline(always)]
    pub fn try_recv(&mut self) -> Result<ReadGuard<'_>, TryRecvError> {
        let found = match self.poll_fast() {
            Some(found) => found,
            None => self.poll_slow()?,
        };
        Ok(self.guard(found))
    }

    /// Receives the next message, waiting with the wait strategy for as long as it takes.
    pub fn recv(&mut self) -> Result<ReadGuard<'_>, RecvError> {
        let found = self.poll_waiting(None).map_err(forever)?;
        Ok(self.guard(found))
    }

    /// [`recv`](Self::recv) giving up after `timeout` with [`RecvTimeoutError::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<ReadGuard<'_>, RecvTimeoutError> {
        let found = self.poll_waiting(Some(timeout))?;
        Ok(self.guard(found))
    }

    fn poll_waiting(&mut self, timeout: Option<Duration>) -> Result<Found, RecvTimeoutError> {
        let mut waiter: Option<Waiter> = None;
        loop {
            if let Some(found) = self.poll_fast() {
                return Ok(found);
            }
            match self.poll_slow() {
                Err(TryRecvError::Empty) => {}
                other => return other.map_err(waited),
            }
            let slot = self.slot(self.read_pos);
            if self.wait == WaitStrategy::BusySpin {
                // The tightest loop there is: one load of the word the producer will publish.
                // The full poll (validation, close and liveness checks, deadline) runs once per
                // SPIN_BURST loads.
                if (0..SPIN_BURST).any(|_| slot.load(Relaxed) != 0) {
                    if let Some(found) = self.poll_fast() {
                        return Ok(found);
                    }
                    // Padding (or a bad header): the full poll and the deadline below handle it.
                }
            }
            let waiter = waiter.get_or_insert_with(|| Waiter::new(self.wait, timeout));
            let h = self.header();
            match waiter.pause(&h.consumer_doorbell.sleeping, || slot.load(Acquire) == 0) {
                WaitStep::Retry => {}
                WaitStep::TimedOut => {
                    // Short timeouts in a loop must learn of a death too (on the schedule).
                    if self.peer_check.due_by_clock() && self.producer_gone() {
                        return self.drain_or_disconnected().map_err(waited);
                    }
                    return Err(RecvTimeoutError::Timeout);
                }
                WaitStep::CheckPeer => {
                    if self.producer_gone() {
                        return self.drain_or_disconnected().map_err(waited);
                    }
                }
            }
        }
    }

    /// While leases are held, every receive needs a place in the lease queue for its release
    /// (or its lease): refuse to hand out a record that could not be given back.
    #[inline]
    fn reserve_release_slot(&mut self, found: Found) -> Result<Found, TryRecvError> {
        match &self.leases {
            Some(queue) if !queue.is_idle() => Self::check_release_room(queue, found),
            _ => Ok(found),
        }
    }

    /// The part of [`reserve_release_slot`](Self::reserve_release_slot) for when leases are
    /// held: out of line, so the common receive stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn check_release_room(queue: &SegmentLeaseQueue, found: Found) -> Result<Found, TryRecvError> {
        if queue.can_take_release() {
            Ok(found)
        } else {
            Err(TryRecvError::LeasesExhausted { capacity: queue.capacity() })
        }
    }

    #[inline(always)]
    fn guard(&mut self, found: Found) -> ReadGuard<'_> {
        self.counters.messages = self.counters.messages.wrapping_add(1);
        self.counters.bytes = self.counters.bytes.wrapping_add(u64::from(found.len));
        if self.counters.messages % COUNTER_PUBLISH_INTERVAL == 0 {
            self.publish_counters();
        }
        ReadGuard { consumer: self, found }
    }

    /// Copies the process-local tallies into the segment's counters (for `tadpole stat`): every
    /// [`COUNTER_PUBLISH_INTERVAL`] messages, every 64 empty polls (so at once when the ring runs
    /// dry), after a batch, and when the consumer drops; not on every receive.
    #[cold]
    #[inline(never)]
    fn publish_counters(&self) {
        let (t, c) = (&self.counters, &self.header().consumer_counters);
        c.messages.store(t.messages, Relaxed);
        c.bytes.store(t.bytes, Relaxed);
        c.releases.store(t.releases, Relaxed);
        c.empty_polls.store(t.empty_polls, Relaxed);
    }

    /// Every message available now (at most `max`), released together when the batch drops.
    /// Returns [`TryRecvError::Empty`] when there is none (or `max` is 0). A corrupt record after
    /// good ones ends the batch; it is reported (and counted, once) by the next call.
    pub fn read_batch(&mut self, max: usize) -> Result<ReadBatch<'_>, TryRecvError> {
        if max == 0 {
            return Err(TryRecvError::Empty);
        }
        let first = match self.poll_fast() {
            Some(found) => found,
            None => self.poll_slow()?,
        };
        Ok(self.batch_from(first, max))
    }

    /// [`read_batch`](Self::read_batch), waiting up to `timeout` for the first message.
    pub fn read_batch_timeout(&mut self, max: usize, timeout: Duration) -> Result<ReadBatch<'_>, RecvTimeoutError> {
        if max == 0 {
            return Err(RecvTimeoutError::Timeout);
        }
        let first = self.poll_waiting(Some(timeout))?;
        Ok(self.batch_from(first, max))
    }

    /// A batch starting with `first`, extended over every message published after it (at most
    /// `max` in all).
    fn batch_from(&mut self, first: Found, max: usize) -> ReadBatch<'_> {
        let start = self.read_pos;
        let mut end = first.end;
        let mut count = 1usize;
        let mut bytes = u64::from(first.len);
        let mut checks = self.fast_checks();
        while count < max {
            checks.prefetch_ahead(end);
            let word = checks.load(end);
            let found = match checks.accept(end, word) {
                Some(found) => found,
                None if word == 0 => break,
                // Padding, or a fault, which ends the batch: the next call reports it.
                None => match self.peek_word(end, word) {
                    Ok(Some(found)) => {
                        checks = self.fast_checks(); // `peek_word` may have moved `head` on
                        found
                    }
                    Ok(None) | Err(_) => break,
                },
            };
            end = found.end;
            bytes += u64::from(found.len);
            count += 1;
        }
        self.counters.messages = self.counters.messages.wrapping_add(count as u64);
        self.counters.bytes = self.counters.bytes.wrapping_add(bytes);
        self.publish_counters();
        ReadBatch { consumer: self, start, end, count }
    }

    /// Acknowledges, in [`ReleaseMode::Explicit`], the record at `position` and every record
    /// before it: their space goes back to the producer with one store. A position already
    /// released is accepted and changes nothing (acknowledgements may repeat).
    ///
    /// ```
    /// use ipc_core::{ReleaseMode, RingBuilder};
    /// let segment = RingBuilder::new(1 << 16).create_anonymous()?;
    /// let (mut producer, mut consumer) = (segment.producer()?, segment.consumer()?);
    /// consumer.set_release_mode(ReleaseMode::Explicit)?;
    /// for i in 0..3u8 {
    ///     producer.try_send(&[i])?;
    /// }
    /// let positions: Vec<u64> = (0..3).map(|_| consumer.try_recv().unwrap().position()).collect();
    /// assert_eq!(consumer.release_position(), 0); // nothing acknowledged yet
    /// consumer.release_through(positions[1])?;   // the first two
    /// consumer.rewind();                         // deliver what is still held again
    /// assert_eq!(consumer.try_recv()?.position(), positions[2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release_through(&mut self, position: u64) -> Result<(), ReleaseError> {
        if position < self.head {
            return Ok(());
        }
        if !self.explicit || position % RECORD_ALIGN != 0 || position >= self.read_pos {
            return Err(ReleaseError::NotHeld { position });
        }
        let word = self.slot(position).load(Acquire);
        match layout::check_record(position, word, self.bounds, self.read_pos) {
            Ok(Some(rec)) if !rec.header.padding => {
                self.store_head(rec.end);
                Ok(())
            }
            _ => Err(ReleaseError::NotHeld { position }),
        }
    }

    /// In [`ReleaseMode::Explicit`], moves delivery back to the oldest unacknowledged record, so
    /// every held record is delivered again (what a relay does after a reconnect). Returns the
    /// position delivery resumes from. In [`ReleaseMode::OnDrop`] nothing is held and this only
    /// returns [`read_position`](Self::read_position).
    pub fn rewind(&mut self) -> u64 {
        if self.explicit {
            self.read_pos = self.head;
        }
        self.read_pos
    }

    /// A guard or batch ending at `end` is done with.
    #[inline(always)]
    fn finish(&mut self, end: u64) {
        self.read_pos = end;
        if self.deferred {
            return self.finish_deferred(end);
        }
        self.store_head(end);
    }

    /// [`finish`](Self::finish) in explicit mode (delivery only moves on) or with a lease queue.
    #[cold]
    #[inline(never)]
    fn finish_deferred(&mut self, end: u64) {
        if !self.explicit {
            self.release(end);
        }
    }

    /// Releases everything before `end` (the end of the record(s) just handed back).
    #[inline]
    fn release(&mut self, end: u64) {
        self.read_pos = end;
        if let Some(queue) = self.leases.as_ref().filter(|queue| !queue.is_idle()) {
            Self::release_behind_leases(queue, end);
            return;
        }
        self.store_head(end);
    }

    /// Publishes `end` as the head: the producer may reuse everything before it.
    #[inline(always)]
    fn store_head(&mut self, end: u64) {
        self.head = end;
        self.counters.releases = self.counters.releases.wrapping_add(1);
        let h = self.header();
        h.consumer_position.position.store(end, Release);
        if ring_doorbell(&h.producer_doorbell).woke() {
            self.count_wake();
        }
    }

    #[cold]
    fn count_wake(&mut self) {
        self.counters.wakes = self.counters.wakes.wrapping_add(1);
        self.header().consumer_counters.wakes.store(self.counters.wakes, Relaxed);
    }

    /// Leased records are still held: the record(s) ending at `end` are released in order behind
    /// them. Room was checked when the record was handed out (`reserve_release_slot`), and only
    /// this thread adds entries, so this cannot fail. Out of line: see `check_release_room`.
    #[cold]
    #[inline(never)]
    fn release_behind_leases(queue: &SegmentLeaseQueue, end: u64) {
        let _ = queue.push_released(end);
    }

    /// The lease queue, made on first use (or after [`set_max_leases`](Self::set_max_leases)).
    fn lease_queue(&mut self) -> Arc<SegmentLeaseQueue> {
        // A new maximum takes effect once the queue has drained.
        if self.leases.as_ref().is_some_and(|queue| queue.capacity() != self.max_leases && queue.is_idle()) {
            self.leases = None;
        }
        let (attachment, max) = (&self.attachment, self.max_leases);
        self.deferred = true;
        self.leases.get_or_insert_with(|| Arc::new(SegmentLeaseQueue::new(attachment.clone(), max))).clone()
    }

    /// Takes a lease entry for a record or batch ending at `end`: its sequence number, or the
    /// queue's capacity when it is full (nothing changed then).
    fn take_lease(&mut self, end: u64) -> Result<(Arc<SegmentLeaseQueue>, u64), usize> {
        let queue = self.lease_queue();
        let seq = queue.push_held().map_err(|_| queue.capacity())?;
        self.read_pos = end;
        let held = (queue.capacity() - queue.room()) as u64;
        self.header().consumer_counters.leases_held.store(held, Relaxed);
        Ok((queue, seq))
    }

    #[inline(always)]
    fn payload_ptr(&self, payload_pos: u64) -> *const u8 {
        // SAFETY: `peek_at` checked that the record lies inside one lap of the data region.
        unsafe { self.data.add((payload_pos & self.mask) as usize) }
    }

    fn span(&self, start: u64, end: u64) -> SpanIter<'_> {
        SpanIter {
            data: self.data,
            mask: self.mask,
            capacity: self.capacity,
            bounds: self.bounds,
            pos: start,
            end,
            _records: std::marker::PhantomData,
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.pollable.is_some() {
            let bell = &self.header().consumer_doorbell;
            bell.sleeping.store(0, Relaxed);
            bell.pollable_id.store(0, Relaxed);
        }
        self.publish_counters();
    }
}

/// A received message: the payload borrowed from shared memory, released when dropped (in
/// [`ReleaseMode::OnDrop`]). A guard dropped while its thread panics is not done with: its
/// record is neither released nor passed, and is delivered again (at-least-once).
pub struct ReadGuard<'a> {
    consumer: &'a mut Consumer,
    found: Found,
}

impl<'a> ReadGuard<'a> {
    /// The message type the producer set (0 by default).
    pub fn message_type(&self) -> u16 {
        self.found.message_type
    }

    /// Where the record starts in the ring: strictly increasing along the ring, and the same
    /// for a record delivered again (to this consumer after [`Consumer::rewind`], or to a new
    /// consumer after a crash), so it identifies the record within [`epoch`](Self::epoch).
    pub fn position(&self) -> u64 {
        self.found.position()
    }

    /// The ring's epoch ([`Segment::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.consumer.epoch
    }

    /// Counts this record as refused by its receiver, while it is still in hand (see
    /// [`Consumer::count_dead_letter`]); dropping or requeueing it is still up to the caller.
    pub fn count_dead_letter(&self, reason: DeadLetterReason) {
        self.consumer.count_dead_letter(reason);
    }

    /// Keeps the message beyond this borrow of the consumer; see [`Lease`]. When refused (the
    /// consumer holds its maximum of leases, or releases explicitly), the guard comes back in
    /// the error with its record unreleased: [`LeaseError::into_inner`].
    pub fn into_lease(self) -> Result<Lease, LeaseError<ReadGuard<'a>>> {
        if self.consumer.explicit {
            return Err(LeaseError { reason: LeaseRefused::ExplicitRelease, guard: self });
        }
        let found = self.found;
        let (queue, seq) = match self.consumer.take_lease(found.end) {
            Ok(taken) => taken,
            Err(capacity) => return Err(LeaseError { reason: LeaseRefused::Exhausted { capacity }, guard: self }),
        };
        let ptr = self.consumer.payload_ptr(found.payload_pos);
        let lease = Lease::new(
            queue,
            seq,
            found.end,
            ptr,
            found.len as usize,
            found.message_type,
            found.position(),
            self.consumer.epoch,
        );
        // The lease owns the release now; the guard must not release too.
        std::mem::forget(self);
        Ok(lease)
    }
}

impl ReadGuard<'_> {
    /// Puts the record back, unreleased: the next receive delivers it again (for a caller that
    /// cannot deal with it now, e.g. after a refused [`into_lease`](Self::into_lease)).
    pub fn requeue(self) {
        // Delivery moves on only when a guard finishes; a forgotten guard never finishes.
        std::mem::forget(self);
    }
}

impl std::ops::Deref for ReadGuard<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        let ptr = self.consumer.payload_ptr(self.found.payload_pos);
        // SAFETY: the record was validated to lie in the data region; the producer will not
        // write it until it is released, which happens only when this guard drops.
        unsafe { std::slice::from_raw_parts(ptr, self.found.len as usize) }
    }
}

impl Drop for ReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // A panic while the record was in hand means it was not dealt with: keep it.
        if std::thread::panicking() {
            return;
        }
        self.consumer.finish(self.found.end);
    }
}

/// Messages received together ([`Consumer::read_batch`]) and released together on drop (not
/// while the thread panics: see [`ReadGuard`]).
pub struct ReadBatch<'a> {
    consumer: &'a mut Consumer,
    start: u64,
    end: u64,
    count: usize,
}

/// One message of a [`ReadBatch`] or [`BatchLease`](crate::BatchLease).
#[derive(Clone, Copy, Debug)]
pub struct Record<'b> {
    /// The message type the producer set.
    pub message_type: u16,
    /// Where the record starts in the ring (see [`ReadGuard::position`]).
    pub position: u64,
    /// The payload in shared memory.
    pub payload: &'b [u8],
}

impl<'a> ReadBatch<'a> {
    /// Number of messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// False, unless [`truncate`](Self::truncate)d to nothing: an empty batch is never returned.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Keeps only the first `n` messages in hand (all of them when there are no more): the rest
    /// go back unread, as with [`ReadGuard::requeue`], and the next receive delivers them again.
    /// For a reader that learns only while going through a batch where it must stop (a full
    /// window, a size limit).
    ///
    /// ```
    /// use ipc_core::RingBuilder;
    /// let segment = RingBuilder::new(1 << 16).create_anonymous()?;
    /// let (mut producer, mut consumer) = (segment.producer()?, segment.consumer()?);
    /// for i in 0..5u8 {
    ///     producer.try_send(&[i])?;
    /// }
    /// let mut batch = consumer.read_batch(16)?;
    /// assert_eq!(batch.len(), 5);
    /// batch.truncate(2);
    /// assert_eq!(batch.iter().map(|r| r.payload[0]).collect::<Vec<_>>(), [0, 1]);
    /// drop(batch);
    /// assert_eq!(&consumer.try_recv()?[..], &[2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn truncate(&mut self, n: usize) {
        if n >= self.count {
            return;
        }
        let mut kept = self.consumer.span(self.start, self.end);
        for _ in 0..n {
            kept.next();
        }
        let end = kept.pos;
        // They were counted as received when the batch was formed.
        let (dropped, bytes) = kept.fold((0u64, 0u64), |(n, b), r| (n + 1, b + r.payload.len() as u64));
        let c = &mut self.consumer.counters;
        c.messages = c.messages.wrapping_sub(dropped);
        c.bytes = c.bytes.wrapping_sub(bytes);
        self.end = end;
        self.count = n;
    }

    /// The ring's epoch ([`Segment::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.consumer.epoch
    }

    /// Counts this record as refused by its receiver, while it is still in hand (see
    /// [`Consumer::count_dead_letter`]); dropping or requeueing it is still up to the caller.
    pub fn count_dead_letter(&self, reason: DeadLetterReason) {
        self.consumer.count_dead_letter(reason);
    }

    /// The messages, in ring order.
    pub fn iter(&self) -> SpanIter<'_> {
        self.consumer.span(self.start, self.end)
    }

    /// Keeps the batch beyond this borrow of the consumer, as one lease (see
    /// [`ReadGuard::into_lease`]; a refused batch comes back in the error, unreleased).
    pub fn into_lease(self) -> Result<BatchLease, LeaseError<ReadBatch<'a>>> {
        if self.consumer.explicit {
            return Err(LeaseError { reason: LeaseRefused::ExplicitRelease, guard: self });
        }
        let (queue, seq) = match self.consumer.take_lease(self.end) {
            Ok(taken) => taken,
            Err(capacity) => return Err(LeaseError { reason: LeaseRefused::Exhausted { capacity }, guard: self }),
        };
        let c = &*self.consumer;
        let lease = BatchLease::new(
            queue,
            seq,
            crate::lease::SpanShape {
                data: c.data,
                mask: c.mask,
                capacity: c.capacity,
                bounds: c.bounds,
                start: self.start,
                end: self.end,
            },
            self.count,
            c.epoch,
        );
        std::mem::forget(self);
        Ok(lease)
    }
}

impl<'b> IntoIterator for &'b ReadBatch<'_> {
    type Item = Record<'b>;
    type IntoIter = SpanIter<'b>;
    fn into_iter(self) -> SpanIter<'b> {
        self.iter()
    }
}

impl Drop for ReadBatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.consumer.finish(self.end);
    }
}

/// The messages of a batch, in ring order ([`ReadBatch::iter`], [`BatchLease::iter`](crate::BatchLease::iter)).
pub struct SpanIter<'b> {
    pub(crate) data: *const u8,
    pub(crate) mask: u64,
    pub(crate) capacity: u64,
    pub(crate) bounds: RecordBounds,
    pub(crate) pos: u64,
    pub(crate) end: u64,
    pub(crate) _records: std::marker::PhantomData<&'b [u8]>,
}

impl<'b> SpanIter<'b> {
    #[inline(always)]
    fn load(&self, pos: u64) -> u64 {
        // SAFETY: `pos & mask` addresses a whole 8-aligned word inside the data region, which the
        // batch (or lease) this iterator borrows keeps mapped.
        unsafe { AtomicU64::from_ptr(self.data.add((pos & self.mask) as usize).cast_mut().cast()) }.load(Acquire)
    }

    #[inline(always)]
    fn payload(&self, payload_pos: u64, len: u32) -> &'b [u8] {
        // SAFETY: callers checked that the record lies inside one lap of the data region and
        // inside the batch's span, which stays mapped and unreleased for `'b`: the lifetime of
        // the batch (or lease) this iterator borrows.
        unsafe { std::slice::from_raw_parts(self.data.add((payload_pos & self.mask) as usize), len as usize) }
    }
}

impl<'b> Iterator for SpanIter<'b> {
    type Item = Record<'b>;

    #[inline]
    fn next(&mut self) -> Option<Record<'b>> {
        while self.pos < self.end {
            let pos = self.pos;
            // The headers were validated when the batch was formed, but shared memory may be
            // rewritten by a hostile peer since: bound every record by the batch again.
            let word = self.load(pos);
            // Fast path: a message header for this position whose record ends inside the batch
            // (so inside the validated span and one lap).
            let len = word as u32;
            let next = pos + record_len(u64::from(len));
            let (message_type, len) = if (word & TAG_MASK == message_tag(pos))
                & (next <= self.end)
                & ((pos & self.mask) + (next - pos) <= self.capacity)
                & ((pos + RECORD_HEADER_LEN) & (self.bounds.payload_align - 1) == 0)
            {
                self.pos = next;
                ((word >> 32) as u16, len)
            } else {
                match layout::check_record(pos, word, self.bounds, self.end) {
                    Ok(Some(rec)) => {
                        self.pos = rec.end;
                        if rec.header.padding {
                            continue;
                        }
                        (rec.header.message_type, rec.header.payload_len)
                    }
                    Ok(None) | Err(_) => {
                        self.pos = self.end;
                        return None;
                    }
                }
            };
            let payload = self.payload(pos + RECORD_HEADER_LEN, len);
            return Some(Record { message_type, position: pos, payload });
        }
        None
    }
}
