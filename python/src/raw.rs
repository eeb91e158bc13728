//! Segments, and producers and consumers of raw bytes.
//!
//! Received bytes are handed out as read-only `memoryview`s whose exporter is a [`Record`]
//! holding the record's `Lease`; reserved bytes as a [`Reservation`] (a writable buffer holding
//! an `OwnedWriteGrant`). The rule that keeps shared memory safe from Python: ring space is
//! given up (released, committed or abandoned) only when no buffer export of it is open.
//! A `Record` releases its lease when its last export closes, and refuses new exports after;
//! a `Reservation` refuses to commit or abandon while exports are open (`BufferError`).

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipc_core::{
    BatchLease, Consumer, Lease, OwnedWriteGrant, PayloadAlign, PeerState, Producer, ReadGuard, RecvTimeoutError,
    RingBuilder, Segment, SendTimeoutError, TryRecvError, TrySendError, WaitStrategy,
};
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::errors::{self, ToPyErr};
use crate::{ForkSafe, Slice, deadline, lock, wait_in_slices, with_lock};

/// Copies up to this many bytes with the GIL held: releasing and taking it back costs more.
const GIL_FREE_COPY: usize = 64 * 1024;

/// A wait strategy by its Python name.
fn wait_strategy(name: &str) -> PyResult<WaitStrategy> {
    match name {
        "busy_spin" => Ok(WaitStrategy::BusySpin),
        "spin_then_yield" => Ok(WaitStrategy::SpinThenYield),
        "block" => Ok(WaitStrategy::Block),
        other => Err(PyValueError::new_err(format!(
            "wait strategy {other:?}: use \"busy_spin\", \"spin_then_yield\" or \"block\""
        ))),
    }
}

fn closed(what: &str) -> PyErr {
    errors::TadpoleError::new_err(format!("{what} is closed"))
}

/// A ring segment: create one by name, or open an existing one.
///
/// ```python
/// import tadpole
/// seg = tadpole.Segment.create("prices", 1 << 20)
/// producer, consumer = seg.producer(), tadpole.Segment.open("prices").consumer()
/// producer.send(b"order 42")
/// with consumer.recv() as view:      # a memoryview over shared memory
///     assert bytes(view) == b"order 42"
/// ```
#[pyclass(frozen, module = "tadpole", name = "Segment")]
pub struct PySegment {
    pub(crate) inner: ForkSafe<Segment>,
}

