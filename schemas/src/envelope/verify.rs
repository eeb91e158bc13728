//! Verification of records from peers: [`verify_envelope`] and its options.

use flatbuffers::InvalidFlatbuffer;

use super::catalogue::is_known_payload;
use super::framing::framed_record;
use super::{Envelope, EnvelopeError, FILE_IDENTIFIER, walk};

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

/// Checks that `bytes` is exactly one well-formed envelope and returns its
/// root. Checks, in order: minimum length, size prefix == record length
/// (see [`VerifyOptions::allow_padding_to_8`]), file identifier `"TDPL"`,
/// then the FlatBuffers verifier's checks with `opts`' limits over the
/// prefixed length only (offsets cannot reach into padding), by the verifier
/// [`VerifyOptions::verifier`] names.
///
/// Then two rules of this schema: `message_id` must be present and not nil
/// ([`EnvelopeError::MissingMessageId`]: receivers deduplicate on it), and
/// a payload the envelope carries must point at a table inside the record.
///
/// A payload of a type this build does not know passes verification (the
/// header is still useful, e.g. to forward or log it); [`Event::from_envelope`](super::Event::from_envelope)
/// reports it as [`EnvelopeError::UnknownPayload`]. An envelope without a
/// payload (`payload_type` `NONE`) passes too.
///
/// ```
/// use schemas::envelope::{verify_envelope, EnvelopeError, VerifyOptions};
/// let err = verify_envelope(&[0u8; 4], &VerifyOptions::default()).unwrap_err();
/// assert_eq!(err, EnvelopeError::Truncated { len: 4 });
/// ```
pub fn verify_envelope<'a>(bytes: &'a [u8], opts: &VerifyOptions) -> Result<Envelope<'a>, EnvelopeError> {
    let record = framed_record(bytes, opts.allow_padding_to_8)?;
    let fast = match opts.verifier {
        VerifierKind::Specialised => Some(walk::verify_fast(record, opts)),
        VerifierKind::FlatBuffers => None,
    };
    let envelope = match fast {
        Some(Ok(walked)) => {
            // SAFETY: `verify_fast` accepted `record`, and it accepts only
            // records FlatBuffers' verifier accepts with the same limits (the
            // same checks, see `envelope/walk.rs`; tested against it by
            // proptest), which is what the generated accessors rely on.
            // `record` is borrowed for 'a.
            let envelope = unsafe { flatbuffers::size_prefixed_root_unchecked::<Envelope<'a>>(record) };
            // `check_semantics`, with what the walk found on the way.
            let message_id = walked.message_id.and_then(|at| record.get(at..at + 16));
            if message_id.is_none_or(|id| id == [0; 16]) {
                return Err(EnvelopeError::MissingMessageId);
            }
            if walked.unknown_payload {
                check_unknown_payload(&envelope, record, opts)?;
            }
            return Ok(envelope);
        }
        // A limit: FlatBuffers' verifier stops on the same one (same checks,
        // same order), so its error is known without running it again over a
        // record that may be expensive to walk.
        Some(Err(walk::Reject::ApparentSize)) => return Err(InvalidFlatbuffer::ApparentSizeTooLarge.into()),
        Some(Err(walk::Reject::Tables)) => return Err(InvalidFlatbuffer::TooManyTables.into()),
        Some(Err(walk::Reject::Depth)) => return Err(InvalidFlatbuffer::DepthLimitReached.into()),
        // FlatBuffers' verifier: the chosen one, or the source of the detailed
        // error for a record the specialised walk refused.
        Some(Err(walk::Reject::Malformed)) | None => {
            let fb_opts = flatbuffers::VerifierOptions {
                max_depth: opts.max_depth,
                max_tables: opts.max_tables,
                max_apparent_size: opts.max_apparent_size,
                ignore_missing_null_terminator: false,
            };
            flatbuffers::size_prefixed_root_with_opts::<Envelope<'a>>(&fb_opts, record)?
        }
    };
    check_semantics(&envelope, record, opts)?;
    Ok(envelope)
}

/// The rules beyond FlatBuffers' verifier, on a verified envelope: the
/// dedup key is present, and a payload union value this build cannot type
/// still points at a table, so `payload()` and `Table::vtable()` (safe
/// generated accessors that read it) cannot run off the record.
#[inline]
fn check_semantics(envelope: &Envelope<'_>, record: &[u8], opts: &VerifyOptions) -> Result<(), EnvelopeError> {
    match envelope.message_id() {
        Some(id) if id.hi() | id.lo() != 0 => {}
        _ => return Err(EnvelopeError::MissingMessageId),
    }
    // Not `payload()`: it would read the very slot that is in question.
    if !is_known_payload(envelope.payload_type()) {
        check_unknown_payload(envelope, record, opts)?;
    }
    Ok(())
}

/// The payload value of a type this build does not know points at a table.
#[cold]
fn check_unknown_payload(envelope: &Envelope<'_>, record: &[u8], opts: &VerifyOptions) -> Result<(), EnvelopeError> {
    if walk::payload_slot_is_table(record, opts) {
        Ok(())
    } else {
        Err(EnvelopeError::UnknownPayloadNotATable(envelope.payload_type().0))
    }
}

/// Reads an envelope without any check, for peers that are trusted (same
/// binary, records produced by [`EnvelopeEncoder`](super::EnvelopeEncoder)) when verification cost
/// matters.
///
/// # Safety
///
/// `bytes` must be one complete size-prefixed envelope as produced by
/// [`EnvelopeEncoder`](super::EnvelopeEncoder) (or one that [`verify_envelope`] has accepted), and must
/// not change while the returned [`Envelope`] is used. Reading anything else
/// through the accessors may panic or read out of bounds (undefined behaviour).
pub unsafe fn envelope_unchecked(bytes: &[u8]) -> Envelope<'_> {
    debug_assert!(bytes.get(8..12) == Some(&FILE_IDENTIFIER[..]));
    // SAFETY: the caller guarantees `bytes` is a complete, valid size-prefixed
    // envelope buffer, which is exactly the precondition of this function.
    unsafe { flatbuffers::size_prefixed_root_unchecked::<Envelope<'_>>(bytes) }
}
