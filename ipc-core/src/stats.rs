//! A read-only snapshot of a ring for tools (`tadpole stat`): positions, who is attached, and
//! the counters each side keeps in the segment. Reading only loads; the hot path never notices
//! beyond the cache line it then re-fetches.

use std::io;

use crate::layout::{HEADER_LEN, SegmentHeader};
use crate::segment::{PayloadAlign, Segment, creator_alive_in, creator_in, heartbeat_timeout_in};
use crate::sync::atomic::Ordering::{Acquire, Relaxed};
use crate::{PeerState, ProcessId, Side, peer_state_in};

/// Counters the producer keeps in the segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerCounters {
    /// Messages committed.
    pub messages: u64,
    /// Payload bytes committed.
    pub bytes: u64,
    /// Commits (one per batch).
    pub commits: u64,
    /// Reservation attempts that found the ring full (a waiting reservation counts each retry).
    pub full_events: u64,
    /// Wake syscalls made for a sleeping consumer.
    pub wakes: u64,
    /// Padding bytes written.
    pub padding_bytes: u64,
    /// Messages refused as larger than the maximum.
    pub oversize_rejects: u64,
}

/// Counters the consumer keeps in the segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerCounters {
    /// Messages received.
    pub messages: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Releases made directly (one per batch or guard; releases folded behind leases are not counted).
    pub releases: u64,
    /// Polls that found nothing (updated every 64 polls).
    pub empty_polls: u64,
    /// Wake syscalls made for a sleeping producer.
    pub wakes: u64,
    /// Records refused as corrupt.
    pub corrupt_records: u64,
    /// Records held as leases now.
    pub leases_held: u64,
    /// Most leases the consumer may hold.
    pub lease_capacity: u64,
    /// Records refused as not a valid message ([`DeadLetterReason::Malformed`](crate::DeadLetterReason::Malformed)).
    pub dead_letters_malformed: u64,
    /// Valid messages that could not be delivered ([`DeadLetterReason::Undeliverable`](crate::DeadLetterReason::Undeliverable)).
    pub dead_letters_undeliverable: u64,
}

impl ConsumerCounters {
    /// Records the ring's receivers refused, for either reason ([`Consumer::count_dead_letter`]).
    ///
    /// [`Consumer::count_dead_letter`]: crate::Consumer::count_dead_letter
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters_malformed.wrapping_add(self.dead_letters_undeliverable)
    }
}

/// Everything a monitoring tool shows about one ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingStatus {
    /// Data region bytes.
    pub capacity: u64,
    /// Largest payload.
    pub max_message_len: u32,
    /// Payload alignment.
    pub payload_align: PayloadAlign,
    /// Creator process.
    pub creator: ProcessId,
    /// Whether the creator still runs.
    pub creator_alive: bool,
    /// Consumer position (released up to here).
    pub head: u64,
    /// Producer position (committed up to here).
    pub tail: u64,
    /// Producer attachment.
    pub producer: PeerState,
    /// Consumer attachment.
    pub consumer: PeerState,
    /// Producer counters.
    pub produced: ProducerCounters,
    /// Consumer counters.
    pub consumed: ConsumerCounters,
}

