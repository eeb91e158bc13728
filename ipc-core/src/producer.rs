//! The producer side of a ring: reserve space, write in place, commit with one release store.
//! Never blocks, allocates or makes a syscall on the fast path; the doorbell syscall happens only
//! when the consumer is asleep.

use std::ptr::NonNull;
use std::time::Duration;

use crate::layout::{
    self, FrontierSlot, OWNER_DETACHED, RECORD_HEADER_LEN, SLACK, SegmentHeader, encode_header, record_len,
};
use crate::liveness::ProcessId;
use crate::pollable::BellRinger;
use crate::segment::{PayloadAlign, Segment, SegmentFault, check_head_behind, check_positions};
use crate::sync::atomic::AtomicU64;
use crate::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use crate::wait::{PeerSchedule, Rang, WaitStep, WaitStrategy, Waiter, ring_doorbell};
use crate::{AttachError, PeerState, Side, SideClaim, attach_side, detach_side, peer_state};

/// Why [`Producer::try_send`], [`Producer::try_reserve`] or a [`WriteBatch`] reservation wrote
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    /// The ring has no room now; nothing was written.
    #[error("ring full")]
    Full,
    /// The message is larger than the ring's maximum; nothing was written.
    #[error("message of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// No consumer is attached: it detached, or its process is gone. Nothing was written;
    /// sending succeeds again once a consumer attaches (it resumes at the first unreleased
    /// record). A consumer that never attached yet is not a disconnection.
    #[error("consumer disconnected")]
    Disconnected,
    /// The consumer's position is impossible: the segment is corrupt or hostile.
    #[error("ring corrupt: {0}")]
    Corrupt(SegmentFault),
}

/// Why [`Producer::send`] or [`Producer::reserve`] wrote nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// See [`TrySendError::TooLarge`].
    #[error("message of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// See [`TrySendError::Disconnected`].
    #[error("consumer disconnected")]
    Disconnected,
    /// See [`TrySendError::Corrupt`].
    #[error("ring corrupt: {0}")]
    Corrupt(SegmentFault),
}

/// Why [`Producer::send_timeout`], [`Producer::reserve_timeout`] or
/// [`WriteBatch::reserve_timeout`] wrote nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendTimeoutError {
    /// No room before the timeout passed.
    #[error("timed out waiting for ring space")]
    Timeout,
    /// See [`TrySendError::TooLarge`].
    #[error("message of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// See [`TrySendError::Disconnected`].
    #[error("consumer disconnected")]
    Disconnected,
    /// See [`TrySendError::Corrupt`].
    #[error("ring corrupt: {0}")]
    Corrupt(SegmentFault),
}

/// Why a claim failed, in one byte so that `Result<u64, Refusal>` travels in registers on the
/// fast path; the details (lengths, the fault) are added by [`Producer::explain`] on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Full,
    Timeout,
    TooLarge,
    Disconnected,
    Corrupt,
}

/// A refusal with its details: the union of the public errors, converted by each call.
struct Explained {
    refusal: Refusal,
    len: usize,
    max: usize,
    fault: Option<SegmentFault>,
}

impl Explained {
    fn fault(self) -> SegmentFault {
        // `Corrupt` is only refused after `refresh_head` stored the fault.
        self.fault.unwrap_or(SegmentFault::NotInitialized)
    }
}

impl From<Explained> for TrySendError {
    fn from(e: Explained) -> Self {
        match e.refusal {
            // `try_` calls never wait, so never time out.
            Refusal::Full | Refusal::Timeout => TrySendError::Full,
            Refusal::TooLarge => TrySendError::TooLarge { len: e.len, max: e.max },
            Refusal::Disconnected => TrySendError::Disconnected,
            Refusal::Corrupt => TrySendError::Corrupt(e.fault()),
        }
    }
}

impl From<Explained> for SendTimeoutError {
    fn from(e: Explained) -> Self {
        match e.refusal {
            Refusal::Full | Refusal::Timeout => SendTimeoutError::Timeout,
            Refusal::TooLarge => SendTimeoutError::TooLarge { len: e.len, max: e.max },
            Refusal::Disconnected => SendTimeoutError::Disconnected,
            Refusal::Corrupt => SendTimeoutError::Corrupt(e.fault()),
        }
    }
}

impl From<Explained> for SendError {
    fn from(e: Explained) -> Self {
        match e.refusal {
            // A wait without a deadline returns neither; a gone consumer is `Disconnected`.
            Refusal::Full | Refusal::Timeout | Refusal::Disconnected => SendError::Disconnected,
            Refusal::TooLarge => SendError::TooLarge { len: e.len, max: e.max },
            Refusal::Corrupt => SendError::Corrupt(e.fault()),
        }
    }
}

/// The committed frontier of a ring ([`Producer::frontier`]): exact, even after the previous
/// producer was killed in the middle of a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frontier {
    /// End of the last committed record: where the next record will start.
    pub position: u64,
    /// Messages committed in the ring's whole life, by every producer it had.
    pub messages: u64,
}

/// [`Producer::try_reserve_owned`] refused: the error, and the producer back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ReserveOwnedError {
    /// Why nothing was reserved.
    pub error: TrySendError,
    /// The producer, unchanged.
    pub producer: Producer,
}

