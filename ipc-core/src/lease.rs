//! Leases: received records that outlive the consumer's borrow (an Arrow batch kept by the user,
//! a message handed to another thread). The ring releases space strictly in order, so a lease
//! pins its record and every record after it until it drops: a consumer that holds leases
//! applies backpressure to the producer, never corruption.
//!
//! Each lease takes a sequence number; dropping it stores its end position in the slot of that
//! number. Whoever drops a lease then folds the released prefix into the shared head, with a
//! try-flag so two threads never store the head at once and a re-check so no release is missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};

use crate::segment::Segment;
use crate::wait::ring_doorbell;

/// Leases one consumer may hold at once before receiving stops with `LeasesExhausted`.
pub(crate) const DEFAULT_MAX_LEASES: usize = 4096;

pub(crate) struct LeaseQueue {
    segment: Segment,
    /// End position of a released entry, 0 while it is held (or folded).
    slots: Box<[AtomicU64]>,
    /// Oldest sequence number not yet folded into the head.
    oldest: AtomicU64,
    /// Next sequence number; written only by the consumer.
    next: AtomicU64,
    /// End position held by the newest entry if that entry is a plain release (so the next
    /// plain release can extend it instead of taking a slot); 0 if it is a lease. Consumer only.
    last_released: AtomicU64,
    advancing: AtomicBool,
}

impl LeaseQueue {
    pub(crate) fn new(segment: Segment, max: usize) -> LeaseQueue {
        LeaseQueue {
            segment,
            slots: (0..max).map(|_| AtomicU64::new(0)).collect(),
            oldest: AtomicU64::new(0),
            next: AtomicU64::new(0),
            last_released: AtomicU64::new(0),
            advancing: AtomicBool::new(false),
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
        let used = |q: &Self| q.next.load(Relaxed) - q.oldest.load(Acquire);
        if used(self) >= self.slots.len() as u64 {
            self.fold();
        }
        self.slots.len() - used(self) as usize
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

    /// Takes a sequence number for a held record ending at `end`; `Err(outstanding)` when full.
    pub(crate) fn push_held(&self, end: u64) -> Result<u64, usize> {
        let seq = self.push_entry()?;
        let _ = end;
        self.last_released.store(0, Relaxed);
        Ok(seq)
    }

    fn push_entry(&self) -> Result<u64, usize> {
        let next = self.next.load(Relaxed);
        let mut outstanding = next - self.oldest.load(Acquire);
        if outstanding >= self.slots.len() as u64 {
            self.fold();
            outstanding = next - self.oldest.load(Acquire);
            if outstanding >= self.slots.len() as u64 {
                return Err(outstanding as usize);
            }
        }
        self.next.store(next + 1, SeqCst);
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
            if slot.compare_exchange(last, end, SeqCst, SeqCst).is_ok() {
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
        self.slots[(seq % self.slots.len() as u64) as usize].store(end, SeqCst);
        self.fold();
    }

    /// Moves the head over every released entry at the front.
    fn fold(&self) {
        let n = self.slots.len() as u64;
        loop {
            if self.advancing.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
                // The holder re-checks after letting go, so our entry is not forgotten.
                return;
            }
            let mut seq = self.oldest.load(Relaxed);
            let next = self.next.load(SeqCst);
            let mut new_head = None;
            while seq < next {
                let end = self.slots[(seq % n) as usize].swap(0, SeqCst);
                if end == 0 {
                    break;
                }
                new_head = Some(end);
                seq += 1;
            }
            if let Some(head) = new_head {
                let h = self.segment.header();
                h.consumer_position.position.store(head, Release);
                self.oldest.store(seq, Release);
                ring_doorbell(&h.producer_doorbell.sleeping);
            }
            self.advancing.store(false, SeqCst);
            let next = self.next.load(SeqCst);
            if seq >= next || self.slots[(seq % n) as usize].load(SeqCst) == 0 {
                return;
            }
        }
    }
}

/// A received message that owns its place in shared memory until dropped. `Send + Sync`, so it
/// can back an Arrow buffer (`Buffer::from_custom_allocation`) or cross threads.
pub struct Lease {
    queue: Arc<LeaseQueue>,
    seq: u64,
    end: u64,
    ptr: *const u8,
    len: usize,
    message_type: u16,
}

// SAFETY: the lease's bytes are not written by anyone until it is released (in `drop`), and the
// queue it releases through is thread-safe; `queue` keeps the mapping alive.
unsafe impl Send for Lease {}
// SAFETY: shared access only reads the immutable bytes.
unsafe impl Sync for Lease {}

impl Lease {
    pub(crate) fn new(
        queue: Arc<LeaseQueue>,
        seq: u64,
        end: u64,
        ptr: *const u8,
        len: usize,
        message_type: u16,
    ) -> Lease {
        Lease { queue, seq, end, ptr, len, message_type }
    }

    /// The message type the producer set.
    pub fn message_type(&self) -> u16 {
        self.message_type
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
        f.debug_struct("Lease").field("len", &self.len).field("message_type", &self.message_type).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.queue.release(self.seq, self.end);
    }
}
