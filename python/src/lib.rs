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

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How many times this process's line was forked, counted in each child (`pthread_atfork`).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// A handle on shared state (a ring side, a record, a segment's name) that is let go only in
/// the process that made it. A child forked from that process (`os.fork`, `multiprocessing`)
/// inherits a copy of every Python object, and its exit drops them: dropping the copies would
/// release the parent's held records (the producer then overwrites what the parent still
/// reads), detach the parent's live producer or consumer, and unlink its segment. In a child,
/// dropping one leaks it instead; the parent still owns it. One atomic load, no syscall.
pub(crate) struct ForkSafe<T> {
    value: ManuallyDrop<T>,
    born: u64,
}

impl<T> ForkSafe<T> {
    pub(crate) fn new(value: T) -> Self {
        Self { value: ManuallyDrop::new(value), born: FORKS.load(Ordering::Relaxed) }
    }

    /// Whether this is a forked child's copy of the handle.
    pub(crate) fn inherited(&self) -> bool {
        FORKS.load(Ordering::Relaxed) != self.born
    }
}

impl<T> std::ops::Deref for ForkSafe<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::DerefMut for ForkSafe<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for ForkSafe<T> {
    fn drop(&mut self) {
        if !self.inherited() {
            // SAFETY: `value` is dropped only here, once, and never used after: `self` is going.
            unsafe { ManuallyDrop::drop(&mut self.value) };
        }
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
    // Registered again if the module is initialised again (a subinterpreter): the count then
    // grows by more than one per fork, which tells a child from its parent just as well.
    // SAFETY: the handler only increments an atomic (async-signal-safe, as a child handler of a
    // multithreaded process must be); it is a `'static` function, never unregistered.
    let failed = unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
    if failed != 0 {
        return Err(pyo3::exceptions::PyOSError::new_err(format!("pthread_atfork failed: error {failed}")));
    }
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
