//! The framing of one envelope record: size prefix, root offset, file
//! identifier. The one place that decides whether a record's length and
//! identifier are acceptable, for [`verify_envelope`](super::verify_envelope)
//! and the channel receiver alike.
//!
//! The padding rule: the size prefix plus 4 must equal the record length
//! exactly. `ipc_core` pads records to 8 bytes in the ring, but reports each
//! record's payload length exactly (the padding is not part of the payload),
//! so a receiver on a ring sees the envelope's own length and needs no
//! padding allowance. [`VerifyOptions::allow_padding_to_8`](super::VerifyOptions::allow_padding_to_8)
//! exists for transports that round the length they report up to 8; the
//! receiver applies the same option on its trusted path as on its verifying
//! one, so both accept the same framings.

use super::EnvelopeError;

/// The 4-byte FlatBuffers file identifier of every envelope.
pub const FILE_IDENTIFIER: [u8; 4] = *b"TDPL";

/// Length of the little-endian `u32` size prefix in front of every envelope.
pub const SIZE_PREFIX_LEN: usize = 4;

/// The smallest possible envelope: size prefix, root offset, file identifier.
pub const MIN_ENVELOPE_LEN: usize = SIZE_PREFIX_LEN + 4 + FILE_IDENTIFIER.len();

pub(super) const FILE_IDENTIFIER_STR: &str = "TDPL";

/// Applies the length and identifier rules; returns the record without
/// padding (what the FlatBuffers verifier must see: offsets cannot reach
/// into padding).
#[inline]
pub(crate) fn framed_record(bytes: &[u8], allow_padding_to_8: bool) -> Result<&[u8], EnvelopeError> {
    let len = bytes.len();
    let (Some(prefix), Some(ident)) = (bytes.first_chunk::<4>(), bytes.get(8..12)) else {
        return Err(EnvelopeError::Truncated { len });
    };
    let prefix = u32::from_le_bytes(*prefix);
    // Built only on failure: an `EnvelopeError` is not trivial to drop.
    let mismatch = || EnvelopeError::SizePrefixMismatch { prefix, len };
    let exact = usize::try_from(prefix).ok().and_then(|p| p.checked_add(SIZE_PREFIX_LEN)).ok_or_else(mismatch)?;
    let fits = len == exact || (allow_padding_to_8 && exact < len && len == exact.next_multiple_of(8));
    if !fits {
        return Err(mismatch());
    }
    if ident != FILE_IDENTIFIER {
        let mut found = [0u8; 4];
        found.copy_from_slice(ident);
        return Err(EnvelopeError::WrongIdentifier { found });
    }
    Ok(&bytes[..exact])
}
