//! The consumer side of a ring: poll the next record header with an acquire load, hand out the
//! payload as a slice borrowed from shared memory, and release the space when the borrow ends.
//! Every header read from shared memory is validated before any byte it describes is touched.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::layout::{
    self, HeaderFault, OWNER_DETACHED, RECORD_ALIGN, RECORD_HEADER_LEN, SLACK, SegmentHeader, TAG_MASK, message_tag,
    record_len,
};
use crate::lease::{ConsumerAttachment, Lease, SegmentLeaseQueue};
use crate::segment::{PayloadAlign, Segment, check_positions};
use crate::sync::atomic::AtomicU64;
use crate::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use crate::wait::{WaitStep, WaitStrategy, Waiter, ring_doorbell};
use crate::{AttachError, PeerState, Side, attach_side, detach_side, peer_state};

/// Header loads per full poll while busy-spinning (a few microseconds at most).
const SPIN_BURST: u32 = 1024;

/// Why nothing was received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing committed yet (`try_` calls only).
    #[error("ring empty")]
    Empty,
    /// Nothing arrived before the timeout passed.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The producer detached or died, and everything it committed has been received.
    #[error("producer disconnected")]
    Disconnected,
    /// Too many records are held as [`Lease`]s: release some before receiving more.
    #[error("{0} leases outstanding: drop some before receiving more")]
    LeasesExhausted(usize),
    /// A record header in shared memory is invalid: the ring cannot be read past it.
    #[error("corrupt record at position {position}: {reason}")]
    Corrupt {
        /// Position of the bad header.
        position: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
}

/// What was wrong with a corrupt record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    /// Unknown flags, or no committed flag on a non-zero word.
    #[error("bad header flags")]
    BadFlags,
    /// The header carries another position's check byte.
    #[error("header written for another position")]
    WrongPosition,
    /// Length above the ring's maximum.
    #[error("length {0} above the ring's maximum")]
    TooLong(u32),
    /// The record would run past the end of the data region or past the producer's space.
    #[error("record runs out of bounds")]
    OutOfBounds,
    /// A payload not aligned as the ring promises.
    #[error("misaligned payload")]
    Misaligned,
}

