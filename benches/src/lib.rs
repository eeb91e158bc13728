//! Measurement building blocks shared by the criterion benches (`benches/ring.rs`) and the
//! `ring_report` binary: CPU pinning, the peer process both spawn, the hardware-floor probe
//! (two processes bouncing one cache line), ping-pong latency through two rings, two-thread
//! throughput, the single-thread memcpy baseline, the relay pair, and `tadpole bench` ([`suite`]).
//!
//! Rules every measurement here follows (see `shared/MEASURING.md`):
//! - The measuring side runs on CPU [`MAIN_CPU`], its peer (process or thread) on [`PEER_CPU`].
//! - Latency is timed as whole round trips with one clock; one-way is RTT / 2.
//! - Every message is counted and its sequence number checked on arrival; a mismatch is an
//!   error, never a slow figure.
//! - A peer process dies with its parent (`PR_SET_PDEATHSIG`), and every shared-memory name is
//!   unlinked as soon as the peer has mapped it, so a crash leaves nothing in `/dev/shm`.
//!
//! A binary that uses [`floor`] or [`latency`] must call [`peer::run_peer_if_requested`] first
//! thing in `main`: the peer is the same executable, started again with [`peer::PEER_ENV`] set.

pub mod floor;
pub mod latency;
pub mod memcpy;
pub mod peer;
pub mod pin;
pub mod relay_pair;
pub mod shared_page;
pub mod stats;
pub mod suite;
pub mod throughput;

/// Errors of a measurement: anything that went wrong is reported, never turned into a number.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
/// Result of a measurement.
pub type BenchResult<T> = Result<T, BenchError>;

/// CPU of the measuring side (the producer of throughput runs, the pinging side of latency).
pub const MAIN_CPU: usize = 0;
/// CPU of the peer process or thread.
pub const PEER_CPU: usize = 1;

/// A name no other run uses: `<what>-<pid>-<counter>`.
pub(crate) fn unique_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