#[pymethods]
impl PySegment {
    /// Creates the named segment `/dev/shm/tadpole.<name>` (mode 0600, exclusively) with a data
    /// region of `capacity` bytes (a power of two, at least 4096). The name is removed when the
    /// last handle in this process goes, unless `keep()` is called. `payload_align=64` makes a
    /// ring for Arrow batches.
    #[staticmethod]
    #[pyo3(signature = (name, capacity, *, max_message_len=None, payload_align=8, heartbeat_timeout=None))]
    fn create(
        name: &str,
        capacity: usize,
        max_message_len: Option<usize>,
        payload_align: usize,
        heartbeat_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let mut builder = RingBuilder::new(capacity).payload_align(match payload_align {
            8 => PayloadAlign::Eight,
            64 => PayloadAlign::SixtyFour,
            other => return Err(PyValueError::new_err(format!("payload_align {other} must be 8 or 64"))),
        });
        if let Some(len) = max_message_len {
            builder = builder.max_message_len(len);
        }
        if let Some(t) = heartbeat_timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(PyValueError::new_err(format!(
                    "heartbeat_timeout {t} must be a positive number of seconds"
                )));
            }
            builder = builder.heartbeat_timeout(Duration::from_secs_f64(t.min(1e9)));
        }
        Ok(Self { inner: ForkSafe::new(builder.create_named(name).map_err(|e| e.to_py())?) })
    }

    /// Opens the existing segment `name`, validating its header.
    #[staticmethod]
    fn open(name: &str) -> PyResult<Self> {
        Ok(Self { inner: ForkSafe::new(Segment::open(name).map_err(|e| e.to_py())?) })
    }

    /// Removes the name `name` from `/dev/shm` (mappings stay valid).
    #[staticmethod]
    fn unlink(name: &str) -> PyResult<()> {
        Segment::unlink(name).map_err(|e| e.to_py())
    }

    /// Attaches as the ring's producer (raises `Busy` while another live one is attached).
    fn producer(&self) -> PyResult<PyProducer> {
        let producer = self.inner.producer().map_err(|e| e.to_py())?;
        Ok(PyProducer::new(producer))
    }

    /// Attaches as the ring's consumer (raises `Busy` while another live one is attached); it
    /// resumes at the first record no consumer released.
    fn consumer(&self) -> PyResult<PyConsumer> {
        let consumer = self.inner.consumer().map_err(|e| e.to_py())?;
        Ok(PyConsumer { inner: ForkSafe::new(Mutex::new(Some(consumer))), closing: false.into() })
    }

    /// Keeps the name after this process's last handle goes.
    fn keep(&self) {
        self.inner.keep();
    }

    /// The segment's name, or `None` for an anonymous one.
    #[getter]
    fn name(&self) -> Option<&str> {
        self.inner.name()
    }

    /// Data region bytes.
    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// Largest payload accepted.
    #[getter]
    fn max_message_len(&self) -> usize {
        self.inner.max_message_len()
    }

    /// The ring's epoch: random, new when the ring is recreated; `(epoch, position)` names a record.
    #[getter]
    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    /// `(head, tail)`: the consumer's released position and the producer's committed one.
    fn positions(&self) -> (u64, u64) {
        let s = self.inner.status();
        (s.head, s.tail)
    }

    /// A snapshot of the ring's positions, attachments and counters, read from shared memory
    /// without disturbing its producer or consumer: the fields of `tadpole stat --json` (without
    /// the rates). `producer` and `consumer` are `{"state": "alive" | "dead" | "detached" |
    /// "never_attached", "pid": int | None}`.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.status();
        let dict = |pairs: &[(&str, u64)]| -> PyResult<Bound<'py, PyDict>> {
            let d = PyDict::new(py);
            for (k, v) in pairs {
                d.set_item(k, v)?;
            }
            Ok(d)
        };
        let side = |state: PeerState| -> PyResult<Bound<'py, PyDict>> {
            let (name, pid) = match state {
                PeerState::NeverAttached => ("never_attached", None),
                PeerState::Attached(id) => ("alive", Some(id.pid)),
                PeerState::Closed => ("detached", None),
                PeerState::Dead(id) => ("dead", Some(id.pid)),
            };
            let d = PyDict::new(py);
            d.set_item("state", name)?;
            d.set_item("pid", pid)?;
            Ok(d)
        };
        let (p, c) = (&s.produced, &s.consumed);
        let out = dict(&[
            ("capacity", s.capacity),
            ("max_message_len", u64::from(s.max_message_len)),
            ("payload_align", s.payload_align.bytes()),
            ("epoch", self.inner.epoch()),
            ("head", s.head),
            ("tail", s.tail),
            ("depth_bytes", s.used_bytes()),
            ("depth_messages", p.messages.saturating_sub(c.messages)),
            ("leases_held", c.leases_held),
            ("lease_capacity", c.lease_capacity),
            ("dead_letters", c.dead_letters()),
        ])?;
        let creator = PyDict::new(py);
        creator.set_item("pid", s.creator.pid)?;
        creator.set_item("alive", s.creator_alive)?;
        out.set_item("creator", creator)?;
        out.set_item("producer", side(s.producer)?)?;
        out.set_item("consumer", side(s.consumer)?)?;
        out.set_item(
            "produced",
            dict(&[
                ("messages", p.messages),
                ("bytes", p.bytes),
                ("commits", p.commits),
                ("full_ring_waits", p.full_events),
                ("wakes", p.wakes),
                ("padding_bytes", p.padding_bytes),
                ("oversize_rejects", p.oversize_rejects),
            ])?,
        )?;
        out.set_item(
            "consumed",
            dict(&[
                ("messages", c.messages),
                ("bytes", c.bytes),
                ("releases", c.releases),
                ("empty_polls", c.empty_polls),
                ("wakes", c.wakes),
                ("corrupt_records", c.corrupt_records),
            ])?,
        )?;
        out.set_item(
            "dead_letters_by_reason",
            dict(&[("malformed", c.dead_letters_malformed), ("undeliverable", c.dead_letters_undeliverable)])?,
        )?;
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!("<tadpole.Segment {:?} capacity={}>", self.inner.name().unwrap_or("(anonymous)"), self.inner.capacity())
    }
}

// ---------------------------------------------------------------------------------------------
// Producing

/// The producer of a ring: exactly one per ring across all processes. Safe to share between
/// Python threads (calls on it take turns).
///
/// ```python
/// producer.send(b"hello")                    # copies once into shared memory
/// res = producer.reserve(5)                  # or build in place:
/// with memoryview(res) as buf:
///     buf[:] = b"world"
/// res.commit()
/// ```
#[pyclass(frozen, module = "tadpole", name = "Producer")]
pub struct PyProducer {
    /// `None` while a [`Reservation`] holds the producer, or once closed.
    inner: ForkSafe<Mutex<Option<Producer>>>,
    /// Whether a reservation holds it (rather than `close`).
    reserved: AtomicBool,
    /// Set by `close` before it takes the lock: a thread waiting for room in slices gives up
    /// at its next slice instead of taking the lock again ahead of `close` until it times out.
    closing: AtomicBool,
}