impl RingStatus {
    /// The status of `segment` as its header `h` (the mapped one, or a copy of it) holds it;
    /// the ring's shape is the one validated when the segment was opened.
    pub(crate) fn read(segment: &Segment, h: &SegmentHeader) -> RingStatus {
        let p = &h.producer_counters;
        let c = &h.consumer_counters;
        let timeout = heartbeat_timeout_in(h);
        RingStatus {
            capacity: segment.params.capacity,
            max_message_len: segment.params.max_message_len,
            payload_align: segment.params.payload_align,
            creator: creator_in(h),
            creator_alive: creator_alive_in(h),
            head: h.consumer_position.position.load(Acquire),
            tail: h.producer_position.position.load(Acquire),
            producer: peer_state_in(h, Side::Producer, timeout),
            consumer: peer_state_in(h, Side::Consumer, timeout),
            produced: ProducerCounters {
                // The newest frontier slot (the higher end) carries the running count.
                messages: {
                    let [a, b] = &h.producer_position.frontier;
                    let newest = if b.end.load(Relaxed) > a.end.load(Relaxed) { b } else { a };
                    newest.messages.load(Relaxed)
                },
                bytes: p.bytes.load(Relaxed),
                commits: p.commits.load(Relaxed),
                full_events: p.full_events.load(Relaxed),
                wakes: p.wakes.load(Relaxed),
                padding_bytes: p.padding_bytes.load(Relaxed),
                oversize_rejects: p.oversize_rejects.load(Relaxed),
            },
            consumed: ConsumerCounters {
                messages: c.messages.load(Relaxed),
                bytes: c.bytes.load(Relaxed),
                releases: c.releases.load(Relaxed),
                empty_polls: c.empty_polls.load(Relaxed),
                wakes: c.wakes.load(Relaxed),
                corrupt_records: c.corrupt_records.load(Relaxed),
                leases_held: c.leases_held.load(Relaxed),
                lease_capacity: c.lease_capacity.load(Relaxed),
                dead_letters_malformed: c.dead_letters_malformed.load(Relaxed),
                dead_letters_undeliverable: c.dead_letters_undeliverable.load(Relaxed),
            },
        }
    }

    /// Bytes committed but not yet released.
    pub fn used_bytes(&self) -> u64 {
        self.tail.saturating_sub(self.head)
    }

    /// Whether any process that used the ring still runs (creator, or an attached side).
    pub fn anyone_alive(&self) -> bool {
        self.creator_alive
            || matches!(self.producer, PeerState::Attached(_))
            || matches!(self.consumer, PeerState::Attached(_))
    }
}

/// Why [`Segment::status_from_file`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum StatusReadError {
    /// The file holds fewer bytes than a header: another process truncated it.
    #[error("the ring's file holds {len} bytes, less than its {HEADER_LEN}-byte header: truncated by another process")]
    Truncated {
        /// Bytes the file still holds (at most what was read).
        len: u64,
    },
    /// Reading the file failed.
    #[error("reading the ring's header from its file: {0}")]
    Io(#[from] io::Error),
}

impl Segment {
    /// Like [`status`](Segment::status), but read from a copy of the header page taken from the
    /// segment's file with `pread`, never through the mapping: a file another process truncated
    /// is [`StatusReadError::Truncated`] here, where touching the mapping past the file's end
    /// would raise `SIGBUS`. For tools that read rings they do not own and must outlive them
    /// (`tadpole metrics`, `tadpole stat`). A private ring (no file) is read from its mapping.
    /// A few syscalls: never on a hot path.
    ///
    /// ```
    /// let segment = ipc_core::RingBuilder::new(4096).create_anonymous()?;
    /// segment.producer()?.try_send(b"x")?;
    /// assert_eq!(segment.status_from_file()?.produced.messages, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn status_from_file(&self) -> Result<RingStatus, StatusReadError> {
        let Some(fd) = self.as_fd() else { return Ok(self.status()) };
        // SAFETY: a SegmentHeader holds only atomics and byte arrays, for which all-zero bytes
        // are a valid value. (A page on the stack: no allocation.)
        let mut copy: SegmentHeader = unsafe { std::mem::zeroed() };
        // SAFETY: `copy` is a live local of exactly HEADER_LEN bytes (asserted in `layout`),
        // borrowed mutably for as long as `bytes` lives; any bytes are a valid SegmentHeader, as
        // above.
        let bytes = unsafe { std::slice::from_raw_parts_mut((&raw mut copy).cast::<u8>(), HEADER_LEN) };
        let mut filled = 0;
        while filled < HEADER_LEN {
            match nix::sys::uio::pread(fd, &mut bytes[filled..], filled as i64) {
                Ok(0) => return Err(StatusReadError::Truncated { len: filled as u64 }),
                Ok(n) => filled += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(StatusReadError::Io(e.into())),
            }
        }
        Ok(RingStatus::read(self, &copy))
    }
}
