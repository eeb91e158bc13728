//! The `tadpole` Python module: a Python process as a full producer or consumer of a Tadpole
//! ring, with the same guarantees as Rust.
//!
//! What it owns: turning ipc-core's and schemas' handles into Python objects that are safe to
//! misuse. Every view it hands out is a buffer export of an object that holds an
//! `ipc_core::Lease` (received bytes) or an `ipc_core::OwnedWriteGrant` (reserved bytes), so
//! the ring space a view shows cannot be released while any view of it is open; views used
//! after release raise (CPython's own "released memoryview" check). What it must never do: hold
//! the GIL while waiting for the ring, or hold a handle's lock while waiting for the GIL (a
//! handle's lock is only ever waited for with the GIL released).
//!
//! Layout: `errors` (the exceptions), `raw` (segments, byte producers and consumers),
//! `arrow` (record batches through the C Data Interface), `envelope` (verified envelopes).

use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

mod arrow;
mod envelope;
mod errors;
mod raw;

/// Longest a blocking call waits without the GIL before it looks for signals (Ctrl-C).
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// Locks a handle. Its state stays consistent whatever panicked while it was held: ipc-core
/// keeps records of a panicking thread unreleased, which is what at-least-once wants.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on a handle's state under its lock. A lock another thread holds is waited for
/// without the GIL: that thread may be in a GIL-free wait, and needs the GIL back to finish.
fn with_lock<T: Send, R: Send>(py: Python<'_>, m: &Mutex<T>, f: impl FnOnce(&mut T) -> R + Send) -> R {
    match m.try_lock() {
        Ok(mut guard) => f(&mut guard),
        Err(TryLockError::Poisoned(p)) => f(&mut p.into_inner()),
        Err(TryLockError::WouldBlock) => py.detach(|| f(&mut lock(m))),
    }
}

/// What one slice of a blocking call came to.
enum Slice<T, E> {
    Done(T),
    Failed(E),
    /// The slice passed with nothing to show; wait again unless the deadline passed.
    Again,
}

/// A Python timeout in seconds (`None`: forever) as a deadline.
fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Instant::now() + Duration::from_secs_f64(t.min(1e9)))),
        Some(t) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout {t} must be a non-negative number of seconds or None"
        ))),
    }
}

/// Runs `slice` without the GIL, in slices of at most [`WAIT_SLICE`], until it is done or
/// fails, checking for signals (so Ctrl-C raises `KeyboardInterrupt`) between slices. When the
/// deadline passes, `timed_out` says what to raise.
fn wait_in_slices<T, E>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut slice: impl FnMut(Duration) -> Slice<T, E> + Send,
    timed_out: impl FnOnce() -> E,
) -> PyResult<T>
where
    T: Send,
    E: Send + errors::ToPyErr,
{
    loop {
        let budget = deadline.map_or(WAIT_SLICE, |d| d.saturating_duration_since(Instant::now()).min(WAIT_SLICE));
        match py.detach(|| slice(budget)) {
            Slice::Done(v) => return Ok(v),
            Slice::Failed(e) => return Err(e.to_py()),
            Slice::Again => {}
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out().to_py());
        }
    }
}

/// Shared-memory IPC rings: producers, consumers, verified envelopes and zero-copy Arrow
/// record batches. See the README's Python section.
#[pymodule]
fn tadpole(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<raw::PySegment>()?;
    m.add_class::<raw::PyProducer>()?;
    m.add_class::<raw::PyConsumer>()?;
    m.add_class::<raw::Record>()?;
    m.add_class::<raw::Reservation>()?;
    m.add_class::<arrow::PyBatchSender>()?;
    m.add_class::<arrow::PyBatchReceiver>()?;
    m.add_class::<envelope::PyEnvelopeSender>()?;
    m.add_class::<envelope::PyEnvelopeReceiver>()?;
    m.add_class::<envelope::PyEnvelope>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