/// The producer of a ring: exactly one per ring across all processes.
///
/// ```
/// use ipc_core::RingBuilder;
/// let segment = RingBuilder::new(1 << 16).create_anonymous()?;
/// let (mut producer, mut consumer) = (segment.producer()?, segment.consumer()?);
///
/// producer.try_send(b"hello")?;
/// let mut grant = producer.try_reserve(5)?;   // build in place, in shared memory
/// grant.copy_from_slice(b"world");
/// grant.commit();
///
/// assert_eq!(&*consumer.try_recv()?, b"hello");
/// assert_eq!(&*consumer.try_recv()?, b"world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Producer {
    segment: Segment,
    /// The producer side, held with this claim until drop.
    claim: SideClaim,
    /// The segment's header page, cached: `segment.header()` goes through the `Arc`.
    header: NonNull<SegmentHeader>,
    data: *mut u8,
    mask: u64,
    capacity: u64,
    max_len: u32,
    align64: bool,
    /// End of the last commit: where the next record (or padding) starts.
    tail: u64,
    /// Last consumer position read from shared memory; refreshed only when space looks short.
    cached_head: u64,
    /// Last published write limit (see `AttachBlock::write_limit`).
    write_limit: u64,
    wait: WaitStrategy,
    counters: Tally,
    /// A reservation or batch in progress: where it ends and the header word for its first
    /// record, stored last (with release) to publish the whole span. Reset when a reservation
    /// or batch starts (not after a publish: a dropped grant or batch may have left it dirty).
    pending: Pending,
    /// The frontier slot the next commit writes (see `ProducerPositionBlock`), in the header
    /// page; the other slot is at this address xor [`FRONTIER_TOGGLE`].
    frontier_slot: *const FrontierSlot,
    peer_check: PeerSchedule,
    /// Claims left before the consumer's liveness is considered again (see `PeerSchedule`).
    claims_to_peer_check: u32,
    /// The consumer's owner word when it was found gone: until it changes, claims fail at once.
    gone_consumer: Option<u64>,
    /// Rings the consumer's pollable doorbell when it sleeps on one.
    bell: BellRinger,
    /// The impossible consumer position last refused (`Refusal::Corrupt`'s detail).
    fault: Option<SegmentFault>,
}

/// Xor of the two frontier slots' addresses: they are adjacent, and the first sits at an offset
/// (in a page-aligned header) with this bit clear, so one xor steps from either to the other.
const FRONTIER_TOGGLE: usize = core::mem::size_of::<FrontierSlot>();
const _: () = {
    assert!(FRONTIER_TOGGLE.is_power_of_two());
    assert!(crate::layout::offsets::producer_position::FRONTIER & FRONTIER_TOGGLE == 0);
    assert!(crate::layout::offsets::producer_position::FRONTIER_SLOT_LEN == FRONTIER_TOGGLE);
};

/// Claims between two looks at the coarse clock for the consumer's liveness.
const CLAIMS_PER_PEER_CHECK: u32 = 64;

/// The frontier slot that is certainly complete (the lower `end`, see `ProducerPositionBlock`):
/// (index, end, messages).
pub(crate) fn complete_frontier(h: &SegmentHeader) -> (usize, u64, u64) {
    let [a, b] = &h.producer_position.frontier;
    // `messages` is stored after `end` with release: acquiring it first gives a matching `end`.
    let (ma, mb) = (a.messages.load(Acquire), b.messages.load(Acquire));
    let (ea, eb) = (a.end.load(Relaxed), b.end.load(Relaxed));
    if eb < ea { (1, eb, mb) } else { (0, ea, ma) }
}

#[derive(Default)]
struct Tally {
    messages: u64,
    bytes: u64,
    commits: u64,
    full_events: u64,
    wakes: u64,
    padding_bytes: u64,
    oversize: u64,
}

#[derive(Clone, Copy, Default)]
struct Pending {
    /// End of the span reserved so far (== tail when nothing is pending).
    end: u64,
    /// Header word for the record at `tail`, once reserved.
    first_word: u64,
    /// Messages and payload bytes of a batch (a single reservation passes its own to `publish`).
    messages: u64,
    bytes: u64,
    padding: u64,
}

// SAFETY: the raw header and data pointers point into the segment's mapping, which `segment`
// keeps alive (the header holds only atomics); a Producer is the only writer of the space it
// reserves wherever it moves.
unsafe impl Send for Producer {}

