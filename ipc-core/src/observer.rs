//! Observing a ring without consuming it (`tadpole tap`): copy records out as they pass, never
//! write to the segment, never slow the producer or consumer down beyond the cache lines read.
//!
//! An observer may fall behind and be lapped: the producer then rewrites the bytes it is copying.
//! It detects that after the copy, seqlock-style: the producer publishes (coarsely, before
//! writing) a limit below which all its writes lie; a copy of `[pos, end)` is intact if that
//! limit had not passed `pos + capacity` once the copy was done. A lapped observer reports
//! [`ObserveError::Lagged`] and resumes at the consumer's position.

use crate::layout::{self, RECORD_HEADER_LEN, record_len};
use crate::segment::Segment;
use crate::sync::atomic::AtomicU64;
use crate::sync::atomic::Ordering::{Acquire, Relaxed};

/// Why nothing was observed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// Nothing new has been published.
    #[error("nothing new")]
    Empty,
    /// The producer overwrote records before they were read; observation resumes at the
    /// consumer's position, `skipped` bytes later.
    #[error("lagged: skipped {skipped} bytes")]
    Lagged {
        /// Bytes of ring positions skipped.
        skipped: u64,
    },
    /// A header that is neither valid nor explained by lagging.
    #[error("corrupt record at position {0}")]
    Corrupt(u64),
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
    max_len: u32,
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
            max_len: self.params.max_message_len,
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

    fn word(&self, pos: u64) -> u64 {
        // SAFETY: `pos & mask` is an 8-aligned offset inside the mapped data region.
        unsafe { AtomicU64::from_ptr(self.data.add((pos & self.mask) as usize).cast_mut().cast()) }.load(Acquire)
    }

    /// Whether the producer may have written over position `pos` of the current lap.
    fn overrun(&self, pos: u64) -> bool {
        crate::sync::atomic::fence(Acquire);
        self.segment.header().producer_attach.write_limit.load(Relaxed) > pos + self.capacity
    }

    fn resync(&mut self) -> ObserveError {
        let head =
            valid_position(self.segment.header().consumer_position.position.load(Acquire)).unwrap_or(self.pos) & !7;
        let skipped = head.saturating_sub(self.pos);
        self.pos = self.pos.max(head);
        ObserveError::Lagged { skipped }
    }

    /// Copies the next record's payload into `out` (replacing its contents).
    pub fn try_observe(&mut self, out: &mut Vec<u8>) -> Result<Observed, ObserveError> {
        loop {
            let pos = self.pos;
            let rec = match layout::decode_header(pos, self.word(pos)) {
                Ok(Some(rec)) => rec,
                Ok(None) if !self.overrun(pos) => return Err(ObserveError::Empty),
                Err(_) if !self.overrun(pos) => return Err(ObserveError::Corrupt(pos)),
                _ => return Err(self.resync()),
            };
            let end = pos + record_len(u64::from(rec.payload_len));
            if (pos & self.mask) + (end - pos) > self.capacity || (!rec.padding && rec.payload_len > self.max_len) {
                return Err(if self.overrun(pos) { self.resync() } else { ObserveError::Corrupt(pos) });
            }
            if rec.padding {
                self.pos = end;
                continue;
            }
            out.clear();
            let len = rec.payload_len as usize;
            out.reserve(len);
            // Word-wise atomic loads: the producer may be rewriting these bytes right now if we
            // are being lapped; the check below discards such a copy.
            let mut at = pos + RECORD_HEADER_LEN;
            while out.len() < len {
                let bytes = self.word(at).to_le_bytes();
                let take = (len - out.len()).min(8);
                out.extend_from_slice(&bytes[..take]);
                at += 8;
            }
            if self.overrun(pos) {
                return Err(self.resync());
            }
            self.pos = end;
            return Ok(Observed { message_type: rec.message_type, position: pos });
        }
    }
}
