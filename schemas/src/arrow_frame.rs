//! Arrow IPC stream framing: one encapsulated IPC message per frame.
//!
//! A frame is exactly one message of the [Arrow IPC streaming format], so
//! concatenating the frames of a stream gives a valid `.arrows` stream:
//!
//! ```text
//!  0            4            8                        8+M                 8+M+B
//!  +------------+------------+------------------------+-------------------+
//!  | 0xFFFFFFFF | M: i32 LE  | Message flatbuffer     | body: B bytes,    |
//!  | continue   | metadata   | (Schema, Dictionary-   | every buffer at a |
//!  | marker     | length     | Batch or RecordBatch), | multiple of 64    |
//!  |            |            | zero-padded so 8+M is  | from body start   |
//!  |            |            | a multiple of 64       |                   |
//!  +------------+------------+------------------------+-------------------+
//!  end of stream: 0xFFFFFFFF 0x00000000 (8 bytes, no body)
//! ```
//!
//! Sequence: a Schema frame first (and again whenever the schema changes,
//! which resets the dictionaries), DictionaryBatch frames before the record
//! batch that first needs them (or a replaced dictionary), then RecordBatch
//! frames.
//!
//! Alignment: if a frame starts at a 64-byte aligned address, every array
//! buffer in it is 64-byte aligned, and the decoder hands out arrays that
//! point straight into the frame. The decoder requires alignment (it never
//! silently copies): a frame at an address that is not a multiple of 8 is
//! rejected, and a buffer not aligned for its type is an Arrow error.
//!
//! This module owns the framing rules. It must never panic on a frame from a
//! peer, and must copy array data exactly once on the way out (into the
//! sink's memory) and zero times on the way in — except dictionaries: the
//! decoder keeps them for the rest of the stream, so it copies each
//! dictionary frame's body once, rather than keep the frame's memory (a ring
//! record) alive.
//!
//! [Arrow IPC streaming format]: https://arrow.apache.org/docs/format/Columnar.html#ipc-streaming-format

use std::collections::HashMap;
use std::convert::Infallible;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::alloc::Allocation;
use arrow_buffer::{Buffer, MutableBuffer};
use arrow_data::UnsafeFlag;
use arrow_ipc::writer::{IpcWriteOptions, StreamEncoder};
use arrow_ipc::{MessageHeader, MetadataVersion};
use arrow_schema::{ArrowError, DataType, SchemaRef};

/// The first four bytes of every frame.
pub const CONTINUATION_MARKER: [u8; 4] = [0xFF; 4];

/// The end-of-stream frame.
pub const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// Alignment the encoder pads metadata and every body buffer to. Place frames
/// at addresses that are multiples of this to keep decoded arrays aligned.
pub const FRAME_ALIGNMENT: usize = 64;

/// Prefix length: continuation marker + metadata length.
const PREFIX_LEN: usize = 8;

// ---------------------------------------------------------------------------
// Sinks

/// Where encoded frames go: typically a ring that hands out reserved shared
/// memory. Each frame is written by one `reserve`, filled completely, then
/// one `commit` of the same length.
pub trait FrameSink {
    /// Error from the destination (e.g. ring full).
    type Error;

    /// Space for one frame of exactly `len` bytes. The encoder overwrites all
    /// of it before calling [`commit`](Self::commit).
    fn reserve(&mut self, len: usize) -> Result<&mut [u8], Self::Error>;

    /// Publishes the frame written into the last reservation.
    fn commit(&mut self, len: usize) -> Result<(), Self::Error>;
}

/// Appends frames to one byte vector: the result is an Arrow IPC stream
/// (readable by `pyarrow.ipc.open_stream`).
impl FrameSink for Vec<u8> {
    type Error = Infallible;

    fn reserve(&mut self, len: usize) -> Result<&mut [u8], Infallible> {
        let start = self.len();
        self.resize(start + len, 0);
        Ok(&mut self[start..])
    }

