//! The exceptions: one class per Rust error variant name (`Full`, `Disconnected`, `Corrupt`, …),
//! all under `tadpole.TadpoleError`, each raised with the Rust error's own message.

use pyo3::create_exception;
use pyo3::prelude::*;

create_exception!(tadpole, TadpoleError, pyo3::exceptions::PyException, "Base class of every Tadpole error.");
create_exception!(tadpole, Empty, TadpoleError, "Nothing committed yet (non-blocking receives only).");
create_exception!(tadpole, Full, TadpoleError, "The ring has no room now; nothing was written.");
create_exception!(tadpole, Timeout, TadpoleError, "Nothing arrived, or no room appeared, before the timeout.");
create_exception!(
    tadpole,
    TooLarge,
    TadpoleError,
    "The message is larger than the ring's maximum; nothing was written."
);
create_exception!(tadpole, Disconnected, TadpoleError, "The peer detached or its process is gone.");
create_exception!(tadpole, LeasesExhausted, TadpoleError, "Too many records are held: release some views first.");
create_exception!(
    tadpole,
    Corrupt,
    TadpoleError,
    "The ring's shared memory is invalid; it cannot be read past the fault."
);
create_exception!(tadpole, Busy, TadpoleError, "Another live process (or handle) holds this side of the ring.");
create_exception!(
    tadpole,
    InvalidName,
    TadpoleError,
    "Segment names are 1-200 characters of [A-Za-z0-9._-], not starting with '.'."
);
create_exception!(
    tadpole,
    InvalidOptions,
    TadpoleError,
    "Capacity, maximum message length or heartbeat timeout out of range."
);
create_exception!(tadpole, AlreadyExists, TadpoleError, "A segment of that name exists.");
create_exception!(tadpole, NotFound, TadpoleError, "No segment has that name.");
create_exception!(tadpole, Invalid, TadpoleError, "The segment's contents are not a valid ring.");
create_exception!(tadpole, Io, TadpoleError, "An operating-system call failed.");
create_exception!(
    tadpole,
    Rejected,
    TadpoleError,
    "A record was not a valid message; it was released and counted as a dead letter."
);
create_exception!(tadpole, NotSixtyFourAligned, TadpoleError, "Arrow channels need a ring made with payload_align=64.");
create_exception!(tadpole, Arrow, TadpoleError, "Arrow could not encode or import the batch.");
create_exception!(
    tadpole,
    ReservationOutstanding,
    TadpoleError,
    "The producer's space is reserved: commit or abandon the Reservation first."
);

