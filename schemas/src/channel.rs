//! Typed channels over `ipc_core` rings: envelopes ([`EnvelopeSender`] /
//! [`EnvelopeReceiver`]) and Arrow record batches ([`BatchSender`] /
//! [`BatchReceiver`]).
//!
//! Each channel wraps one [`ipc_core::Producer`] or [`ipc_core::Consumer`]
//! and moves its messages with one copy on the way in (the encoder writes
//! straight into space reserved in shared memory) and none on the way out
//! (the receiver hands out views, and Arrow arrays, that point into the ring).
//!
//! What the receivers promise about bytes from a peer:
//!
//! * verification is on by default: a record that is not a valid message is
//!   released, counted (`dead_letters()`) and reported as a `Rejected` error,
//!   and the next call receives the next record;
//! * it is skipped only through an `unsafe fn trust_peer`, whose contract is
//!   that the peer is trusted to write valid messages.
//!
//! Verification in place protects against malformed records, not against a
//! peer that rewrites a record *after* it was verified: like every zero-copy
//! view into `ipc_core`'s shared memory, a view is only as stable as the
//! producer's promise not to touch committed records.
//! [`EnvelopeReceiver::copy_before_verify`] verifies and reads a private copy
//! instead, for peers not trusted that far (see [`EnvelopeReceiver`]'s trust
//! boundary). Arrow batches are always read in place.
//!
//! This module never parses record headers or positions itself; that is
//! `ipc_core`'s job.

mod batch;
mod envelope;

pub use batch::{BatchChannelError, BatchReceiver, BatchRecvError, BatchSendError, BatchSender};
pub use envelope::{
    EnvelopeReceiver, EnvelopeRecvError, EnvelopeSendError, EnvelopeSender, OwnedEnvelope, ReceivedEnvelope,
    RejectReason,
};

use std::time::{Duration, Instant};

use ipc_core::LeaseRefused;

/// How a channel call waits for the ring: not at all, or up to a deadline
/// (`None` = forever).
#[derive(Clone, Copy, Debug)]
enum Wait {
    No,
    Until(Option<Instant>),
}

impl Wait {
    fn timeout(timeout: Option<Duration>) -> Wait {
        Wait::Until(timeout.map(|t| Instant::now() + t))
    }

    /// Time left for the next ring call.
    fn remaining(deadline: Instant) -> Duration {
        deadline.saturating_duration_since(Instant::now())
    }
}

/// The count a channel's `LeasesExhausted` error reports for a refused lease:
/// the consumer's lease capacity, or 0 when it releases explicitly
/// ([`ipc_core::ReleaseMode::Explicit`]) and so may hold no lease at all.
fn lease_capacity(refused: LeaseRefused) -> usize {
    match refused {
        LeaseRefused::Exhausted { capacity } => capacity,
        // The receivers set on-drop release when they are made.
        LeaseRefused::ExplicitRelease => 0,
    }
}
