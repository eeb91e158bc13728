//! Arrow record batches between rings and pyarrow, through the Arrow C Data Interface.
//!
//! Receiving exports the batch schemas' `BatchReceiver` decoded in place: its buffers are
//! Arrow buffers whose owner is the record's `Lease`, so pyarrow's arrays point into shared
//! memory, and the lease is released when pyarrow calls the C interface's release callback
//! (when its last buffer of the batch goes). Sending imports a pyarrow batch without a copy and
//! lets `BatchSender` copy it once into the ring.

use std::ffi::c_void;
use std::sync::Mutex;

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow_array::{Array, RecordBatch, StructArray};
use arrow_schema::DataType;
use pyo3::prelude::*;
use schemas::channel::{BatchReceiver, BatchRecvError, BatchSendError, BatchSender};

use crate::errors::{self, ToPyErr};
use crate::raw::PySegment;
use crate::{ForkSafe, Slice, deadline, lock, wait_in_slices};

fn arrow_err(e: impl std::fmt::Display) -> PyErr {
    errors::Arrow::new_err(format!("arrow IPC encoding failed: {e}"))
}

/// Receives record batches as `pyarrow.RecordBatch`es whose buffers lie in the ring's shared
/// memory (no copy). A batch held by Python keeps its record, and every later one, from being
/// reused: the producer sees a fuller ring (backpressure, never corruption) until pyarrow
/// drops the batch's last buffer.
///
/// ```python
/// seg = tadpole.Segment.create("ticks", 1 << 24, payload_align=64)
/// rx = tadpole.BatchReceiver(seg)
/// batch = rx.recv(timeout=5.0)               # pyarrow.RecordBatch over shared memory
/// ```
#[pyclass(frozen, module = "tadpole", name = "BatchReceiver")]
pub struct PyBatchReceiver {
    inner: ForkSafe<Mutex<BatchReceiver>>,
}

#[pymethods]
impl PyBatchReceiver {
    /// Attaches as `segment`'s consumer; its ring must have `payload_align=64`. Array data is
    /// validated (offsets, UTF-8, null counts: a pass over the data) unless `trust_peer=True`,
    /// which makes receiving cost the same for 1 k or 1 M rows but is only for a peer trusted to
    /// write valid Arrow (a `BatchSender` in a trusted process): reading invalid arrays that
    /// skipped validation can crash this process. Framing and buffer-length checks always run.
    #[new]
    #[pyo3(signature = (segment, *, trust_peer=false))]
    fn new(segment: &PySegment, trust_peer: bool) -> PyResult<Self> {
        let consumer = segment.inner.consumer().map_err(|e| e.to_py())?;
        let mut rx = BatchReceiver::new(consumer).map_err(|e| e.to_py())?;
        if trust_peer {
            // SAFETY: the caller asked for it, under the contract documented above and in
            // `BatchReceiver::trust_peer`: the peer writes only valid Arrow data.
            rx = unsafe { rx.trust_peer() };
        }
        Ok(Self { inner: ForkSafe::new(Mutex::new(rx)) })
    }

    /// The next record batch, waiting up to `timeout` seconds (`None`: forever; raises
    /// `Timeout`). Invalid frames raise `Rejected` (counted in `dead_letters`).
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let first = match self.inner.try_lock() {
            Ok(mut rx) => rx.try_recv(),
            Err(_) => py.detach(|| lock(&self.inner).try_recv()),
        };
        let batch = match first {
            Ok(batch) => batch,
            Err(BatchRecvError::Empty) if timeout != Some(0.0) => wait_in_slices(
                py,
                deadline(timeout)?,
                |budget| match lock(&self.inner).recv_timeout(Some(budget)) {
                    Ok(batch) => Slice::Done(batch),
                    Err(BatchRecvError::Timeout) => Slice::Again,
                    Err(e) => Slice::Failed(e),
                },
                || BatchRecvError::Timeout,
            )?,
            Err(e) => return Err(e.to_py()),
        };
        to_pyarrow(py, batch)
    }

    /// Frames rejected since this receiver was made.
    #[getter]
    fn dead_letters(&self) -> u64 {
        lock(&self.inner).dead_letters()
    }
}