    fn commit(&mut self, _len: usize) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Collects each frame in its own 64-byte-aligned [`Buffer`], ready for
/// [`ArrowFrameDecoder::decode`]. For tests and in-process use.
#[derive(Debug, Default)]
pub struct FrameBuffers {
    /// Committed frames, in order.
    pub frames: Vec<Buffer>,
    pending: Option<MutableBuffer>,
}

impl FrameSink for FrameBuffers {
    type Error = Infallible;

    fn reserve(&mut self, len: usize) -> Result<&mut [u8], Infallible> {
        Ok(self.pending.insert(MutableBuffer::from_len_zeroed(len)).as_slice_mut())
    }

    fn commit(&mut self, len: usize) -> Result<(), Infallible> {
        if let Some(mut frame) = self.pending.take() {
            frame.truncate(len);
            self.frames.push(frame.into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Encoding

/// Errors from [`ArrowFrameEncoder`].
#[derive(Debug, thiserror::Error)]
pub enum FrameEncodeError<E> {
    /// Arrow could not encode the batch (e.g. unsupported type).
    #[error("arrow IPC encoding failed: {0}")]
    Arrow(#[from] ArrowError),
    /// The sink refused a reservation or commit.
    #[error("frame sink failed")]
    Sink(E),
}

/// Turns record batches into frames written into a [`FrameSink`].
///
/// Uses arrow's [`StreamEncoder`], whose record-batch output references the
/// batch's own buffers; the only copy of array data is into the sink.
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Int64Array, RecordBatch};
/// use schemas::arrow_frame::{ArrowFrameDecoder, ArrowFrameEncoder, DecodedFrame, FrameBuffers};
///
/// let batch = RecordBatch::try_from_iter([("px_e8", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)]).unwrap();
/// let mut enc = ArrowFrameEncoder::new();
/// let mut sink = FrameBuffers::default();
/// assert_eq!(enc.encode(&batch, &mut sink).unwrap(), 2); // schema + batch
/// assert_eq!(enc.encode(&batch, &mut sink).unwrap(), 1); // batch only
///
/// let mut dec = ArrowFrameDecoder::new();
/// assert!(matches!(dec.decode(&sink.frames[0]).unwrap(), DecodedFrame::Schema(_)));
/// let DecodedFrame::RecordBatch(got) = dec.decode(&sink.frames[1]).unwrap() else { panic!() };
/// assert_eq!(got, batch);
/// ```
pub struct ArrowFrameEncoder {
    options: IpcWriteOptions,
    stream: Option<(SchemaRef, StreamEncoder)>,
    metadata: Vec<u8>,
}

impl Default for ArrowFrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ArrowFrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrowFrameEncoder")
            .field("schema", &self.stream.as_ref().map(|(s, _)| s))
            .finish_non_exhaustive()
    }
}

impl ArrowFrameEncoder {
    /// An encoder writing metadata version V5 with 64-byte alignment,
    /// uncompressed.
    pub fn new() -> Self {
        let options = IpcWriteOptions::try_new(FRAME_ALIGNMENT, false, MetadataVersion::V5)
            .expect("64-byte alignment with V5 is a valid IPC option set");
        Self { options, stream: None, metadata: Vec::new() }
    }

    /// Writes the frames for `batch` into `sink` and returns how many: a
    /// schema frame on the first call and whenever the batch's schema differs
    /// from the previous one, dictionary frames for new or replaced
    /// dictionaries, then the record batch frame.
    pub fn encode<S: FrameSink>(
        &mut self,
        batch: &RecordBatch,
        sink: &mut S,
    ) -> Result<usize, FrameEncodeError<S::Error>> {
        let schema = batch.schema_ref();
        let same_schema = self.stream.as_ref().is_some_and(|(s, _)| Arc::ptr_eq(s, schema) || s == schema);
        if !same_schema {
            let encoder = StreamEncoder::try_new_with_options(schema, self.options.clone())?;
            self.stream = Some((Arc::clone(schema), encoder));
        }
        let (_, encoder) = self.stream.as_mut().expect("stream was just set");
        let pieces = encoder.encode(batch)?;
        split_into_frames(&pieces, &mut self.metadata, sink)
    }

    /// Writes the end-of-stream frame. The next `encode` starts a new stream
    /// (schema frame first).
    pub fn finish<S: FrameSink>(&mut self, sink: &mut S) -> Result<(), FrameEncodeError<S::Error>> {
        self.stream = None;
        let dst = sink.reserve(END_OF_STREAM.len()).map_err(FrameEncodeError::Sink)?;
        dst.copy_from_slice(&END_OF_STREAM);
        sink.commit(END_OF_STREAM.len()).map_err(FrameEncodeError::Sink)
    }
}

/// Reads `StreamEncoder`'s output (a list of buffers whose concatenation is a
/// stream fragment) as a byte stream without concatenating it.
struct Pieces<'a> {
    pieces: &'a [Buffer],
    index: usize,
    offset: usize,
}

impl Pieces<'_> {
    fn is_empty(&self) -> bool {
        self.pieces[self.index..].iter().map(Buffer::len).sum::<usize>() == self.offset
    }

