//! The shared-memory layout: one file owns every offset, so the memory format is read here and
//! nowhere else. Anything another process (or `tadpole stat`, or a future version) relies on is a
//! named constant below, drawn before the code that uses it.
//!
//! A segment is one page of header followed by the ring's data region:
//!
//! ```text
//!  0                   4096                                   4096 + capacity
//!  +--------------------+----------------------------------------+
//!  |   SegmentHeader    |  data region (capacity bytes, 2^n)     |
//!  +--------------------+----------------------------------------+
//! ```
//!
//! The header page, in 128-byte blocks (two cache lines each, so the adjacent-line prefetcher of
//! one side never drags in a line the other side writes):
//!
//! ```text
//!  offset  block              written by   contents
//!  0       DESCRIPTOR         creator      magic, version, sizes, heartbeat timeout, creator
//!                                          identity (pid, start time, namespaces, boot) and
//!                                          heartbeat
//!  128     PRODUCER_POSITION  producer     tail: end of the last commit (u64 position)
//!  256     CONSUMER_POSITION  consumer     head: everything before it is released
//!  384     PRODUCER_ATTACH    producer     owner word, write limit; in its second cache line
//!                                          the owner's identity record and heartbeat
//!  512     CONSUMER_ATTACH    consumer     owner word, identity record, heartbeat
//!  640     CONSUMER_DOORBELL  both         futex word: 1 while the consumer sleeps for data
//!                                          on it, 2 while on its pollable doorbell; blocking
//!                                          flag: 1 while it may sleep at all; the pollable
//!                                          doorbell's id (u64 at +8, 0: none)
//!  768     PRODUCER_DOORBELL  both         the same for the producer waiting for space
//!  896     PRODUCER_COUNTERS  producer     messages, bytes, full-ring events, wakes, ...
//!  1024    CONSUMER_COUNTERS  consumer     messages, bytes, empty polls, wakes, corrupt records;
//!                                          in its second cache line the dead letters
//!  1152    reserved (zero) up to 4096
//! ```
//!
//! Positions are u64 byte counts that only grow; the byte offset in the data region is
//! `position & (capacity - 1)`.
//!
//! Every record starts on an 8-byte boundary with an 8-byte header, read and written as one
//! atomic u64 (little-endian):
//!
//! ```text
//!  63      56 55    48 47             32 31                              0
//!  +---------+--------+-----------------+--------------------------------+
//!  |  check  | flags  |  message type   |        payload length          |
//!  +---------+--------+-----------------+--------------------------------+
//!  | payload (length bytes), then zero to 7 bytes up to the next 8-byte boundary ...
//! ```
//!
//! - `flags`: [`FLAG_COMMITTED`] is set in every published header, so a header of zero always
//!   means "nothing published here yet"; [`FLAG_PADDING`] marks a record the consumer skips
//!   (used at wrap-around and to align payloads to 64 bytes).
//! - `check`: a hash of the whole position; a header read at the wrong position or left by an
//!   earlier lap (a bug, or a hostile peer) is refused as corrupt instead of being trusted.
//! - Commit is a release store of the header; the consumer polls the header at its position
//!   with an acquire load and never reads the producer's tail.
//! - The producer keeps 8 bytes of slack and, before publishing a record, zeroes the header slot
//!   right after it, so the slot the consumer polls next is zero until the next commit even
//!   though stale bytes from the previous lap lie there. This is what lets the consumer poll
//!   headers without zeroing what it consumed.

use crate::sync::atomic::{AtomicU32, AtomicU64};

/// `b"TADPOLE\x01"` read as a little-endian u64: identifies a Tadpole ring segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TADPOLE\x01");
/// Bumped whenever anything in this file changes meaning. A field added in bytes every earlier
/// build of this version leaves zero, and whose zero is the truth for a segment that never wrote
/// it (a count of events that build cannot see, an id meaning "none"), changes no meaning: it
/// keeps the version, as the pollable doorbell's id and the dead-letter counts did.
pub const LAYOUT_VERSION: u32 = 2;
/// Bytes before the data region. The data region therefore starts page-aligned.
pub const HEADER_LEN: usize = 4096;
/// Size of one block of the header (two cache lines).
pub const BLOCK: usize = 128;

/// Smallest allowed data region.
pub const MIN_CAPACITY: u64 = 4096;
/// Largest allowed data region (1 TiB): bigger is a corrupt header, not a real ring.
pub const MAX_CAPACITY: u64 = 1 << 40;

