//! Observing a ring without consuming it (`tadpole tap`): copy records out as they pass, never
//! write to the segment, never slow the producer or consumer down beyond the cache lines read.
//!
//! An observer may fall behind and be lapped: the producer then rewrites the bytes it is copying.
//! It detects that after the copy, seqlock-style. Every byte the producer writes lies below two
//! bounds: the write limit it publishes (coarsely, a quarter of the ring at a time, before
//! writing), and `head + capacity` for the consumer position `head` it last read (it never
//! overwrites what the consumer has not released). A copy of `[pos, end)` may have been
//! overwritten only if, read after the copy, the write limit is past `pos + capacity` *and* the
//! consumer has released `pos`. Either bound alone is not enough: the write limit of a full ring
//! may legitimately run up to a quarter past `head + capacity`, so an observer reading at the
//! consumer's position would otherwise "lag" forever without skipping anything.
//!
//! A lapped observer reports [`ObserveError::Lagged`] with a non-zero skip and resumes at the
//! consumer position it read, which the producer cannot overwrite until the consumer moves on.

use crate::layout::{self, RECORD_HEADER_LEN, SLACK};
use crate::segment::Segment;
use crate::sync::atomic::AtomicU64;
use crate::sync::atomic::Ordering::{self, Acquire, Relaxed};

/// Why nothing was observed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// Nothing new has been published.
    #[error("nothing new")]
    Empty,
    /// The producer may have overwritten records before they were copied; observation resumes
    /// at the consumer's position, `skipped` bytes later. `skipped` is never zero.
    #[error("lagged: skipped {skipped} bytes")]
    Lagged {
        /// Bytes of ring positions skipped.
        skipped: u64,
    },
    /// A header that is neither valid nor explained by lagging.
    #[error("corrupt record at position {0}")]
    Corrupt(u64),
    /// The producer's write limit, or the consumer position it is checked against, is one no
    /// ring can hold (unaligned, beyond any position, too far ahead, or behind a record it
    /// covers): the segment is corrupt or hostile, and no copy could be proven intact. The
    /// observer stays where it is; a producer attaching repairs the limit.
    #[error("impossible bounds: write limit {write_limit}, consumer position {head}")]
    ImpossibleBounds {
        /// The write limit read.
        write_limit: u64,
        /// The consumer position read.
        head: u64,
    },
    /// The ring's file was truncated by another process, and its mapping here reads as zeros
    /// now (see [`Segment::was_truncated`](crate::Segment::was_truncated)): nothing more can be
    /// observed. A copy read while it happened is never returned.
    #[error("the ring's file was truncated by another process; its mapping here now reads as zeros")]
    Truncated,
}

/// A record copied out by [`Observer::try_observe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The message type the producer set.
    pub message_type: u16,
    /// The ring position of the record.
    pub position: u64,
}

/// Reads a ring's records without consuming them. Any number of observers may exist; they never
/// write to the segment.
///
/// ```
/// # let segment = ipc_core::RingBuilder::new(4096).create_anonymous()?;
/// # let mut producer = segment.producer()?;
/// let mut tap = segment.observer();
/// producer.try_send(b"seen twice")?;
/// let mut copy = Vec::new();
/// tap.try_observe(&mut copy)?;
/// assert_eq!(copy, b"seen twice");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Observer {
    segment: Segment,
    data: *const u8,
    mask: u64,
    capacity: u64,
    bounds: layout::RecordBounds,
    pos: u64,
}

// SAFETY: the pointer targets the segment's mapping, kept alive by `segment`; an observer only
// reads.
unsafe impl Send for Observer {}

/// A position as stored in shared memory, if it is one a real ring could reach.
fn valid_position(pos: u64) -> Option<u64> {
    (pos < layout::MAX_POSITION).then_some(pos)
}

impl Segment {
    /// An observer starting at the oldest record not yet released by the consumer.
    pub fn observer(&self) -> Observer {
        // A hostile position beyond any real one starts the observer at 0 instead (it then
        // sees nothing, or reports corruption): never arithmetic near u64::MAX.
        let pos = valid_position(self.header().consumer_position.position.load(Acquire)).unwrap_or(0);
        Observer {
            segment: self.clone(),
            data: self.data().as_ptr(),
            mask: self.params.capacity - 1,
            capacity: self.params.capacity,
            bounds: self.record_bounds(),
            pos: pos & !7,
        }
    }
}

impl Observer {
    /// Skips to the newest committed position: only records published from now on are seen.
    pub fn skip_to_latest(&mut self) {
        let h = self.segment.header();
        let head = valid_position(h.consumer_position.position.load(Acquire)).unwrap_or(self.pos);
        let tail = valid_position(h.producer_position.position.load(Acquire)).unwrap_or(self.pos);
        self.pos = tail.max(head) & !7;
    }

    /// One word of the data region at ring position `pos` (8-aligned).
    fn word(&self, pos: u64, order: Ordering) -> u64 {
        // SAFETY: `pos & mask` is an 8-aligned offset inside the mapped data region (positions
        // are 8-aligned and the region is a power of two of at least 4096 bytes), kept mapped by
        // `self.segment`. The load is atomic, so a concurrent store by the producer is a race on
        // the value only, never undefined behaviour in this process.
        unsafe { AtomicU64::from_ptr(self.data.add((pos & self.mask) as usize).cast_mut().cast()) }.load(order)
    }