impl PyProducer {
    pub(crate) fn new(producer: Producer) -> Self {
        Self { inner: ForkSafe::new(Mutex::new(Some(producer))), reserved: false.into(), closing: false.into() }
    }

    fn missing(&self) -> PyErr {
        if self.reserved.load(Ordering::Acquire) {
            errors::ReservationOutstanding::new_err(
                "the producer's space is reserved: commit or abandon the Reservation first",
            )
        } else {
            closed("producer")
        }
    }

    /// Copies `len` bytes from `src` as one message of type `message_type`.
    pub(crate) fn send_from(
        &self,
        py: Python<'_>,
        src: SendPtr,
        len: usize,
        message_type: u16,
        timeout: Option<f64>,
        wait: bool,
    ) -> PyResult<()> {
        let copy = |p: &mut Producer| -> Result<(), TrySendError> {
            let mut grant = p.try_reserve(len)?;
            // SAFETY: `src` is `len` readable bytes kept alive (and, for buffers, exported) by the
            // caller for this whole call; the grant is `len` writable bytes of ring space no one
            // else touches until commit. They cannot overlap: one is shared memory we reserved.
            unsafe { std::ptr::copy_nonoverlapping(src.get(), grant.as_mut_ptr(), len) };
            grant.set_message_type(message_type);
            grant.commit();
            Ok(())
        };
        if len <= GIL_FREE_COPY {
            if let Ok(mut guard) = self.inner.try_lock() {
                let p = guard.as_mut().ok_or_else(|| self.missing())?;
                match copy(p) {
                    Ok(()) => return Ok(()),
                    Err(TrySendError::Full) if wait => {}
                    Err(e) => return Err(e.to_py()),
                }
            }
        }
        let deadline = deadline(timeout)?;
        let missing = AtomicBool::new(false);
        let result = wait_in_slices(
            py,
            deadline,
            |budget| {
                if self.closing.load(Ordering::Acquire) {
                    missing.store(true, Ordering::Relaxed);
                    return Slice::Failed(SendTimeoutError::Disconnected);
                }
                let mut guard = lock(&self.inner);
                let Some(p) = guard.as_mut() else {
                    missing.store(true, Ordering::Relaxed);
                    return Slice::Failed(SendTimeoutError::Disconnected);
                };
                match copy(p) {
                    Ok(()) => return Slice::Done(()),
                    Err(TrySendError::Full) if wait => {}
                    Err(e) => return Slice::Failed(timeout_error(e)),
                }
                // Wait for room, then copy into it: a grant dropped unpublished publishes nothing.
                match p.reserve_timeout(len, budget) {
                    Ok(_unpublished) => {}
                    Err(SendTimeoutError::Timeout) => return Slice::Again,
                    Err(e) => return Slice::Failed(e),
                }
                match copy(p) {
                    Ok(()) => Slice::Done(()),
                    Err(TrySendError::Full) => Slice::Again,
                    Err(e) => Slice::Failed(timeout_error(e)),
                }
            },
            || SendTimeoutError::Timeout,
        );
        if missing.load(Ordering::Relaxed) {
            return Err(self.missing());
        }
        if !wait {
            // A non-waiting send that found the ring full says so, as Rust's `try_send` does.
            if let Err(e) = &result {
                if e.is_instance_of::<errors::Timeout>(py) {
                    return Err(TrySendError::Full.to_py());
                }
            }
        }
        result
    }
}

/// A raw pointer to bytes the caller keeps alive for the call, movable into a GIL-free closure.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *const u8);
// SAFETY: only read while the object it points into is kept alive and exported by the caller.
unsafe impl Send for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its raw field).
    pub(crate) fn get(self) -> *const u8 {
        self.0
    }
}
// SAFETY: as above; shared use only reads.
unsafe impl Sync for SendPtr {}

fn timeout_error(e: TrySendError) -> SendTimeoutError {
    match e {
        TrySendError::Full => SendTimeoutError::Timeout,
        TrySendError::TooLarge { len, max } => SendTimeoutError::TooLarge { len, max },
        TrySendError::Disconnected => SendTimeoutError::Disconnected,
        TrySendError::Corrupt(f) => SendTimeoutError::Corrupt(f),
    }
}