impl Segment {
    /// Attaches as this ring's producer. Fails with [`AttachError::Busy`] while another live
    /// process (or another handle in this one) is the producer. Taking over from a dead
    /// producer keeps every record it committed.
    pub fn producer(&self) -> Result<Producer, AttachError> {
        let me = ProcessId::current();
        let claim = attach_side(self, Side::Producer, me)?;
        let h = self.header();
        let head = h.consumer_position.position.load(Acquire);
        let stored_tail = h.producer_position.position.load(Acquire);
        if let Err(fault) = check_positions(head, stored_tail, self.params.capacity) {
            detach_side(self, &claim);
            return Err(AttachError::Corrupt(fault));
        }
        // The consumer may have read records past a tail that was never stored.
        let tail = stored_tail.max(head);
        let mut producer = Producer {
            segment: self.clone(),
            claim,
            header: NonNull::from(h),
            data: self.data().as_ptr(),
            mask: self.params.capacity - 1,
            capacity: self.params.capacity,
            max_len: self.params.max_message_len,
            align64: self.params.payload_align == PayloadAlign::SixtyFour,
            tail,
            cached_head: head,
            write_limit: 0,
            wait: WaitStrategy::default(),
            counters: Tally::default(),
            pending: Pending::default(),
            frontier_slot: h.producer_position.frontier.as_ptr(),
            peer_check: PeerSchedule::default(),
            claims_to_peer_check: CLAIMS_PER_PEER_CHECK,
            gone_consumer: None,
            bell: BellRinger::default(),
            fault: None,
        };
        // A producer killed between its header store and its tail store left committed records
        // past `tail`: walk them, so they are neither lost nor overwritten, and count them onto
        // the last frontier it recorded (see `ProducerPositionBlock`) for an exact total.
        let (slot, recorded_end, recorded_messages) = complete_frontier(h);
        // The complete slot is the stored tail, or a commit or two behind it; it may lie behind
        // the head when the consumer read those commits already, and the records from it on are
        // intact (nobody writes while the producer side is dead). Anything else is hostile:
        // walk from the tail, and the recorded count is then the best there is.
        let plausible = recorded_end % 8 == 0
            && recorded_end <= layout::producer_limit(head, self.params.capacity)
            && head.saturating_sub(recorded_end) <= self.params.capacity;
        let walk_from = if plausible { recorded_end } else { tail };
        let (frontier, walked) = producer.walk_committed(walk_from, head);
        let tail = frontier.max(tail);
        producer.tail = tail;
        producer.pending.end = tail;
        // The write limit never moves back (observers judge their copies by it): start from the
        // one the last producer published, or, if that is impossible, from the highest any
        // producer of this ring could have had. Published before any write of ours.
        let quarter = self.params.capacity / 4;
        let ceiling = (head + self.params.capacity).next_multiple_of(quarter);
        let shared = h.producer_attach.write_limit.load(Acquire);
        let valid = shared % quarter == 0 && shared <= ceiling && (tail == 0 || shared >= tail + SLACK);
        producer.write_limit = if valid { shared } else { ceiling };
        h.producer_attach.write_limit.store(producer.write_limit, Relaxed);
        crate::sync::atomic::fence(Release);
        let c = &h.producer_counters;
        producer.counters.messages = recorded_messages.wrapping_add(walked);
        producer.counters.bytes = c.bytes.load(Relaxed);
        producer.counters.commits = c.commits.load(Relaxed);
        producer.counters.full_events = c.full_events.load(Relaxed);
        producer.counters.wakes = c.wakes.load(Relaxed);
        producer.counters.padding_bytes = c.padding_bytes.load(Relaxed);
        producer.counters.oversize = c.oversize_rejects.load(Relaxed);
        c.messages.store(producer.counters.messages, Relaxed);
        // Keep the complete slot; record the recovered frontier in the other one (unless it adds
        // nothing), and write the complete one next.
        // From the array (not one element), so the pointer may reach both slots.
        producer.frontier_slot = h.producer_position.frontier.as_ptr().wrapping_add(1 - slot);
        if !plausible || (frontier, walked) != (recorded_end, 0) {
            producer.record_frontier();
        }
        h.producer_position.position.store(tail, Release);
        // A new producer starts with the default (non-blocking) strategy.
        crate::wait::set_blocking(&h.producer_doorbell, WaitStrategy::default());
        Ok(producer)
    }
}