/// Hands `batch` to pyarrow through the C Data Interface, without copying its buffers.
fn to_pyarrow(py: Python<'_>, batch: RecordBatch) -> PyResult<Bound<'_, PyAny>> {
    let data = StructArray::from(batch).into_data();
    let (mut array, schema) = to_ffi(&data).map_err(arrow_err)?;
    let exported = Box::new(ExportedRelease {
        release: array.release(),
        private_data: array.private_data(),
        made_here: ForkSafe::new(()),
    });
    // SAFETY: `release_unless_inherited` reads exactly this private data (an
    // `ExportedRelease`) and chains to the callback and private data arrow-rs installed, so the
    // array is released as arrow-rs would (or, in a forked child, deliberately leaked).
    unsafe {
        array.set_private_data(Box::into_raw(exported).cast());
        array.set_release(Some(release_unless_inherited));
    }
    // Boxed so the addresses pyarrow reads stay put; pyarrow moves the array out (leaving it
    // released, so dropping the box does nothing) and copies what it needs of the schema.
    let mut array = Box::new(array);
    let mut schema = Box::new(schema);
    let pa = py.import("pyarrow")?;
    let record_batch = pa
        .getattr("RecordBatch")?
        .call_method1("_import_from_c", (&raw mut *array as usize, &raw mut *schema as usize))?;
    Ok(record_batch)
}

/// The release callback and private data arrow-rs gave an exported batch, kept while
/// `release_unless_inherited` stands in for them.
struct ExportedRelease {
    release: Option<unsafe extern "C" fn(*mut FFI_ArrowArray)>,
    private_data: *mut c_void,
    made_here: ForkSafe<()>,
}

/// Releases an exported batch (and so its lease) as arrow-rs would, except in a forked child
/// of the process that received it: there the batch's record is the parent's (see
/// `ForkSafe`), so the structure is only marked released and the batch leaked.
///
/// # Safety
/// `array` is a structure `to_pyarrow` exported, not yet released (the C Data Interface calls
/// release once).
unsafe extern "C" fn release_unless_inherited(array: *mut FFI_ArrowArray) {
    // SAFETY: per this function's contract `array` is ours, live and unreleased, so its private
    // data is the `ExportedRelease` `to_pyarrow` leaked into it, taken back exactly once here.
    let (array, exported) = unsafe {
        let array = &mut *array;
        let exported = Box::from_raw(array.private_data().cast::<ExportedRelease>());
        (array, exported)
    };
    if exported.made_here.inherited() {
        // SAFETY: a null release marks the structure released; nothing reads the leaked data.
        unsafe { array.set_release(None) };
        return;
    }
    // SAFETY: puts back what arrow-rs exported, then releases through its own callback.
    unsafe {
        array.set_private_data(exported.private_data);
        array.set_release(exported.release);
        if let Some(release) = exported.release {
            release(array);
        }
    }
}

/// Sends `pyarrow.RecordBatch`es into a ring made with `payload_align=64`, one copy from the
/// batch's buffers into shared memory.
///
/// ```python
/// tx = tadpole.BatchSender(seg)
/// tx.send(pyarrow.record_batch({"px": [1, 2, 3]}))
/// ```
#[pyclass(frozen, module = "tadpole", name = "BatchSender")]
pub struct PyBatchSender {
    inner: ForkSafe<Mutex<BatchSender>>,
}

#[pymethods]
impl PyBatchSender {
    /// Attaches as `segment`'s producer; its ring must have `payload_align=64`.
    #[new]
    fn new(segment: &PySegment) -> PyResult<Self> {
        let producer = segment.inner.producer().map_err(|e| e.to_py())?;
        let tx = BatchSender::new(producer).map_err(|e| e.to_py())?;
        Ok(Self { inner: ForkSafe::new(Mutex::new(tx)) })
    }

    /// Writes `batch` (a `pyarrow.RecordBatch`, or anything with `_export_to_c`) into the ring,
    /// waiting for space up to `timeout` seconds; returns how many frames were written (the
    /// schema before the first batch of a stream). The GIL is released while copying.
    #[pyo3(signature = (batch, timeout=None))]
    fn send(&self, py: Python<'_>, batch: &Bound<'_, PyAny>, timeout: Option<f64>) -> PyResult<usize> {
        let batch = from_pyarrow(batch)?;
        let deadline = deadline(timeout)?;
        let result = wait_in_slices(
            py,
            deadline,
            |budget| {
                let mut tx = lock(&self.inner);
                // One frame at a time waits for room: an overall deadline per slice.
                match tx.send_timeout(&batch, Some(budget)) {
                    Ok(n) => Slice::Done(n),
                    Err(BatchSendError::Timeout) => Slice::Again,
                    Err(e) => Slice::Failed(e),
                }
            },
            || BatchSendError::Timeout,
        );
        // The imported buffers are pyarrow's: let it free them with the GIL held.
        drop(batch);
        result
    }

    /// Writes the end-of-stream frame; the next send starts a new stream (schema first).
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| lock(&self.inner).finish()).map_err(|e| e.to_py())
    }
}

/// A pyarrow batch as an arrow-rs one, sharing its buffers (released back to pyarrow on drop).
fn from_pyarrow(batch: &Bound<'_, PyAny>) -> PyResult<RecordBatch> {
    let mut array = Box::new(FFI_ArrowArray::empty());
    let mut schema = Box::new(FFI_ArrowSchema::empty());
    batch.call_method1("_export_to_c", (&raw mut *array as usize, &raw mut *schema as usize))?;
    // Any object may have an `_export_to_c`: one that filled nothing leaves released
    // structures, which must not be imported (arrow-rs asserts on them, a panic).
    if array.is_released() || schema.release().is_none() {
        return Err(errors::Arrow::new_err(
            "the object's _export_to_c exported no Arrow array: send a pyarrow.RecordBatch",
        ));
    }
    // SAFETY: both structures were filled by the exporter (neither is released) per the C Data
    // Interface; `from_ffi` takes the array's ownership, checks it against the schema's type and
    // validates the layout.
    let data = unsafe { from_ffi(*array, &schema) }.map_err(arrow_err)?;
    // A record batch exports as a struct array; anything else would panic in `StructArray::from`.
    if !matches!(data.data_type(), DataType::Struct(_)) {
        return Err(errors::Arrow::new_err(format!(
            "not a record batch: exported a {} array, not a struct array",
            data.data_type()
        )));
    }
    let structs = StructArray::from(data);
    if structs.null_count() > 0 {
        return Err(errors::Arrow::new_err("a record batch cannot have null rows"));
    }
    Ok(RecordBatch::from(structs))
}
