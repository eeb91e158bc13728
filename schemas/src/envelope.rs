//! The Tadpole message envelope: ids, header, encoding, verification, typed
//! access to the payload, and a JSON rendering for logs.
//!
//! One envelope is one size-prefixed FlatBuffer (schema: `fbs/envelope.fbs`):
//!
//! ```text
//!  0        4        8        12
//!  +--------+--------+--------+----------------------------------+
//!  | prefix | root   | "TDPL" | vtables, tables, strings, ...    |
//!  | u32 LE | uoffset| file id|                                  |
//!  +--------+--------+--------+----------------------------------+
//!  |<------------------ prefix + 4 == record length ------------>|
//! ```
//!
//! This module owns the rules a reader applies before trusting a record
//! ([`verify_envelope`]): the identifier, the size prefix matching the record
//! exactly, and the FlatBuffers verifier's checks with tight limits (run by
//! the specialised walk in `envelope/verify.rs`, or by FlatBuffers itself).
//! It must never panic on bytes from a peer, never accept a record
//! FlatBuffers' verifier would refuse, and the encode path must not allocate
//! once the [`EnvelopeEncoder`] has warmed up.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};
use serde_json::{Map, Value};

use crate::fb;
pub use crate::fb::Envelope;

/// The 4-byte FlatBuffers file identifier of every envelope.
pub const FILE_IDENTIFIER: [u8; 4] = *b"TDPL";

/// Length of the little-endian `u32` size prefix in front of every envelope.
pub const SIZE_PREFIX_LEN: usize = 4;

/// The smallest possible envelope: size prefix, root offset, file identifier.
pub const MIN_ENVELOPE_LEN: usize = SIZE_PREFIX_LEN + 4 + FILE_IDENTIFIER.len();

const FILE_IDENTIFIER_STR: &str = "TDPL";

// ---------------------------------------------------------------------------
// Ids, time, version

/// A message id: a random (v4) UUID. A correlation id is the [`MessageId`] of
/// the request a message answers, so one type serves both fields.
///
/// ```
/// use schemas::envelope::MessageId;
/// let a = MessageId::new_v4();
/// assert_ne!(a, MessageId::new_v4());
/// assert_eq!(MessageId::from_wire(&a.to_wire()), a);
/// assert_eq!(a.as_uuid().get_version_num(), 4);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// The all-zero id, used where a received envelope carries no id.
    pub const NIL: Self = Self(uuid::Uuid::nil());

    /// A fresh random id. The bits come from `rand`'s thread-local CSPRNG,
    /// so this costs no system call.
    pub fn new_v4() -> Self {
        let bytes: [u8; 16] = rand::random();
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }

    /// Reads the wire struct (`hi` = bytes 0..8 big-endian, `lo` = 8..16).
    pub fn from_wire(wire: &fb::Uuid) -> Self {
        Self(uuid::Uuid::from_u64_pair(wire.hi(), wire.lo()))
    }

    /// Converts to the wire struct.
    pub fn to_wire(self) -> fb::Uuid {
        let (hi, lo) = self.0.as_u64_pair();
        fb::Uuid::new(hi, lo)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Nanoseconds since the Unix epoch, as stored in `Envelope.timestamp_ns`.
/// Saturates instead of wrapping; a clock before 1970 reads as 0.
///
/// ```
/// let t = schemas::envelope::now_unix_ns();
/// assert!(t > 1_600_000_000_000_000_000); // after September 2020
/// ```
pub fn now_unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The semantic version of the schema a message was written with.
///
/// Bump `minor` whenever fields or union members are appended to the `.fbs`
/// files; `major` only for an incompatible change (which the evolution rules
/// forbid).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SchemaVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Appended fields or union members.
    pub minor: u16,
    /// Comment/documentation-only changes.
    pub patch: u16,
}

impl SchemaVersion {
    /// The version of `fbs/envelope.fbs` this crate was built with.
    /// 1.0.0 is the frozen copy in `testdata/evolution/v1`.
    pub const CURRENT: Self = Self { major: 1, minor: 1, patch: 0 };

    /// Reads the wire struct.
    pub fn from_wire(wire: &fb::SchemaVersion) -> Self {
        Self { major: wire.major(), minor: wire.minor(), patch: wire.patch() }
    }

    /// Converts to the wire struct.
    pub fn to_wire(self) -> fb::SchemaVersion {
        fb::SchemaVersion::new(self.major, self.minor, self.patch)
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

// ---------------------------------------------------------------------------
// Header

/// Everything in an envelope except the payload. It borrows its strings, so
/// making one (or a reply) allocates nothing.
///
/// ```
/// use schemas::envelope::EnvelopeHeader;
/// let h = EnvelopeHeader::new("risk-agent-1", "execution-1");
/// assert_eq!(h.correlation_id, h.message_id); // a request correlates to itself
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EnvelopeHeader<'a> {
    /// Unique per message; the deduplication key for at-least-once delivery.
    pub message_id: MessageId,
    /// The `message_id` of the request this answers, or its own id.
    pub correlation_id: MessageId,
    /// Unix nanoseconds when the message was made.
    pub timestamp_ns: u64,
    /// Sending agent/system identifier.
    pub source: &'a str,
    /// Target identifier; empty means broadcast.
    pub destination: &'a str,
    /// Schema version the writer was built with.
    pub schema_version: SchemaVersion,
    /// Routing/tracing annotations. The encoder sorts them by key.
    pub metadata: &'a [(&'a str, &'a str)],
}

impl<'a> EnvelopeHeader<'a> {
    /// A new request: fresh id, correlated to itself, stamped now.
    pub fn new(source: &'a str, destination: &'a str) -> Self {
        let id = MessageId::new_v4();
        Self {
            message_id: id,
            correlation_id: id,
            timestamp_ns: now_unix_ns(),
            source,
            destination,
            schema_version: SchemaVersion::CURRENT,
            metadata: &[],
        }
    }