/// Bytes of the in-band record header.
pub const RECORD_HEADER_LEN: u64 = 8;
/// Records start, and payloads end, on this boundary.
pub const RECORD_ALIGN: u64 = 8;
/// Slack the producer never fills: room for zeroing the next header slot (see module docs).
pub const SLACK: u64 = RECORD_HEADER_LEN;

/// Set in every published record header.
pub const FLAG_COMMITTED: u64 = 1 << 48;
/// The record is padding: the consumer skips it.
pub const FLAG_PADDING: u64 = 1 << 49;
const KNOWN_FLAGS: u64 = FLAG_COMMITTED | FLAG_PADDING;
const FLAGS_MASK: u64 = 0xFF << 48;

/// Largest payload a ring of `capacity` bytes accepts: any record, padded for alignment and
/// for wrap-around, still fits in an empty ring.
pub const fn max_message_len_for(capacity: u64) -> u64 {
    let limit = capacity / 2 - 128;
    if limit > u32::MAX as u64 { u32::MAX as u64 } else { limit }
}

/// Bytes a record with `payload_len` bytes of payload occupies (header + payload, rounded up).
#[inline]
pub const fn record_len(payload_len: u64) -> u64 {
    RECORD_HEADER_LEN + ((payload_len + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1))
}

/// Positions never reach this (2^62 bytes: decades at memory bandwidth); a segment claiming
/// more is corrupt, and the bound keeps all position arithmetic free of overflow.
pub const MAX_POSITION: u64 = 1 << 62;

/// A byte derived from the whole position (a multiplicative hash), so a header left at the same
/// offset by an earlier lap does not pass for the current one.
#[inline]
const fn check_byte(position: u64) -> u64 {
    (position >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56
}

/// Encodes a published header for a record at `position`.
#[inline]
pub const fn encode_header(position: u64, payload_len: u32, message_type: u16, padding: bool) -> u64 {
    let flags = if padding { FLAG_COMMITTED | FLAG_PADDING } else { FLAG_COMMITTED };
    payload_len as u64 | (message_type as u64) << 32 | flags | check_byte(position) << 56
}

/// The top 16 bits of a header word: flags and check byte.
pub const TAG_MASK: u64 = 0xFFFF << 48;

/// The tag ([`TAG_MASK`] bits) of a published message (not padding) at `position`. A word with
/// this tag is exactly one [`decode_header`] accepts as a non-padding record: it lets the
/// consumer check flags and position with one compare on its fast path.
#[inline]
pub const fn message_tag(position: u64) -> u64 {
    FLAG_COMMITTED | check_byte(position) << 56
}

/// A record header read back from the data region. Constructed only by [`decode_header`],
/// which refuses anything the producer would not have written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_len: u32,
    pub message_type: u16,
    pub padding: bool,
}

/// Why a header word was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderFault {
    /// Non-zero but without the committed flag, or with unknown flags.
    BadFlags,
    /// The check byte does not match the position it was read at.
    WrongPosition,
}

/// Decodes the header word read at `position`. `Ok(None)` means nothing is published there.
#[inline]
pub const fn decode_header(position: u64, word: u64) -> Result<Option<RecordHeader>, HeaderFault> {
    if word == 0 {
        return Ok(None);
    }
    let flags = word & FLAGS_MASK;
    if flags & FLAG_COMMITTED == 0 || flags & !KNOWN_FLAGS != 0 {
        return Err(HeaderFault::BadFlags);
    }
    if word >> 56 != check_byte(position) {
        return Err(HeaderFault::WrongPosition);
    }
    Ok(Some(RecordHeader {
        payload_len: word as u32,
        message_type: (word >> 32) as u16,
        padding: flags & FLAG_PADDING != 0,
    }))
}

/// What a record header is checked against: the ring's shape, fixed when the segment is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordBounds {
    /// Bytes in the data region (a power of two).
    pub capacity: u64,
    /// Largest payload of a message (padding records may be longer).
    pub max_message_len: u32,
    /// Payload alignment in bytes (8 or 64).
    pub payload_align: u64,
}

