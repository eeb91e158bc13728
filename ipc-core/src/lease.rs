//! Leases: received records that outlive the consumer's borrow (an Arrow batch kept by the user,
//! a message handed to another thread). The ring releases space strictly in order, so a lease
//! pins its record and every record after it until it drops: a consumer that holds leases
//! applies backpressure to the producer, never corruption.
//!
//! Each lease takes a sequence number; dropping it stores its end position in the slot of that
//! number. Whoever drops a lease then asks for a fold of the released prefix into the shared
//! head; fold requests are counted so one thread folds at a time and no request is missed.

use crate::sync::atomic::{AtomicU64, Ordering::*};
#[cfg(not(loom))]
use {crate::segment::Segment, crate::wait::ring_doorbell, std::sync::Arc};

/// Where a fold publishes the new head: the segment's consumer position (and the producer's
/// doorbell), or, in the loom model, a plain atomic.
pub(crate) trait HeadSink: Send + Sync {
    fn publish_head(&self, head: u64);
    /// Entries still outstanding after a fold (for `tadpole stat`).
    fn publish_outstanding(&self, _outstanding: u64) {}
}

/// The consumer's hold on its side of the ring, shared by the `Consumer` and its lease queue:
/// the side is detached only when both are gone. Otherwise a lease dropped after its consumer
/// could fold an old head over a new consumer's progress.
#[cfg(not(loom))]
pub(crate) struct ConsumerAttachment {
    pub(crate) segment: Segment,
    pub(crate) claim: crate::SideClaim,
}

#[cfg(not(loom))]
impl Drop for ConsumerAttachment {
    fn drop(&mut self) {
        crate::detach_side(&self.segment, &self.claim);
        ring_doorbell(&self.segment.header().producer_doorbell);
    }
}

#[cfg(not(loom))]
impl HeadSink for Arc<ConsumerAttachment> {
    fn publish_head(&self, head: u64) {
        let h = self.segment.header();
        h.consumer_position.position.store(head, Release);
        ring_doorbell(&h.producer_doorbell);
    }

    fn publish_outstanding(&self, outstanding: u64) {
        self.segment.header().consumer_counters.leases_held.store(outstanding, Relaxed);
    }
}

/// Leases one consumer may hold at once before receiving stops with `LeasesExhausted`.
pub(crate) const DEFAULT_MAX_LEASES: usize = 4096;

#[cfg(not(loom))]
pub(crate) type SegmentLeaseQueue = LeaseQueue<Arc<ConsumerAttachment>>;

pub(crate) struct LeaseQueue<S: HeadSink> {
    sink: S,
    /// End position of a released entry, 0 while it is held (or folded).
    slots: Box<[AtomicU64]>,
    /// Oldest sequence number not yet folded into the head.
    oldest: AtomicU64,
    /// Next sequence number; written only by the consumer.
    next: AtomicU64,
    /// End position held by the newest entry if that entry is a plain release (so the next
    /// plain release can extend it instead of taking a slot); 0 if it is a lease. Consumer only.
    last_released: AtomicU64,
    /// Fold requests not yet served (see `fold`).
    fold_requests: AtomicU64,
}

impl<S: HeadSink> LeaseQueue<S> {
    pub(crate) fn new(sink: S, max: usize) -> LeaseQueue<S> {
        LeaseQueue {
            sink,
            slots: (0..max).map(|_| AtomicU64::new(0)).collect(),
            oldest: AtomicU64::new(0),
            next: AtomicU64::new(0),
            last_released: AtomicU64::new(0),
            fold_requests: AtomicU64::new(0),
        }
    }