    /// The same header with `metadata` attached.
    pub fn with_metadata(self, metadata: &'a [(&'a str, &'a str)]) -> Self {
        Self { metadata, ..self }
    }

    /// The header fields of a received envelope, borrowing its strings.
    /// Absent fields read as [`MessageId::NIL`], `0`, `""` and version 0.0.0.
    /// `metadata` is left empty: read it with `envelope.metadata()`.
    pub fn from_envelope(envelope: &Envelope<'a>) -> Self {
        Self {
            message_id: envelope.message_id().map_or(MessageId::NIL, MessageId::from_wire),
            correlation_id: envelope.correlation_id().map_or(MessageId::NIL, MessageId::from_wire),
            timestamp_ns: envelope.timestamp_ns(),
            source: envelope.source().unwrap_or(""),
            destination: envelope.destination().unwrap_or(""),
            schema_version: envelope
                .schema_version()
                .map_or(SchemaVersion { major: 0, minor: 0, patch: 0 }, SchemaVersion::from_wire),
            metadata: &[],
        }
    }

    /// The header of a reply to `request`: fresh id, `correlation_id` =
    /// the request's `message_id`, source and destination swapped, stamped now.
    ///
    /// ```
    /// use schemas::envelope::{verify_envelope, EnvelopeEncoder, EnvelopeHeader, VerifyOptions};
    /// use schemas::fb;
    /// let mut enc = EnvelopeEncoder::new();
    /// let req = EnvelopeHeader::new("risk-1", "exec-1");
    /// let bytes = enc.encode(&req, |fbb| {
    ///     fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence: 1, ..Default::default() })
    /// }).to_vec();
    /// let request = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
    /// let reply = EnvelopeHeader::reply_to(&request);
    /// assert_eq!(reply.correlation_id, req.message_id);
    /// assert_eq!((reply.source, reply.destination), ("exec-1", "risk-1"));
    /// ```
    pub fn reply_to(request: &Envelope<'a>) -> Self {
        let request = Self::from_envelope(request);
        Self {
            message_id: MessageId::new_v4(),
            correlation_id: request.message_id,
            timestamp_ns: now_unix_ns(),
            source: request.destination,
            destination: request.source,
            schema_version: SchemaVersion::CURRENT,
            metadata: &[],
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding

/// A finished payload table plus its union discriminant, ready to go into an
/// envelope. Every `WIPOffset<fb::SomeEvent>` converts into one with `into()`.
#[derive(Clone, Copy)]
pub struct PayloadOffset {
    kind: fb::Payload,
    offset: WIPOffset<UnionWIPOffset>,
}

impl PayloadOffset {
    /// Pairs a union discriminant with a finished table. Prefer `into()` from
    /// the typed offset, which cannot pair the wrong two.
    pub fn new(kind: fb::Payload, offset: WIPOffset<UnionWIPOffset>) -> Self {
        Self { kind, offset }
    }

    /// The union discriminant (the message type).
    pub fn kind(&self) -> fb::Payload {
        self.kind
    }
}

impl fmt::Debug for PayloadOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadOffset").field("kind", &self.kind).field("offset", &self.offset.value()).finish()
    }
}

/// Errors from [`EnvelopeEncoder::write_into`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The destination cannot hold the encoded envelope.
    #[error("destination holds {available} bytes, the envelope needs {needed}")]
    BufferTooSmall {
        /// [`EnvelopeEncoder::encoded_len`].
        needed: usize,
        /// Length of the destination slice.
        available: usize,
    },
    /// `write_into` was called before any `encode`.
    #[error("nothing has been encoded yet")]
    NothingEncoded,
}

/// Builds envelopes with one reused [`FlatBufferBuilder`] (the payload) and,
/// for envelopes without metadata, a hand-written header around it (layout
/// drawn in the private `header_layout` module). After the first few
/// messages have grown the buffers, encoding allocates nothing.
///
/// Two ways to get the bytes out:
/// * [`encode`](Self::encode) returns the finished, size-prefixed record.
/// * [`encoded_len`](Self::encoded_len) + [`write_into`](Self::write_into)
///   copy it once into a caller-provided slice (a ring's reserved space).
///
/// ```
/// use schemas::envelope::{verify_envelope, EnvelopeEncoder, EnvelopeHeader, VerifyOptions};
/// use schemas::fb;
///
/// let mut enc = EnvelopeEncoder::new();
/// let header = EnvelopeHeader::new("market-analysis-1", "risk-1");
/// enc.encode(&header, |fbb| {
///     let symbol = fbb.create_string("BTC-USD");
///     fb::TradingSignalGenerated::create(fbb, &fb::TradingSignalGeneratedArgs {
///         symbol: Some(symbol),
///         side: fb::Side::Buy,
///         reference_price_e8: 6_512_345_000_000, // 65 123.45
///         ..Default::default()
///     })
/// });
///
/// let mut slot = vec![0u8; enc.encoded_len()]; // e.g. a ring reservation
/// let n = enc.write_into(&mut slot).unwrap();
/// let env = verify_envelope(&slot[..n], &VerifyOptions::default()).unwrap();
/// let signal = env.payload_as_trading_signal_generated().unwrap();
/// assert_eq!(signal.symbol(), Some("BTC-USD"));
/// ```
pub struct EnvelopeEncoder {
    fbb: FlatBufferBuilder<'static>,
    metadata_order: Vec<usize>,
    metadata_offsets: Vec<WIPOffset<fb::KeyValue<'static>>>,
    /// The record when the envelope table was laid out by hand (see
    /// [`header_layout`]); reused, so it stops allocating once warm.
    record: Vec<u8>,
    finished: Finished,
}

/// Where the last encoded record lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Finished {
    Nothing,
    /// `fbb.finished_data()`: the whole envelope went through the builder.
    Builder,
    /// `record`: the envelope header laid out by hand in front of the payload.
    Record,
}