/// Why a record header was refused. Every reader of records (consumer, batch iterator,
/// producer recovery, observer, outside tools) applies the same rules: [`check_record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(loom), derive(thiserror::Error))]
pub enum CorruptReason {
    /// Unknown flags, or no committed flag on a non-zero word.
    #[cfg_attr(not(loom), error("bad header flags"))]
    BadFlags,
    /// The header carries another position's check byte.
    #[cfg_attr(not(loom), error("header written for another position"))]
    WrongPosition,
    /// Length above the ring's maximum.
    #[cfg_attr(not(loom), error("length {0} above the ring's maximum"))]
    TooLong(u32),
    /// The record would run past the end of the data region or past the space it may occupy.
    #[cfg_attr(not(loom), error("record runs out of bounds"))]
    OutOfBounds,
    /// A payload not aligned as the ring promises.
    #[cfg_attr(not(loom), error("misaligned payload"))]
    Misaligned,
    /// Not a record header at all: the ring's file was truncated by another process, and this
    /// process's mapping of it now reads as zeros (see `Segment::was_truncated`). Nothing at or
    /// after the position can be read any more; recreate the ring.
    #[cfg_attr(
        not(loom),
        error("the ring's file was truncated by another process; its mapping here now reads as zeros")
    )]
    Truncated,
}

/// A record that passed [`check_record`]: its header and where the next record starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedRecord {
    /// The decoded header.
    pub header: RecordHeader,
    /// Position just past this record (header, payload and alignment bytes).
    pub end: u64,
}

/// The one validation of a record header: `word` read at `position` (8-aligned) describes a
/// record that is published, carries this position's check byte, has known flags, a length within
/// the ring's maximum (messages), lies inside one lap of the data region, ends at or before
/// `limit` (the most the reader may trust: the producer's space `head + capacity - SLACK`, a
/// batch's end, ...), and, for a message, has its payload aligned as the ring promises.
/// `Ok(None)`: nothing is published at `position`.
#[inline]
pub const fn check_record(
    position: u64,
    word: u64,
    bounds: RecordBounds,
    limit: u64,
) -> Result<Option<CheckedRecord>, CorruptReason> {
    let header = match decode_header(position, word) {
        Ok(Some(header)) => header,
        Ok(None) => return Ok(None),
        Err(HeaderFault::BadFlags) => return Err(CorruptReason::BadFlags),
        Err(HeaderFault::WrongPosition) => return Err(CorruptReason::WrongPosition),
    };
    if !header.padding && header.payload_len > bounds.max_message_len {
        return Err(CorruptReason::TooLong(header.payload_len));
    }
    let len = record_len(header.payload_len as u64);
    // `position` comes from the reader (below MAX_POSITION) and `len` is below 2^33: no overflow.
    let end = position + len;
    if (position & (bounds.capacity - 1)) + len > bounds.capacity || end > limit {
        return Err(CorruptReason::OutOfBounds);
    }
    if !header.padding && (position + RECORD_HEADER_LEN) & (bounds.payload_align - 1) != 0 {
        return Err(CorruptReason::Misaligned);
    }
    Ok(Some(CheckedRecord { header, end }))
}

/// The end of the space a producer may have written when the consumer's head is `head`: records
/// past it cannot be real ([`check_record`]'s `limit` for readers of the live ring).
#[inline]
pub const fn producer_limit(head: u64, capacity: u64) -> u64 {
    // Saturating: a hostile head near u64::MAX must not wrap the limit below real records.
    head.saturating_add(capacity - SLACK)
}

/// The descriptor block: written once by the creator before `magic` is published. Every field
/// is an atomic because a hostile process may write it at any time: readers load each field once
/// and validate the copy, never the shared memory again.
#[repr(C)]
pub struct Descriptor {
    /// [`MAGIC`], stored last (release) so an opener never sees a half-written descriptor.
    pub magic: AtomicU64,
    pub layout_version: AtomicU32,
    pub header_len: AtomicU32,
    /// Bytes in the data region; a power of two.
    pub capacity: AtomicU64,
    /// Header plus data region: the size the segment must have.
    pub segment_len: AtomicU64,
    pub max_message_len: AtomicU32,
    /// 8, or 64 when every payload starts on a 64-byte boundary.
    pub payload_align: AtomicU32,
    pub creator_pid: AtomicU32,
    /// How long a heartbeat may go unrefreshed before its process is judged dead, in ms
    /// (see `AttachBlock::heartbeat_ns`). Hostile input: readers clamp it to the valid range.
    pub heartbeat_timeout_ms: AtomicU32,
    /// Start time of the creator process in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub creator_start_time: AtomicU64,
    pub created_unix_ns: AtomicU64,
    /// A random non-zero number drawn when the ring is created: a ring recreated under the same
    /// name has another epoch, so `(epoch, position)` names one record for as long as it exists.
    pub epoch: AtomicU64,
    /// Inode of the creator's PID namespace (`/proc/self/ns/pid`); 0 when unknown.
    pub creator_pid_ns: AtomicU64,
    /// Inode of the creator's time namespace (`/proc/self/ns/time`); 0 when unknown.
    pub creator_time_ns: AtomicU64,
    /// The first 64 bits of the creator's boot id (`/proc/sys/kernel/random/boot_id`); 0 when
    /// unknown.
    pub creator_boot_id: AtomicU64,
    /// `CLOCK_BOOTTIME` in ns, refreshed while the creator holds the segment mapped.
    pub creator_heartbeat_ns: AtomicU64,
}