/// Adds every exception class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TadpoleError", py.get_type::<TadpoleError>())?;
    m.add("Empty", py.get_type::<Empty>())?;
    m.add("Full", py.get_type::<Full>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("TooLarge", py.get_type::<TooLarge>())?;
    m.add("Disconnected", py.get_type::<Disconnected>())?;
    m.add("LeasesExhausted", py.get_type::<LeasesExhausted>())?;
    m.add("Corrupt", py.get_type::<Corrupt>())?;
    m.add("Busy", py.get_type::<Busy>())?;
    m.add("InvalidName", py.get_type::<InvalidName>())?;
    m.add("InvalidOptions", py.get_type::<InvalidOptions>())?;
    m.add("AlreadyExists", py.get_type::<AlreadyExists>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("Invalid", py.get_type::<Invalid>())?;
    m.add("Io", py.get_type::<Io>())?;
    m.add("Rejected", py.get_type::<Rejected>())?;
    m.add("NotSixtyFourAligned", py.get_type::<NotSixtyFourAligned>())?;
    m.add("Arrow", py.get_type::<Arrow>())?;
    m.add("ReservationOutstanding", py.get_type::<ReservationOutstanding>())?;
    Ok(())
}

/// A Rust error as the Python exception of the same name, with the same message.
pub(crate) trait ToPyErr: std::fmt::Display {
    /// The exception for this error.
    fn to_py(&self) -> PyErr;
}

macro_rules! by_variant {
    ($ty:ty, $( $pat:pat => $exc:ident ),+ $(,)?) => {
        impl ToPyErr for $ty {
            fn to_py(&self) -> PyErr {
                let msg = self.to_string();
                match self { $( $pat => $exc::new_err(msg), )+ }
            }
        }
    };
}

use ipc_core as core;
use schemas::channel as ch;

by_variant!(core::TrySendError,
    core::TrySendError::Full => Full,
    core::TrySendError::TooLarge { .. } => TooLarge,
    core::TrySendError::Disconnected => Disconnected,
    core::TrySendError::Corrupt(_) => Corrupt,
);
by_variant!(core::SendError,
    core::SendError::TooLarge { .. } => TooLarge,
    core::SendError::Disconnected => Disconnected,
    core::SendError::Corrupt(_) => Corrupt,
);
by_variant!(core::SendTimeoutError,
    core::SendTimeoutError::Timeout => Timeout,
    core::SendTimeoutError::TooLarge { .. } => TooLarge,
    core::SendTimeoutError::Disconnected => Disconnected,
    core::SendTimeoutError::Corrupt(_) => Corrupt,
);
by_variant!(core::TryRecvError,
    core::TryRecvError::Empty => Empty,
    core::TryRecvError::Disconnected => Disconnected,
    core::TryRecvError::LeasesExhausted { .. } => LeasesExhausted,
    core::TryRecvError::Corrupt { .. } => Corrupt,
);
by_variant!(core::RecvTimeoutError,
    core::RecvTimeoutError::Timeout => Timeout,
    core::RecvTimeoutError::Disconnected => Disconnected,
    core::RecvTimeoutError::LeasesExhausted { .. } => LeasesExhausted,
    core::RecvTimeoutError::Corrupt { .. } => Corrupt,
);
by_variant!(core::AttachError,
    core::AttachError::Busy { .. } => Busy,
    core::AttachError::Corrupt(_) => Corrupt,
);
by_variant!(core::CreateError,
    core::CreateError::InvalidName(_) => InvalidName,
    core::CreateError::InvalidOptions(_) => InvalidOptions,
    core::CreateError::AlreadyExists { .. } => AlreadyExists,
    core::CreateError::Io(_) => Io,
);
by_variant!(core::OpenError,
    core::OpenError::InvalidName(_) => InvalidName,
    core::OpenError::NotFound(_) => NotFound,
    core::OpenError::Invalid(_) => Invalid,
    core::OpenError::Io(_) => Io,
);
by_variant!(ch::BatchChannelError,
    ch::BatchChannelError::NotSixtyFourAligned(_) => NotSixtyFourAligned,
);
by_variant!(ch::BatchSendError,
    ch::BatchSendError::Full => Full,
    ch::BatchSendError::Timeout => Timeout,
    ch::BatchSendError::TooLarge { .. } => TooLarge,
    ch::BatchSendError::Disconnected => Disconnected,
    ch::BatchSendError::Corrupt(_) => Corrupt,
    ch::BatchSendError::Arrow(_) => Arrow,
);
by_variant!(ch::BatchRecvError,
    ch::BatchRecvError::Empty => Empty,
    ch::BatchRecvError::Timeout => Timeout,
    ch::BatchRecvError::Disconnected => Disconnected,
    ch::BatchRecvError::LeasesExhausted(_) => LeasesExhausted,
    ch::BatchRecvError::Corrupt { .. } => Corrupt,
    ch::BatchRecvError::Rejected { .. } => Rejected,
);
by_variant!(ch::EnvelopeSendError,
    ch::EnvelopeSendError::Full => Full,
    ch::EnvelopeSendError::Timeout => Timeout,
    ch::EnvelopeSendError::TooLarge { .. } => TooLarge,
    ch::EnvelopeSendError::Disconnected => Disconnected,
    ch::EnvelopeSendError::Corrupt(_) => Corrupt,
);
by_variant!(ch::EnvelopeRecvError,
    ch::EnvelopeRecvError::Empty => Empty,
    ch::EnvelopeRecvError::Timeout => Timeout,
    ch::EnvelopeRecvError::Disconnected => Disconnected,
    ch::EnvelopeRecvError::LeasesExhausted(_) => LeasesExhausted,
    ch::EnvelopeRecvError::Corrupt { .. } => Corrupt,
    ch::EnvelopeRecvError::Rejected { .. } => Rejected,
);
by_variant!(schemas::envelope::EnvelopeError,
    _ => Rejected,
);