impl Default for EnvelopeEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EnvelopeEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeEncoder").field("encoded_len", &self.encoded_len()).finish_non_exhaustive()
    }
}

impl EnvelopeEncoder {
    /// An encoder with a 1 KiB initial buffer.
    pub fn new() -> Self {
        Self::with_capacity(1024)
    }

    /// An encoder whose buffer starts at `bytes` (it still grows as needed).
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(bytes),
            metadata_order: Vec::new(),
            metadata_offsets: Vec::new(),
            record: Vec::with_capacity(bytes),
            finished: Finished::Nothing,
        }
    }

    /// Encodes one envelope and returns the finished size-prefixed record.
    ///
    /// `payload` builds the event table (and its strings/vectors) in the
    /// builder and returns its offset; the envelope is built around it.
    /// The bytes stay valid until the next `encode`.
    ///
    /// # Panics
    ///
    /// Only if `payload` misuses the builder (e.g. leaves a table unfinished:
    /// a panic with metadata; without, the unfinished bytes are left
    /// unreferenced), returns an offset it did not build, or the envelope
    /// exceeds the 2 GiB FlatBuffers limit.
    pub fn encode<P, F>(&mut self, header: &EnvelopeHeader<'_>, payload: F) -> &[u8]
    where
        F: FnOnce(&mut FlatBufferBuilder<'static>) -> P,
        P: Into<PayloadOffset>,
    {
        self.fbb.reset();
        self.finished = Finished::Nothing;
        let payload = payload(&mut self.fbb).into();
        if payload.kind != fb::Payload::NONE {
            self.lay_out_header(header, payload);
            self.finished = Finished::Record;
            return &self.record;
        }
        self.finish_with_builder(header, payload)
    }

    /// The envelope through `FlatBufferBuilder` only (the reference layout,
    /// and the path for a `NONE` payload kind, which the builder elides).
    fn finish_with_builder(&mut self, header: &EnvelopeHeader<'_>, payload: PayloadOffset) -> &[u8] {
        let source = self.fbb.create_string(header.source);
        let destination = self.fbb.create_string(header.destination);
        let metadata = self.build_metadata(header.metadata);

        let message_id = header.message_id.to_wire();
        let correlation_id = header.correlation_id.to_wire();
        let schema_version = header.schema_version.to_wire();
        let root = fb::Envelope::create(
            &mut self.fbb,
            &fb::EnvelopeArgs {
                message_id: Some(&message_id),
                correlation_id: Some(&correlation_id),
                timestamp_ns: header.timestamp_ns,
                source: Some(source),
                destination: Some(destination),
                schema_version: Some(&schema_version),
                payload_type: payload.kind,
                payload: Some(payload.offset),
                metadata,
            },
        );
        self.fbb.finish_size_prefixed(root, Some(FILE_IDENTIFIER_STR));
        self.finished = Finished::Builder;
        self.fbb.finished_data()
    }

    /// Writes the record into `self.record`: the envelope header laid out by
    /// hand (see [`header_layout`]), then the payload the builder holds,
    /// unchanged. The builder's generic table/vtable machinery costs ~1 150
    /// instructions for the envelope header (callgrind); this costs ~440.
    ///
    /// The builder aligns everything relative to the end of its data, so the
    /// payload keeps its alignment as long as the record length is a multiple
    /// of 8 (the largest alignment in the schema).
    fn lay_out_header(&mut self, header: &EnvelopeHeader<'_>, payload: PayloadOffset) {
        use header_layout::*;
        let tail = self.fbb.unfinished_data();
        let payload_from_end = payload.offset.value() as usize;
        assert!(
            (4..=tail.len()).contains(&payload_from_end),
            "payload offset {payload_from_end} is not inside the builder's {} bytes",
            tail.len()
        );
        let (source, destination) = (header.source.as_bytes(), header.destination.as_bytes());
        let string_len = |text: &str| (4 + text.len() + 1).next_multiple_of(4);
        let metadata = header.metadata;
        // Without metadata the vtable and table stop before the `metadata`
        // slot: 8 bytes shorter, which keeps small envelopes in fewer cache lines.
        let (t, table_len, vtable) = if metadata.is_empty() {
            (TABLE_AT_SHORT, TABLE_LEN - 4, &VTABLE_SHORT[..])
        } else {
            (TABLE_AT, TABLE_LEN, &VTABLE[..])
        };
        let source_at = t + table_len;
        let destination_at = source_at + string_len(header.source);
        let mut end = destination_at + 4 + destination.len() + 1;
        let vector_at = end.next_multiple_of(4);
        if !metadata.is_empty() {
            // Stable, so duplicate keys keep the caller's order (as the builder path).
            self.metadata_order.clear();
            self.metadata_order.extend(0..metadata.len());
            self.metadata_order.sort_by_key(|&i| metadata[i].0);
            let strings: usize = metadata.iter().map(|(k, v)| string_len(k) + string_len(v)).sum();
            end = vector_at + 4 + 4 * metadata.len() + 8 + KEY_VALUE_LEN * metadata.len() + strings;
        }
        let len = (end + tail.len()).next_multiple_of(8);
        assert!(len <= flatbuffers::FLATBUFFERS_MAX_BUFFER_SIZE, "envelope exceeds the 2 GiB FlatBuffers limit");
        let front = len - tail.len();
        // In range: every value below is at most `len`, which fits the limit.
        let u32_of = |v: usize| (v as u32).to_le_bytes();

        let out = &mut self.record;
        out.clear();
        out.resize(front, 0); // padding and NUL terminators stay zero
        out[0..4].copy_from_slice(&u32_of(len - SIZE_PREFIX_LEN));
        out[4..8].copy_from_slice(&u32_of(t - 4));
        out[8..12].copy_from_slice(&FILE_IDENTIFIER);
        for (i, v) in vtable.iter().enumerate() {
            out[VTABLE_AT + 2 * i..][..2].copy_from_slice(&v.to_le_bytes());
        }
        out[t..t + 4].copy_from_slice(&((t - VTABLE_AT) as i32).to_le_bytes());
        out[t + PAYLOAD_TYPE] = payload.kind.0;
        out[t + SCHEMA_VERSION..][..6].copy_from_slice(&header.schema_version.to_wire().0);
        out[t + SOURCE..][..4].copy_from_slice(&u32_of(source_at - (t + SOURCE)));
        out[t + TIMESTAMP_NS..][..8].copy_from_slice(&header.timestamp_ns.to_le_bytes());
        out[t + MESSAGE_ID..][..16].copy_from_slice(&header.message_id.to_wire().0);
        out[t + CORRELATION_ID..][..16].copy_from_slice(&header.correlation_id.to_wire().0);
        out[t + DESTINATION..][..4].copy_from_slice(&u32_of(destination_at - (t + DESTINATION)));
        out[t + PAYLOAD..][..4].copy_from_slice(&u32_of(len - payload_from_end - (t + PAYLOAD)));
        put_string(out, source_at, source);
        put_string(out, destination_at, destination);
        if !metadata.is_empty() {
            out[t + METADATA..][..4].copy_from_slice(&u32_of(vector_at - (t + METADATA)));
            out[vector_at..][..4].copy_from_slice(&u32_of(metadata.len()));
            let kv_vtable_at = vector_at + 4 + 4 * metadata.len();
            for (i, v) in KEY_VALUE_VTABLE.iter().enumerate() {
                out[kv_vtable_at + 2 * i..][..2].copy_from_slice(&v.to_le_bytes());
            }
            let first_kv = kv_vtable_at + 8;
            let mut string_at = first_kv + KEY_VALUE_LEN * metadata.len();
            for (n, &i) in self.metadata_order.iter().enumerate() {
                let (key, value) = metadata[i];
                let element = vector_at + 4 + 4 * n;
                let kv = first_kv + KEY_VALUE_LEN * n;
                out[element..][..4].copy_from_slice(&u32_of(kv - element));
                out[kv..][..4].copy_from_slice(&((kv - kv_vtable_at) as i32).to_le_bytes());
                out[kv + 4..][..4].copy_from_slice(&u32_of(string_at - (kv + 4)));
                put_string(out, string_at, key.as_bytes());
                string_at += string_len(key);
                out[kv + 8..][..4].copy_from_slice(&u32_of(string_at - (kv + 8)));
                put_string(out, string_at, value.as_bytes());
                string_at += string_len(value);
            }
        }
        out.extend_from_slice(tail);
    }

    /// Builds the sorted `[KeyValue]` vector without allocating (after
    /// warm-up): the sort permutes reused index scratch, not the caller's slice.
    #[allow(clippy::type_complexity)]
    fn build_metadata(
        &mut self,
        metadata: &[(&str, &str)],
    ) -> Option<WIPOffset<Vector<'static, ForwardsUOffset<fb::KeyValue<'static>>>>> {
        if metadata.is_empty() {
            return None;
        }
        self.metadata_order.clear();
        self.metadata_order.extend(0..metadata.len());
        // Stable, so duplicate keys keep the caller's order.
        self.metadata_order.sort_by_key(|&i| metadata[i].0);
        self.metadata_offsets.clear();
        for &i in &self.metadata_order {
            let (k, v) = metadata[i];
            let key = self.fbb.create_string(k);
            let value = self.fbb.create_string(v);
            let kv = fb::KeyValue::create(&mut self.fbb, &fb::KeyValueArgs { key: Some(key), value: Some(value) });
            self.metadata_offsets.push(kv);
        }
        Some(self.fbb.create_vector(&self.metadata_offsets))
    }

    /// The last encoded record, or an empty slice before the first `encode`.
    pub fn finished(&self) -> &[u8] {
        match self.finished {
            Finished::Nothing => &[],
            Finished::Builder => self.fbb.finished_data(),
            Finished::Record => &self.record,
        }
    }

    /// Length in bytes of the last encoded record (size prefix included).
    pub fn encoded_len(&self) -> usize {
        self.finished().len()
    }

    /// Copies the last encoded record into the front of `dst` (the one copy
    /// on the way into shared memory) and returns its length.
    ///
    /// For [`verify_envelope`] to accept the record, the reader must see
    /// exactly `encoded_len()` bytes (or, with
    /// [`VerifyOptions::allow_padding_to_8`], that rounded up to 8).
    pub fn write_into(&self, dst: &mut [u8]) -> Result<usize, EncodeError> {
        if self.finished == Finished::Nothing {
            return Err(EncodeError::NothingEncoded);
        }
        let src = self.finished();
        let available = dst.len();
        let out = dst.get_mut(..src.len()).ok_or(EncodeError::BufferTooSmall { needed: src.len(), available })?;
        out.copy_from_slice(src);
        Ok(src.len())
    }
}

/// Writes a FlatBuffers string at `at`: `u32` length, the bytes (the NUL
/// after them is already zero).
fn put_string(out: &mut [u8], at: usize, text: &[u8]) {
    out[at..][..4].copy_from_slice(&(text.len() as u32).to_le_bytes());
    out[at + 4..][..text.len()].copy_from_slice(text);
}

/// The envelope header as [`EnvelopeEncoder`] lays it out by hand (the
/// payload the builder made follows, unchanged). Byte positions from the
/// record start; `T` = [`TABLE_AT`]:
///
/// ```text
///  0        4        8        12                   34    40
///  +--------+--------+--------+--------------------+-----+------------------------------+
///  | prefix | root=36| "TDPL" | vtable: 11 x u16   | pad | Envelope table (68 bytes)    |
///  +--------+--------+--------+--------------------+-----+------------------------------+
///  T+0 soffset = 28 (vtable at T-28)   T+4 payload_type u8, T+5 pad
///  T+6 schema_version (3 x u16)        T+12 source uoffset
///  T+16 timestamp_ns u64               T+24 message_id (16)    T+40 correlation_id (16)
///  T+56 destination uoffset            T+60 payload uoffset    T+64 metadata uoffset
///  108: source (u32 len, bytes, NUL), pad to 4, destination (same), then if there is
///  metadata, 4-aligned: [KeyValue] (u32 count, count x uoffset), one KeyValue vtable
///  [8, 12, 4, 8], count x KeyValue table (soffset, key uoffset, value uoffset), and the
///  key and value strings in sorted order (each 4-aligned); zero padding so the record
///  length is a multiple of 8; the builder's payload bytes.
/// ```
///
/// Without metadata the vtable is trimmed to 10 entries (20 bytes, no pad),
/// the table starts at 32 with root = 28 and soffset = 20, and it is 64 bytes
/// long (no `metadata` offset). Every other field is always present (a zero
/// timestamp is stored, not elided).
/// `hand_layout_reads_like_the_builder_layout` checks it against the builder.
mod header_layout {
    pub(super) const VTABLE_AT: usize = 12;
    pub(super) const TABLE_AT: usize = 40;
    pub(super) const TABLE_LEN: usize = 68;
    /// Without metadata: the table right after a 10-entry vtable.
    pub(super) const TABLE_AT_SHORT: usize = 32;
    pub(super) const PAYLOAD_TYPE: usize = 4;
    pub(super) const SCHEMA_VERSION: usize = 6;
    pub(super) const SOURCE: usize = 12;
    pub(super) const TIMESTAMP_NS: usize = 16;
    pub(super) const MESSAGE_ID: usize = 24;
    pub(super) const CORRELATION_ID: usize = 40;
    pub(super) const DESTINATION: usize = 56;
    pub(super) const PAYLOAD: usize = 60;
    pub(super) const METADATA: usize = 64;
    /// vtable length, table length, then the field offsets in slot order
    /// (`fb::Envelope::VT_MESSAGE_ID` .. `VT_METADATA`; the last is set to 0
    /// when there is no metadata).
    pub(super) const VTABLE: [u16; 11] = [
        22,
        TABLE_LEN as u16,
        MESSAGE_ID as u16,
        CORRELATION_ID as u16,
        TIMESTAMP_NS as u16,
        SOURCE as u16,
        DESTINATION as u16,
        SCHEMA_VERSION as u16,
        PAYLOAD_TYPE as u16,
        PAYLOAD as u16,
        METADATA as u16,
    ];
    /// Without metadata: trimmed before the `metadata` slot, table 64 bytes.
    pub(super) const VTABLE_SHORT: [u16; 10] = {
        let mut short = [0; 10];
        let mut i = 2;
        while i < 10 {
            short[i] = VTABLE[i];
            i += 1;
        }
        short[0] = 20;
        short[1] = TABLE_LEN as u16 - 4;
        short
    };
    /// The vtable shared by every `KeyValue`: length 8, table 12 bytes, key at
    /// +4, value at +8.
    pub(super) const KEY_VALUE_VTABLE: [u16; 4] = [8, 12, 4, 8];
    pub(super) const KEY_VALUE_LEN: usize = 12;
    const _: () = assert!(VTABLE_AT + 2 * VTABLE.len() <= TABLE_AT && TABLE_AT.is_multiple_of(8));
    const _: () = assert!(VTABLE_AT + 2 * VTABLE_SHORT.len() == TABLE_AT_SHORT && TABLE_AT_SHORT.is_multiple_of(8));
}

// ---------------------------------------------------------------------------
// Verification

/// Limits applied by [`verify_envelope`]. The defaults are tight: an envelope
/// is a header plus one small event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Maximum nesting of tables (Envelope → event → ...). Default 8.
    pub max_depth: usize,
    /// Maximum number of tables (each metadata entry is one). Default 1024.
    pub max_tables: usize,
    /// Maximum bytes the verifier may visit. Default 1 MiB.
    pub max_apparent_size: usize,
    /// Accept a record followed by zero to seven padding bytes up to the next
    /// multiple of 8 (for rings that round record lengths). Default `false`:
    /// the size prefix plus 4 must equal the record length exactly.
    pub allow_padding_to_8: bool,
    /// Which verifier checks the FlatBuffer. Default
    /// [`VerifierKind::Specialised`]; both accept exactly the same records.
    pub verifier: VerifierKind,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            max_depth: 8,
            max_tables: 1024,
            max_apparent_size: 1 << 20,
            allow_padding_to_8: false,
            verifier: VerifierKind::Specialised,
        }
    }
}

