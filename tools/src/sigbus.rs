//! `tadpole stat`, `tap` and `metrics` read rings that other processes own, and a named ring's
//! file can be shrunk under them by any process that can open it. Touching the mapping past the
//! new end raises `SIGBUS`; ipc-core catches it (its handler maps zeros over the ring and records
//! the truncation, see `Segment::was_truncated`), so the tools never die of it. They stop with
//! an error instead, and exit with [`EXIT_TRUNCATED`]:
//!
//! 1. Before each read, [`Segment::is_truncated`] (one `fstat`) finds a file that has shrunk.
//! 2. A truncation between that check and the read is the library's: the read meets zeros, and
//!    the observer says [`ObserveError::Truncated`](ipc_core::ObserveError::Truncated) (stat and
//!    metrics read the header from the file with `pread`, never through the mapping).
//!
//! Sealed rings (`Segment::connect`) cannot be truncated at all.
//!
//! [`Segment::is_truncated`]: ipc_core::Segment::is_truncated

/// The exit status of a tool whose ring was truncated while it read it.
pub const EXIT_TRUNCATED: u8 = 3;

/// For the test of the library's handler: skip layer 1, so a truncation is met by a fault.
const SKIP_SIZE_CHECK_ENV: &str = "TADPOLE_SKIP_SIZE_CHECK";

/// A ring's file was truncated by another process while a tool read it: [`crate::exit::report`]
/// ends the process with [`EXIT_TRUNCATED`] for it.
#[derive(Debug, thiserror::Error)]
#[error("the ring's file was truncated by another process while being read ({how}); stopping")]
pub struct RingTruncated {
    /// How it was found.
    pub how: &'static str,
}

/// Whether the tools should check the file's size before each read (layer 1).
pub fn check_sizes() -> bool {
    std::env::var_os(SKIP_SIZE_CHECK_ENV).is_none()
}