/// A position published by one side, alone in its block.
#[repr(C, align(128))]
pub struct PositionBlock {
    pub position: AtomicU64,
}

/// The producer's position, and the committed frontier kept crash-consistent beside it.
///
/// Every commit writes its end position and the running message count into one of two
/// [`FrontierSlot`]s, alternating: `end` first, then `messages` with release. Commits only move
/// forward, so the slot with the lower `end` is always complete: it is the previous commit's (or
/// the one before, if the newest write had not started), whatever instant the producer was killed
/// at. A replacement producer takes that slot and walks the records after it (they are still in
/// the ring: nobody writes while the producer side is dead), so the count of messages ever
/// committed is exact after any crash, for two stores per commit.
#[repr(C, align(128))]
pub struct ProducerPositionBlock {
    /// Tail: end of the last commit (u64 position). Stored with release after each commit.
    pub position: AtomicU64,
    /// The two frontier slots, written alternately.
    pub frontier: [FrontierSlot; 2],
}

/// One copy of the committed frontier (see [`ProducerPositionBlock`]).
#[repr(C)]
pub struct FrontierSlot {
    /// End position of a commit.
    pub end: AtomicU64,
    /// Messages committed in the ring's life up to `end`.
    pub messages: AtomicU64,
}

/// Who owns one side of the ring. `owner` packs, so one compare-and-swap claims or hands over
/// the side: pid (bits 0-31), 31 bits that tell processes with that pid apart (the low bits of
/// the start time mixed with the PID-namespace inode, bits 32-62), and [`OWNER_DETACHED`]
/// (bit 63) once the owner let go cleanly. Zero means "never attached".
///
/// The second cache line holds the owner's identity record, written by the owner after its
/// claim and tagged with the owner word it describes (`identity_owner`, stored last), and its
/// heartbeat: a process in another PID namespace cannot check a pid, so it judges the owner by
/// how recently the heartbeat moved. The hot path never touches this line.
#[repr(C, align(128))]
pub struct AttachBlock {
    pub owner: AtomicU64,
    /// Producer only: every byte the producer may be writing lies below this position. Published
    /// coarsely (a quarter of the ring at a time) so an observer can tell whether what it copied
    /// may have been overwritten.
    pub write_limit: AtomicU64,
    /// Bumped on every attach: a reader can tell a restarted peer from the old one.
    pub generation: AtomicU64,
    pub _pad: [u8; 40],
    /// The owner word the fields below describe; until it equals `owner`, they belong to an
    /// earlier owner (or the new owner is still writing them).
    pub identity_owner: AtomicU64,
    /// Full start time of the owner (clock ticks since boot); 0 when unknown.
    pub start_time: AtomicU64,
    /// Inode of the owner's PID namespace; 0 when unknown.
    pub pid_ns: AtomicU64,
    /// Inode of the owner's time namespace (its clocks may be offset); 0 when unknown.
    pub time_ns: AtomicU64,
    /// First 64 bits of the owner's boot id; 0 when unknown.
    pub boot_id: AtomicU64,
    /// `CLOCK_BOOTTIME` in ns, refreshed by a background thread of the owner's process.
    pub heartbeat_ns: AtomicU64,
    /// `CLOCK_BOOTTIME` in ns at which a claim of this side began, 0 when none is under way:
    /// covers the moment between a claim and its identity record.
    pub claim_started_ns: AtomicU64,
}

/// Bit of [`AttachBlock::owner`] set when the owner detached cleanly.
pub const OWNER_DETACHED: u64 = 1 << 63;

