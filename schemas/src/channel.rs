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

/// The conversions from the ring's per-operation errors into a channel's
/// error enum, which has the same variants under the same names (and
/// `LeasesExhausted(usize)` for the receive side).
macro_rules! ring_errors_into {
    (send: $target:ty) => {
        impl From<ipc_core::TrySendError> for $target {
            fn from(e: ipc_core::TrySendError) -> Self {
                match e {
                    ipc_core::TrySendError::Full => Self::Full,
                    ipc_core::TrySendError::TooLarge { len, max } => Self::TooLarge { len, max },
                    ipc_core::TrySendError::Disconnected => Self::Disconnected,
                    ipc_core::TrySendError::Corrupt(fault) => Self::Corrupt(fault),
                }
            }
        }
        impl From<ipc_core::SendError> for $target {
            fn from(e: ipc_core::SendError) -> Self {
                match e {
                    ipc_core::SendError::TooLarge { len, max } => Self::TooLarge { len, max },
                    ipc_core::SendError::Disconnected => Self::Disconnected,
                    ipc_core::SendError::Corrupt(fault) => Self::Corrupt(fault),
                }
            }
        }
        impl From<ipc_core::SendTimeoutError> for $target {
            fn from(e: ipc_core::SendTimeoutError) -> Self {
                match e {
                    ipc_core::SendTimeoutError::Timeout => Self::Timeout,
                    ipc_core::SendTimeoutError::TooLarge { len, max } => Self::TooLarge { len, max },
                    ipc_core::SendTimeoutError::Disconnected => Self::Disconnected,
                    ipc_core::SendTimeoutError::Corrupt(fault) => Self::Corrupt(fault),
                }
            }
        }
    };
    (recv: $target:ty) => {
        impl From<ipc_core::TryRecvError> for $target {
            fn from(e: ipc_core::TryRecvError) -> Self {
                match e {
                    ipc_core::TryRecvError::Empty => Self::Empty,
                    ipc_core::TryRecvError::Disconnected => Self::Disconnected,
                    ipc_core::TryRecvError::LeasesExhausted { capacity } => Self::LeasesExhausted(capacity),
                    ipc_core::TryRecvError::Corrupt { position, reason } => Self::Corrupt { position, reason },
                }
            }
        }
        impl From<ipc_core::RecvError> for $target {
            fn from(e: ipc_core::RecvError) -> Self {
                match e {
                    ipc_core::RecvError::Disconnected => Self::Disconnected,
                    ipc_core::RecvError::LeasesExhausted { capacity } => Self::LeasesExhausted(capacity),
                    ipc_core::RecvError::Corrupt { position, reason } => Self::Corrupt { position, reason },
                }
            }
        }
        impl From<ipc_core::RecvTimeoutError> for $target {
            fn from(e: ipc_core::RecvTimeoutError) -> Self {
                match e {
                    ipc_core::RecvTimeoutError::Timeout => Self::Timeout,
                    ipc_core::RecvTimeoutError::Disconnected => Self::Disconnected,
                    ipc_core::RecvTimeoutError::LeasesExhausted { capacity } => Self::LeasesExhausted(capacity),
                    ipc_core::RecvTimeoutError::Corrupt { position, reason } => Self::Corrupt { position, reason },
                }
            }
        }
    };
}

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