/// The consumer of a ring: exactly one per ring across all processes.
///
/// ```
/// use ipc_core::{RecvError, RingBuilder};
/// let segment = RingBuilder::new(1 << 16).create_anonymous()?;
/// let (mut producer, mut consumer) = (segment.producer()?, segment.consumer()?);
/// assert_eq!(consumer.try_recv().err(), Some(RecvError::Empty));
/// producer.try_send_typed(7, b"tick")?;
/// {
///     let msg = consumer.try_recv()?;     // borrows shared memory, no copy
///     assert_eq!((msg.message_type(), &*msg), (7, &b"tick"[..]));
/// }                                       // space released here
/// drop(producer);
/// assert_eq!(consumer.try_recv().err(), Some(RecvError::Disconnected));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Consumer {
    segment: Segment,
    /// The segment's header page, cached: `segment.header()` goes through the `Arc`.
    header: NonNull<SegmentHeader>,
    data: *const u8,
    mask: u64,
    capacity: u64,
    max_len: u32,
    align64: bool,
    /// Payload alignment minus one (7 or 63): a payload position must have these bits clear.
    align_mask: u64,
    /// Next record to hand out.
    read_pos: u64,
    /// Last head stored or seen; a lower bound of the real head.
    head: u64,
    wait: WaitStrategy,
    counters: Tally,
    leases: Option<Arc<SegmentLeaseQueue>>,
    /// Detaches the consumer side when dropped, after the lease queue (which shares it) too.
    attachment: Arc<ConsumerAttachment>,
    /// Set once a corrupt record is seen: nothing after it can be trusted.
    poisoned: Option<RecvError>,
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

    #[inline(always)]
    fn payload_ptr(&self, payload_pos: u64) -> *const u8 {
        // SAFETY: `payload_pos & mask` is below capacity, so the pointer stays inside the data region
        // (callers check that the payload does too before reading through it).
        unsafe { self.data.add((payload_pos & self.mask) as usize) }
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
    /// `Consumer::peek_word`, the checks combined by `&` into a single branch. `None` for
    /// anything else (nothing published, padding, or a fault to classify), which the full path
    /// then sorts out.
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
        // A new consumer starts with the default (non-blocking) strategy.
        crate::wait::set_blocking(&h.consumer_doorbell, WaitStrategy::default());
        let c = &h.consumer_counters;
        let align64 = self.params.payload_align == PayloadAlign::SixtyFour;
        Ok(Consumer {
            segment: self.clone(),
            header: NonNull::from(h),
            data: self.data().as_ptr(),
            mask: self.params.capacity - 1,
            capacity: self.params.capacity,
            max_len: self.params.max_message_len,
            align64,
            align_mask: if align64 { 63 } else { RECORD_ALIGN - 1 },
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
            attachment: Arc::new(ConsumerAttachment { segment: self.clone(), claim }),
            poisoned: None,
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

    /// Whether the producer is attached, detached, dead, or never came.
    pub fn producer_state(&self) -> PeerState {
        peer_state(&self.segment, Side::Producer)
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

    /// [`peek_at`](Self::peek_at) for a `word` already loaded at `pos`, checked step by step
    /// so a fault is reported with its reason.
    #[cold]
    fn peek_word(&mut self, mut pos: u64, mut word: u64) -> Result<Option<Found>, (u64, CorruptReason)> {
        loop {
            let rec = match layout::decode_header(pos, word) {
                Ok(Some(rec)) => rec,
                Ok(None) => return Ok(None),
                Err(HeaderFault::BadFlags) => return Err((pos, CorruptReason::BadFlags)),
                Err(HeaderFault::WrongPosition) => return Err((pos, CorruptReason::WrongPosition)),
            };
            if !rec.padding && rec.payload_len > self.max_len {
                return Err((pos, CorruptReason::TooLong(rec.payload_len)));
            }
            let end = pos + record_len(u64::from(rec.payload_len));
            if (pos & self.mask) + (end - pos) > self.capacity || !self.within_producer_space(end) {
                return Err((pos, CorruptReason::OutOfBounds));
            }
            if rec.padding {
                pos = end;
                word = self.slot(pos).load(Acquire);
                continue;
            }
            if self.align64 && (pos + RECORD_HEADER_LEN) % 64 != 0 {
                return Err((pos, CorruptReason::Misaligned));
            }
            return Ok(Some(Found {
                payload_pos: pos + RECORD_HEADER_LEN,
                len: rec.payload_len,
                message_type: rec.message_type,
                end,
            }));
        }
    }

    /// [`peek_at`](Self::peek_at), counting a corrupt record and poisoning the consumer.
    #[inline]
    fn checked_peek(&mut self, pos: u64) -> Result<Option<Found>, RecvError> {
        self.peek_at(pos).map_err(|(position, reason)| self.corrupt(position, reason))
    }

    /// The producer never writes past `head + capacity - SLACK`. Wrapping arithmetic: a hostile
    /// head ahead of `end` reads as out of bounds, never as an overflow.
    #[inline]
    fn within_producer_space(&mut self, end: u64) -> bool {
        let fits = |head: u64| end.wrapping_add(SLACK).wrapping_sub(head) <= self.capacity;
        if fits(self.head) {
            return true;
        }
        // Leases released on other threads may have moved the head on.
        self.head = self.header().consumer_position.position.load(Acquire);
        fits(self.head)
    }

    #[cold]
    fn corrupt(&mut self, position: u64, reason: CorruptReason) -> RecvError {
        let err = RecvError::Corrupt { position, reason };
        self.counters.corrupt = self.counters.corrupt.wrapping_add(1);
        self.header().consumer_counters.corrupt_records.store(self.counters.corrupt, Relaxed);
        self.poisoned = Some(err.clone());
        err
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
    fn poll_slow(&mut self) -> Result<Found, RecvError> {
        self.poll()
    }

    /// The next record, or why there is none. Empty means the caller may wait.
    #[inline]
    fn poll(&mut self) -> Result<Found, RecvError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        match self.checked_peek(self.read_pos)? {
            Some(found) => self.reserve_release_slot(found),
            None => self.empty(),
        }
    }

    #[cold]
    fn empty(&mut self) -> Result<Found, RecvError> {
        self.counters.empty_polls = self.counters.empty_polls.wrapping_add(1);
        if self.counters.empty_polls % 64 == 0 {
            self.header().consumer_counters.empty_polls.store(self.counters.empty_polls, Relaxed);
        }
        // A clean close is a release store made after the producer's last commit, so once it is
        // seen, one more look at the header settles whether anything is left.
        if self.header().producer_attach.owner.load(Acquire) & OWNER_DETACHED != 0 {
            return match self.checked_peek(self.read_pos)? {
                Some(found) => self.reserve_release_slot(found),
                None => Err(RecvError::Disconnected),
            };
        }
        Err(RecvError::Empty)
    }

    /// Receives the next message without waiting. The guard borrows the payload in shared
    /// memory; its space is released when the guard drops.
    #[inline]
    pub fn try_recv(&mut self) -> Result<ReadGuard<'_>, RecvError> {
        let found = match self.poll_fast() {
            Some(found) => found,
            None => self.poll_slow()?,
        };
        Ok(self.guard(found))
    }

    /// Receives the next message, waiting with the wait strategy.
    pub fn recv(&mut self) -> Result<ReadGuard<'_>, RecvError> {
        self.recv_timeout(None)
    }

    /// [`recv`](Self::recv) giving up after `timeout` with [`RecvError::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<ReadGuard<'_>, RecvError> {
        let found = self.poll_waiting(timeout)?;
        Ok(self.guard(found))
    }

    fn poll_waiting(&mut self, timeout: Option<Duration>) -> Result<Found, RecvError> {
        let mut waiter: Option<Waiter> = None;
        loop {
            if let Some(found) = self.poll_fast() {
                return Ok(found);
            }
            match self.poll_slow() {
                Err(RecvError::Empty) => {}
                other => return other,
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
                WaitStep::TimedOut => return Err(RecvError::Timeout),
                WaitStep::CheckPeer => {
                    if let PeerState::Dead(_) = self.producer_state() {
                        // Dead processes commit nothing more: drain, then report.
                        return match self.poll() {
                            Err(RecvError::Empty) => Err(RecvError::Disconnected),
                            other => other,
                        };
                    }
                }
            }
        }
    }

    /// While leases are held, every receive needs a place in the lease queue for its release
    /// (or its lease): refuse to hand out a record that could not be given back.
    #[inline]
    fn reserve_release_slot(&mut self, found: Found) -> Result<Found, RecvError> {
        match &self.leases {
            Some(queue) if !queue.is_idle() => Self::check_release_room(queue, found),
            _ => Ok(found),
        }
    }

    /// The part of [`reserve_release_slot`](Self::reserve_release_slot) for when leases are
    /// held: out of line, so the common receive stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn check_release_room(queue: &SegmentLeaseQueue, found: Found) -> Result<Found, RecvError> {
        if queue.can_take_release() { Ok(found) } else { Err(RecvError::LeasesExhausted(queue.capacity())) }
    }

    #[inline]
    fn guard(&mut self, found: Found) -> ReadGuard<'_> {
        self.counters.messages = self.counters.messages.wrapping_add(1);
        self.counters.bytes = self.counters.bytes.wrapping_add(u64::from(found.len));
        let c = &self.header().consumer_counters;
        c.messages.store(self.counters.messages, Relaxed);
        c.bytes.store(self.counters.bytes, Relaxed);
        ReadGuard { consumer: self, found }
    }

    /// Every message available now (at most `max`), released together when the batch drops.
    /// Returns [`RecvError::Empty`] when there is none (or `max` is 0). A corrupt record after
    /// good ones ends the batch; it is reported (and counted, once) by the next call.
    pub fn read_batch(&mut self, max: usize) -> Result<ReadBatch<'_>, RecvError> {
        if max == 0 {
            return Err(RecvError::Empty);
        }
        let first = match self.poll_fast() {
            Some(found) => found,
            None => self.poll_slow()?,
        };
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
        let c = &self.header().consumer_counters;
        c.messages.store(self.counters.messages, Relaxed);
        c.bytes.store(self.counters.bytes, Relaxed);
        Ok(ReadBatch { consumer: self, start, end, count })
    }

    /// Releases everything before `end` (the end of the record(s) just handed back).
    #[inline]
    fn release(&mut self, end: u64) {
        self.read_pos = end;
        if let Some(queue) = self.leases.as_ref().filter(|queue| !queue.is_idle()) {
            Self::release_behind_leases(queue, end);
            return;
        }
        self.head = end;
        self.counters.releases = self.counters.releases.wrapping_add(1);
        let releases = self.counters.releases;
        let h = self.header();
        h.consumer_position.position.store(end, Release);
        h.consumer_counters.releases.store(releases, Relaxed);
        if ring_doorbell(&h.producer_doorbell) {
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

    /// Turns a received record into a [`Lease`] that owns its slice of shared memory and may
    /// move to another thread and outlive later receives. Leases release in ring order: the
    /// producer gets the space back only when this lease and every record before it are gone,
    /// so holding leases applies backpressure, never corruption.
    fn lease(&mut self, found: Found) -> Result<Lease, RecvError> {
        let queue = self
            .leases
            .get_or_insert_with(|| {
                Arc::new(SegmentLeaseQueue::new(self.attachment.clone(), crate::lease::DEFAULT_MAX_LEASES))
            })
            .clone();
        let ptr = self.payload_ptr(found.payload_pos);
        match queue.push_held() {
            Ok(seq) => {
                self.read_pos = found.end;
                Ok(Lease::new(queue, seq, found.end, ptr, found.len as usize, found.message_type))
            }
            Err(outstanding) => Err(RecvError::LeasesExhausted(outstanding)),
        }
    }

    #[inline]
    fn payload_ptr(&self, payload_pos: u64) -> *const u8 {
        // SAFETY: `peek_at` checked that the record lies inside one lap of the data region.
        unsafe { self.data.add((payload_pos & self.mask) as usize) }
    }
}

/// A received message: the payload borrowed from shared memory, released when dropped.
pub struct ReadGuard<'a> {
    consumer: &'a mut Consumer,
    found: Found,
}