/// Runs `f` over the bytes of a `bytes` object or any C-contiguous byte buffer.
pub(crate) fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(SendPtr, usize) -> PyResult<R>) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        let s = b.as_bytes();
        return f(SendPtr(s.as_ptr()), s.len());
    }
    let buf = pyo3::buffer::PyBuffer::<u8>::get(data)?;
    if !buf.is_c_contiguous() {
        return Err(PyBufferError::new_err("send needs a C-contiguous buffer"));
    }
    // The export (`buf`) stays open until `f` returns: the memory cannot move or be freed.
    let result = f(SendPtr(buf.buf_ptr() as *const u8), buf.len_bytes());
    drop(buf);
    result
}

#[pymethods]
impl PyProducer {
    /// Copies `data` (`bytes`, or any C-contiguous byte buffer) into the ring as one message,
    /// waiting for space up to `timeout` seconds (`None`: forever; raises `Timeout`). The GIL
    /// is released while waiting and while copying more than 64 KiB.
    #[pyo3(signature = (data, timeout=None, *, message_type=0))]
    fn send(&self, py: Python<'_>, data: &Bound<'_, PyAny>, timeout: Option<f64>, message_type: u16) -> PyResult<()> {
        with_bytes(data, |ptr, len| self.send_from(py, ptr, len, message_type, timeout, true))
    }

    /// Like `send`, but raises `Full` instead of waiting.
    #[pyo3(signature = (data, *, message_type=0))]
    fn try_send(&self, py: Python<'_>, data: &Bound<'_, PyAny>, message_type: u16) -> PyResult<()> {
        with_bytes(data, |ptr, len| self.send_from(py, ptr, len, message_type, Some(0.0), false))
    }

    /// Reserves `n` bytes of shared memory, waiting for space up to `timeout` seconds, and
    /// returns them as a writable `Reservation`: write through `memoryview(reservation)`, then
    /// `commit()` (or use it as a context manager, which commits on success and abandons on an
    /// exception). The producer sends nothing else until then (`ReservationOutstanding`).
    #[pyo3(signature = (n, timeout=None))]
    fn reserve(slf: &Bound<'_, Self>, n: usize, timeout: Option<f64>) -> PyResult<Reservation> {
        let me = slf.get();
        let py = slf.py();
        let deadline = deadline(timeout)?;
        let reserved = &me.reserved;
        loop {
            // Taken, tried and given back (or marked reserved) under one hold of the lock: a
            // thread waiting without the GIL must never find the slot empty but unreserved,
            // which would read as a closed producer.
            let attempt = with_lock(py, &me.inner, |slot| {
                let producer = slot.take()?;
                Some(match producer.try_reserve_owned(n) {
                    Ok(grant) => {
                        reserved.store(true, Ordering::Release);
                        Ok(grant)
                    }
                    Err(refused) => {
                        *slot = Some(refused.producer);
                        Err(refused.error)
                    }
                })
            });
            match attempt.ok_or_else(|| me.missing())? {
                Ok(grant) => {
                    return Ok(Reservation {
                        state: ForkSafe::new(Mutex::new(ReservationState { grant: Some(grant), exports: 0 })),
                        producer: slf.clone().unbind(),
                        entered: Mutex::new(None),
                    });
                }
                Err(TrySendError::Full) => {}
                Err(e) => return Err(e.to_py()),
            }
            // Full: wait for room without the GIL (a dropped grant publishes nothing), then retry.
            let missing = AtomicBool::new(false);
            let outcome = wait_in_slices(
                py,
                deadline,
                |budget| {
                    if me.closing.load(Ordering::Acquire) {
                        missing.store(true, Ordering::Relaxed);
                        return Slice::Failed(SendTimeoutError::Disconnected);
                    }
                    let mut guard = lock(&me.inner);
                    let Some(p) = guard.as_mut() else {
                        missing.store(true, Ordering::Relaxed);
                        return Slice::Failed(SendTimeoutError::Disconnected);
                    };
                    match p.reserve_timeout(n, budget) {
                        Ok(_) => Slice::Done(()),
                        Err(SendTimeoutError::Timeout) => Slice::Again,
                        Err(e) => Slice::Failed(e),
                    }
                },
                || SendTimeoutError::Timeout,
            );
            if missing.load(Ordering::Relaxed) {
                // Closed, or reserved by another thread: not the consumer's doing.
                return Err(me.missing());
            }
            outcome?;
        }
    }

    /// How waiting calls wait for room: `"spin_then_yield"` (the default), `"busy_spin"` (lowest
    /// latency, a core kept busy) or `"block"` (sleeps on a futex until the consumer frees room).
    fn set_wait_strategy(&self, py: Python<'_>, strategy: &str) -> PyResult<()> {
        let strategy = wait_strategy(strategy)?;
        with_lock(py, &self.inner, |p| p.as_mut().map(|p| p.set_wait_strategy(strategy))).ok_or_else(|| self.missing())
    }