/// The verifier [`verify_envelope`] runs after the framing checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VerifierKind {
    /// The checks of FlatBuffers' verifier for `Envelope`, written out for
    /// this schema (about 3x fewer instructions). A record it refuses is run
    /// through FlatBuffers' verifier for the detailed [`EnvelopeError::Invalid`].
    #[default]
    Specialised,
    /// FlatBuffers' generic generated verifier only.
    FlatBuffers,
}

/// Why a record is not an acceptable envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than size prefix + root offset + file identifier.
    #[error("envelope truncated: {len} bytes, need at least {MIN_ENVELOPE_LEN}")]
    Truncated {
        /// Record length.
        len: usize,
    },
    /// The size prefix does not describe the record. The FlatBuffers verifier
    /// does not check this (it accepts a prefix larger than the buffer).
    #[error("size prefix says {prefix} bytes follow, but the record is {len} bytes long")]
    SizePrefixMismatch {
        /// The `u32` size prefix (bytes after the prefix).
        prefix: u32,
        /// Record length including the prefix.
        len: usize,
    },
    /// Not a Tadpole envelope. Also not checked by the FlatBuffers verifier.
    #[error("file identifier is {found:?}, expected \"TDPL\"")]
    WrongIdentifier {
        /// The four bytes found where the identifier belongs.
        found: [u8; 4],
    },
    /// The FlatBuffers verifier rejected the buffer.
    #[error("invalid envelope flatbuffer: {0}")]
    Invalid(#[from] flatbuffers::InvalidFlatbuffer),
    /// The envelope has no payload (`payload_type` is `NONE` or the table is absent).
    #[error("envelope has no payload")]
    MissingPayload,
    /// The payload's union discriminant is not known to this build, e.g. a
    /// message from a peer with a newer schema. The header is still readable.
    #[error("unknown payload type {0} (written with a newer schema?)")]
    UnknownPayload(u8),
}