impl ReadGuard<'_> {
    /// The message type the producer set (0 by default).
    pub fn message_type(&self) -> u16 {
        self.found.message_type
    }

    /// Keeps the message beyond this borrow of the consumer; see [`Lease`]. On
    /// [`RecvError::LeasesExhausted`] the guard is dropped and the message is released as usual.
    pub fn into_lease(self) -> Result<Lease, RecvError> {
        let this = std::mem::ManuallyDrop::new(self);
        let found = this.found;
        // SAFETY: `this` is never used or dropped again; we take the `&mut Consumer` out of it.
        let consumer: &mut Consumer = unsafe { std::ptr::read(&this.consumer) };
        match consumer.lease(found) {
            Ok(lease) => Ok(lease),
            Err(e) => {
                consumer.release(found.end);
                Err(e)
            }
        }
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
    #[inline]
    fn drop(&mut self) {
        self.consumer.release(self.found.end);
    }
}

/// Messages received together ([`Consumer::read_batch`]) and released together on drop.
pub struct ReadBatch<'a> {
    consumer: &'a mut Consumer,
    start: u64,
    end: u64,
    count: usize,
}

/// One message of a [`ReadBatch`].
#[derive(Clone, Copy, Debug)]
pub struct Record<'b> {
    /// The message type the producer set.
    pub message_type: u16,
    /// The payload in shared memory.
    pub payload: &'b [u8],
}