    /// `(position, messages)`: where the next record goes and how many messages the ring has
    /// carried, exact even after a previous producer was killed mid-commit.
    fn frontier(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        let f = with_lock(py, &self.inner, |p| p.as_ref().map(Producer::frontier)).ok_or_else(|| self.missing())?;
        Ok((f.position, f.messages))
    }

    /// Largest payload accepted.
    #[getter]
    fn max_message_len(&self, py: Python<'_>) -> PyResult<usize> {
        with_lock(py, &self.inner, |p| p.as_ref().map(Producer::max_message_len)).ok_or_else(|| self.missing())
    }

    /// Detaches from the ring (also done when the object is garbage-collected).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        // Not while a reservation holds the producer: then close is refused, and a flag left set
        // would fail later waits on a producer that was never closed.
        if !self.reserved.load(Ordering::Acquire) {
            self.closing.store(true, Ordering::Release);
        }
        let reserved = &self.reserved;
        let refused = with_lock(py, &self.inner, |p| {
            let refused = p.is_none() && reserved.load(Ordering::Acquire);
            p.take();
            refused
        });
        if refused { Err(self.missing()) } else { Ok(()) }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

struct ReservationState {
    grant: Option<OwnedWriteGrant>,
    exports: usize,
}

/// Bytes reserved in shared memory by `Producer.reserve`: a writable buffer until committed
/// or abandoned. Committing or abandoning while a view of it is open raises `BufferError`
/// (the view would write into space the producer no longer owns); views taken before commit
/// must be released first, e.g. with `with memoryview(res) as buf: ...`.
///
/// ```python
/// with producer.reserve(8) as buf:           # buf: a writable memoryview
///     struct.pack_into("<Q", buf, 0, 42)
/// # committed here (abandoned if the block raised)
/// ```
#[pyclass(frozen, module = "tadpole")]
pub struct Reservation {
    state: ForkSafe<Mutex<ReservationState>>,
    producer: Py<PyProducer>,
    /// The view `__enter__` handed out, released by `__exit__`.
    entered: Mutex<Option<Py<PyMemoryView>>>,
}

impl Reservation {
    /// Ends the reservation (`commit` or abandon), giving the producer back.
    fn finish(&self, py: Python<'_>, commit: bool, message_type: u16) -> PyResult<()> {
        let mut state = lock(&self.state);
        if state.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "{} views of the reservation are open: release them before {}",
                state.exports,
                if commit { "commit" } else { "abandon" }
            )));
        }
        let Some(mut grant) = state.grant.take() else {
            return Err(errors::TadpoleError::new_err("the reservation is already committed or abandoned"));
        };
        // Not held while the producer's lock may be waited for without the GIL.
        drop(state);
        let producer = if commit {
            grant.set_message_type(message_type);
            grant.commit()
        } else {
            grant.abandon()
        };
        let owner = self.producer.get();
        let reserved = &owner.reserved;
        // Cleared under the lock, with the producer's return: cleared after it, it could undo
        // the flag of a reservation another thread made in between.
        with_lock(py, &owner.inner, |p| {
            reserved.store(false, Ordering::Release);
            *p = Some(producer);
        });
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Garbage-collected unfinished: publish nothing, and give the producer back. No export
        // can be open: each holds a reference to this object. A forked child's copy gives
        // nothing back: the reservation is the parent's (see `ForkSafe`).
        if self.state.inherited() {
            return;
        }
        let state = self.state.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(grant) = state.grant.take() {
            let owner = self.producer.get();
            let mut slot = lock(&owner.inner);
            owner.reserved.store(false, Ordering::Release);
            *slot = Some(grant.abandon());
        }
    }
}

#[pymethods]
impl Reservation {
    /// Publishes the message (one release store). `message_type` is stored in its header.
    #[pyo3(signature = (message_type=0))]
    fn commit(&self, py: Python<'_>, message_type: u16) -> PyResult<()> {
        self.finish(py, true, message_type)
    }