/// A futex word, alone in its block.
#[repr(C, align(128))]
pub struct DoorbellBlock {
    /// [`SLEEPING_ON_FUTEX`] while the owner of this doorbell sleeps (or is about to) in
    /// `futex_wait` on this word, [`SLEEPING_ON_FD`] while it sleeps in an event loop on its
    /// pollable doorbell (consumer only), 0 otherwise.
    pub sleeping: AtomicU32,
    /// 1 while the owner uses the blocking wait strategy or is armed on its pollable doorbell.
    /// The other side makes the doorbell's fence and check only then: a spinning peer costs it
    /// one load of a line it keeps cached.
    pub blocking: AtomicU32,
    /// The id of the owner's pollable doorbell (an abstract `AF_UNIX` datagram socket,
    /// `"\0tadpole-bell-<id as 16 hex digits>"`), 0 when it has none. Consumer only.
    pub pollable_id: AtomicU64,
}

/// [`DoorbellBlock::sleeping`]: asleep on the futex word; wake with `FUTEX_WAKE`.
pub const SLEEPING_ON_FUTEX: u32 = 1;
/// [`DoorbellBlock::sleeping`]: asleep on the pollable doorbell; wake by sending it a datagram.
pub const SLEEPING_ON_FD: u32 = 2;

/// Counters the producer writes (single writer: relaxed stores of process-local tallies).
#[repr(C, align(128))]
pub struct ProducerCounters {
    /// Messages committed.
    pub messages: AtomicU64,
    /// Payload bytes committed.
    pub bytes: AtomicU64,
    /// Commits (a batch of many messages counts once).
    pub commits: AtomicU64,
    /// Reservation attempts that found the ring full (a waiting reservation counts each retry).
    pub full_events: AtomicU64,
    /// futex wake calls made for a sleeping consumer.
    pub wakes: AtomicU64,
    /// Padding bytes written (wrap-around and alignment).
    pub padding_bytes: AtomicU64,
    /// Reservations refused because the message was larger than the maximum.
    pub oversize_rejects: AtomicU64,
}

/// Counters the consumer writes.
#[repr(C, align(128))]
pub struct ConsumerCounters {
    /// Messages received.
    pub messages: AtomicU64,
    /// Payload bytes received.
    pub bytes: AtomicU64,
    /// Releases made directly (a batch counts once; releases folded behind leases are not counted).
    pub releases: AtomicU64,
    /// Polls that found the ring empty.
    pub empty_polls: AtomicU64,
    /// futex wake calls made for a sleeping producer.
    pub wakes: AtomicU64,
    /// Records refused as corrupt.
    pub corrupt_records: AtomicU64,
    /// Records held as leases now (written when a lease is taken or folded; approximate while
    /// leases move between threads).
    pub leases_held: AtomicU64,
    /// Most leases the consumer may hold at once.
    pub lease_capacity: AtomicU64,
    // The second cache line: counted off the fast path (`Consumer::count_dead_letter`), so the
    // receive path never touches it.
    /// Records a receiver refused as not a valid message (`DeadLetterReason::Malformed`).
    pub dead_letters_malformed: AtomicU64,
    /// Valid messages a receiver could not deliver (`DeadLetterReason::Undeliverable`).
    pub dead_letters_undeliverable: AtomicU64,
}

/// The header page. `#[repr(C)]` with explicit alignment: offsets are asserted below.
#[repr(C, align(4096))]
pub struct SegmentHeader {
    pub descriptor: Descriptor,
    pub _pad0: [u8; BLOCK - core::mem::size_of::<Descriptor>()],
    pub producer_position: ProducerPositionBlock,
    pub consumer_position: PositionBlock,
    pub producer_attach: AttachBlock,
    pub consumer_attach: AttachBlock,
    pub consumer_doorbell: DoorbellBlock,
    pub producer_doorbell: DoorbellBlock,
    pub producer_counters: ProducerCounters,
    pub consumer_counters: ConsumerCounters,
}

/// Byte offsets of each block, for tools and for the tests that pin the format; the fields
/// inside a block are in the submodules.
pub mod offsets {
    pub const DESCRIPTOR: usize = 0;
    pub const PRODUCER_POSITION: usize = 128;
    pub const CONSUMER_POSITION: usize = 256;
    pub const PRODUCER_ATTACH: usize = 384;
    pub const CONSUMER_ATTACH: usize = 512;
    pub const CONSUMER_DOORBELL: usize = 640;
    pub const PRODUCER_DOORBELL: usize = 768;
    pub const PRODUCER_COUNTERS: usize = 896;
    pub const CONSUMER_COUNTERS: usize = 1024;