/// Checks that `bytes` is exactly one well-formed envelope and returns its
/// root. Checks, in order: minimum length, size prefix == record length
/// (see [`VerifyOptions::allow_padding_to_8`]), file identifier `"TDPL"`,
/// then the FlatBuffers verifier's checks with `opts`' limits over the
/// prefixed length only (offsets cannot reach into padding), by the verifier
/// [`VerifyOptions::verifier`] names.
///
/// A payload of a type this build does not know passes verification (the
/// header is still useful, e.g. to forward or log it); [`Event::from_envelope`]
/// reports it as [`EnvelopeError::UnknownPayload`].
///
/// ```
/// use schemas::envelope::{verify_envelope, EnvelopeError, VerifyOptions};
/// let err = verify_envelope(&[0u8; 4], &VerifyOptions::default()).unwrap_err();
/// assert_eq!(err, EnvelopeError::Truncated { len: 4 });
/// ```
pub fn verify_envelope<'a>(bytes: &'a [u8], opts: &VerifyOptions) -> Result<Envelope<'a>, EnvelopeError> {
    let record = framed_record(bytes, opts.allow_padding_to_8)?;
    if opts.verifier == VerifierKind::Specialised && verify::verify_fast(record, opts) {
        // SAFETY: `verify_fast` accepted `record`, and it accepts only records
        // FlatBuffers' verifier accepts with the same limits (the same checks,
        // see `envelope/verify.rs`; tested against it by proptest), which is
        // what the generated accessors rely on. `record` is borrowed for 'a.
        return Ok(unsafe { flatbuffers::size_prefixed_root_unchecked::<Envelope<'a>>(record) });
    }
    // FlatBuffers' verifier: the chosen one, or the source of the detailed
    // error for a record the specialised walk refused.
    let fb_opts = flatbuffers::VerifierOptions {
        max_depth: opts.max_depth,
        max_tables: opts.max_tables,
        max_apparent_size: opts.max_apparent_size,
        ignore_missing_null_terminator: false,
    };
    Ok(flatbuffers::size_prefixed_root_with_opts::<Envelope<'a>>(&fb_opts, record)?)
}

/// Applies the length and identifier rules; returns the record without padding.
fn framed_record(bytes: &[u8], allow_padding_to_8: bool) -> Result<&[u8], EnvelopeError> {
    let len = bytes.len();
    let (Some(prefix), Some(ident)) = (bytes.first_chunk::<4>(), bytes.get(8..12)) else {
        return Err(EnvelopeError::Truncated { len });
    };
    let prefix = u32::from_le_bytes(*prefix);
    let mismatch = EnvelopeError::SizePrefixMismatch { prefix, len };
    let exact = usize::try_from(prefix).ok().and_then(|p| p.checked_add(SIZE_PREFIX_LEN)).ok_or(mismatch.clone())?;
    let fits = len == exact || (allow_padding_to_8 && exact < len && len == exact.next_multiple_of(8));
    if !fits {
        return Err(mismatch);
    }
    if ident != FILE_IDENTIFIER {
        let mut found = [0u8; 4];
        found.copy_from_slice(ident);
        return Err(EnvelopeError::WrongIdentifier { found });
    }
    Ok(&bytes[..exact])
}

/// Reads an envelope without any check, for peers that are trusted (same
/// binary, records produced by [`EnvelopeEncoder`]) when verification cost
/// matters.
///
/// # Safety
///
/// `bytes` must be one complete size-prefixed envelope as produced by
/// [`EnvelopeEncoder`] (or one that [`verify_envelope`] has accepted), and must
/// not change while the returned [`Envelope`] is used. Reading anything else
/// through the accessors may panic or read out of bounds (undefined behaviour).
pub unsafe fn envelope_unchecked(bytes: &[u8]) -> Envelope<'_> {
    debug_assert!(bytes.get(8..12) == Some(&FILE_IDENTIFIER[..]));
    // SAFETY: the caller guarantees `bytes` is a complete, valid size-prefixed
    // envelope buffer, which is exactly the precondition of this function.
    unsafe { flatbuffers::size_prefixed_root_unchecked::<Envelope<'_>>(bytes) }
}

// ---------------------------------------------------------------------------
// Typed payloads and JSON

/// Converts a field read from a verified buffer into JSON. Implemented for
/// every field type the event catalogue uses, so one macro line per event
/// renders all of its fields.
trait ToJson {
    fn to_json(&self) -> Value;
}

macro_rules! json_number {
    ($($t:ty),*) => {$(
        impl ToJson for $t {
            fn to_json(&self) -> Value {
                Value::from(*self)
            }
        }
    )*};
}
json_number!(bool, u8, u16, u32, u64, i8, i16, i32, i64);

impl ToJson for &str {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_json)
    }
}