    /// Publishes nothing; the producer can reserve or send again.
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        self.finish(py, false, 0)
    }

    /// Where the record will start in the ring.
    #[getter]
    fn position(&self) -> PyResult<u64> {
        let state = lock(&self.state);
        state.grant.as_ref().map(OwnedWriteGrant::position).ok_or_else(|| closed("reservation"))
    }

    fn __len__(&self) -> usize {
        lock(&self.state).grant.as_ref().map_or(0, |g| g.len())
    }

    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyMemoryView>> {
        let view = PyMemoryView::from(slf.as_any())?.unbind();
        *lock(&slf.get().entered) = Some(view.clone_ref(slf.py()));
        Ok(view)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if let Some(view) = lock(&self.entered).take() {
            view.bind(py).call_method0("release")?;
        }
        self.finish(py, exc_type.is_none(), 0)?;
        Ok(false)
    }

    /// # Safety
    /// Called by CPython with a `Py_buffer` to fill (see the buffer protocol).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let mut state = lock(&slf.get().state);
        let Some(grant) = state.grant.as_mut() else {
            return Err(PyBufferError::new_err("the reservation is committed or abandoned: its space is not yours"));
        };
        let (ptr, len) = (grant.as_mut_ptr(), grant.len());
        state.exports += 1;
        drop(state);
        // SAFETY: `view` is CPython's to fill; `ptr..ptr+len` is the grant's reserved space, which
        // stays reserved (and mapped) while this export is open: `finish` refuses while
        // `exports > 0`, and the export holds a reference to this object so it cannot drop.
        unsafe { fill_view(view, flags, ptr, len, false, slf.into_any()) };
        Ok(())
    }

    /// # Safety
    /// Called by CPython when an export from `__getbuffer__` closes.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut state = lock(&self.state);
        state.exports = state.exports.saturating_sub(1);
    }
}

/// Fills a one-dimensional byte `Py_buffer` over `ptr..ptr+len`, owned by `owner`.
///
/// # Safety
/// `view` must be a `Py_buffer` CPython asked to be filled; the bytes must stay valid (and, if
/// `!readonly`, writable) until the export is released.
pub(crate) unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    ptr: *mut u8,
    len: usize,
    readonly: bool,
    owner: Bound<'_, PyAny>,
) {
    // SAFETY: per this function's contract `view` is valid to write; shape and strides point
    // into the view itself, which CPython keeps as long as the export (a common idiom).
    unsafe {
        (*view).obj = owner.into_ptr();
        (*view).buf = ptr.cast::<c_void>();
        (*view).len = len as isize;
        (*view).readonly = c_int::from(readonly);
        (*view).itemsize = 1;
        (*view).format = if flags & ffi::PyBUF_FORMAT != 0 { c"B".as_ptr().cast_mut() } else { std::ptr::null_mut() };
        (*view).ndim = 1;
        (*view).shape = if flags & ffi::PyBUF_ND != 0 { &raw mut (*view).len } else { std::ptr::null_mut() };
        (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
            &raw mut (*view).itemsize
        } else {
            std::ptr::null_mut()
        };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = std::ptr::null_mut();
    }
}

// ---------------------------------------------------------------------------------------------
// Consuming

/// The consumer of a ring: exactly one per ring across all processes. Safe to share between
/// Python threads (calls on it take turns).
///
/// ```python
/// view = consumer.recv(timeout=1.0)          # read-only memoryview over shared memory
/// print(view.obj.position, bytes(view[:8]))
/// view.release()                             # gives the space back (so does dropping it)
/// ```
#[pyclass(frozen, module = "tadpole", name = "Consumer")]
pub struct PyConsumer {
    inner: ForkSafe<Mutex<Option<Consumer>>>,
    /// Set by `close` before it takes the lock: a thread waiting for a message in slices gives
    /// up at its next slice instead of taking the lock again ahead of `close` until it times out.
    closing: AtomicBool,
}

/// Why a record could not become a lease: as the receive errors say it.
fn leased(guard: ReadGuard<'_>) -> Result<Lease, TryRecvError> {
    guard.into_lease().map_err(|refused| {
        let capacity = match refused.reason {
            ipc_core::LeaseRefused::Exhausted { capacity } => capacity,
            ipc_core::LeaseRefused::ExplicitRelease => 0,
        };
        // Put back unreleased: it comes again once views are released.
        refused.into_inner().requeue();
        TryRecvError::LeasesExhausted { capacity }
    })
}

fn waited(e: TryRecvError) -> RecvTimeoutError {
    match e {
        TryRecvError::Empty => RecvTimeoutError::Timeout,
        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
        TryRecvError::LeasesExhausted { capacity } => RecvTimeoutError::LeasesExhausted { capacity },
        TryRecvError::Corrupt { position, reason } => RecvTimeoutError::Corrupt { position, reason },
    }
}