impl Producer {
    /// Sets how [`send`](Self::send), [`reserve`](Self::reserve) and their `_timeout` forms wait
    /// for space. Default: [`WaitStrategy::SpinThenYield`].
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
        crate::wait::set_blocking(&self.header().producer_doorbell, wait);
    }

    #[inline]
    fn header(&self) -> &SegmentHeader {
        // SAFETY: points at the header page of `self.segment`'s mapping, which stays mapped (and
        // validated) as long as `self`; the header holds only atomics, so shared access is fine.
        unsafe { self.header.as_ref() }
    }

    /// Forgets any reservation a dropped grant or batch left behind: the next record starts
    /// at the tail. `first_word` needs no reset: whatever is staged at the tail overwrites it.
    #[inline(always)]
    fn start_pending(&mut self) {
        self.pending.end = self.tail;
        self.pending.padding = 0;
    }

    /// The segment this producer writes.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// Largest payload accepted.
    pub fn max_message_len(&self) -> usize {
        self.max_len as usize
    }

    #[inline]
    fn slot(&self, pos: u64) -> &AtomicU64 {
        // SAFETY: `pos & mask` is below capacity and 8-aligned (positions are record-aligned), so
        // the word lies inside the data region; the mapping is page aligned; `self.segment`
        // keeps it mapped.
        unsafe { AtomicU64::from_ptr(self.data.add((pos & self.mask) as usize).cast()) }
    }

    /// The committed frontier: where the next record starts and how many messages the ring has
    /// carried. Exact from attach on, even when the previous producer was killed mid-commit.
    pub fn frontier(&self) -> Frontier {
        Frontier { position: self.tail, messages: self.counters.messages }
    }

    /// Walks the records committed from `from` on (a killed producer's last commit may lie past
    /// the stored tail): where they end, and how many messages they hold. Every header passes
    /// [`layout::check_record`] against the space this producer may write.
    fn walk_committed(&self, from: u64, head: u64) -> (u64, u64) {
        let bounds = self.segment.record_bounds();
        let limit = layout::producer_limit(head, self.capacity);
        let (mut pos, mut messages) = (from, 0u64);
        while let Ok(Some(rec)) = layout::check_record(pos, self.slot(pos).load(Acquire), bounds, limit) {
            messages += u64::from(!rec.header.padding);
            pos = rec.end;
        }
        (pos, messages)
    }

    /// Writes the frontier (tail, messages) into the next slot: `end`, then `messages` with
    /// release, so the other slot stays complete whatever instant this one is interrupted at.
    #[inline(always)]
    fn record_frontier(&mut self) {
        let (tail, messages, at) = (self.tail, self.counters.messages, self.frontier_slot);
        // `map_addr` keeps the pointer's provenance (the whole slot array).
        self.frontier_slot = at.map_addr(|addr| addr ^ FRONTIER_TOGGLE);
        // SAFETY: `at` is one of the two frontier slots of this producer's header page (set at
        // attach, then toggled between them: see `FRONTIER_TOGGLE`), which `self.segment` keeps
        // mapped; a slot holds only atomics.
        let slot = unsafe { &*at };
        slot.end.store(tail, Relaxed);
        slot.messages.store(messages, Release);
    }

    /// Copies `payload` into the ring as one message of type 0. Fails with
    /// [`TrySendError::Full`] instead of waiting.
    #[inline(always)]
    pub fn try_send(&mut self, payload: &[u8]) -> Result<(), TrySendError> {
        self.try_send_typed(0, payload)
    }

    /// [`try_send`](Self::try_send) with a message type the consumer reads back.
    #[inline(always)]
    pub fn try_send_typed(&mut self, message_type: u16, payload: &[u8]) -> Result<(), TrySendError> {
        // Straight through the claim (not `try_reserve`): no grant travels through a `Result`.
        let len = payload.len();
        self.start_pending();
        let payload_pos = self.claim(len).map_err(|r| self.explain(r, len))?;
        self.payload_mut(payload_pos, len).copy_from_slice(payload);
        self.finish_record(payload_pos, len, message_type);
        self.publish(1, len as u64);
        Ok(())
    }

    /// Copies `payload` into the ring, waiting for space with the wait strategy for as long as
    /// it takes.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SendError> {
        let mut grant = self.reserve(payload.len())?;
        grant.copy_from_slice(payload);
        grant.commit();
        Ok(())
    }

    /// [`send`](Self::send) giving up after `timeout` with [`SendTimeoutError::Timeout`].
    pub fn send_timeout(&mut self, payload: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        let mut grant = self.reserve_timeout(payload.len(), timeout)?;
        grant.copy_from_slice(payload);
        grant.commit();
        Ok(())
    }

    /// Reserves `len` bytes of payload in shared memory without waiting. Write them through
    /// the grant, then [`WriteGrant::commit`]; dropping the grant publishes nothing.
    #[inline(always)]
    pub fn try_reserve(&mut self, len: usize) -> Result<WriteGrant<'_>, TrySendError> {
        self.start_pending();
        let payload_pos = self.claim(len).map_err(|r| self.explain(r, len))?;
        Ok(WriteGrant { payload_pos, len, message_type: 0, producer: self })
    }

    /// The details of a refusal, for the error a public call returns.
    #[cold]
    #[inline(never)]
    fn explain(&self, refusal: Refusal, len: usize) -> Explained {
        Explained { refusal, len, max: self.max_len as usize, fault: self.fault.clone() }
    }

    /// Reserves `len` bytes, waiting for space with the wait strategy for as long as it takes.
    pub fn reserve(&mut self, len: usize) -> Result<WriteGrant<'_>, SendError> {
        let payload_pos = self.claim_or_wait(len, None).map_err(|r| self.explain(r, len))?;
        Ok(WriteGrant { payload_pos, len, message_type: 0, producer: self })
    }

    /// [`reserve`](Self::reserve) giving up after `timeout`.
    pub fn reserve_timeout(&mut self, len: usize, timeout: Duration) -> Result<WriteGrant<'_>, SendTimeoutError> {
        let payload_pos = self.claim_or_wait(len, Some(timeout)).map_err(|r| self.explain(r, len))?;
        Ok(WriteGrant { payload_pos, len, message_type: 0, producer: self })
    }

    /// Reserves like [`try_reserve`](Self::try_reserve), but the grant owns the producer: it is
    /// `'static` and `Send + Sync`, for a writable buffer handed to another language or thread.
    /// [`OwnedWriteGrant::commit`] (or `abandon`) gives the producer back.
    ///
    /// ```
    /// # let segment = ipc_core::RingBuilder::new(1 << 16).create_anonymous()?;
    /// # let (producer, mut consumer) = (segment.producer()?, segment.consumer()?);
    /// let mut grant = producer.try_reserve_owned(3).map_err(|e| e.error)?;
    /// grant.copy_from_slice(b"abc");
    /// let producer = grant.commit();
    /// assert_eq!(&*consumer.try_recv()?, b"abc");
    /// # drop(producer);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    // The error carries the producer back by value, like the grant does: boxing it would put an
    // allocation on a path that has none.
    #[allow(clippy::result_large_err)]
    pub fn try_reserve_owned(mut self, len: usize) -> Result<OwnedWriteGrant, ReserveOwnedError> {
        self.start_pending();
        match self.claim(len) {
            Ok(payload_pos) => Ok(OwnedWriteGrant { producer: self, payload_pos, len, message_type: 0 }),
            Err(refusal) => Err(ReserveOwnedError { error: self.explain(refusal, len).into(), producer: self }),
        }
    }

    /// The common case inline, as in `try_reserve`; the waiting loop only when full.
    #[inline]
    fn claim_or_wait(&mut self, len: usize, timeout: Option<Duration>) -> Result<u64, Refusal> {
        self.start_pending();
        match self.claim(len) {
            Err(Refusal::Full) => self.claim_waiting(len, timeout),
            other => other,
        }
    }

    /// Starts a batch: many records published together by one release store.
    ///
    /// ```
    /// # let segment = ipc_core::RingBuilder::new(1 << 16).create_anonymous()?;
    /// # let (mut producer, mut consumer) = (segment.producer()?, segment.consumer()?);
    /// let mut batch = producer.batch();
    /// for i in 0..10u64 {
    ///     batch.try_push(&i.to_le_bytes())?;
    /// }
    /// assert_eq!(batch.commit(), 10);
    /// assert_eq!(consumer.read_batch(100)?.len(), 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn batch(&mut self) -> WriteBatch<'_> {
        self.start_pending();
        self.pending.messages = 0;
        self.pending.bytes = 0;
        WriteBatch { producer: self, published: 0 }
    }

    /// Whether the consumer is attached, detached, dead, or never came.
    pub fn consumer_state(&self) -> PeerState {
        peer_state(&self.segment, Side::Consumer)
    }

    /// Claims room for one record after `pending.end`, writing any padding it needs.
    /// Returns the payload's position.
    #[inline(always)]
    fn claim(&mut self, len: usize) -> Result<u64, Refusal> {
        if len > self.max_len as usize {
            return Err(self.refuse_oversize());
        }
        // A consumer that died or left is noticed by senders too, on a cheap schedule.
        self.claims_to_peer_check -= 1;
        if self.claims_to_peer_check == 0 {
            self.check_consumer()?;
        }
        let start = self.pending.end;
        let (header_pos, end) = self.place(start, len);
        if end + SLACK > self.cached_head + self.capacity {
            self.refresh_head()?;
            if end + SLACK > self.cached_head + self.capacity {
                self.note_full()?;
                return Err(Refusal::Full);
            }
        }
        // Every byte this claim may write, padding headers and the zeroed slot after the record
        // included, lies below the published limit before it is written (observers rely on it).
        if end + SLACK > self.write_limit {
            self.raise_write_limit(end + SLACK);
        }
        self.pad(start, header_pos);
        self.pending.end = end;
        Ok(header_pos + RECORD_HEADER_LEN)
    }

    /// Every [`CLAIMS_PER_PEER_CHECK`] claims: is the consumer gone (detached, or dead by the
    /// schedule of [`PeerSchedule`])?
    #[cold]
    #[inline(never)]
    fn check_consumer(&mut self) -> Result<(), Refusal> {
        self.claims_to_peer_check = CLAIMS_PER_PEER_CHECK;
        if self.segment.map.truncated() {
            return Err(self.refuse_truncated());
        }
        self.publish_counters();
        let owner = self.header().consumer_attach.owner.load(Acquire);
        if let Some(gone) = self.gone_consumer {
            // Still the consumer found gone: every claim says so, at the cost of one load,
            // until another consumer attaches, or the same one is judged alive again on the
            // schedule (a consumer judged by a late heartbeat may have been only stalled).
            let alive_again = owner & OWNER_DETACHED == 0 && self.peer_check.due_by_clock() && !self.consumer_gone()?;
            if owner == gone && !alive_again {
                self.claims_to_peer_check = 1;
                return Err(Refusal::Disconnected);
            }
            self.gone_consumer = None;
        }
        if owner & OWNER_DETACHED != 0 || (self.peer_check.due_by_clock() && self.consumer_gone()?) {
            self.gone_consumer = Some(owner);
            self.claims_to_peer_check = 1;
            return Err(Refusal::Disconnected);
        }
        Ok(())
    }

    fn consumer_detached(&self) -> bool {
        self.header().consumer_attach.owner.load(Acquire) & OWNER_DETACHED != 0
    }

    /// Whether the consumer is closed or dead; refused as `Corrupt` when the ring's file was
    /// found truncated (the probe touches the mapping's end, see `sigbus`).
    fn consumer_gone(&mut self) -> Result<bool, Refusal> {
        if self.segment.probe_truncated() {
            return Err(self.refuse_truncated());
        }
        Ok(matches!(self.consumer_state(), PeerState::Dead(_) | PeerState::Closed))
    }

    /// The ring's file was truncated by another process: everything here reads as zeros now, and
    /// every claim says so (one load each, in `check_consumer`).
    #[cold]
    fn refuse_truncated(&mut self) -> Refusal {
        self.fault = Some(SegmentFault::Truncated);
        self.claims_to_peer_check = 1;
        Refusal::Corrupt
    }

    /// Copies the process-local tallies into the segment's counters (for `tadpole stat`): every
    /// [`CLAIMS_PER_PEER_CHECK`] claims, when the ring is full, and when the producer drops; not
    /// on every commit. (The message count is exact at every commit: the frontier slots.)
    #[cold]
    fn publish_counters(&self) {
        let (t, c) = (&self.counters, &self.header().producer_counters);
        c.messages.store(t.messages, Relaxed);
        c.bytes.store(t.bytes, Relaxed);
        c.commits.store(t.commits, Relaxed);
        c.padding_bytes.store(t.padding_bytes, Relaxed);
    }

    #[cold]
    fn refuse_oversize(&mut self) -> Refusal {
        self.counters.oversize = self.counters.oversize.wrapping_add(1);
        self.header().producer_counters.oversize_rejects.store(self.counters.oversize, Relaxed);
        Refusal::TooLarge
    }

    /// Publishes a new write limit above `end`, a quarter of the ring at a time (four times a lap).
    #[cold]
    fn raise_write_limit(&mut self, end: u64) {
        let quarter = self.capacity / 4;
        self.write_limit = end.next_multiple_of(quarter);
        self.header().producer_attach.write_limit.store(self.write_limit, Relaxed);
        // Orders the limit before the payload writes that follow, for observers.
        crate::sync::atomic::fence(Release);
    }

    /// Where a record of `len` payload bytes starting at `start` puts its header, and where it
    /// ends, counting alignment and wrap-around padding.
    #[inline(always)]
    fn place(&self, start: u64, len: usize) -> (u64, u64) {
        let rec = record_len(len as u64);
        let mut header_pos = start;
        if self.align64 {
            // Payload at a 64-byte boundary: the header sits 8 bytes before one.
            header_pos += (56u64.wrapping_sub(header_pos)) & 63;
        }
        if (header_pos & self.mask) + rec > self.capacity {
            // Does not fit before the end of the data region: pad to the end, start a new lap.
            header_pos = (start | self.mask) + 1;
            if self.align64 {
                header_pos += 56;
            }
        }
        (header_pos, header_pos + rec)
    }

    /// Writes padding records covering `[from, to)`: one to the end of the data region if the
    /// span wraps, and one for payload alignment.
    #[inline(always)]
    fn pad(&mut self, from: u64, to: u64) {
        let mut pos = from;
        while pos < to {
            let lap_end = (pos | self.mask) + 1;
            let next = to.min(lap_end);
            let word = encode_header(pos, (next - pos - RECORD_HEADER_LEN) as u32, 0, true);
            self.stage_header(pos, word);
            self.pending.padding += next - pos;
            pos = next;
        }
    }

    /// Stores a header inside the pending span, or keeps it for last if it opens the span.
    #[inline(always)]
    fn stage_header(&mut self, pos: u64, word: u64) {
        if pos == self.tail {
            self.pending.first_word = word;
        } else {
            self.slot(pos).store(word, Relaxed);
        }
    }

    #[cold]
    fn refresh_head(&mut self) -> Result<(), Refusal> {
        let head = self.header().consumer_position.position.load(Acquire);
        if let Err(fault) = check_head_behind(head, self.tail, self.capacity) {
            // A head of zero, read after a truncation mapped zeros over the ring, is that.
            if self.segment.map.truncated() {
                return Err(self.refuse_truncated());
            }
            self.fault = Some(fault);
            return Err(Refusal::Corrupt);
        }
        self.cached_head = head;
        Ok(())
    }

    /// Counts a full ring, and tells a consumer that is gone (closed now, or found dead on the
    /// liveness schedule) from one that is merely slow.
    #[cold]
    fn note_full(&mut self) -> Result<(), Refusal> {
        self.counters.full_events = self.counters.full_events.wrapping_add(1);
        let h = self.header();
        h.producer_counters.full_events.store(self.counters.full_events, Relaxed);
        self.publish_counters();
        let gone = self.consumer_detached() || (self.peer_check.due() && self.consumer_gone()?);
        if gone { Err(Refusal::Disconnected) } else { Ok(()) }
    }

    fn claim_waiting(&mut self, len: usize, timeout: Option<Duration>) -> Result<u64, Refusal> {
        let mut waiter = None;
        loop {
            match self.claim(len) {
                Err(Refusal::Full) => {}
                other => return other,
            }
            let waiter = waiter.get_or_insert_with(|| Waiter::new(self.wait, timeout));
            let need = self.place(self.pending.end, len).1;
            let h = self.header();
            // Wrapping: a hostile consumer position must not overflow (it only delays the sleep).
            let blocked =
                || need.wrapping_add(SLACK).wrapping_sub(h.consumer_position.position.load(Acquire)) > self.capacity;
            match waiter.pause(&h.producer_doorbell.sleeping, blocked) {
                WaitStep::Retry => {}
                WaitStep::TimedOut => {
                    // Short timeouts in a loop must learn of a death too (on the schedule).
                    if self.peer_check.due_by_clock() && self.consumer_gone()? {
                        return self.last_claim(len);
                    }
                    return Err(Refusal::Timeout);
                }
                WaitStep::CheckPeer => {
                    if self.consumer_gone()? {
                        return self.last_claim(len);
                    }
                }
            }
        }
    }

    /// The consumer is gone: a last look, since it may have released space before it went.
    #[cold]
    fn last_claim(&mut self, len: usize) -> Result<u64, Refusal> {
        match self.claim(len) {
            Err(Refusal::Full) => Err(Refusal::Disconnected),
            other => other,
        }
    }

    /// Publishes the pending span, holding `messages` messages of `bytes` payload bytes in all,
    /// with one release store of its first header.
    #[inline(always)]
    fn publish(&mut self, messages: u64, bytes: u64) {
        let (end, first_word, padding) = (self.pending.end, self.pending.first_word, self.pending.padding);
        if end == self.tail {
            return;
        }
        // The slot after the span must read as "nothing yet" when the consumer gets there; it
        // still holds bytes of the previous lap. SLACK guarantees it is free space.
        self.slot(end).store(0, Relaxed);
        self.slot(self.tail).store(first_word, Release);
        self.tail = end;
        let t = &mut self.counters;
        // Counters restored from a hostile segment may start anywhere: wrap, never trap.
        t.messages = t.messages.wrapping_add(messages);
        t.bytes = t.bytes.wrapping_add(bytes);
        t.commits = t.commits.wrapping_add(1);
        t.padding_bytes = t.padding_bytes.wrapping_add(padding);
        // After the records, before the tail: a replacement producer walks on from the complete
        // slot whatever instant this one dies at (see `ProducerPositionBlock`).
        self.record_frontier();
        let h = self.header();
        h.producer_position.position.store(end, Release);
        // The message count is in the frontier slot just written; the other counters are copied
        // out every `CLAIMS_PER_PEER_CHECK` claims (`publish_counters`).
        let rang = ring_doorbell(&h.consumer_doorbell);
        if rang.woke() {
            self.woke(rang);
        }
    }

    /// The consumer was asleep: count it, and ring its pollable doorbell if it sleeps on one.
    #[cold]
    fn woke(&mut self, rang: Rang) {
        if let Rang::Pollable(id) = rang {
            self.bell.ring(id);
        }
        self.count_wake();
    }

    #[cold]
    fn count_wake(&mut self) {
        self.counters.wakes = self.counters.wakes.wrapping_add(1);
        self.header().producer_counters.wakes.store(self.counters.wakes, Relaxed);
    }

    /// Stages a reserved message's header inside the pending span.
    #[inline(always)]
    fn finish_record(&mut self, payload_pos: u64, len: usize, message_type: u16) {
        let header_pos = payload_pos - RECORD_HEADER_LEN;
        self.stage_header(header_pos, encode_header(header_pos, len as u32, message_type, false));
    }

    #[inline(always)]
    fn payload_mut(&mut self, payload_pos: u64, len: usize) -> &mut [u8] {
        // SAFETY: `claim` placed [payload_pos, payload_pos + len) inside one lap of the data
        // region, in free space (the consumer released it and will not read it before the
        // commit), and this producer is the ring's only writer; the slice borrows `self`
        // mutably, so no other reservation can alias it.
        unsafe { std::slice::from_raw_parts_mut(self.data.add((payload_pos & self.mask) as usize), len) }
    }

    #[inline]
    fn payload(&self, payload_pos: u64, len: usize) -> &[u8] {
        // SAFETY: as in `payload_mut`: reserved, in bounds, written only through this producer.
        unsafe { std::slice::from_raw_parts(self.data.add((payload_pos & self.mask) as usize), len) }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.publish_counters();
        detach_side(&self.segment, &self.claim);
        if let Rang::Pollable(id) = ring_doorbell(&self.header().consumer_doorbell) {
            self.bell.ring(id);
        }
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("segment", &self.segment).field("tail", &self.tail).finish()
    }
}