    /// Fields of the descriptor block, from the start of the segment.
    pub mod descriptor {
        pub const MAGIC: usize = 0;
        pub const LAYOUT_VERSION: usize = 8;
        pub const HEADER_LEN: usize = 12;
        pub const CAPACITY: usize = 16;
        pub const SEGMENT_LEN: usize = 24;
        pub const MAX_MESSAGE_LEN: usize = 32;
        pub const PAYLOAD_ALIGN: usize = 36;
        pub const CREATOR_PID: usize = 40;
        pub const CREATOR_START_TIME: usize = 48;
        pub const CREATED_UNIX_NS: usize = 56;
        pub const HEARTBEAT_TIMEOUT_MS: usize = 44;
        pub const EPOCH: usize = 64;
        pub const CREATOR_PID_NS: usize = 72;
        pub const CREATOR_TIME_NS: usize = 80;
        pub const CREATOR_BOOT_ID: usize = 88;
        pub const CREATOR_HEARTBEAT_NS: usize = 96;
    }

    /// Fields of an attach block (producer's at [`PRODUCER_ATTACH`], consumer's at
    /// [`CONSUMER_ATTACH`]), from the block's start.
    pub mod attach {
        pub const OWNER: usize = 0;
        pub const WRITE_LIMIT: usize = 8;
        pub const GENERATION: usize = 16;
        pub const IDENTITY_OWNER: usize = 64;
        pub const START_TIME: usize = 72;
        pub const PID_NS: usize = 80;
        pub const TIME_NS: usize = 88;
        pub const BOOT_ID: usize = 96;
        pub const HEARTBEAT_NS: usize = 104;
        pub const CLAIM_STARTED_NS: usize = 112;
    }

    /// Fields of the producer position block, from the start of the segment.
    pub mod producer_position {
        /// The tail (u64).
        pub const POSITION: usize = super::PRODUCER_POSITION;
        /// Frontier slot `i` starts at `FRONTIER + i * FRONTIER_SLOT_LEN`: end, messages (u64 each).
        pub const FRONTIER: usize = super::PRODUCER_POSITION + 8;
        pub const FRONTIER_SLOT_LEN: usize = 16;
    }

    /// The consumer's head (u64), from the start of the segment.
    pub const CONSUMER_HEAD: usize = CONSUMER_POSITION;

    /// Fields of the producer counters block (u64 each), from the start of the segment.
    pub mod producer_counters {
        pub const MESSAGES: usize = super::PRODUCER_COUNTERS;
        pub const BYTES: usize = super::PRODUCER_COUNTERS + 8;
        pub const COMMITS: usize = super::PRODUCER_COUNTERS + 16;
        pub const FULL_EVENTS: usize = super::PRODUCER_COUNTERS + 24;
        pub const WAKES: usize = super::PRODUCER_COUNTERS + 32;
        pub const PADDING_BYTES: usize = super::PRODUCER_COUNTERS + 40;
        pub const OVERSIZE_REJECTS: usize = super::PRODUCER_COUNTERS + 48;
    }

    /// Fields of the consumer counters block (u64 each), from the start of the segment.
    pub mod consumer_counters {
        pub const MESSAGES: usize = super::CONSUMER_COUNTERS;
        pub const BYTES: usize = super::CONSUMER_COUNTERS + 8;
        pub const RELEASES: usize = super::CONSUMER_COUNTERS + 16;
        pub const EMPTY_POLLS: usize = super::CONSUMER_COUNTERS + 24;
        pub const WAKES: usize = super::CONSUMER_COUNTERS + 32;
        pub const CORRUPT_RECORDS: usize = super::CONSUMER_COUNTERS + 40;
        pub const LEASES_HELD: usize = super::CONSUMER_COUNTERS + 48;
        pub const LEASE_CAPACITY: usize = super::CONSUMER_COUNTERS + 56;
        /// In the block's second cache line, away from the counters the receive path writes.
        pub const DEAD_LETTERS_MALFORMED: usize = super::CONSUMER_COUNTERS + 64;
        pub const DEAD_LETTERS_UNDELIVERABLE: usize = super::CONSUMER_COUNTERS + 72;
    }
}

