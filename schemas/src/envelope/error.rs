//! [`EnvelopeError`]: why a record is not an acceptable envelope.

use super::MIN_ENVELOPE_LEN;

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
    /// `message_id` is absent or all zero. Receivers deduplicate on it, so an
    /// envelope without one cannot be delivered at least once safely.
    #[error("envelope has no message_id (absent or nil)")]
    MissingMessageId,
    /// The payload union's value does not point at a table inside the record
    /// and its type is one this build does not know (so neither verifier
    /// checked it). Reading it through `payload()` would run off the record.
    #[error("payload of unknown type {0} does not point at a table inside the record")]
    UnknownPayloadNotATable(u8),
    /// The envelope has no payload (`payload_type` is `NONE` or the table is absent).
    #[error("envelope has no payload")]
    MissingPayload,
    /// The payload's union discriminant is not known to this build, e.g. a
    /// message from a peer with a newer schema. The header is still readable.
    #[error("unknown payload type {0} (written with a newer schema?)")]
    UnknownPayload(u8),
}