impl ToJson for &fb::Uuid {
    fn to_json(&self) -> Value {
        Value::from(MessageId::from_wire(self).to_string())
    }
}

impl ToJson for Vector<'_, ForwardsUOffset<&str>> {
    fn to_json(&self) -> Value {
        Value::Array(self.iter().map(Value::from).collect())
    }
}

/// Enums render as their name; a value from a newer schema renders as its
/// number instead of panicking.
macro_rules! json_enum {
    ($($t:ident),*) => {$(
        impl ToJson for fb::$t {
            fn to_json(&self) -> Value {
                self.variant_name().map_or_else(|| Value::from(self.0), Value::from)
            }
        }
    )*};
}
json_enum!(Side, OrderType, TimeInForce, Liquidity, Severity, MeshTopology, TerminationReason, HealthStatus);

/// Declares the event catalogue once: the typed [`Event`] enum, the
/// `WIPOffset -> PayloadOffset` conversions, and the JSON rendering of every
/// field. `tests::catalogue_matches_fbs` checks this list against the `.fbs`.
macro_rules! event_catalogue {
    ($( $variant:ident => $accessor:ident { $($field:ident),* $(,)? } ),* $(,)?) => {
        /// A verified envelope's payload, typed. One variant per member of
        /// the `Payload` union.
        #[derive(Clone, Copy, Debug)]
        pub enum Event<'a> {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant(fb::$variant<'a>),
            )*
        }

        impl<'a> Event<'a> {
            /// The typed payload of `envelope`.
            ///
            /// Errors: [`EnvelopeError::MissingPayload`], or
            /// [`EnvelopeError::UnknownPayload`] for a union member added by a
            /// newer schema (never a panic).
            pub fn from_envelope(envelope: &Envelope<'a>) -> Result<Self, EnvelopeError> {
                match envelope.payload_type() {
                    $(
                        fb::Payload::$variant => envelope
                            .$accessor()
                            .map(Event::$variant)
                            .ok_or(EnvelopeError::MissingPayload),
                    )*
                    fb::Payload::NONE => Err(EnvelopeError::MissingPayload),
                    other => Err(EnvelopeError::UnknownPayload(other.0)),
                }
            }

            /// The union discriminant, i.e. the message type.
            pub fn message_type(&self) -> fb::Payload {
                match self {
                    $( Event::$variant(_) => fb::Payload::$variant, )*
                }
            }

            /// Every field of the event as a JSON object.
            pub fn to_json(&self) -> Value {
                match self {
                    $( Event::$variant(t) => t.to_json(), )*
                }
            }
        }

        /// Whether this build knows union member `kind` (and so verifies its table).
        fn is_known_payload(kind: fb::Payload) -> bool {
            matches!(kind, $( fb::Payload::$variant )|*)
        }

        /// The specialised verifier's walk over the payload table of known
        /// member `kind` at `pos`: `visit_table`, then every field the
        /// accessors read, in slot order (4, 6, ...: no field is deprecated,
        /// `catalogue_matches_fbs` checks the order).
        fn walk_payload(walk: &mut verify::Walk<'_>, kind: fb::Payload, pos: usize) -> verify::Step {
            match kind {
                $(
                    fb::Payload::$variant => {
                        let table = walk.table(pos)?;
                        let slot = 4;
                        $(
                            walk.field(&table, slot, verify::shape_of(fb::$variant::$field))?;
                            let slot = slot + 2;
                        )*
                        let _ = slot;
                        Ok(())
                    }
                )*
                _ => Ok(()),
            }
        }

        /// The shapes of member `kind`'s fields in slot order, for the tests
        /// that build every event generically.
        #[cfg(test)]
        fn payload_shapes(kind: fb::Payload) -> Vec<verify::Shape> {
            match kind {
                $( fb::Payload::$variant => vec![$( verify::shape_of(fb::$variant::$field) ),*], )*
                _ => Vec::new(),
            }
        }

        $(
            impl<'a> From<WIPOffset<fb::$variant<'a>>> for PayloadOffset {
                fn from(offset: WIPOffset<fb::$variant<'a>>) -> Self {
                    PayloadOffset::new(fb::Payload::$variant, offset.as_union_value())
                }
            }

            impl ToJson for fb::$variant<'_> {
                fn to_json(&self) -> Value {
                    let mut fields = Map::new();
                    $( fields.insert(stringify!($field).to_owned(), self.$field().to_json()); )*
                    Value::Object(fields)
                }
            }
        )*

        /// (union member, fields) in declaration order, for the catalogue test.
        #[cfg(test)]
        pub(crate) const CATALOGUE: &[(&str, &[&str])] = &[
            $( (stringify!($variant), &[$(stringify!($field)),*]), )*
        ];
    };
}

