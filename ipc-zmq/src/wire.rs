//! The relay wire protocol, version 3: typed frames carried as ZeroMQ messages, and a strict
//! decoder for them. Every byte is described in `ipc-zmq/PROTOCOL.md`.
//!
//! The first part of every message is a header: the protocol version, the kind, then fields of
//! that kind, little-endian. A DATA message adds one part holding all its records back to back
//! (one part, not one per record: CURVE seals every part separately, and a part per 64-byte
//! record cost more in crypto and allocation than the records themselves), each behind a compact
//! prefix: the position as a varint step from the one before, the message type only when it
//! changes, the length as a varint — 2 bytes for a 64-byte record, where version 2 spent 14
//! (CURVE and TCP cost per byte, so at small records the prefix was a sixth of the link's work).
//! Anything else — a wrong version, an unknown kind, a short or long part, a name that is not
//! printable UTF-8, an overlong or overflowing varint, a position past `u64` — is refused with a
//! [`FrameError`]; the decoder never panics, and allocates at most what the message's own
//! (bounded) counts say and nothing per record.
//!
//! ```
//! use ipc_zmq::wire::{self, Frame, Hello};
//! let hello = Frame::Hello(Hello { origin: "host-a".into(), stream: "orders".into(), epoch: 7 });
//! let parts = hello.encode();
//! assert_eq!(wire::decode(&parts)?, hello);
//! assert!(wire::decode(&[&b"\x01"[..]]).is_err());
//! # Ok::<(), wire::FrameError>(())
//! ```

use std::borrow::Cow;

/// The protocol version this crate speaks (first byte of every message). Version 2 (a 14-byte
/// prefix per record) and version 1 (a part per record) peers are refused.
pub const VERSION: u8 = 3;
/// Longest origin or stream name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most records in one DATA message.
pub const MAX_RECORDS: usize = 4096;
/// Most rejected records listed in one ACK.
pub const MAX_REJECTS: usize = MAX_RECORDS;

/// Kind byte of a HELLO.
pub const KIND_HELLO: u8 = 1;
/// Kind byte of a WELCOME.
pub const KIND_WELCOME: u8 = 2;
/// Kind byte of a DATA message.
pub const KIND_DATA: u8 = 3;
/// Kind byte of an ACK.
pub const KIND_ACK: u8 = 4;

/// ACK flag: the receiver's local ring was full (or had no consumer) and it stopped short of the
/// end of the DATA message; the sender resends the rest after a backoff.
pub const ACK_BUSY: u8 = 1;

/// Most bytes of a record's prefix in a DATA body: the step varint (at most 9 bytes: a step is
/// below 2⁶²), the message type (2) and the length varint (at most 10).
pub const MAX_RECORD_PREFIX_LEN: usize = 21;

/// Most bytes of a varint (a `u64` in 7-bit groups).
const MAX_VARINT_LEN: usize = 10;

/// One relay message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Sender → receiver: open (or reopen) a stream.
    Hello(Hello),
    /// Receiver → sender: where to resume.
    Welcome(Welcome),
    /// Sender → receiver: records.
    Data(Data<'a>),
    /// Receiver → sender: cumulative acknowledgement, with the records it rejected.
    Ack(Ack),
}

/// Opens a stream: the ring `stream` of relay `origin`, whose ring epoch is `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sending relay's name.
    pub origin: String,
    /// The route (stream) name: which ring on the far side the records go to.
    pub stream: String,
    /// The source ring's epoch ([`ipc_core::Segment::epoch`]).
    pub epoch: u64,
}

/// Answers a HELLO (or a DATA message that does not follow on from what was committed): every
/// record of `(stream, epoch)` at a position below `next` is committed (or rejected) on the far
/// side; the sender resends from the first record at or after `next`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The stream named in the HELLO.
    pub stream: String,
    /// The epoch named in the HELLO.
    pub epoch: u64,
    /// Every position below this is done.
    pub next: u64,
    /// Records below `next` the receiver rejected and the sender has not yet released (see
    /// [`Data::released`]): the sender dead-letters them. At most [`MAX_REJECTS`].
    pub rejects: Vec<Rejected>,
}

