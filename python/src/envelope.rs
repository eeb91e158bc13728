//! Envelopes: sent from keyword arguments or from bytes built with the generated Python
//! FlatBuffers code (verified in Rust before they enter the ring), received verified in Rust
//! and read in place.

use std::ffi::c_int;
use std::sync::Mutex;

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMemoryView};
use schemas::channel::{EnvelopeReceiver, EnvelopeRecvError, OwnedEnvelope};
use schemas::envelope::{EnvelopeEncoder, EnvelopeHeader, MessageId, VerifyOptions, envelope_to_json, verify_envelope};
use schemas::fb;

use crate::errors::{self, ToPyErr};
use crate::raw::{PyProducer, PySegment, SendPtr, fill_view, with_bytes};
use crate::{ForkSafe, Slice, deadline, lock, wait_in_slices};

/// Sends envelopes into a ring.
///
/// ```python
/// tx = tadpole.EnvelopeSender(seg)
/// tx.send(source="risk-1", destination="exec-1", heartbeat={"sequence": 7})
/// tx.send_bytes(builder.Output())            # built with the generated FlatBuffers code
/// ```
#[pyclass(frozen, module = "tadpole", name = "EnvelopeSender")]
pub struct PyEnvelopeSender {
    producer: PyProducer,
    encoder: Mutex<EnvelopeEncoder>,
}

fn parse_id(id: &str) -> PyResult<MessageId> {
    id.parse::<uuid::Uuid>()
        .map(MessageId::from_uuid)
        .map_err(|e| PyValueError::new_err(format!("correlation_id {id:?}: {e}")))
}

/// The fields `EnvelopeSender.send(heartbeat={...})` takes.
const HEARTBEAT_KEYS: [&str; 3] = ["sequence", "interval_ns", "status"];

/// A heartbeat's `status`: a `HealthStatus` name or its number.
fn health_status(value: &Bound<'_, PyAny>) -> PyResult<fb::HealthStatus> {
    if let Ok(name) = value.extract::<String>() {
        return fb::HealthStatus::ENUM_VALUES
            .iter()
            .copied()
            .find(|s| s.variant_name() == Some(name.as_str()))
            .ok_or_else(|| {
                let names: Vec<&str> = fb::HealthStatus::ENUM_VALUES.iter().filter_map(|s| s.variant_name()).collect();
                PyValueError::new_err(format!("heartbeat status {name:?} is none of {}", names.join(", ")))
            });
    }
    let number: i8 = value.extract()?;
    Ok(fb::HealthStatus(number))
}

#[pymethods]
impl PyEnvelopeSender {
    /// Attaches as `segment`'s producer.
    #[new]
    fn new(segment: &PySegment) -> PyResult<Self> {
        let producer = segment.inner.producer().map_err(|e| e.to_py())?;
        Ok(Self { producer: PyProducer::new(producer), encoder: Mutex::new(EnvelopeEncoder::new()) })
    }