event_catalogue! {
    AgentSpawned => payload_as_agent_spawned {
        agent_id, agent_type, agent_version, host, pid, parent_agent_id, capabilities,
    },
    AgentPerformanceUpdated => payload_as_agent_performance_updated {
        agent_id, window_start_ns, window_end_ns, messages_processed, errors, latency_p50_ns,
        latency_p99_ns, cpu_utilization_bp, memory_bytes, score_e8, realized_pnl_e8,
    },
    AgentCapabilityEvolved => payload_as_agent_capability_evolved {
        agent_id, capability, previous_level, new_level, reason,
    },
    AgentTerminated => payload_as_agent_terminated {
        agent_id, reason, detail, exit_code, uptime_ns,
    },
    MeshFormed => payload_as_mesh_formed {
        mesh_id, topology, coordinator_agent_id, member_agent_ids, purpose,
    },
    MeshTopologyChanged => payload_as_mesh_topology_changed {
        mesh_id, previous_topology, new_topology, joined_agent_ids, left_agent_ids, reason,
    },
    MeshPerformanceImproved => payload_as_mesh_performance_improved {
        mesh_id, metric, previous_value_e8, new_value_e8, improvement_bp,
    },
    MeshDissolved => payload_as_mesh_dissolved { mesh_id, reason, lifetime_ns },
    SystemConfigurationChanged => payload_as_system_configuration_changed {
        component, key, previous_value, new_value, changed_by, config_version,
    },
    OptimizationCycleCompleted => payload_as_optimization_cycle_completed {
        cycle_id, started_at_ns, duration_ns, parameters_changed, objective_before_e8,
        objective_after_e8,
    },
    EmergencyStateActivated => payload_as_emergency_state_activated {
        emergency_id, severity, reason, triggered_by, affected_components,
    },
    RecoveryProcessInitiated => payload_as_recovery_process_initiated {
        recovery_id, emergency_id, strategy, initiated_by, expected_duration_ns,
    },
    TradingSignalGenerated => payload_as_trading_signal_generated {
        signal_id, symbol, side, confidence_e8, reference_price_e8, target_price_e8,
        stop_loss_price_e8, timeframe, strategy, valid_until_ns,
    },
    RiskParametersUpdated => payload_as_risk_parameters_updated {
        account_id, symbol, max_position_e8, max_order_quantity_e8, max_daily_loss_e8,
        max_leverage_e8, risk_per_trade_bp, reason,
    },
    BreakerAgentTriggered => payload_as_breaker_agent_triggered {
        agent_id, breaker, severity, threshold_e8, observed_e8, cooldown_ns, reason,
    },
    BreakerSystemEmergency => payload_as_breaker_system_emergency {
        severity, reason, triggered_by, halt_trading, cancel_open_orders, open_positions,
    },
    PersonalityVarianceApplied => payload_as_personality_variance_applied {
        agent_id, personality_id, signal_id, order_id, timing_delay_ns, size_variance_bp,
        price_variance_e8, reason,
    },
    ExecutionOrderPlaced => payload_as_execution_order_placed {
        order_id, signal_id, account_id, symbol, side, order_type, time_in_force, quantity_e8,
        limit_price_e8, stop_price_e8, venue,
    },
    ExecutionOrderFilled => payload_as_execution_order_filled {
        order_id, venue_order_id, fill_id, account_id, symbol, side, fill_quantity_e8,
        fill_price_e8, cumulative_quantity_e8, remaining_quantity_e8, commission_e8,
        commission_currency, liquidity, filled_at_ns,
    },
    Heartbeat => payload_as_heartbeat { sequence, interval_ns, status },
}