/// Records of one stream, in ring order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    /// The sending relay's name.
    pub origin: String,
    /// The route.
    pub stream: String,
    /// The source ring's epoch.
    pub epoch: u64,
    /// Every record below this position is released from the sender's ring (acknowledged, and
    /// dead-lettered if it was rejected): the receiver may forget the rejects below it.
    pub released: u64,
    /// At least one, at most [`MAX_RECORDS`], positions strictly increasing, all at or above
    /// [`Records::from`].
    pub records: Records<'a>,
}

/// The records of a DATA message: its encoded body, checked (by [`decode`]) or built (by
/// [`DataBody`]), read with [`iter`](Self::iter) without allocating.
///
/// ```
/// use ipc_zmq::wire::{DataRecord, Records};
/// let records = Records::encode(16, &[
///     DataRecord { position: 16, message_type: 3, payload: b"first" },
///     DataRecord { position: 48, message_type: 3, payload: b"" },
/// ])?;
/// assert_eq!(records.len(), 2);
/// assert_eq!(records.iter().map(|r| r.position).collect::<Vec<_>>(), [16, 48]);
/// // Prefixes: step 0 and the new type (1 + 2 bytes), length (1); then step 3 (48 = 16 + 8 +
/// // 3 × 8) and length (1 + 1): 11 bytes where version 2 took 33.
/// assert_eq!(records.body().len(), 4 + 5 + 2);
/// # Ok::<(), ipc_zmq::wire::FrameError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Records<'a> {
    body: Cow<'a, [u8]>,
    count: usize,
    from: u64,
}

impl<'a> Records<'a> {
    /// `records` as the body of a DATA message that claims to follow on from `from`; refused
    /// with [`FrameError::BadPosition`] unless every position is a multiple of 8, the first at
    /// or above `from` and each above the one before, and with
    /// [`FrameError::CountOutOfBounds`] unless there are 1 to [`MAX_RECORDS`].
    pub fn encode(from: u64, records: &[DataRecord<'_>]) -> Result<Records<'static>, FrameError> {
        if records.is_empty() || records.len() > MAX_RECORDS {
            return Err(FrameError::CountOutOfBounds(records.len()));
        }
        let mut body = DataBody::new(from, 0);
        for r in records {
            body.push(r.position, r.message_type, r.payload)?;
        }
        Ok(body.into_records())
    }

    /// The position the records follow on from: the sender claims no record exists at a
    /// position in `[from, first position)`. The receiver accepts the message only if `from` is
    /// at most its own next expected position (otherwise records were lost on the way).
    pub fn from(&self) -> u64 {
        self.from
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none (never, for a decoded DATA message).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded body (the DATA message's second part).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The records, in order, each borrowing its payload from the body.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter { cursor: BodyCursor::new(&self.body, self.from), left: self.count }
    }

    /// Checks the body as [`decode`] does: exactly [`len`](Self::len) well-formed records and
    /// nothing after them.
    pub(crate) fn validate(&self) -> Result<(), FrameError> {
        let mut checked = self.checked();
        while checked.next_checked()?.is_some() {}
        Ok(())
    }

    /// The records, each checked as it is read (the receiver's single pass over a body
    /// [`decode_deferred`] left unchecked).
    pub(crate) fn checked(&self) -> CheckedRecords<'_> {
        CheckedRecords { cursor: BodyCursor::new(&self.body, self.from), left: self.count }
    }
}

/// The records of a body not checked yet, each checked as it is read: what [`decode`] refuses,
/// this refuses with the same error, at the record where it is found.
pub(crate) struct CheckedRecords<'r> {
    cursor: BodyCursor<'r>,
    left: usize,
}

impl<'r> CheckedRecords<'r> {
    /// The next record; `Ok(None)` once all of them were read and nothing follows them.
    #[inline(always)]
    pub(crate) fn next_checked(&mut self) -> Result<Option<DataRecord<'r>>, FrameError> {
        if self.left == 0 {
            self.cursor.r.end()?;
            return Ok(None);
        }
        let record = self.cursor.next_record()?;
        self.left -= 1;
        Ok(Some(record))
    }