/// Bit positions of the fields of a record header word (see the module docs).
pub mod record_header {
    /// Payload length: bits 0..32.
    pub const LENGTH_SHIFT: u32 = 0;
    /// Message type: bits 32..48.
    pub const TYPE_SHIFT: u32 = 32;
    /// Flags: bits 48..56 ([`super::FLAG_COMMITTED`], [`super::FLAG_PADDING`]).
    pub const FLAGS_SHIFT: u32 = 48;
    /// Check byte: bits 56..64.
    pub const CHECK_SHIFT: u32 = 56;
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<SegmentHeader>() == HEADER_LEN);
    assert!(offset_of!(SegmentHeader, descriptor) == offsets::DESCRIPTOR);
    assert!(offset_of!(SegmentHeader, producer_position) == offsets::PRODUCER_POSITION);
    assert!(offset_of!(SegmentHeader, consumer_position) == offsets::CONSUMER_POSITION);
    assert!(offset_of!(SegmentHeader, producer_attach) == offsets::PRODUCER_ATTACH);
    assert!(offset_of!(SegmentHeader, consumer_attach) == offsets::CONSUMER_ATTACH);
    assert!(offset_of!(SegmentHeader, consumer_doorbell) == offsets::CONSUMER_DOORBELL);
    assert!(offset_of!(SegmentHeader, producer_doorbell) == offsets::PRODUCER_DOORBELL);
    assert!(offset_of!(SegmentHeader, producer_counters) == offsets::PRODUCER_COUNTERS);
    assert!(offset_of!(SegmentHeader, consumer_counters) == offsets::CONSUMER_COUNTERS);
    {
        use offsets::descriptor as d;
        assert!(offset_of!(Descriptor, magic) == d::MAGIC);
        assert!(offset_of!(Descriptor, layout_version) == d::LAYOUT_VERSION);
        assert!(offset_of!(Descriptor, header_len) == d::HEADER_LEN);
        assert!(offset_of!(Descriptor, capacity) == d::CAPACITY);
        assert!(offset_of!(Descriptor, segment_len) == d::SEGMENT_LEN);
        assert!(offset_of!(Descriptor, max_message_len) == d::MAX_MESSAGE_LEN);
        assert!(offset_of!(Descriptor, payload_align) == d::PAYLOAD_ALIGN);
        assert!(offset_of!(Descriptor, creator_pid) == d::CREATOR_PID);
        assert!(offset_of!(Descriptor, creator_start_time) == d::CREATOR_START_TIME);
        assert!(offset_of!(Descriptor, created_unix_ns) == d::CREATED_UNIX_NS);
        assert!(offset_of!(Descriptor, epoch) == d::EPOCH);
        assert!(offset_of!(Descriptor, heartbeat_timeout_ms) == d::HEARTBEAT_TIMEOUT_MS);
        assert!(offset_of!(Descriptor, creator_pid_ns) == d::CREATOR_PID_NS);
        assert!(offset_of!(Descriptor, creator_time_ns) == d::CREATOR_TIME_NS);
        assert!(offset_of!(Descriptor, creator_boot_id) == d::CREATOR_BOOT_ID);
        assert!(offset_of!(Descriptor, creator_heartbeat_ns) == d::CREATOR_HEARTBEAT_NS);
        assert!(size_of::<Descriptor>() <= BLOCK);
    }
    {
        use offsets::attach as a;
        assert!(size_of::<AttachBlock>() == BLOCK);
        assert!(offset_of!(AttachBlock, owner) == a::OWNER);
        assert!(offset_of!(AttachBlock, write_limit) == a::WRITE_LIMIT);
        assert!(offset_of!(AttachBlock, generation) == a::GENERATION);
        assert!(offset_of!(AttachBlock, identity_owner) == a::IDENTITY_OWNER);
        assert!(offset_of!(AttachBlock, start_time) == a::START_TIME);
        assert!(offset_of!(AttachBlock, pid_ns) == a::PID_NS);
        assert!(offset_of!(AttachBlock, time_ns) == a::TIME_NS);
        assert!(offset_of!(AttachBlock, boot_id) == a::BOOT_ID);
        assert!(offset_of!(AttachBlock, heartbeat_ns) == a::HEARTBEAT_NS);
        assert!(offset_of!(AttachBlock, claim_started_ns) == a::CLAIM_STARTED_NS);
    }
    {
        use offsets::producer_position as p;
        let base = offsets::PRODUCER_POSITION;
        assert!(base + offset_of!(ProducerPositionBlock, position) == p::POSITION);
        assert!(base + offset_of!(ProducerPositionBlock, frontier) == p::FRONTIER);
        assert!(size_of::<FrontierSlot>() == p::FRONTIER_SLOT_LEN);
        assert!(offset_of!(FrontierSlot, end) == 0);
        assert!(offset_of!(FrontierSlot, messages) == 8);
        assert!(size_of::<ProducerPositionBlock>() == BLOCK);
    }
    assert!(offsets::CONSUMER_POSITION + offset_of!(PositionBlock, position) == offsets::CONSUMER_HEAD);
    {
        use offsets::producer_counters as c;
        let base = offsets::PRODUCER_COUNTERS;
        assert!(base + offset_of!(ProducerCounters, messages) == c::MESSAGES);
        assert!(base + offset_of!(ProducerCounters, bytes) == c::BYTES);
        assert!(base + offset_of!(ProducerCounters, commits) == c::COMMITS);
        assert!(base + offset_of!(ProducerCounters, full_events) == c::FULL_EVENTS);
        assert!(base + offset_of!(ProducerCounters, wakes) == c::WAKES);
        assert!(base + offset_of!(ProducerCounters, padding_bytes) == c::PADDING_BYTES);
        assert!(base + offset_of!(ProducerCounters, oversize_rejects) == c::OVERSIZE_REJECTS);
    }
    {
        use offsets::consumer_counters as c;
        let base = offsets::CONSUMER_COUNTERS;
        assert!(base + offset_of!(ConsumerCounters, messages) == c::MESSAGES);
        assert!(base + offset_of!(ConsumerCounters, bytes) == c::BYTES);
        assert!(base + offset_of!(ConsumerCounters, releases) == c::RELEASES);
        assert!(base + offset_of!(ConsumerCounters, empty_polls) == c::EMPTY_POLLS);
        assert!(base + offset_of!(ConsumerCounters, wakes) == c::WAKES);
        assert!(base + offset_of!(ConsumerCounters, corrupt_records) == c::CORRUPT_RECORDS);
        assert!(base + offset_of!(ConsumerCounters, leases_held) == c::LEASES_HELD);
        assert!(base + offset_of!(ConsumerCounters, lease_capacity) == c::LEASE_CAPACITY);
        assert!(base + offset_of!(ConsumerCounters, dead_letters_malformed) == c::DEAD_LETTERS_MALFORMED);
        assert!(base + offset_of!(ConsumerCounters, dead_letters_undeliverable) == c::DEAD_LETTERS_UNDELIVERABLE);
        assert!(size_of::<ConsumerCounters>() == BLOCK);
    }
    assert!(record_header::LENGTH_SHIFT == 0);
    assert!(FLAG_COMMITTED == 1 << record_header::FLAGS_SHIFT);
    assert!(TAG_MASK == 0xFFFF << record_header::FLAGS_SHIFT);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_zero_means_unpublished() {
        for pos in [0u64, 8, 4096, 123 * 8, u64::MAX - 7] {
            let w = encode_header(pos, 77, 9, false);
            assert_eq!(
                decode_header(pos, w),
                Ok(Some(RecordHeader { payload_len: 77, message_type: 9, padding: false }))
            );
            assert_eq!(decode_header(pos.wrapping_add(8), w), Err(HeaderFault::WrongPosition));
        }
        assert_eq!(decode_header(0, 0), Ok(None));
        for pos in [0u64, 8, 4096, u64::MAX - 7] {
            let w = encode_header(pos, 77, 9, false);
            assert_eq!(w & TAG_MASK, message_tag(pos));
            assert_ne!(encode_header(pos, 77, 9, true) & TAG_MASK, message_tag(pos));
        }
        // A zero-length message of type zero is still a non-zero word.
        assert_ne!(encode_header(0, 0, 0, false), 0);
        assert_eq!(decode_header(0, 5), Err(HeaderFault::BadFlags));
        assert_eq!(decode_header(0, 5 | FLAG_COMMITTED | 1 << 50), Err(HeaderFault::BadFlags));
    }

    #[test]
    fn max_message_always_fits_an_empty_ring_with_both_paddings() {
        for cap in [MIN_CAPACITY, 1 << 16, 1 << 20] {
            let worst = 2 * record_len(max_message_len_for(cap)) + 112 + SLACK;
            assert!(worst <= cap, "cap {cap}: worst case {worst}");
        }
    }
}