impl ReadBatch<'_> {
    /// Number of messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: an empty batch is never returned.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The messages, in ring order.
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        let c = &*self.consumer;
        // Kept in registers across the acquire loads (see `FastChecks`).
        let checks = c.fast_checks();
        let mut pos = self.start;
        let end = self.end;
        std::iter::from_fn(move || {
            let c = &checks;
            while pos < end {
                // The headers were validated when the batch was formed, but shared memory may be
                // rewritten by a hostile peer since: bound every record by the batch again.
                let word = c.load(pos);
                // Fast path, as in `peek_at`: a message header for this position whose record
                // ends inside the batch (so inside the validated span and one lap).
                let len = word as u32;
                let next = pos + record_len(u64::from(len));
                if (word & TAG_MASK == message_tag(pos)) & (next <= end) & ((pos & c.mask) + (next - pos) <= c.capacity)
                {
                    let payload_pos = pos + RECORD_HEADER_LEN;
                    pos = next;
                    // SAFETY: the record lies inside one lap of the data region (checked just
                    // above); it stays unreleased until the batch, which this iterator borrows,
                    // drops.
                    let payload = unsafe { std::slice::from_raw_parts(c.payload_ptr(payload_pos), len as usize) };
                    return Some(Record { message_type: (word >> 32) as u16, payload });
                }
                let rec = layout::decode_header(pos, word).ok()??;
                let next = pos + record_len(u64::from(rec.payload_len));
                if next > end || (pos & c.mask) + (next - pos) > c.capacity {
                    pos = end;
                    return None;
                }
                let payload_pos = pos + RECORD_HEADER_LEN;
                pos = next;
                if rec.padding {
                    continue;
                }
                // SAFETY: the record lies inside one lap of the data region (checked just
                // above); it stays unreleased until the batch, which this iterator borrows, drops.
                let payload =
                    unsafe { std::slice::from_raw_parts(c.payload_ptr(payload_pos), rec.payload_len as usize) };
                return Some(Record { message_type: rec.message_type, payload });
            }
            None
        })
    }
}

impl Drop for ReadBatch<'_> {
    fn drop(&mut self) {
        self.consumer.release(self.end);
    }
}