    /// Checks the records not read yet (and that nothing follows them).
    pub(crate) fn finish(&mut self) -> Result<(), FrameError> {
        while self.next_checked()?.is_some() {}
        Ok(())
    }
}

impl<'r> IntoIterator for &'r Records<'_> {
    type Item = DataRecord<'r>;
    type IntoIter = RecordIter<'r>;
    fn into_iter(self) -> RecordIter<'r> {
        self.iter()
    }
}

/// Iterator over [`Records`].
pub struct RecordIter<'r> {
    cursor: BodyCursor<'r>,
    left: usize,
}

impl<'r> Iterator for RecordIter<'r> {
    type Item = DataRecord<'r>;

    #[inline]
    fn next(&mut self) -> Option<DataRecord<'r>> {
        if self.left == 0 {
            return None;
        }
        // The body was checked when it was decoded or built, so this does not fail; if it
        // did, the iteration would just end.
        match self.cursor.next_record() {
            Ok(r) => {
                self.left -= 1;
                Some(r)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// Builds the body of a DATA message one record at a time, into one buffer (the sender's path:
/// nothing allocated per record).
///
/// ```
/// use ipc_zmq::wire::{self, DataBody, Frame};
/// let mut body = DataBody::new(0, 256);
/// body.push(0, 7, b"hello")?;
/// body.push(24, 7, b"world")?;
/// assert_eq!(body.len(), 2);
/// let parts = vec![wire::data_header("host-a", "orders", 9, 0, 0, body.len()), body.into_bytes()];
/// let Frame::Data(data) = wire::decode(&parts)? else { unreachable!() };
/// assert_eq!(data.records.iter().map(|r| (r.position, r.payload)).collect::<Vec<_>>(),
///            [(0, &b"hello"[..]), (24, &b"world"[..])]);
/// # Ok::<(), wire::FrameError>(())
/// ```
#[derive(Debug)]
pub struct DataBody {
    bytes: Vec<u8>,
    count: usize,
    from: u64,
    /// Lowest position the next record may have; `None` past the end of `u64`.
    floor: Option<u64>,
    message_type: u16,
}

impl DataBody {
    /// An empty body of records following on from `from`, with room for `capacity` bytes.
    pub fn new(from: u64, capacity: usize) -> DataBody {
        DataBody { bytes: Vec::with_capacity(capacity), count: 0, from, floor: align_up(from), message_type: 0 }
    }

    /// Appends a record; refused with [`FrameError::BadPosition`] (and nothing appended) unless
    /// `position` is a multiple of 8, at or above `from` for the first record and above the one
    /// before for the others.
    #[inline]
    pub fn push(&mut self, position: u64, message_type: u16, payload: &[u8]) -> Result<(), FrameError> {
        let floor = self.floor.filter(|&floor| position >= floor && position % 8 == 0);
        let floor = floor.ok_or(FrameError::BadPosition(position))?;
        let typed = message_type != self.message_type;
        let step = ((position - floor) / 8) << 1 | u64::from(typed);
        let len = payload.len() as u64;
        // Exactly what this record takes: a body built into the last one's capacity ends full,
        // and ZeroMQ takes the buffer over without a copy or a shrinking reallocation.
        self.bytes.reserve(varint_len(step) + 2 * usize::from(typed) + varint_len(len) + payload.len());
        put_varint(&mut self.bytes, step);
        if typed {
            self.bytes.extend_from_slice(&message_type.to_le_bytes());
            self.message_type = message_type;
        }
        put_varint(&mut self.bytes, len);
        self.bytes.extend_from_slice(payload);
        self.floor = position.checked_add(8);
        self.count += 1;
        Ok(())
    }

    /// Records appended.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether none was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the body so far.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The body, for the DATA message's second part.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The body as [`Records`].
    pub fn into_records(self) -> Records<'static> {
        Records { body: Cow::Owned(self.bytes), count: self.count, from: self.from }
    }
}

/// `from` rounded up to a multiple of 8: the lowest position a first record may have; `None`
/// when no multiple of 8 is left.
fn align_up(from: u64) -> Option<u64> {
    from.checked_add(7).map(|v| v & !7)
}

/// Bytes of `v` as a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// Reads the records of a DATA body one after the other, checking each prefix.
struct BodyCursor<'a> {
    r: Reader<'a>,
    floor: Option<u64>,
    message_type: u16,
}

impl<'a> BodyCursor<'a> {
    fn new(body: &'a [u8], from: u64) -> BodyCursor<'a> {
        BodyCursor { r: Reader { buf: body, at: 0, part: 1 }, floor: align_up(from), message_type: 0 }
    }

    /// The next record. Most records take the fast path: a one-byte step without a message
    /// type and a one-byte length (every record under 128 bytes that follows on from the one
    /// before in its ring); the rest take [`next_record_slow`](Self::next_record_slow), which
    /// checks the same things in full.
    #[inline(always)]
    fn next_record(&mut self) -> Result<DataRecord<'a>, FrameError> {
        let (buf, at) = (self.r.buf, self.r.at);
        if let (Some(&step), Some(&len), Some(floor)) = (buf.get(at), buf.get(at + 1), self.floor) {
            let start = at + 2;
            let end = start + usize::from(len);
            if step < 0x80 && step & 1 == 0 && len < 0x80 && end <= buf.len() {
                if let Some(position) = floor.checked_add(u64::from(step >> 1) * 8) {
                    self.r.at = end;
                    self.floor = position.checked_add(8);
                    return Ok(DataRecord { position, message_type: self.message_type, payload: &buf[start..end] });
                }
            }
        }
        self.next_record_slow()
    }