    /// Builds an envelope from keyword arguments and sends it, waiting for space up to
    /// `timeout` seconds. The header gets a fresh message id and the current time;
    /// `correlation_id` (a UUID string) marks a reply. The payload: `heartbeat={"sequence": n,
    /// "interval_ns": t, "status": "Healthy"}` (each field optional; `status` is a
    /// `HealthStatus` name, `"Healthy"`, `"Degraded"`, `"Unhealthy"` or `"Unspecified"`, or its
    /// number; any other key raises `ValueError`). Heartbeat is the one event buildable from
    /// keywords so far; build any other with the generated FlatBuffers code and `send_bytes`.
    #[pyo3(signature = (*, source, destination="", heartbeat=None, correlation_id=None, metadata=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        source: &str,
        destination: &str,
        heartbeat: Option<&Bound<'_, PyDict>>,
        correlation_id: Option<&str>,
        metadata: Option<&Bound<'_, PyDict>>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let Some(hb) = heartbeat else {
            return Err(PyValueError::new_err("a payload is needed: heartbeat={...}, or build it and use send_bytes"));
        };
        for key in hb.keys() {
            let key: String = key.extract()?;
            if !HEARTBEAT_KEYS.contains(&key.as_str()) {
                return Err(PyValueError::new_err(format!(
                    "heartbeat has no field {key:?}; its fields are {}",
                    HEARTBEAT_KEYS.join(", ")
                )));
            }
        }
        let field = |name: &str| -> PyResult<u64> { hb.get_item(name)?.map_or(Ok(0), |v| v.extract()) };
        let (sequence, interval_ns) = (field("sequence")?, field("interval_ns")?);
        let status = hb.get_item("status")?.map_or(Ok(fb::HealthStatus::Unspecified), |v| health_status(&v))?;
        let pairs: Vec<(String, String)> = match metadata {
            None => Vec::new(),
            Some(m) => m.iter().map(|(k, v)| Ok((k.extract()?, v.extract()?))).collect::<PyResult<_>>()?,
        };
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut header = EnvelopeHeader::new(source, destination).with_metadata(&borrowed);
        if let Some(id) = correlation_id {
            header.correlation_id = parse_id(id)?;
        }
        // Encoded under the encoder's lock, sent after it: a send may wait without the GIL, and
        // another thread must never hold the GIL while waiting for this lock.
        let bytes = lock(&self.encoder)
            .encode(&header, |fbb| fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence, interval_ns, status }))
            .to_vec();
        let kind = u16::from(fb::Payload::Heartbeat.0);
        self.producer.send_from(py, SendPtr(bytes.as_ptr()), bytes.len(), kind, timeout, true)
    }

    /// Sends a finished, size-prefixed envelope (e.g. `builder.FinishSizePrefixed(env,
    /// file_identifier=b"TDPL")` from the generated Python code) after verifying it in Rust
    /// with the receivers' rules: an invalid one raises `Rejected` and is not sent.
    #[pyo3(signature = (data, timeout=None))]
    fn send_bytes(&self, py: Python<'_>, data: &Bound<'_, PyAny>, timeout: Option<f64>) -> PyResult<()> {
        with_bytes(data, |ptr, len| {
            // SAFETY: `with_bytes` keeps the `len` bytes at `ptr` alive and exported for this call.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.get(), len) };
            let kind = verify_envelope(bytes, &VerifyOptions::default()).map_err(|e| e.to_py())?.payload_type();
            self.producer.send_from(py, ptr, len, u16::from(kind.0), timeout, true)
        })
    }
}

/// Receives envelopes, each verified in Rust before Python sees it.
///
/// ```python
/// rx = tadpole.EnvelopeReceiver(seg)
/// env = rx.recv(timeout=1.0)
/// print(env.source, env.message_type, env.to_dict()["payload"])
/// ```
#[pyclass(frozen, module = "tadpole", name = "EnvelopeReceiver")]
pub struct PyEnvelopeReceiver {
    inner: ForkSafe<Mutex<EnvelopeReceiver>>,
}

fn owned(
    r: Result<schemas::channel::ReceivedEnvelope<'_>, EnvelopeRecvError>,
) -> Result<OwnedEnvelope, EnvelopeRecvError> {
    r?.into_owned()
}

#[pymethods]
impl PyEnvelopeReceiver {
    /// Attaches as `segment`'s consumer.
    #[new]
    fn new(segment: &PySegment) -> PyResult<Self> {
        let consumer = segment.inner.consumer().map_err(|e| e.to_py())?;
        Ok(Self { inner: ForkSafe::new(Mutex::new(EnvelopeReceiver::new(consumer))) })
    }

    /// The next envelope, verified, waiting up to `timeout` seconds (`None`: forever). A record
    /// that is not a valid envelope raises `Rejected` (and is counted in `dead_letters`); the
    /// next call reads on.
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<PyEnvelope> {
        let first = match self.inner.try_lock() {
            Ok(mut rx) => owned(rx.try_recv()),
            Err(_) => py.detach(|| owned(lock(&self.inner).try_recv())),
        };
        let env = match first {
            Ok(env) => env,
            Err(EnvelopeRecvError::Empty) if timeout != Some(0.0) => wait_in_slices(
                py,
                deadline(timeout)?,
                |budget| match owned(lock(&self.inner).recv_timeout(Some(budget))) {
                    Ok(env) => Slice::Done(env),
                    Err(EnvelopeRecvError::Timeout) => Slice::Again,
                    Err(e) => Slice::Failed(e),
                },
                || EnvelopeRecvError::Timeout,
            )?,
            Err(e) => return Err(e.to_py()),
        };
        Ok(PyEnvelope { state: ForkSafe::new(Mutex::new(EnvelopeState { env: Some(env), exports: 0 })) })
    }