    /// Fills `dst` completely; false if the pieces run out first.
    fn read_exact(&mut self, mut dst: &mut [u8]) -> bool {
        while !dst.is_empty() {
            let Some(piece) = self.pieces.get(self.index) else {
                return false;
            };
            let available = &piece.as_slice()[self.offset..];
            let n = available.len().min(dst.len());
            dst[..n].copy_from_slice(&available[..n]);
            dst = &mut dst[n..];
            self.offset += n;
            if self.offset == piece.len() {
                self.index += 1;
                self.offset = 0;
            }
        }
        true
    }
}

fn split_into_frames<S: FrameSink>(
    pieces: &[Buffer],
    metadata: &mut Vec<u8>,
    sink: &mut S,
) -> Result<usize, FrameEncodeError<S::Error>> {
    let malformed =
        |what: &str| FrameEncodeError::Arrow(ArrowError::IpcError(format!("unexpected StreamEncoder output: {what}")));
    let mut input = Pieces { pieces, index: 0, offset: 0 };
    let mut frames = 0;
    while !input.is_empty() {
        let mut prefix = [0u8; PREFIX_LEN];
        if !input.read_exact(&mut prefix) || prefix[..4] != CONTINUATION_MARKER {
            return Err(malformed("missing continuation marker"));
        }
        let meta_len = usize::try_from(i32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]))
            .map_err(|_| malformed("negative metadata length"))?;
        metadata.resize(meta_len, 0);
        if !input.read_exact(metadata) {
            return Err(malformed("truncated metadata"));
        }
        let body_len = arrow_ipc::root_as_message(metadata)
            .map_err(|e| malformed(&e.to_string()))
            .and_then(|m| usize::try_from(m.bodyLength()).map_err(|_| malformed("negative body length")))?;

        let frame_len = PREFIX_LEN + meta_len + body_len;
        let dst = sink.reserve(frame_len).map_err(FrameEncodeError::Sink)?;
        dst[..PREFIX_LEN].copy_from_slice(&prefix);
        dst[PREFIX_LEN..PREFIX_LEN + meta_len].copy_from_slice(metadata);
        if !input.read_exact(&mut dst[PREFIX_LEN + meta_len..]) {
            return Err(malformed("truncated body"));
        }
        sink.commit(frame_len).map_err(FrameEncodeError::Sink)?;
        frames += 1;
    }
    Ok(frames)
}

// ---------------------------------------------------------------------------
// Decoding