    #[inline(never)]
    fn next_record_slow(&mut self) -> Result<DataRecord<'a>, FrameError> {
        let step = self.r.varint()?;
        let position = (step >> 1)
            .checked_mul(8)
            .and_then(|offset| self.floor?.checked_add(offset))
            .ok_or(FrameError::PositionOverflow)?;
        if step & 1 != 0 {
            let message_type = self.r.u16()?;
            if message_type == self.message_type {
                return Err(FrameError::NonCanonical { part: 1 });
            }
            self.message_type = message_type;
        }
        let len = self.r.varint()?;
        let payload = self.r.take(usize::try_from(len).map_err(|_| FrameError::Truncated { part: 1 })?)?;
        self.floor = position.checked_add(8);
        Ok(DataRecord { position, message_type: self.message_type, payload })
    }
}

/// One record of a DATA message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRecord<'a> {
    /// Its position in the source ring (a multiple of 8).
    pub position: u64,
    /// The message type the source producer set.
    pub message_type: u16,
    /// The payload, byte for byte.
    pub payload: &'a [u8],
}

/// Cumulative acknowledgement of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The stream acknowledged.
    pub stream: String,
    /// Its epoch.
    pub epoch: u64,
    /// Every record below this position is done: committed into the far ring, dropped as a
    /// duplicate, or rejected (then listed in `rejects` until the sender has released it).
    pub next: u64,
    /// The receiver stopped short of the end of the DATA message (local ring full).
    pub busy: bool,
    /// Records refused, with why; all below `next`. At most [`MAX_REJECTS`].
    pub rejects: Vec<Rejected>,
}

/// A record the receiver refused, to be dead-lettered by the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Its position in the source ring.
    pub position: u64,
    /// Why.
    pub reason: RejectReason,
}