    /// No entry is outstanding: the consumer may store the head itself. Acquire pairs with the
    /// fold's release of `oldest`, which comes after its head store.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.oldest.load(Acquire) == self.next.load(Relaxed)
    }

    /// Entries that can still be added (after folding what can be folded).
    pub(crate) fn room(&self) -> usize {
        self.slots.len() - self.outstanding() as usize
    }

    /// Entries not yet folded. When the queue looks full, folds what it can, and waits for a
    /// fold running on another thread to finish: it may be about to free room, and a caller
    /// that gave up would lose a release.
    fn outstanding(&self) -> u64 {
        let next = self.next.load(Relaxed);
        loop {
            let used = next - self.oldest.load(Acquire);
            if used < self.slots.len() as u64 {
                return used;
            }
            self.fold();
            // No fold running, read before `oldest`: acquiring the last fold's reset makes its
            // `oldest` visible to the load after it.
            let no_fold = self.fold_requests.load(Acquire) == 0;
            let used = next - self.oldest.load(Acquire);
            if used < self.slots.len() as u64 || no_fold {
                return used;
            }
            crate::sync::yield_now();
        }
    }

    /// Whether a record handed out now could be given back: a free entry, or a newest entry
    /// that is a plain release a further release can extend (if the fold takes that entry
    /// first, it frees room).
    pub(crate) fn can_take_release(&self) -> bool {
        self.last_released.load(Relaxed) != 0 || self.room() > 0
    }

    /// Most entries the queue holds.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Takes a sequence number for a held record (its end is stored when it is released); `Err(outstanding)` when full.
    pub(crate) fn push_held(&self) -> Result<u64, usize> {
        let seq = self.push_entry()?;
        self.last_released.store(0, Relaxed);
        Ok(seq)
    }

    fn push_entry(&self) -> Result<u64, usize> {
        let next = self.next.load(Relaxed);
        let outstanding = self.outstanding();
        if outstanding >= self.slots.len() as u64 {
            return Err(outstanding as usize);
        }
        self.next.store(next + 1, Release);
        Ok(next)
    }

    /// Queues a record that is released already, behind the held ones. Consecutive plain
    /// releases share one entry: the newest is extended in place while it is not yet folded
    /// (the fold takes entries with `swap`, so an extension either lands before it or fails).
    pub(crate) fn push_released(&self, end: u64) -> Result<(), usize> {
        let next = self.next.load(Relaxed);
        let last = self.last_released.load(Relaxed);
        if last != 0 && next > self.oldest.load(Acquire) {
            let slot = &self.slots[((next - 1) % self.slots.len() as u64) as usize];
            if slot.compare_exchange(last, end, AcqRel, Relaxed).is_ok() {
                self.last_released.store(end, Relaxed);
                self.fold();
                return Ok(());
            }
        }
        let seq = self.push_entry()?;
        self.last_released.store(end, Relaxed);
        self.release(seq, end);
        Ok(())
    }

    pub(crate) fn release(&self, seq: u64, end: u64) {
        // An RMW rather than a store: the fold takes entries with `swap`, and loom (0.7) only
        // orders this write against it reliably as an RMW.
        self.slots[(seq % self.slots.len() as u64) as usize].swap(end, AcqRel);
        self.fold();
    }

    /// Moves the head over every released entry at the front.
    fn fold(&self) {
        // Fold requests are counted: the thread that takes the count from 0 folds, and keeps
        // folding until it can reset the count it last saw to 0. A release that arrives while it
        // works bumps the count, so the folder's reset fails and it folds again, after an
        // acquire of that bump (which orders the releaser's slot store before it). No request
        // is lost and no store-load (sequentially consistent) ordering is needed.
        let mut seen = self.fold_requests.fetch_add(1, AcqRel);
        if seen != 0 {
            return;
        }
        seen = 1;
        let n = self.slots.len() as u64;
        loop {
            let mut seq = self.oldest.load(Relaxed);
            let next = self.next.load(Acquire);
            let mut new_head = None;
            while seq < next {
                let end = self.slots[(seq % n) as usize].swap(0, AcqRel);
                if end == 0 {
                    break;
                }
                new_head = Some(end);
                seq += 1;
            }
            if let Some(head) = new_head {
                // Head before `oldest`: a consumer that sees the queue idle (Acquire on
                // `oldest`) stores later heads after this one.
                self.sink.publish_head(head);
                self.oldest.store(seq, Release);
                self.sink.publish_outstanding(next - seq);
            }
            match self.fold_requests.compare_exchange(seen, 0, AcqRel, Acquire) {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }
}

#[cfg(not(loom))]
pub(crate) use lease_handle::SpanShape;
#[cfg(not(loom))]
pub use lease_handle::{BatchLease, Lease};

#[cfg(not(loom))]
mod lease_handle {
    use super::*;

    /// A received message that owns its place in shared memory until dropped: `Send + Sync +
    /// 'static`, so it can back an Arrow buffer (`Buffer::from_custom_allocation`), a Python
    /// object, or cross threads. Dropped while its thread panics, it is not released (the record
    /// was not dealt with): the ring then stays pinned at it, and the next consumer of the ring
    /// receives it again.
    pub struct Lease {
        queue: Arc<SegmentLeaseQueue>,
        seq: u64,
        end: u64,
        ptr: *const u8,
        len: usize,
        message_type: u16,
        position: u64,
        epoch: u64,
    }

    // SAFETY: the lease's bytes are not written by anyone until it is released (in `drop`), and the
    // queue it releases through is thread-safe; `queue` keeps the mapping alive.
    unsafe impl Send for Lease {}
    // SAFETY: shared access only reads the immutable bytes.
    unsafe impl Sync for Lease {}

    impl Lease {
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn new(
            queue: Arc<SegmentLeaseQueue>,
            seq: u64,
            end: u64,
            ptr: *const u8,
            len: usize,
            message_type: u16,
            position: u64,
            epoch: u64,
        ) -> Lease {
            Lease { queue, seq, end, ptr, len, message_type, position, epoch }
        }

        /// The message type the producer set.
        pub fn message_type(&self) -> u16 {
            self.message_type
        }

        /// Where the record starts in the ring (see `ReadGuard::position`).
        pub fn position(&self) -> u64 {
            self.position
        }

        /// The ring's epoch (`Segment::epoch`).
        pub fn epoch(&self) -> u64 {
            self.epoch
        }
    }

    impl std::ops::Deref for Lease {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            // SAFETY: validated in bounds when received; not released (so not rewritten) before drop.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }

    impl AsRef<[u8]> for Lease {
        fn as_ref(&self) -> &[u8] {
            self
        }
    }

    impl std::fmt::Debug for Lease {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Lease")
                .field("position", &self.position)
                .field("len", &self.len)
                .field("message_type", &self.message_type)
                .finish()
        }
    }

    impl Drop for Lease {
        fn drop(&mut self) {
            if std::thread::panicking() {
                return;
            }
            self.queue.release(self.seq, self.end);
        }
    }

    /// Where a batch lies in the data region, for iterating it again.
    #[derive(Clone, Copy)]
    pub(crate) struct SpanShape {
        pub(crate) data: *const u8,
        pub(crate) mask: u64,
        pub(crate) capacity: u64,
        pub(crate) bounds: crate::layout::RecordBounds,
        pub(crate) start: u64,
        pub(crate) end: u64,
    }

    /// A received batch ([`ReadBatch::into_lease`](crate::ReadBatch::into_lease)) that owns its
    /// records in shared memory until dropped, like a [`Lease`] for many records at once:
    /// `Send + Sync + 'static`, one lease entry however many records it holds.
    pub struct BatchLease {
        queue: Arc<SegmentLeaseQueue>,
        seq: u64,
        shape: SpanShape,
        count: usize,
        epoch: u64,
    }

    // SAFETY: as for `Lease`: the span is not written until released in `drop`; `queue` keeps the
    // mapping alive and releases through a thread-safe queue.
    unsafe impl Send for BatchLease {}
    // SAFETY: shared access only reads the immutable bytes.
    unsafe impl Sync for BatchLease {}

    impl BatchLease {
        pub(crate) fn new(queue: Arc<SegmentLeaseQueue>, seq: u64, shape: SpanShape, count: usize, epoch: u64) -> Self {
            BatchLease { queue, seq, shape, count, epoch }
        }

        /// Number of messages.
        pub fn len(&self) -> usize {
            self.count
        }

        /// Always false: an empty batch is never leased.
        pub fn is_empty(&self) -> bool {
            self.count == 0
        }

        /// The ring's epoch (`Segment::epoch`).
        pub fn epoch(&self) -> u64 {
            self.epoch
        }

        /// The messages, in ring order.
        pub fn iter(&self) -> crate::consumer::SpanIter<'_> {
            let s = self.shape;
            crate::consumer::SpanIter {
                data: s.data,
                mask: s.mask,
                capacity: s.capacity,
                bounds: s.bounds,
                pos: s.start,
                end: s.end,
                _records: std::marker::PhantomData,
            }
        }
    }

    impl std::fmt::Debug for BatchLease {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("BatchLease").field("start", &self.shape.start).field("len", &self.count).finish()
        }
    }

    impl Drop for BatchLease {
        fn drop(&mut self) {
            if std::thread::panicking() {
                return;
            }
            self.queue.release(self.seq, self.shape.end);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Head(AtomicU64);
    impl HeadSink for Arc<Head> {
        fn publish_head(&self, head: u64) {
            self.0.store(head, Release);
        }
    }

    #[test]
    fn releases_out_of_order_fold_into_the_head_in_order() {
        let head = Arc::new(Head(AtomicU64::new(0)));
        let queue = LeaseQueue::new(head.clone(), 4);
        let first = queue.push_held().unwrap();
        let second = queue.push_held().unwrap();
        queue.push_released(24).unwrap();
        queue.release(second, 16);
        assert_eq!(head.0.load(Acquire), 0, "the first lease still holds everything");
        queue.release(first, 8);
        assert_eq!(head.0.load(Acquire), 24);
        assert!(queue.is_idle());
        queue.push_held().unwrap();
        queue.push_released(40).unwrap();
        queue.push_released(48).unwrap();
        assert_eq!(queue.room(), 2, "plain releases behind a lease share one entry");
    }
}