/// What one frame contained.
#[derive(Debug, Clone)]
pub enum DecodedFrame {
    /// A (new) schema; dictionaries were reset.
    Schema(SchemaRef),
    /// A dictionary was stored (replaced, or extended if `is_delta`) for the
    /// record batches that follow.
    Dictionary {
        /// Dictionary id from the schema.
        id: i64,
        /// Appended to the existing dictionary instead of replacing it.
        is_delta: bool,
    },
    /// A record batch whose buffers point into the frame.
    RecordBatch(RecordBatch),
    /// The end-of-stream marker. A later Schema frame starts a new stream.
    EndOfStream,
}

/// Why a frame was rejected. A rejected frame leaves the decoder's state
/// (schema, dictionaries) unchanged.
#[derive(Debug, thiserror::Error)]
pub enum FrameDecodeError {
    /// Shorter than the 8-byte prefix.
    #[error("frame truncated: {len} bytes, an IPC frame needs at least 8")]
    Truncated {
        /// Frame length.
        len: usize,
    },
    /// The first four bytes are not `0xFFFFFFFF` (pre-0.15 framing is not accepted).
    #[error("frame starts with {found:02x?} instead of the continuation marker")]
    MissingContinuation {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The metadata length is negative or runs past the frame.
    #[error("metadata length {claimed} does not fit the {available} bytes after the prefix")]
    MetadataLength {
        /// The claimed length.
        claimed: i32,
        /// Bytes after the prefix.
        available: usize,
    },
    /// The frame does not start at an 8-byte aligned address, or its body
    /// does not start at a multiple of 8 within it.
    #[error("misaligned frame: {0}")]
    Misaligned(&'static str),
    /// The metadata is not a valid IPC `Message` flatbuffer.
    #[error("invalid IPC message flatbuffer: {0}")]
    InvalidMessage(#[from] flatbuffers::InvalidFlatbuffer),
    /// The declared body length is not exactly what follows the metadata.
    #[error("declared body length {declared} but {available} bytes follow the metadata")]
    BodyLength {
        /// `Message.bodyLength`.
        declared: i64,
        /// Bytes after the metadata.
        available: usize,
    },
    /// The message describes data outside its body, or negative counts.
    #[error("message layout out of bounds: {0}")]
    OutOfBounds(String),
    /// Metadata version older than V4.
    #[error("unsupported IPC metadata version {0:?}")]
    UnsupportedVersion(MetadataVersion),
    /// Tensor, sparse tensor or empty messages.
    #[error("unsupported IPC message type {0:?}")]
    UnsupportedMessage(MessageHeader),
    /// Compressed bodies would be decompressed into new memory; not accepted.
    #[error("compressed record batches are not supported")]
    Compressed,
    /// A dictionary or record batch frame arrived before any schema frame.
    #[error("{0} frame before any schema frame")]
    MissingSchema(&'static str),
    /// Arrow rejected the data (validation, alignment, type mismatch).
    #[error("arrow IPC decoding failed: {0}")]
    Arrow(#[from] ArrowError),
    /// arrow-ipc/arrow-data panicked on the frame instead of returning an
    /// error (arrow 60.1 asserts, e.g., that an offsets buffer's length is a
    /// multiple of the offset width). Caught so a hostile frame cannot take
    /// the process down; requires `panic = "unwind"`.
    #[error("arrow panicked decoding the frame: {0}")]
    ArrowPanicked(String),
}

/// Runs arrow's decoding, turning a panic inside it into an error. The
/// decoder state is only updated after arrow returns, so a caught panic leaves
/// it unchanged.
fn contain_panic<T>(f: impl FnOnce() -> Result<T, ArrowError>) -> Result<T, FrameDecodeError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => Ok(result?),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            Err(FrameDecodeError::ArrowPanicked(msg))
        }
    }
}

/// Decodes frames produced by [`ArrowFrameEncoder`] (or any Arrow IPC stream
/// writer, one message per frame), keeping schema and dictionaries across
/// frames. Never copies array data: decoded arrays share the frame's memory.
///
/// Its own framing parser is used instead of arrow's `StreamDecoder`
/// because (arrow-ipc 60.1) that one does not apply `skip_validation` to
/// record batches.
#[derive(Debug, Default)]
pub struct ArrowFrameDecoder {
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
    skip_validation: UnsafeFlag,
}

impl ArrowFrameDecoder {
    /// A decoder that validates all array data.
    pub fn new() -> Self {
        Self::default()
    }

    /// Skips validation of array data (offsets, UTF-8, null counts) for
    /// trusted peers. The framing and layout bounds checks still run, and so
    /// do the checks that cost nothing per row: each buffer is long enough
    /// for its array's length (fixed-width values, validity bitmaps, offset
    /// buffers) and each column has the batch's row count.
    ///
    /// # Safety
    ///
    /// Every frame decoded afterwards must hold valid Arrow data (e.g. written
    /// by [`ArrowFrameEncoder`] in a trusted process). Invalid data that
    /// skips validation causes undefined behaviour when the arrays are read.
    pub unsafe fn with_skip_validation(mut self, skip_validation: bool) -> Self {
        // SAFETY: the caller upholds this function's contract, which is the
        // contract of `UnsafeFlag::set`: only trusted, valid data is decoded.
        unsafe { self.skip_validation.set(skip_validation) };
        self
    }

    /// The current stream's schema, once a schema frame has been decoded.
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// Decodes one frame. The frame must be exactly one message (see the
    /// module docs) and start at an address that is a multiple of 8.
    pub fn decode(&mut self, frame: &Buffer) -> Result<DecodedFrame, FrameDecodeError> {
        let bytes = frame.as_slice();
        let Some(prefix) = bytes.first_chunk::<PREFIX_LEN>() else {
            return Err(FrameDecodeError::Truncated { len: bytes.len() });
        };
        let found = [prefix[0], prefix[1], prefix[2], prefix[3]];
        if found != CONTINUATION_MARKER {
            return Err(FrameDecodeError::MissingContinuation { found });
        }
        let claimed = i32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        let available = bytes.len() - PREFIX_LEN;
        let meta_len = usize::try_from(claimed)
            .ok()
            .filter(|&m| m <= available)
            .ok_or(FrameDecodeError::MetadataLength { claimed, available })?;
        if meta_len == 0 {
            return Ok(DecodedFrame::EndOfStream);
        }
        if frame.as_ptr().align_offset(8) != 0 {
            return Err(FrameDecodeError::Misaligned("frame address is not a multiple of 8"));
        }
        if (PREFIX_LEN + meta_len) % 8 != 0 {
            return Err(FrameDecodeError::Misaligned("body offset is not a multiple of 8"));
        }

        let message = arrow_ipc::root_as_message(&bytes[PREFIX_LEN..PREFIX_LEN + meta_len])?;
        let body_start = PREFIX_LEN + meta_len;
        let body_available = bytes.len() - body_start;
        let declared = message.bodyLength();
        if usize::try_from(declared).ok() != Some(body_available) {
            return Err(FrameDecodeError::BodyLength { declared, available: body_available });
        }
        let version = message.version();
        if version < MetadataVersion::V4 || version > MetadataVersion::V5 {
            return Err(FrameDecodeError::UnsupportedVersion(version));
        }
        let body = frame.slice_with_length(body_start, body_available);

        match message.header_type() {
            MessageHeader::Schema => {
                let ipc_schema = message
                    .header_as_schema()
                    .ok_or_else(|| FrameDecodeError::OutOfBounds("schema header missing".into()))?;
                let schema = Arc::new(arrow_ipc::convert::try_fb_to_schema(ipc_schema)?);
                self.dictionaries.clear();
                self.schema = Some(Arc::clone(&schema));
                Ok(DecodedFrame::Schema(schema))
            }
            MessageHeader::DictionaryBatch => {
                let dictionary = message
                    .header_as_dictionary_batch()
                    .ok_or_else(|| FrameDecodeError::OutOfBounds("dictionary header missing".into()))?;
                let schema = self.schema.as_deref().ok_or(FrameDecodeError::MissingSchema("dictionary"))?;
                let data = dictionary
                    .data()
                    .ok_or_else(|| FrameDecodeError::OutOfBounds("dictionary batch without data".into()))?;
                check_batch_layout(&data, body_available)?;
                let (id, is_delta) = (dictionary.id(), dictionary.isDelta());
                // The decoder keeps dictionaries for the rest of the stream, so
                // they must not borrow the frame (a ring record would stay
                // pinned, and every record after it): decided here, from the
                // message just parsed, whatever the frame's sender claims.
                // Arrow allocations are 64-byte aligned, like ring payloads.
                let body = Buffer::from_slice_ref(body.as_slice());
                let skip_validation = self.skip_validation.clone();
                let previous = self.dictionaries.get(&id).cloned();
                let dictionaries = &mut self.dictionaries;
                contain_panic(|| {
                    arrow_ipc::reader::read_dictionary_impl(
                        &body,
                        dictionary,
                        schema,
                        dictionaries,
                        &version,
                        true,
                        skip_validation,
                    )
                })?;
                if self.skip_validation.get() {
                    let checked = self.dictionaries.get(&id).map_or(Ok(()), |values| values.to_data().validate());
                    if let Err(e) = checked {
                        // Leave the decoder as it was before this frame.
                        match previous {
                            Some(values) => self.dictionaries.insert(id, values),
                            None => self.dictionaries.remove(&id),
                        };
                        return Err(e.into());
                    }
                }
                Ok(DecodedFrame::Dictionary { id, is_delta })
            }
            MessageHeader::RecordBatch => {
                let batch = message
                    .header_as_record_batch()
                    .ok_or_else(|| FrameDecodeError::OutOfBounds("record batch header missing".into()))?;
                let schema = self.schema.clone().ok_or(FrameDecodeError::MissingSchema("record batch"))?;
                check_batch_layout(&batch, body_available)?;
                let lengths_checked = check_buffer_lengths(&schema, &batch)?;
                let batch = contain_panic(|| {
                    arrow_ipc::reader::RecordBatchDecoder::try_new(&body, batch, schema, &self.dictionaries, &version)?
                        .with_require_alignment(true)
                        .with_skip_validation(self.skip_validation.clone())
                        .read_record_batch()
                })?;
                if self.skip_validation.get() {
                    check_buffer_sizes(&batch, !lengths_checked)?;
                }
                Ok(DecodedFrame::RecordBatch(batch))
            }
            other => Err(FrameDecodeError::UnsupportedMessage(other)),
        }
    }
}

/// Checks, before arrow slices anything, that every buffer whose length
/// follows from its field node's length (validity bitmaps, fixed-width values,
/// dictionary keys, offsets) is at least that long. Arrow's validation checks
/// this too, but only when it runs (not under `skip_validation`) and only
/// after arrow-ipc 60.1 has sliced the buffers (which panics when short).
/// Fields of a layout not mapped here (views, unions, run-end encoded) end
/// the check: `Ok(false)`, and [`check_buffer_sizes`] covers the batch after
/// decoding instead.
fn check_buffer_lengths(
    schema: &arrow_schema::Schema,
    batch: &arrow_ipc::RecordBatch<'_>,
) -> Result<bool, FrameDecodeError> {
    let (Some(nodes), Some(buffers)) = (batch.nodes(), batch.buffers()) else {
        return Ok(false); // arrow reports the missing vectors
    };
    let mut layout = LayoutCheck { nodes: nodes.iter().enumerate(), buffers: buffers.iter().enumerate() };
    for field in schema.fields() {
        if !layout.field(field.data_type(), 0)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The field nodes and buffers of a record batch, consumed in IPC order.
struct LayoutCheck<N, B> {
    nodes: N,
    buffers: B,
}

/// Nesting beyond this ends the check (the schema, a peer's too, may nest
/// arbitrarily deep; recursion must not follow it).
const MAX_CHECKED_NESTING: usize = 64;

impl<'a, N, B> LayoutCheck<N, B>
where
    N: Iterator<Item = (usize, &'a arrow_ipc::FieldNode)>,
    B: Iterator<Item = (usize, &'a arrow_ipc::Buffer)>,
{
    /// Checks the node and buffers of one field of type `data_type` and its
    /// children; `Ok(false)` if the check cannot go on (layout not mapped,
    /// too deep, or nodes/buffers missing: arrow reports those).
    fn field(&mut self, data_type: &DataType, nesting: usize) -> Result<bool, FrameDecodeError> {
        use DataType::*;
        if nesting > MAX_CHECKED_NESTING
            || matches!(
                data_type,
                Union(..) | RunEndEncoded(..) | Utf8View | BinaryView | ListView(_) | LargeListView(_)
            )
        {
            return Ok(false);
        }
        let Some((node_index, node)) = self.nodes.next() else { return Ok(false) };
        if matches!(data_type, Null) {
            return Ok(true); // no buffers
        }
        // Non-negative: `check_batch_layout` ran first.
        let len = usize::try_from(node.length()).unwrap_or(usize::MAX);
        let mut need = |bytes: Option<usize>, what: &str| -> Result<bool, FrameDecodeError> {
            let Some((index, buffer)) = self.buffers.next() else { return Ok(false) };
            let have = usize::try_from(buffer.length()).unwrap_or(0);
            match bytes {
                Some(need) if have >= need => Ok(true),
                _ => Err(FrameDecodeError::OutOfBounds(format!(
                    "field node {node_index} ({data_type}, length {len}): {what} buffer {index} has {have} bytes, \
                     needs {}",
                    bytes.map_or_else(|| "more than fit in memory".to_owned(), |n| n.to_string())
                ))),
            }
        };
        let bitmap = Some(len.div_ceil(8));
        let offsets = |width: usize| if len == 0 { Some(0) } else { len.checked_add(1)?.checked_mul(width) };
        let validity = if node.null_count() > 0 { bitmap } else { Some(0) };
        if !need(validity, "validity")? {
            return Ok(false);
        }
        let more = match data_type {
            Boolean => need(bitmap, "values")?,
            FixedSizeBinary(width) => need(usize::try_from(*width).ok().and_then(|w| len.checked_mul(w)), "values")?,
            Utf8 | Binary => need(offsets(4), "offsets")? && need(Some(0), "values")?,
            LargeUtf8 | LargeBinary => need(offsets(8), "offsets")? && need(Some(0), "values")?,
            List(child) | Map(child, _) => {
                need(offsets(4), "offsets")? && self.field(child.data_type(), nesting + 1)?
            }
            LargeList(child) => need(offsets(8), "offsets")? && self.field(child.data_type(), nesting + 1)?,
            FixedSizeList(child, _) => self.field(child.data_type(), nesting + 1)?,
            Struct(children) => {
                for child in children {
                    if !self.field(child.data_type(), nesting + 1)? {
                        return Ok(false);
                    }
                }
                true
            }
            Dictionary(key, _) => need(key.primitive_width().and_then(|w| len.checked_mul(w)), "keys")?,
            other => match other.primitive_width() {
                Some(width) => need(len.checked_mul(width), "values")?,
                None => false,
            },
        };
        Ok(more)
    }
}

/// The checks skipping validation must not skip: every column has the batch's
/// row count, and (if `validate_layout`: [`check_buffer_lengths`] could not
/// check every field) every buffer of every array, children included, is
/// long enough for the array's length (`ArrayData::validate`: it does not
/// look at values, but clones each column's `ArrayData`). arrow-ipc 60.1
/// skips them under `skip_validation`, and an accessor reading past a short
/// buffer is undefined behaviour.
fn check_buffer_sizes(batch: &RecordBatch, validate_layout: bool) -> Result<(), ArrowError> {
    for (i, column) in batch.columns().iter().enumerate() {
        if column.len() != batch.num_rows() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "column {i} has {} rows, the batch {}",
                column.len(),
                batch.num_rows()
            )));
        }
        if validate_layout {
            column.to_data().validate()?;
        }
    }
    Ok(())
}

/// Bounds checks that arrow-ipc 60.1 does not do before slicing (it panics
/// on a buffer outside the body) or before sizing allocations from counts.
fn check_batch_layout(batch: &arrow_ipc::RecordBatch<'_>, body_len: usize) -> Result<(), FrameDecodeError> {
    let oob = |what: String| Err(FrameDecodeError::OutOfBounds(what));
    if batch.compression().is_some() {
        return Err(FrameDecodeError::Compressed);
    }
    if batch.length() < 0 {
        return oob(format!("negative row count {}", batch.length()));
    }
    for (i, b) in batch.buffers().into_iter().flatten().enumerate() {
        let end =
            usize::try_from(b.offset()).ok().zip(usize::try_from(b.length()).ok()).and_then(|(o, l)| o.checked_add(l));
        if end.is_none_or(|end| end > body_len) {
            return oob(format!(
                "buffer {i} (offset {}, length {}) outside the {body_len}-byte body",
                b.offset(),
                b.length()
            ));
        }
        // The format requires 8-byte aligned buffers. arrow-data 60.1 panics
        // (instead of erroring) when validating a misaligned offsets buffer.
        if b.offset() % 8 != 0 {
            return Err(FrameDecodeError::Misaligned("buffer offset in body is not a multiple of 8"));
        }
    }
    for (i, n) in batch.nodes().into_iter().flatten().enumerate() {
        if n.length() < 0 || n.null_count() < 0 || n.null_count() > n.length() {
            return oob(format!("field node {i}: length {}, null count {}", n.length(), n.null_count()));
        }
    }
    if batch.variadicBufferCounts().is_some_and(|c| c.iter().any(|c| c < 0)) {
        return oob("negative variadic buffer count".into());
    }
    Ok(())
}

/// Wraps memory owned by someone else (e.g. a ring slot in shared memory) as
/// an Arrow [`Buffer`] without copying. The memory is released by dropping
/// `owner`, which happens when the last `Buffer` (or array sliced from it)
/// referring to it is dropped.
///
/// # Safety
///
/// * `ptr` must be valid for reads of `len` bytes for as long as `owner` is
///   alive;
/// * those bytes must not be written by anyone until `owner` is dropped (for
///   a ring: the slot may be reused only after the owner's `Drop` runs).
///
/// ```
/// use std::ptr::NonNull;
/// use std::sync::Arc;
/// use schemas::arrow_frame::buffer_from_owner;
///
/// let owner: Arc<Vec<u8>> = Arc::new(vec![1, 2, 3]);
/// let ptr = NonNull::new(owner.as_ptr().cast_mut()).unwrap();
/// // SAFETY: the Vec lives inside `owner` and is never mutated.
/// let buf = unsafe { buffer_from_owner(ptr, 3, owner.clone()) };
/// assert_eq!(buf.as_slice(), &[1, 2, 3]);
/// ```
pub unsafe fn buffer_from_owner(ptr: NonNull<u8>, len: usize, owner: Arc<dyn Allocation>) -> Buffer {
    // SAFETY: the caller guarantees `ptr..ptr+len` stays valid and unchanged
    // while `owner` lives; the Buffer keeps `owner` alive.
    unsafe { Buffer::from_custom_allocation(ptr, len, owner) }
}

#[cfg(test)]
mod tests;