/// Why a receiver refused a record (a permanent refusal: resending would not help).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RejectReason {
    /// No local ring is configured for the stream's route.
    UnknownRoute = 1,
    /// Larger than the local ring's largest message.
    TooLarge = 2,
    /// The route carries envelopes and this payload is not a valid one.
    InvalidEnvelope = 3,
}

impl RejectReason {
    /// Every reason, in code order.
    pub const ALL: [RejectReason; 3] =
        [RejectReason::UnknownRoute, RejectReason::TooLarge, RejectReason::InvalidEnvelope];

    /// The reason with wire code `code`.
    pub fn from_code(code: u8) -> Option<RejectReason> {
        match code {
            1 => Some(RejectReason::UnknownRoute),
            2 => Some(RejectReason::TooLarge),
            3 => Some(RejectReason::InvalidEnvelope),
            _ => None,
        }
    }

    /// Its wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Index into per-reason counters.
    pub(crate) fn index(self) -> usize {
        self as usize - 1
    }
}

/// Why a message was refused by [`decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message has no parts.
    #[error("empty message")]
    Empty,
    /// The first byte is not [`VERSION`].
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The kind byte is none of the known kinds.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A part ends before its fields do.
    #[error("part {part} truncated")]
    Truncated {
        /// Index of the part.
        part: usize,
    },
    /// A part has bytes after its last field.
    #[error("part {part} has trailing bytes")]
    TrailingBytes {
        /// Index of the part.
        part: usize,
    },
    /// The number of parts is not what the header says.
    #[error("expected {expected} parts, got {got}")]
    PartCount {
        /// Parts the header implies.
        expected: usize,
        /// Parts received.
        got: usize,
    },
    /// A name is empty, longer than [`MAX_NAME_LEN`], not UTF-8, or holds control characters.
    #[error("invalid origin or stream name")]
    BadName,
    /// A DATA message holds no record or more than [`MAX_RECORDS`], or an ACK more than
    /// [`MAX_REJECTS`] rejects.
    #[error("record count {0} out of bounds")]
    CountOutOfBounds(usize),
    /// A position is not a multiple of 8, below `from`, or not above the one before it (when
    /// encoding DATA), or a reject is at or above `next` (ACK, WELCOME).
    #[error("position {0} out of order or misaligned")]
    BadPosition(u64),
    /// A varint in a DATA body holds more than 64 bits.
    #[error("part {part}: varint overflows 64 bits")]
    VarintOverflow {
        /// Index of the part.
        part: usize,
    },
    /// A DATA body says something in more bytes than it must: a varint with a zero last group
    /// (overlong), or a message type equal to the one before it. Refused so that every accepted
    /// message has exactly one encoding.
    #[error("part {part}: non-canonical encoding")]
    NonCanonical {
        /// Index of the part.
        part: usize,
    },
    /// A record's position, its step added to the one before, lies past `u64::MAX`.
    #[error("record position past the end of u64")]
    PositionOverflow,
    /// An unknown reject reason code.
    #[error("unknown reject reason {0}")]
    BadReason(u8),
    /// Unknown flag bits.
    #[error("unknown flags {0:#x}")]
    BadFlags(u8),
}

/// Decodes one message (its parts, in order). Borrows DATA payloads from `parts`.
pub fn decode<P: AsRef<[u8]>>(parts: &[P]) -> Result<Frame<'_>, FrameError> {
    decode_parts(parts, true)
}

/// [`decode`], except that a DATA message's body (its records) is left unchecked: everything
/// else is checked as strictly. The receiver's path: it checks the body in the same pass that
/// commits the records ([`Records::checked`]) and throws the pass away on the first error, so a
/// DATA body is read once instead of twice. [`Records::iter`] must not be used on such a body
/// before [`Records::validate`] or a whole [`CheckedRecords`] pass succeeded.
pub(crate) fn decode_deferred<P: AsRef<[u8]>>(parts: &[P]) -> Result<Frame<'_>, FrameError> {
    decode_parts(parts, false)
}

