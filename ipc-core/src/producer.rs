//! The producer side of a ring: reserve space, write in place, commit with one release store.
//! Never blocks, allocates or makes a syscall on the fast path; the doorbell syscall happens only
//! when the consumer is asleep.

use std::ptr::NonNull;
use std::time::Duration;

use crate::layout::{self, OWNER_DETACHED, RECORD_HEADER_LEN, SLACK, SegmentHeader, encode_header, record_len};
use crate::liveness::ProcessId;
use crate::segment::{PayloadAlign, Segment, SegmentFault, check_head_behind, check_positions};
use crate::sync::atomic::AtomicU64;
use crate::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use crate::wait::{WaitStep, WaitStrategy, Waiter, ring_doorbell};
use crate::{AttachError, PeerState, Side, attach_side, detach_side, peer_state};

/// Why a message could not be sent or space reserved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The ring has no room now (`try_` calls only); nothing was written.
    #[error("ring full")]
    Full,
    /// No room before the timeout passed.
    #[error("timed out waiting for ring space")]
    Timeout,
    /// The message is larger than the ring's maximum; nothing was written.
    #[error("message of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// The consumer detached or died and the ring is full: nobody will make room.
    #[error("consumer disconnected")]
    Disconnected,
    /// The consumer's position is impossible: the segment is corrupt or hostile.
    #[error("ring corrupt: {0}")]
    Corrupt(SegmentFault),
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
        attach_side(self, Side::Producer, me)?;
        let h = self.header();
        let head = h.consumer_position.position.load(Acquire);
        let stored_tail = h.producer_position.position.load(Acquire);
        if let Err(fault) = check_positions(head, stored_tail, self.params.capacity) {
            detach_side(self, Side::Producer);
            return Err(AttachError::Corrupt(fault));
        }
        // The consumer may have read records past a tail that was never stored.
        let mut tail = stored_tail.max(head);
        let mut producer = Producer {
            segment: self.clone(),
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
        };
        // A producer killed between its header store and its tail store left committed records
        // past `tail`: walk them, so they are neither lost nor overwritten. The check byte (a
        // hash of the position) keeps a header of an earlier lap from passing for one of these.
        loop {
            let word = producer.slot(tail).load(Acquire);
            match layout::decode_header(tail, word) {
                Ok(Some(rec)) => {
                    let end = tail + record_len(u64::from(rec.payload_len));
                    if end + SLACK - head > self.params.capacity
                        || (!rec.padding && rec.payload_len > producer.max_len)
                        || (tail & producer.mask) + (end - tail) > producer.capacity
                    {
                        break;
                    }
                    tail = end;
                }
                _ => break,
            }
        }
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
        producer.counters.messages = c.messages.load(Relaxed);
        producer.counters.bytes = c.bytes.load(Relaxed);
        producer.counters.commits = c.commits.load(Relaxed);
        producer.counters.full_events = c.full_events.load(Relaxed);
        producer.counters.wakes = c.wakes.load(Relaxed);
        producer.counters.padding_bytes = c.padding_bytes.load(Relaxed);
        producer.counters.oversize = c.oversize_rejects.load(Relaxed);
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
    #[inline]
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

    /// Copies `payload` into the ring as one message of type 0. Fails with
    /// [`SendError::Full`] instead of waiting.
    #[inline]
    pub fn try_send(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.try_send_typed(0, payload)
    }

    /// [`try_send`](Self::try_send) with a message type the consumer reads back.
    #[inline]
    pub fn try_send_typed(&mut self, message_type: u16, payload: &[u8]) -> Result<(), SendError> {
        let mut grant = self.try_reserve(payload.len())?;
        grant.copy_from_slice(payload);
        grant.set_message_type(message_type);
        grant.commit();
        Ok(())
    }

    /// Copies `payload` into the ring, waiting for space with the wait strategy.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_timeout(payload, None)
    }

    /// [`send`](Self::send) giving up after `timeout` with [`SendError::Timeout`].
    pub fn send_timeout(&mut self, payload: &[u8], timeout: Option<Duration>) -> Result<(), SendError> {
        let mut grant = self.reserve_timeout(payload.len(), timeout)?;
        grant.copy_from_slice(payload);
        grant.commit();
        Ok(())
    }

    /// Reserves `len` bytes of payload in shared memory without waiting. Write them through
    /// the grant, then [`WriteGrant::commit`]; dropping the grant publishes nothing.
    #[inline]
    pub fn try_reserve(&mut self, len: usize) -> Result<WriteGrant<'_>, SendError> {
        self.start_pending();
        let payload_pos = self.claim(len)?;
        Ok(WriteGrant { payload_pos, len, message_type: 0, producer: self })
    }

    /// Reserves `len` bytes, waiting for space with the wait strategy.
    pub fn reserve(&mut self, len: usize) -> Result<WriteGrant<'_>, SendError> {
        self.reserve_timeout(len, None)
    }

    /// [`reserve`](Self::reserve) giving up after `timeout`.
    pub fn reserve_timeout(&mut self, len: usize, timeout: Option<Duration>) -> Result<WriteGrant<'_>, SendError> {
        self.start_pending();
        // The common case inline, as in `try_reserve`; the waiting loop only when full.
        let payload_pos = match self.claim(len) {
            Err(SendError::Full) => self.claim_waiting(len, timeout)?,
            other => other?,
        };
        Ok(WriteGrant { payload_pos, len, message_type: 0, producer: self })
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
        WriteBatch { producer: self }
    }

    /// Whether the consumer is attached, detached, dead, or never came.
    pub fn consumer_state(&self) -> PeerState {
        peer_state(&self.segment, Side::Consumer)
    }

    /// Claims room for one record after `pending.end`, writing any padding it needs.
    /// Returns the payload's position.
    #[inline(always)]
    fn claim(&mut self, len: usize) -> Result<u64, SendError> {
        if len > self.max_len as usize {
            return Err(self.refuse_oversize(len));
        }
        let start = self.pending.end;
        let (header_pos, end) = self.place(start, len);
        if end + SLACK > self.cached_head + self.capacity {
            self.refresh_head()?;
            if end + SLACK > self.cached_head + self.capacity {
                self.note_full()?;
                return Err(SendError::Full);
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

    #[cold]
    fn refuse_oversize(&mut self, len: usize) -> SendError {
        self.counters.oversize = self.counters.oversize.wrapping_add(1);
        self.header().producer_counters.oversize_rejects.store(self.counters.oversize, Relaxed);
        SendError::TooLarge { len, max: self.max_len as usize }
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
    #[inline]
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
    #[inline]
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
    #[inline]
    fn stage_header(&mut self, pos: u64, word: u64) {
        if pos == self.tail {
            self.pending.first_word = word;
        } else {
            self.slot(pos).store(word, Relaxed);
        }
    }

    #[cold]
    fn refresh_head(&mut self) -> Result<(), SendError> {
        let head = self.header().consumer_position.position.load(Acquire);
        check_head_behind(head, self.tail, self.capacity).map_err(SendError::Corrupt)?;
        self.cached_head = head;
        Ok(())
    }

    /// Counts a full ring, and tells a consumer that is gone (closed now, or found dead by the
    /// liveness check every 4096 full events) from one that is merely slow.
    #[cold]
    fn note_full(&mut self) -> Result<(), SendError> {
        self.counters.full_events = self.counters.full_events.wrapping_add(1);
        let h = self.header();
        h.producer_counters.full_events.store(self.counters.full_events, Relaxed);
        let gone = h.consumer_attach.owner.load(Acquire) & OWNER_DETACHED != 0
            || (self.counters.full_events % 4096 == 0 && matches!(self.consumer_state(), PeerState::Dead(_)));
        if gone { Err(SendError::Disconnected) } else { Ok(()) }
    }

    fn claim_waiting(&mut self, len: usize, timeout: Option<Duration>) -> Result<u64, SendError> {
        let mut waiter = None;
        loop {
            match self.claim(len) {
                Err(SendError::Full) => {}
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
                WaitStep::TimedOut => return Err(SendError::Timeout),
                WaitStep::CheckPeer => {
                    if let PeerState::Dead(_) | PeerState::Closed = self.consumer_state() {
                        // A last look: the consumer may have released space before it went.
                        return match self.claim(len) {
                            Err(SendError::Full) => Err(SendError::Disconnected),
                            other => other,
                        };
                    }
                }
            }
        }
    }

    /// Publishes the pending span, holding `messages` messages of `bytes` payload bytes in all,
    /// with one release store of its first header.
    #[inline]
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
        let (messages, bytes, commits, padding_bytes) = (t.messages, t.bytes, t.commits, t.padding_bytes);
        let h = self.header();
        h.producer_position.position.store(end, Release);
        let c = &h.producer_counters;
        c.messages.store(messages, Relaxed);
        c.bytes.store(bytes, Relaxed);
        c.commits.store(commits, Relaxed);
        if padding != 0 {
            c.padding_bytes.store(padding_bytes, Relaxed);
        }
        if ring_doorbell(&h.consumer_doorbell) {
            self.count_wake();
        }
    }

    #[cold]
    fn count_wake(&mut self) {
        self.counters.wakes = self.counters.wakes.wrapping_add(1);
        self.header().producer_counters.wakes.store(self.counters.wakes, Relaxed);
    }

    /// Stages a reserved message's header inside the pending span.
    #[inline]
    fn finish_record(&mut self, payload_pos: u64, len: usize, message_type: u16) {
        let header_pos = payload_pos - RECORD_HEADER_LEN;
        self.stage_header(header_pos, encode_header(header_pos, len as u32, message_type, false));
    }

    #[inline]
    fn payload_mut(&mut self, payload_pos: u64, len: usize) -> &mut [u8] {
        // SAFETY: `claim` placed [payload_pos, payload_pos + len) inside one lap of the data
        // region, in free space (the consumer released it and will not read it before the
        // commit), and this producer is the ring's only writer; the slice borrows `self`
        // mutably, so no other reservation can alias it.
        unsafe { std::slice::from_raw_parts_mut(self.data.add((payload_pos & self.mask) as usize), len) }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        detach_side(&self.segment, Side::Producer);
        ring_doorbell(&self.header().consumer_doorbell);
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

    /// Publishes the message: one release store.
    #[inline]
    pub fn commit(self) {
        let (pos, len, ty) = (self.payload_pos, self.len, self.message_type);
        self.producer.finish_record(pos, len, ty);
        self.producer.publish(1, len as u64);
    }
}

impl std::ops::Deref for WriteGrant<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let p = &*self.producer;
        // SAFETY: as in `payload_mut`: reserved, in bounds, written only through this grant.
        unsafe { std::slice::from_raw_parts(p.data.add((self.payload_pos & p.mask) as usize), self.len) }
    }
}

impl std::ops::DerefMut for WriteGrant<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.producer.payload_mut(self.payload_pos, self.len)
    }
}

/// Records reserved one after another and published together by [`commit`](Self::commit)
/// with a single release store. Dropping the batch publishes nothing.
pub struct WriteBatch<'a> {
    producer: &'a mut Producer,
}

impl WriteBatch<'_> {
    /// Reserves `len` more bytes in the batch and returns them to be written.
    #[inline]
    pub fn try_reserve(&mut self, len: usize, message_type: u16) -> Result<&mut [u8], SendError> {
        let pos = self.producer.claim(len)?;
        self.producer.finish_record(pos, len, message_type);
        let p = &mut self.producer.pending;
        p.messages += 1;
        p.bytes += len as u64;
        Ok(self.producer.payload_mut(pos, len))
    }

    /// Copies `payload` into the batch as a message of type 0.
    #[inline]
    pub fn try_push(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.try_reserve(payload.len(), 0)?.copy_from_slice(payload);
        Ok(())
    }

    /// Messages reserved so far.
    pub fn len(&self) -> usize {
        self.producer.pending.messages as usize
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
        messages as usize
    }
}