    /// Records rejected since this receiver was made.
    #[getter]
    fn dead_letters(&self) -> u64 {
        lock(&self.inner).dead_letters()
    }
}

struct EnvelopeState {
    env: Option<OwnedEnvelope>,
    exports: usize,
}

/// A verified envelope, read in place in shared memory until released. Its bytes are a
/// read-only buffer (`memoryview(env)`: the size-prefixed FlatBuffer, for the generated Python
/// code's `Envelope.GetRootAs(buf, 4)` table view). `release()` gives the record back, and
/// raises `BufferError` while views of it are open.
#[pyclass(frozen, module = "tadpole", name = "Envelope")]
pub struct PyEnvelope {
    state: ForkSafe<Mutex<EnvelopeState>>,
}

impl PyEnvelope {
    fn with<R>(&self, f: impl FnOnce(&OwnedEnvelope) -> R) -> PyResult<R> {
        let state = lock(&self.state);
        let env = state.env.as_ref().ok_or_else(|| errors::TadpoleError::new_err("envelope released"))?;
        Ok(f(env))
    }
}

#[pymethods]
impl PyEnvelope {
    /// The message id (a UUID string).
    #[getter]
    fn message_id(&self) -> PyResult<String> {
        self.with(|e| EnvelopeHeader::from_envelope(&e.envelope()).message_id.to_string())
    }

    /// The id of the request this answers, or its own.
    #[getter]
    fn correlation_id(&self) -> PyResult<String> {
        self.with(|e| EnvelopeHeader::from_envelope(&e.envelope()).correlation_id.to_string())
    }

    /// Unix nanoseconds when it was made.
    #[getter]
    fn timestamp_ns(&self) -> PyResult<u64> {
        self.with(|e| e.envelope().timestamp_ns())
    }

    /// The sender.
    #[getter]
    fn source(&self) -> PyResult<String> {
        self.with(|e| e.envelope().source().unwrap_or("").to_owned())
    }

    /// The destination ("" = broadcast).
    #[getter]
    fn destination(&self) -> PyResult<String> {
        self.with(|e| e.envelope().destination().unwrap_or("").to_owned())
    }

    /// The payload's type name (e.g. "Heartbeat").
    #[getter]
    fn message_type(&self) -> PyResult<String> {
        self.with(|e| {
            let kind = e.message_type();
            kind.variant_name().map_or_else(|| format!("unknown({})", kind.0), str::to_owned)
        })
    }

    /// The whole envelope as a dict (header fields, `metadata`, and `payload` with its fields).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = self.with(|e| envelope_to_json(&e.envelope()).to_string())?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// The payload's fields as a dict.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.to_dict(py)?.get_item("payload")
    }

    /// A read-only view of the envelope's bytes in shared memory.
    fn view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyMemoryView>> {
        PyMemoryView::from(slf.as_any())
    }

    /// Gives the record back to the producer (raises `BufferError` while views are open).
    fn release(&self) -> PyResult<()> {
        let mut state = lock(&self.state);
        if state.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "{} views of the envelope are open: release them first",
                state.exports
            )));
        }
        let env = state.env.take();
        if self.state.inherited() {
            // A forked child's copy: the record is the parent's to give back (see `ForkSafe`).
            std::mem::forget(env);
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, _t: &Bound<'_, PyAny>, _v: &Bound<'_, PyAny>, _tb: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }

    fn __len__(&self) -> PyResult<usize> {
        self.with(|e| e.bytes().len())
    }

    /// # Safety
    /// Called by CPython with a `Py_buffer` to fill (see the buffer protocol).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE != 0 {
            return Err(PyBufferError::new_err("received envelopes are read-only"));
        }
        let mut state = lock(&slf.get().state);
        let Some(env) = state.env.as_ref() else {
            return Err(PyBufferError::new_err("envelope released: its space may already hold another message"));
        };
        let (ptr, len) = (env.bytes().as_ptr().cast_mut(), env.bytes().len());
        state.exports += 1;
        drop(state);
        // SAFETY: the bytes are the envelope's record (held by its lease) or its private copy,
        // both kept by `state.env` while any export is open: `release` refuses then, and the
        // export holds a reference to this object.
        unsafe { fill_view(view, flags, ptr, len, true, slf.into_any()) };
        Ok(())
    }

    /// # Safety
    /// Called by CPython when an export from `__getbuffer__` closes.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut state = lock(&self.state);
        state.exports = state.exports.saturating_sub(1);
    }
}