fn decode_parts<P: AsRef<[u8]>>(parts: &[P], check_body: bool) -> Result<Frame<'_>, FrameError> {
    let head = parts.first().ok_or(FrameError::Empty)?.as_ref();
    let mut r = Reader { buf: head, at: 0, part: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let kind = r.u8()?;
    let frame = match kind {
        KIND_HELLO => {
            let epoch = r.u64()?;
            let origin = r.name()?;
            let stream = r.name()?;
            Frame::Hello(Hello { origin, stream, epoch })
        }
        KIND_WELCOME => {
            let epoch = r.u64()?;
            let next = r.u64()?;
            let stream = r.name()?;
            let rejects = r.rejects(next)?;
            Frame::Welcome(Welcome { stream, epoch, next, rejects })
        }
        KIND_DATA => {
            let epoch = r.u64()?;
            let from = r.u64()?;
            let released = r.u64()?;
            let count = r.u32()? as usize;
            let origin = r.name()?;
            let stream = r.name()?;
            r.end()?;
            if count == 0 || count > MAX_RECORDS {
                return Err(FrameError::CountOutOfBounds(count));
            }
            if parts.len() != 2 {
                return Err(FrameError::PartCount { expected: 2, got: parts.len() });
            }
            let body = parts[1].as_ref();
            let records = Records { body: Cow::Borrowed(body), count, from };
            if check_body {
                // Checked here once; `Records::iter` reads it again without allocating.
                records.validate()?;
            }
            return Ok(Frame::Data(Data { origin, stream, epoch, released, records }));
        }
        KIND_ACK => {
            let epoch = r.u64()?;
            let next = r.u64()?;
            let flags = r.u8()?;
            if flags & !ACK_BUSY != 0 {
                return Err(FrameError::BadFlags(flags));
            }
            let stream = r.name()?;
            let rejects = r.rejects(next)?;
            Frame::Ack(Ack { stream, epoch, next, busy: flags & ACK_BUSY != 0, rejects })
        }
        other => return Err(FrameError::UnknownKind(other)),
    };
    r.end()?;
    if parts.len() != 1 {
        return Err(FrameError::PartCount { expected: 1, got: parts.len() });
    }
    Ok(frame)
}

impl Frame<'_> {
    /// The message's parts, ready for `send_multipart`.
    pub fn encode(&self) -> Vec<Vec<u8>> {
        match self {
            Frame::Hello(h) => {
                let mut b = header(KIND_HELLO);
                b.extend_from_slice(&h.epoch.to_le_bytes());
                put_name(&mut b, &h.origin);
                put_name(&mut b, &h.stream);
                vec![b]
            }
            Frame::Welcome(w) => {
                let mut b = header(KIND_WELCOME);
                b.extend_from_slice(&w.epoch.to_le_bytes());
                b.extend_from_slice(&w.next.to_le_bytes());
                put_name(&mut b, &w.stream);
                put_rejects(&mut b, &w.rejects);
                vec![b]
            }
            Frame::Data(d) => {
                let r = &d.records;
                vec![data_header(&d.origin, &d.stream, d.epoch, r.from, d.released, r.count), r.body.to_vec()]
            }
            Frame::Ack(a) => {
                let mut b = header(KIND_ACK);
                b.extend_from_slice(&a.epoch.to_le_bytes());
                b.extend_from_slice(&a.next.to_le_bytes());
                b.push(if a.busy { ACK_BUSY } else { 0 });
                put_name(&mut b, &a.stream);
                put_rejects(&mut b, &a.rejects);
                vec![b]
            }
        }
    }
}

/// The origin a HELLO or DATA message names, read from its first part alone (the records are
/// not decoded); `None` for other kinds and for anything malformed. A receiving relay uses it to
/// hold each origin to the client key that first used it.
pub fn origin_of(head: &[u8]) -> Option<String> {
    let mut r = Reader { buf: head, at: 0, part: 0 };
    if r.u8().ok()? != VERSION {
        return None;
    }
    match r.u8().ok()? {
        KIND_HELLO => {
            r.u64().ok()?;
        }
        KIND_DATA => {
            r.u64().ok()?;
            r.u64().ok()?;
            r.u64().ok()?;
            r.u32().ok()?;
        }
        _ => return None,
    }
    r.name().ok()
}