impl PyConsumer {
    /// Receives with `attempt` (non-blocking) and, when empty and `timeout` allows, waits in
    /// slices with `wait` (blocking for at most the budget it is given).
    fn receive<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        attempt: impl Fn(&mut Consumer) -> Result<T, TryRecvError> + Sync,
        wait: impl Fn(&mut Consumer, Duration) -> Result<T, RecvTimeoutError> + Sync,
    ) -> PyResult<T> {
        // Without waiting for the lock while holding the GIL: its holder may be waiting for it.
        let first = match self.inner.try_lock() {
            Ok(mut guard) => guard.as_mut().map(&attempt),
            Err(_) => py.detach(|| lock(&self.inner).as_mut().map(&attempt)),
        };
        match first.ok_or_else(|| closed("consumer"))? {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Empty) if timeout != Some(0.0) => {}
            Err(e) => return Err(e.to_py()),
        }
        let closed_seen = AtomicBool::new(false);
        let result = wait_in_slices(
            py,
            deadline(timeout)?,
            |budget| {
                if self.closing.load(Ordering::Acquire) {
                    closed_seen.store(true, Ordering::Relaxed);
                    return Slice::Failed(RecvTimeoutError::Disconnected);
                }
                let mut guard = lock(&self.inner);
                let Some(c) = guard.as_mut() else {
                    closed_seen.store(true, Ordering::Relaxed);
                    return Slice::Failed(RecvTimeoutError::Disconnected);
                };
                match wait(c, budget) {
                    Ok(v) => Slice::Done(v),
                    Err(RecvTimeoutError::Timeout) => Slice::Again,
                    Err(e) => Slice::Failed(e),
                }
            },
            || RecvTimeoutError::Timeout,
        );
        if closed_seen.load(Ordering::Relaxed) {
            return Err(closed("consumer"));
        }
        result
    }
}

#[pymethods]
impl PyConsumer {
    /// The next message as a read-only `memoryview` over shared memory (no copy), waiting up
    /// to `timeout` seconds (`None`: forever; raises `Timeout`; `Disconnected` once the producer
    /// is gone and everything it committed was received). The GIL is released while waiting
    /// and Ctrl-C interrupts the wait. The record's space goes back to the producer when the
    /// view is released (`view.release()`, a `with` block, or the last reference to it and its
    /// slices going away); using it afterwards raises `ValueError`. `view.obj` is the `Record`
    /// (position, message type, epoch).
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyMemoryView>> {
        let lease = self.receive(
            py,
            timeout,
            |c| leased(c.try_recv()?),
            |c, budget| leased(c.recv_timeout(budget)?).map_err(waited),
        )?;
        Record::view(py, Record::from_lease(lease))
    }

    /// Like `recv`, but raises `Empty` instead of waiting.
    fn try_recv<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyMemoryView>> {
        self.recv(py, Some(0.0))
    }

    /// Up to `n` messages received together (at least one; waiting up to `timeout` for the
    /// first), as a list of views. They share one lease: their space goes back when the last
    /// of them is released.
    #[pyo3(signature = (n, timeout=None))]
    fn recv_many<'py>(&self, py: Python<'py>, n: usize, timeout: Option<f64>) -> PyResult<Bound<'py, PyList>> {
        let batch_lease = |batch: ipc_core::ReadBatch<'_>| {
            batch.into_lease().map_err(|refused| {
                let capacity = match refused.reason {
                    ipc_core::LeaseRefused::Exhausted { capacity } => capacity,
                    ipc_core::LeaseRefused::ExplicitRelease => 0,
                };
                // Put back unreleased, as `ReadGuard::requeue` does: delivery moves on only when
                // a batch finishes, and a forgotten one never does.
                std::mem::forget(refused.into_inner());
                TryRecvError::LeasesExhausted { capacity }
            })
        };
        let n = n.max(1);
        let lease = self.receive(
            py,
            timeout,
            |c| batch_lease(c.read_batch(n)?),
            |c, budget| batch_lease(c.read_batch_timeout(n, budget)?).map_err(waited),
        )?;
        let lease = Arc::new(lease);
        let views = PyList::empty(py);
        for rec in lease.iter() {
            let record = Record {
                state: ForkSafe::new(Mutex::new(RecordState { owner: Some(Owner::Batch(lease.clone())), exports: 0 })),
                ptr: rec.payload.as_ptr() as usize,
                len: rec.payload.len(),
                position: rec.position,
                message_type: rec.message_type,
                epoch: lease.epoch(),
            };
            views.append(Record::view(py, record)?)?;
        }
        Ok(views)
    }

    /// How waiting calls wait for messages: `"spin_then_yield"` (the default), `"busy_spin"`
    /// (lowest latency, a core kept busy) or `"block"` (sleeps on a futex until a commit).
    fn set_wait_strategy(&self, py: Python<'_>, strategy: &str) -> PyResult<()> {
        let strategy = wait_strategy(strategy)?;
        with_lock(py, &self.inner, |c| c.as_mut().map(|c| c.set_wait_strategy(strategy)))
            .ok_or_else(|| closed("consumer"))
    }

    /// Most records this consumer may hold as open views (4096 by default); beyond it
    /// receiving raises `LeasesExhausted` until some are released. Capped at one per 8 bytes
    /// of ring (the smallest record): no more could ever be held at once.
    fn set_max_leases(&self, py: Python<'_>, n: usize) -> PyResult<()> {
        with_lock(py, &self.inner, |c| {
            c.as_mut().map(|c| {
                // The consumer allocates a slot per lease up front: an unbounded `n` from Python
                // would abort the process on a failed allocation.
                let most = c.segment().capacity() / ipc_core::layout::RECORD_HEADER_LEN as usize;
                c.set_max_leases(n.min(most));
            })
        })
        .ok_or_else(|| closed("consumer"))
    }

    /// The position the next receive reads from.
    #[getter]
    fn read_position(&self, py: Python<'_>) -> PyResult<u64> {
        with_lock(py, &self.inner, |c| c.as_ref().map(Consumer::read_position)).ok_or_else(|| closed("consumer"))
    }

    /// Detaches from the ring (also done when the object is garbage-collected). Open views
    /// stay valid: they hold their records.
    fn close(&self, py: Python<'_>) {
        self.closing.store(true, Ordering::Release);
        with_lock(py, &self.inner, Option::take);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: &Bound<'_, PyAny>, _v: &Bound<'_, PyAny>, _tb: &Bound<'_, PyAny>) -> bool {
        self.close(py);
        false
    }
}