    /// Copies `len` bytes from ring position `from` (8-aligned, within one lap) into `out`, as
    /// the producer may be rewriting them: the caller validates the copy afterwards.
    fn copy_racing(&self, from: u64, len: usize, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(len);
        let mut at = from;
        while out.len() < len {
            // SAFETY: the seqlock reader rule: read data the writer may be changing only with
            // atomic (or volatile) loads, validate *after* the copy, and discard a copy that fails
            // validation (`check_lap`: acquire fence, then the bounds the producer publishes
            // before writing). `at & mask` is an 8-aligned offset inside the mapped data region,
            // kept mapped by `self.segment`, and no reference to that memory is ever made. The
            // producer writes these bytes plainly through the `&mut [u8]` of its grant: making
            // its side atomic would slow the fast path for an optional tool, and a plain store
            // racing an atomic load is the accepted pattern of the `seqlock` crate and of
            // crossbeam's `AtomicCell` fallback: the race is on values only, and a torn value is
            // never used.
            let word = unsafe { AtomicU64::from_ptr(self.data.add((at & self.mask) as usize).cast_mut().cast()) }
                .load(Relaxed);
            let take = (len - out.len()).min(8);
            out.extend_from_slice(&word.to_le_bytes()[..take]);
            at += 8;
        }
    }

    /// The check after reading `[pos, end)` (`end == pos` when only the header word at `pos` was
    /// read): `Lagged`, having resynced, if the producer may have overwritten what was read;
    /// `ImpossibleBounds` if the bounds it is judged by are ones no honest ring holds.
    fn check_lap(&mut self, pos: u64, end: u64) -> Result<(), ObserveError> {
        // Orders every load of the copy before the loads of the bounds (the reader half of the
        // seqlock: the producer publishes the limit, then fences, then writes).
        crate::sync::atomic::fence(Acquire);
        let h = self.segment.header();
        let write_limit = h.producer_attach.write_limit.load(Relaxed);
        let head = h.consumer_position.position.load(Acquire);
        let quarter = self.capacity / 4;
        // An honest limit is a multiple of a quarter, at most a quarter past `head + capacity`
        // for a head the producer read before publishing it: a whole ring of slack for a head
        // read here a little late. Validated before any arithmetic on it.
        let plausible = head % 8 == 0
            && head < layout::MAX_POSITION
            && write_limit % quarter == 0
            && write_limit < layout::MAX_POSITION
            && write_limit <= head + 2 * self.capacity;
        if !plausible {
            return Err(ObserveError::ImpossibleBounds { write_limit, head });
        }
        if write_limit > pos + self.capacity && head > pos {
            self.pos = head;
            return Err(ObserveError::Lagged { skipped: head - pos });
        }
        // The producer raised the limit over a record before writing it, and its header's
        // release store carried that: a record the limit does not cover was not written by it.
        if end > pos && write_limit < end + SLACK {
            return Err(ObserveError::ImpossibleBounds { write_limit, head });
        }
        Ok(())
    }

    /// Copies the next record's payload into `out` (replacing its contents).
    ///
    /// Never returns [`ObserveError::Lagged`] twice without moving forward: each lag skips
    /// at least one byte, and each other outcome either returns a record or leaves the observer
    /// where it is.
    pub fn try_observe(&mut self, out: &mut Vec<u8>) -> Result<Observed, ObserveError> {
        // A copy that read the zeros of a truncation's remap fails `check_lap` (the bounds read
        // after it are zeros too), so the truncation is looked for only when nothing is returned:
        // no cost per record. The probe finds a truncation this process has not met yet.
        self.observe(out).map_err(|e| if self.segment.probe_truncated() { ObserveError::Truncated } else { e })
    }

    fn observe(&mut self, out: &mut Vec<u8>) -> Result<Observed, ObserveError> {
        loop {
            let pos = self.pos;
            // Acquire: a published header carries the payload writes before it.
            // The same checks as every other reader of records (`layout::check_record`); the
            // observer knows no producer limit, so only the lap and the position bound it.
            let checked = layout::check_record(pos, self.word(pos, Acquire), self.bounds, layout::MAX_POSITION);
            let (rec, end) = match checked {
                Ok(Some(checked)) => (checked.header, checked.end),
                Ok(None) => {
                    self.check_lap(pos, pos)?;
                    return Err(ObserveError::Empty);
                }
                Err(_) => {
                    self.check_lap(pos, pos)?;
                    return Err(ObserveError::Corrupt(pos));
                }
            };
            if rec.padding {
                // A padding header of a later lap would send the observer to a wrong position.
                self.check_lap(pos, end)?;
                self.pos = end;
                continue;
            }
            self.copy_racing(pos + RECORD_HEADER_LEN, rec.payload_len as usize, out);
            self.check_lap(pos, end)?;
            self.pos = end;
            return Ok(Observed { message_type: rec.message_type, position: pos });
        }
    }
}