/// The first part of a DATA message of `count` records.
pub fn data_header(origin: &str, stream: &str, epoch: u64, from: u64, released: u64, count: usize) -> Vec<u8> {
    let mut b = header(KIND_DATA);
    b.extend_from_slice(&epoch.to_le_bytes());
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&released.to_le_bytes());
    b.extend_from_slice(&(count as u32).to_le_bytes());
    put_name(&mut b, origin);
    put_name(&mut b, stream);
    b
}

/// Whether `name` may be sent as an origin or stream name (what the decoder accepts).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

fn put_rejects(b: &mut Vec<u8>, rejects: &[Rejected]) {
    let rejects = &rejects[..rejects.len().min(MAX_REJECTS)];
    b.extend_from_slice(&(rejects.len() as u16).to_le_bytes());
    for rej in rejects {
        b.extend_from_slice(&rej.position.to_le_bytes());
        b.push(rej.reason.code());
    }
}

fn header(kind: u8) -> Vec<u8> {
    vec![VERSION, kind]
}

fn put_name(b: &mut Vec<u8>, name: &str) {
    debug_assert!(valid_name(name), "names are checked when the stream is configured");
    let bytes = &name.as_bytes()[..name.len().min(MAX_NAME_LEN)];
    b.push(bytes.len() as u8);
    b.extend_from_slice(bytes);
}

/// A bounds-checked cursor over one part.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    part: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.buf.len());
        let end = end.ok_or(FrameError::Truncated { part: self.part })?;
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian base-128 varint of at most [`MAX_VARINT_LEN`] bytes, in its shortest form.
    fn varint(&mut self) -> Result<u64, FrameError> {
        let first = self.u8()?;
        if first < 0x80 {
            return Ok(u64::from(first));
        }
        let mut value = u64::from(first & 0x7f);
        for i in 1..MAX_VARINT_LEN {
            let b = self.u8()?;
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                return Err(FrameError::VarintOverflow { part: self.part });
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if b == 0 {
                    return Err(FrameError::NonCanonical { part: self.part });
                }
                return Ok(value);
            }
        }
        Err(FrameError::VarintOverflow { part: self.part })
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let mut b = [0; 2];
        b.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn name(&mut self) -> Result<String, FrameError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        let name = std::str::from_utf8(bytes).map_err(|_| FrameError::BadName)?;
        if !valid_name(name) {
            return Err(FrameError::BadName);
        }
        Ok(name.to_owned())
    }

    /// A reject list (count, then 9 bytes each) ending the part; every position below `next`.
    fn rejects(&mut self, next: u64) -> Result<Vec<Rejected>, FrameError> {
        let count = self.u16()? as usize;
        if count > MAX_REJECTS {
            return Err(FrameError::CountOutOfBounds(count));
        }
        // Refuse a count the part cannot hold before allocating for it.
        let left = self.buf.len() - self.at;
        if left != count * 9 {
            let part = self.part;
            return Err(if left < count * 9 {
                FrameError::Truncated { part }
            } else {
                FrameError::TrailingBytes { part }
            });
        }
        let mut rejects = Vec::with_capacity(count);
        for _ in 0..count {
            let position = self.u64()?;
            let code = self.u8()?;
            let reason = RejectReason::from_code(code).ok_or(FrameError::BadReason(code))?;
            if position >= next || position % 8 != 0 {
                return Err(FrameError::BadPosition(position));
            }
            rejects.push(Rejected { position, reason });
        }
        Ok(rejects)
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.at == self.buf.len() { Ok(()) } else { Err(FrameError::TrailingBytes { part: self.part }) }
    }
}