/// Space for one message, reserved in shared memory. Write through `Deref<Target = [u8]>`,
/// then [`commit`](Self::commit). Dropping it without committing publishes nothing. The bytes
/// start uninitialised from the ring's point of view (they hold an older message): write all
/// of them.
pub struct WriteGrant<'a> {
    producer: &'a mut Producer,
    payload_pos: u64,
    len: usize,
    message_type: u16,
}

impl WriteGrant<'_> {
    /// Sets the message type stored in the record header (0 by default).
    pub fn set_message_type(&mut self, message_type: u16) {
        self.message_type = message_type;
    }

    /// Where the record will start in the ring (what the consumer's `position()` reports).
    pub fn position(&self) -> u64 {
        self.payload_pos - RECORD_HEADER_LEN
    }

    /// Publishes the message: one release store.
    #[inline(always)]
    pub fn commit(self) {
        let (pos, len, ty) = (self.payload_pos, self.len, self.message_type);
        self.producer.finish_record(pos, len, ty);
        self.producer.publish(1, len as u64);
    }
}

impl std::ops::Deref for WriteGrant<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.producer.payload(self.payload_pos, self.len)
    }
}

impl std::ops::DerefMut for WriteGrant<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.producer.payload_mut(self.payload_pos, self.len)
    }
}