/// Renders a verified envelope for logs: every header field, the metadata as
/// an object, `message_type` (a name, or `"unknown(N)"` for a newer schema's
/// member) and every field of the payload (`null` if unknown or absent).
///
/// ```
/// use schemas::envelope::{envelope_to_json, verify_envelope, EnvelopeEncoder, EnvelopeHeader, VerifyOptions};
/// use schemas::fb;
/// let mut enc = EnvelopeEncoder::new();
/// let h = EnvelopeHeader::new("a", "b").with_metadata(&[("trace", "t-1")]);
/// let bytes = enc.encode(&h, |fbb| fb::Heartbeat::create(fbb, &fb::HeartbeatArgs {
///     sequence: 7, status: fb::HealthStatus::Healthy, ..Default::default()
/// }));
/// let json = envelope_to_json(&verify_envelope(bytes, &VerifyOptions::default()).unwrap());
/// assert_eq!(json["message_type"], "Heartbeat");
/// assert_eq!(json["payload"]["sequence"], 7);
/// assert_eq!(json["payload"]["status"], "Healthy");
/// assert_eq!(json["metadata"]["trace"], "t-1");
/// ```
pub fn envelope_to_json(envelope: &Envelope<'_>) -> Value {
    let header = EnvelopeHeader::from_envelope(envelope);
    let kind = envelope.payload_type();
    let message_type = kind.variant_name().map_or_else(|| format!("unknown({})", kind.0), str::to_owned);
    let payload = Event::from_envelope(envelope).map_or(Value::Null, |e| e.to_json());
    let metadata: Map<String, Value> =
        envelope.metadata().into_iter().flatten().map(|kv| (kv.key().to_owned(), kv.value().to_json())).collect();

    let mut json = Map::new();
    json.insert("message_id".into(), header.message_id.to_string().into());
    json.insert("correlation_id".into(), header.correlation_id.to_string().into());
    json.insert("timestamp_ns".into(), header.timestamp_ns.into());
    json.insert("source".into(), envelope.source().to_json());
    json.insert("destination".into(), envelope.destination().to_json());
    json.insert("schema_version".into(), header.schema_version.to_string().into());
    json.insert("message_type".into(), message_type.into());
    json.insert("payload".into(), payload);
    json.insert("metadata".into(), Value::Object(metadata));
    Value::Object(json)
}

#[cfg(test)]
mod tests;
mod verify;