/// What keeps a record's bytes in the ring.
enum Owner {
    One(#[allow(dead_code)] Lease),
    Batch(#[allow(dead_code)] Arc<BatchLease>),
}

struct RecordState {
    /// `None` once released: the space may already hold another message.
    owner: Option<Owner>,
    exports: usize,
}

/// One received message in shared memory: the exporter behind the views `recv` returns (read
/// them with `memoryview`, `bytes`, `struct.unpack_from`, `numpy.frombuffer`). Its space is
/// released when its last view closes; after that no new view can be taken (`BufferError`).
#[pyclass(frozen, module = "tadpole")]
pub struct Record {
    state: ForkSafe<Mutex<RecordState>>,
    ptr: usize,
    len: usize,
    position: u64,
    message_type: u16,
    epoch: u64,
}

impl Record {
    fn from_lease(lease: Lease) -> Self {
        Record {
            ptr: lease.as_ptr() as usize,
            len: lease.len(),
            position: lease.position(),
            message_type: lease.message_type(),
            epoch: lease.epoch(),
            state: ForkSafe::new(Mutex::new(RecordState { owner: Some(Owner::One(lease)), exports: 0 })),
        }
    }

    /// A memoryview of a new record: its one export, whose closing releases the record.
    fn view(py: Python<'_>, record: Record) -> PyResult<Bound<'_, PyMemoryView>> {
        let record = Bound::new(py, record)?;
        PyMemoryView::from(record.as_any())
    }
}

#[pymethods]
impl Record {
    /// Where the record starts in the ring: strictly increasing, the same when delivered again.
    #[getter]
    fn position(&self) -> u64 {
        self.position
    }

    /// The message type the producer set (0 by default).
    #[getter]
    fn message_type(&self) -> u16 {
        self.message_type
    }

    /// The ring's epoch.
    #[getter]
    fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the record's space was given back.
    #[getter]
    fn released(&self) -> bool {
        lock(&self.state).owner.is_none()
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        format!("<tadpole.Record position={} len={} type={}>", self.position, self.len, self.message_type)
    }

    /// # Safety
    /// Called by CPython with a `Py_buffer` to fill (see the buffer protocol).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let me = slf.get();
        if flags & ffi::PyBUF_WRITABLE != 0 {
            return Err(PyBufferError::new_err("received records are read-only"));
        }
        let mut state = lock(&me.state);
        if state.owner.is_none() {
            return Err(PyBufferError::new_err("record released: its space may already hold another message"));
        }
        state.exports += 1;
        drop(state);
        // SAFETY: `ptr..ptr+len` is the record's payload in the mapping, validated when received;
        // the lease in `owner` keeps it mapped and unreleased while any export is open
        // (`__releasebuffer__` drops it only when the last closes), and the export holds a
        // reference to this object. Read-only: the producer owns writing.
        unsafe { fill_view(view, flags, me.ptr as *mut u8, me.len, true, slf.into_any()) };
        Ok(())
    }

    /// # Safety
    /// Called by CPython when an export from `__getbuffer__` closes.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut state = lock(&self.state);
        state.exports = state.exports.saturating_sub(1);
        if state.exports == 0 {
            // The last view closed: give the space back (a batch's when its last record goes),
            // unless this is a forked child's copy: the record is the parent's (see `ForkSafe`).
            let owner = state.owner.take();
            if self.state.inherited() {
                std::mem::forget(owner);
            }
        }
    }
}