/// A reservation that owns its producer ([`Producer::try_reserve_owned`]): `'static`,
/// `Send + Sync`, with a stable address for the bytes ([`as_mut_ptr`](Self::as_mut_ptr)) while
/// it lives. Dropping it publishes nothing and drops (detaches) the producer.
pub struct OwnedWriteGrant {
    producer: Producer,
    payload_pos: u64,
    len: usize,
    message_type: u16,
}

// SAFETY: shared references only read the reserved bytes, which nobody else writes (the producer
// inside is reachable only through `&mut self`); `Producer` itself is `Send`.
unsafe impl Sync for OwnedWriteGrant {}

impl OwnedWriteGrant {
    /// Sets the message type stored in the record header (0 by default).
    pub fn set_message_type(&mut self, message_type: u16) {
        self.message_type = message_type;
    }

    /// Where the record will start in the ring.
    pub fn position(&self) -> u64 {
        self.payload_pos - RECORD_HEADER_LEN
    }

    /// The reserved bytes' address: stable, and writable for `len()` bytes while the grant lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // From the mapping's base pointer, not through a temporary `&mut [u8]`: a pointer derived
        // from a reborrow would be invalidated by the next `deref_mut`.
        let p = &self.producer;
        p.data.wrapping_add((self.payload_pos & p.mask) as usize)
    }

    /// Publishes the message (one release store) and gives the producer back.
    pub fn commit(mut self) -> Producer {
        let (pos, len, ty) = (self.payload_pos, self.len, self.message_type);
        self.producer.finish_record(pos, len, ty);
        self.producer.publish(1, len as u64);
        self.producer
    }

    /// Publishes nothing and gives the producer back.
    pub fn abandon(self) -> Producer {
        self.producer
    }
}

