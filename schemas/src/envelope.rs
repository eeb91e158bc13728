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
//! the specialised walk in `envelope/walk.rs`, or by FlatBuffers itself).
//! It must never panic on bytes from a peer, never accept a record
//! FlatBuffers' verifier would refuse, and the encode path must not allocate
//! once the [`EnvelopeEncoder`] has warmed up.
//!
//! Modules, by what each owns:
//!
//! | module          | owns                                                   |
//! |-----------------|--------------------------------------------------------|
//! | `ids`           | [`MessageId`], [`SchemaVersion`], [`now_unix_ns`]      |
//! | `header`        | [`EnvelopeHeader`]                                     |
//! | `encoder`       | [`EnvelopeEncoder`], [`PayloadOffset`]                 |
//! | `header_layout` | the byte layout the encoder writes the header in       |
//! | `framing`       | size prefix and identifier: the one framing check      |
//! | `verify`        | [`verify_envelope`], [`VerifyOptions`], the envelope rules beyond FlatBuffers' |
//! | `walk`          | the specialised verifier walk, bounded by the limits  |
//! | `catalogue`     | the event list: [`Event`], payload walks, JSON fields  |
//! | `json`          | [`envelope_to_json`]                                   |
//! | `error`         | [`EnvelopeError`]                                      |

mod catalogue;
mod encoder;
mod error;
mod framing;
mod header;
mod header_layout;
mod ids;
mod json;
mod verify;
mod walk;

pub use crate::fb::Envelope;
pub use catalogue::Event;
pub use encoder::{EncodeError, EnvelopeEncoder, PayloadOffset};
pub use error::EnvelopeError;
pub(crate) use framing::framed_record;
pub use framing::{FILE_IDENTIFIER, MIN_ENVELOPE_LEN, SIZE_PREFIX_LEN};
pub use header::EnvelopeHeader;
pub use ids::{MessageId, SchemaVersion, now_unix_ns};
pub use json::envelope_to_json;
pub use verify::{VerifierKind, VerifyOptions, envelope_unchecked, verify_envelope};

#[cfg(test)]
mod tests;
