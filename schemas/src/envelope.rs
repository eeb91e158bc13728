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
//! exactly, and the FlatBuffers verifier with tight limits. It must never
//! panic on bytes from a peer, and the encode path must not allocate once the
//! [`EnvelopeEncoder`] has warmed up.

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

/// Builds envelopes into one reused [`FlatBufferBuilder`]. After the first
/// few messages have grown its buffer, encoding allocates nothing.
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
    finished: bool,
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
            finished: false,
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
    /// Only if `payload` misuses the builder (e.g. leaves a table unfinished)
    /// or the envelope exceeds the 2 GiB FlatBuffers limit.
    pub fn encode<P, F>(&mut self, header: &EnvelopeHeader<'_>, payload: F) -> &[u8]
    where
        F: FnOnce(&mut FlatBufferBuilder<'static>) -> P,
        P: Into<PayloadOffset>,
    {
        self.fbb.reset();
        self.finished = false;
        let payload = payload(&mut self.fbb).into();

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
        self.finished = true;
        self.fbb.finished_data()
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
        if self.finished { self.fbb.finished_data() } else { &[] }
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
        if !self.finished {
            return Err(EncodeError::NothingEncoded);
        }
        let src = self.fbb.finished_data();
        let available = dst.len();
        let out = dst.get_mut(..src.len()).ok_or(EncodeError::BufferTooSmall { needed: src.len(), available })?;
        out.copy_from_slice(src);
        Ok(src.len())
    }
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
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self { max_depth: 8, max_tables: 1024, max_apparent_size: 1 << 20, allow_padding_to_8: false }
    }
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
/// then the FlatBuffers verifier with `opts`' limits over the prefixed
/// length only (offsets cannot reach into padding).
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