impl std::ops::Deref for OwnedWriteGrant {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.producer.payload(self.payload_pos, self.len)
    }
}

impl std::ops::DerefMut for OwnedWriteGrant {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.producer.payload_mut(self.payload_pos, self.len)
    }
}

impl std::fmt::Debug for OwnedWriteGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedWriteGrant").field("position", &self.position()).field("len", &self.len).finish()
    }
}

/// Records reserved one after another and published together by [`commit`](Self::commit)
/// with a single release store. Dropping the batch publishes nothing that it still holds.
pub struct WriteBatch<'a> {
    producer: &'a mut Producer,
    /// Messages published early by waiting reservations.
    published: usize,
}

impl WriteBatch<'_> {
    /// Reserves `len` more bytes in the batch and returns them to be written.
    #[inline]
    pub fn try_reserve(&mut self, len: usize, message_type: u16) -> Result<&mut [u8], TrySendError> {
        let pos = self.producer.claim(len).map_err(|r| self.producer.explain(r, len))?;
        Ok(self.reserved(pos, len, message_type))
    }

    /// Reserves `len` more bytes, waiting up to `timeout` for space. When the ring is full, what
    /// the batch holds so far is published first (the consumer cannot make room for records
    /// it cannot see), so the batch may reach the consumer in more than one commit.
    pub fn reserve_timeout(
        &mut self,
        len: usize,
        message_type: u16,
        timeout: Duration,
    ) -> Result<&mut [u8], SendTimeoutError> {
        let pos = match self.producer.claim(len) {
            Ok(pos) => pos,
            Err(Refusal::Full) => {
                self.publish_so_far();
                self.producer.claim_waiting(len, Some(timeout)).map_err(|r| self.producer.explain(r, len))?
            }
            Err(other) => return Err(self.producer.explain(other, len).into()),
        };
        Ok(self.reserved(pos, len, message_type))
    }

    fn publish_so_far(&mut self) {
        let p = &mut *self.producer;
        let (messages, bytes) = (p.pending.messages, p.pending.bytes);
        p.publish(messages, bytes);
        self.published += messages as usize;
        p.start_pending();
        p.pending.messages = 0;
        p.pending.bytes = 0;
    }

    #[inline]
    fn reserved(&mut self, pos: u64, len: usize, message_type: u16) -> &mut [u8] {
        self.producer.finish_record(pos, len, message_type);
        let p = &mut self.producer.pending;
        p.messages += 1;
        p.bytes += len as u64;
        self.producer.payload_mut(pos, len)
    }

    /// Copies `payload` into the batch as a message of type 0.
    #[inline]
    pub fn try_push(&mut self, payload: &[u8]) -> Result<(), TrySendError> {
        self.try_reserve(payload.len(), 0)?.copy_from_slice(payload);
        Ok(())
    }

    /// Copies `payload` into the batch as a message of type 0, waiting up to `timeout` for
    /// space (see [`reserve_timeout`](Self::reserve_timeout)).
    pub fn push_timeout(&mut self, payload: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.reserve_timeout(payload.len(), 0, timeout)?.copy_from_slice(payload);
        Ok(())
    }

    /// Messages reserved so far (including any published early by a waiting reservation).
    pub fn len(&self) -> usize {
        self.published + self.producer.pending.messages as usize
    }

    /// Whether nothing is reserved yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes every record of the batch at once; returns how many messages it held.
    #[inline]
    pub fn commit(self) -> usize {
        let (messages, bytes) = (self.producer.pending.messages, self.producer.pending.bytes);
        self.producer.publish(messages, bytes);
        self.published + messages as usize
    }
}
