//! The Arrow channel: record batches through a ring whose payloads start on
//! 64-byte boundaries, one copy in and none out.
//!
//! Every frame of the Arrow IPC stream (see [`crate::arrow_frame`]) is one
//! ring record:
//!
//! ```text
//!  send(batch #1)                          send(batch #2, same schema)
//!  +--------+------------+--------------+  +--------------+
//!  | Schema | Dictionary | RecordBatch  |  | RecordBatch  |  ...
//!  | frame  | frame(s)   | frame        |  | frame        |
//!  +--------+------------+--------------+  +--------------+
//!  each a ring record, payload 64-byte aligned, array buffers 64-byte aligned
//! ```
//!
//! The receiver turns each record into an [`ipc_core::Lease`] and wraps it
//! as an Arrow [`Buffer`](arrow_buffer::Buffer) whose owner is the lease, so decoded arrays point
//! into shared memory and the record's space goes back to the producer only
//! when the last array (clone or slice) referring to it drops.
//!
//! # Size limit
//!
//! One frame must fit in one ring record: a record batch frame is about
//! `8 + metadata (a few hundred bytes per column) + every buffer rounded up
//! to 64 bytes`, and must not exceed the ring's `max_message_len` (at most
//! `capacity / 2 - 128`). A larger frame fails with
//! [`BatchSendError::TooLarge`]: split the batch (`RecordBatch::slice`) or
//! make a bigger ring.
//!
//! Each record's message type is the frame's `arrow_ipc::MessageHeader`
//! (1 schema, 2 dictionary, 3 record batch; 0 for end of stream), so a
//! consumer can tell frames apart without parsing them. The receiver does
//! not rely on it.
//!
//! # Release order and backpressure
//!
//! The ring releases space strictly in order. A batch held by the receiver
//! keeps its record, *and every record after it*, from being reused: the
//! producer sees a fuller ring (backpressure, never corruption) until the
//! batch drops. A receiver may hold at most 4096 records at once (held
//! batches and records queued behind them); beyond that receiving fails with
//! [`BatchRecvError::LeasesExhausted`] until some are dropped. Never hold
//! batches while waiting for the producer to send more than the ring can
//! take: it would wait for space that only your drop can free.
//!
//! Dictionary frames are the one exception to zero copy: the decoder copies
//! each dictionary's body into its own memory. It keeps dictionary values
//! for the rest of the stream, and a dictionary left in the ring would pin
//! its record and, in-order release, everything after it: the ring would
//! fill up and stall once one capacity of batches had passed. The decision is
//! made from the IPC message the decoder parsed, not from the record's
//! message type (a peer's claim, which another writer may set to anything).
//! A dictionary is normally sent once per stream, so the copy is rare; the
//! dictionary *keys* of every batch stay in shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_ipc::MessageHeader;
use arrow_schema::{ArrowError, SchemaRef};
use ipc_core::{Consumer, CorruptReason, PayloadAlign, Producer, SegmentFault, WriteGrant};

use super::{Wait, lease_capacity};
use crate::arrow_frame::{
    ArrowFrameDecoder, ArrowFrameEncoder, DecodedFrame, FrameDecodeError, FrameEncodeError, FrameSink,
    buffer_from_owner,
};

/// Why a batch channel could not be made over a ring.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchChannelError {
    /// The ring was not built with [`PayloadAlign::SixtyFour`], so frames
    /// (and the arrays decoded from them) would not be 64-byte aligned.
    #[error("the ring's payload alignment is {0:?}; Arrow channels need PayloadAlign::SixtyFour")]
    NotSixtyFourAligned(PayloadAlign),
}

fn check_alignment(align: PayloadAlign) -> Result<(), BatchChannelError> {
    match align {
        PayloadAlign::SixtyFour => Ok(()),
        other => Err(BatchChannelError::NotSixtyFourAligned(other)),
    }
}

// ---------------------------------------------------------------------------
// Sending

/// Why a batch was not (completely) sent.
///
/// After any error the sender starts a fresh stream: the next send writes the
/// schema and dictionaries again, so frames of a half-sent batch (a schema or
/// dictionary the receiver already got) never leave the two sides disagreeing.
#[derive(Debug, thiserror::Error)]
pub enum BatchSendError {
    /// The ring had no room for a frame now (`try_send` only).
    #[error("ring full")]
    Full,
    /// No room for a frame before the timeout passed.
    #[error("timed out waiting for ring space")]
    Timeout,
    /// A frame is larger than the ring's maximum message length (see the
    /// module docs' size limit).
    #[error("Arrow IPC frame of {len} bytes exceeds the ring's maximum message length of {max}")]
    TooLarge {
        /// Frame length.
        len: usize,
        /// The ring's maximum message length.
        max: usize,
    },
    /// No consumer is attached: it detached, or its process is gone.
    #[error("consumer disconnected")]
    Disconnected,
    /// The ring's positions are impossible: the segment is corrupt or hostile.
    #[error("ring corrupt: {0}")]
    Corrupt(SegmentFault),
    /// Arrow could not encode the batch.
    #[error("arrow IPC encoding failed: {0}")]
    Arrow(#[from] ArrowError),
}

ring_errors_into!(send: BatchSendError);

impl From<FrameEncodeError<BatchSendError>> for BatchSendError {
    fn from(e: FrameEncodeError<BatchSendError>) -> Self {
        match e {
            FrameEncodeError::Arrow(e) => Self::Arrow(e),
            FrameEncodeError::Sink(e) => e,
        }
    }
}

/// Sends record batches into a ring as Arrow IPC frames, one ring record per
/// frame, each copied once from the batch's buffers into shared memory.
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Int64Array, RecordBatch, StringArray};
/// use ipc_core::{PayloadAlign, RingBuilder};
/// use schemas::channel::{BatchReceiver, BatchSender};
///
/// let ring = RingBuilder::new(1 << 20).payload_align(PayloadAlign::SixtyFour).create_anonymous()?;
/// let mut tx = BatchSender::new(ring.producer()?)?;
/// let mut rx = BatchReceiver::new(ring.consumer()?)?;
///
/// let batch = RecordBatch::try_from_iter([
///     ("px_e8", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
///     ("venue", Arc::new(StringArray::from(vec!["X", "Y", "Z"])) as _),
/// ])?;
/// assert_eq!(tx.try_send(&batch)?, 2); // schema frame + batch frame
/// let got = rx.try_recv()?;           // arrays point into the ring
/// assert_eq!(got, batch);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BatchSender {
    producer: Producer,
    encoder: ArrowFrameEncoder,
}

impl fmt::Debug for BatchSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSender").field("segment", self.producer.segment()).field("encoder", &self.encoder).finish()
    }
}

impl BatchSender {
    /// A sender over `producer`, whose ring must have been built with
    /// [`PayloadAlign::SixtyFour`].
    pub fn new(producer: Producer) -> Result<Self, BatchChannelError> {
        check_alignment(producer.segment().payload_align())?;
        Ok(Self { producer, encoder: ArrowFrameEncoder::new() })
    }

    /// Largest frame the ring accepts (see the module docs' size limit).
    pub fn max_frame_len(&self) -> usize {
        self.producer.max_message_len()
    }

    /// Writes the frames for `batch` without waiting and returns how many
    /// (schema and dictionary frames when needed, then the batch frame).
    /// On [`BatchSendError::Full`] the batch was not (completely) sent.
    pub fn try_send(&mut self, batch: &RecordBatch) -> Result<usize, BatchSendError> {
        self.send_with(batch, Wait::No)
    }

    /// Like [`try_send`](Self::try_send), waiting for ring space for each frame.
    pub fn send(&mut self, batch: &RecordBatch) -> Result<usize, BatchSendError> {
        self.send_with(batch, Wait::Until(None))
    }

    /// Like [`send`](Self::send), giving up after `timeout` overall with
    /// [`BatchSendError::Timeout`] (`None` waits forever).
    pub fn send_timeout(&mut self, batch: &RecordBatch, timeout: Option<Duration>) -> Result<usize, BatchSendError> {
        self.send_with(batch, Wait::timeout(timeout))
    }

    /// Writes the end-of-stream frame; the next send starts a new stream
    /// (schema frame first).
    pub fn finish(&mut self) -> Result<(), BatchSendError> {
        let mut sink = RingSink::new(&mut self.producer, Wait::Until(None));
        self.encoder.finish(&mut sink).map_err(BatchSendError::from)
    }

    fn send_with(&mut self, batch: &RecordBatch, wait: Wait) -> Result<usize, BatchSendError> {
        let mut sink = RingSink::new(&mut self.producer, wait);
        let result = self.encoder.encode(batch, &mut sink);
        result.map_err(|e| {
            // The encoder already counts this batch's schema and dictionaries
            // as sent: start over so the next send repeats them.
            self.encoder = ArrowFrameEncoder::new();
            BatchSendError::from(e)
        })
    }

    /// The producer inside.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Gives the producer back.
    pub fn into_producer(self) -> Producer {
        self.producer
    }
}

/// Hands out ring reservations as [`FrameSink`] space: `reserve` takes a
/// [`WriteGrant`], `commit` publishes it.
///
/// A grant borrows the producer mutably, and the sink must keep it between
/// `reserve` and `commit` while the encoder holds the sink, so the sink keeps
/// the producer as a pointer and re-borrows it for one grant at a time.
struct RingSink<'p> {
    producer: NonNull<Producer>,
    /// The reservation being filled; the only live borrow of `*producer`.
    grant: Option<WriteGrant<'p>>,
    wait: Wait,
    _producer: PhantomData<&'p mut Producer>,
}

impl<'p> RingSink<'p> {
    fn new(producer: &'p mut Producer, wait: Wait) -> Self {
        Self { producer: NonNull::from(producer), grant: None, wait, _producer: PhantomData }
    }
}

impl FrameSink for RingSink<'_> {
    type Error = BatchSendError;

    fn reserve(&mut self, len: usize) -> Result<&mut [u8], BatchSendError> {
        // An earlier grant never committed is dropped (publishing nothing)
        // before the producer is borrowed again.
        self.grant = None;
        // SAFETY: `producer` came from a `&'p mut Producer` that this sink
        // holds (PhantomData) for 'p, and the only borrow made from it, the
        // previous grant, was just dropped: this is the one live reference.
        let producer = unsafe { &mut *self.producer.as_ptr() };
        let grant = match self.wait {
            Wait::No => producer.try_reserve(len)?,
            Wait::Until(None) => producer.reserve(len)?,
            Wait::Until(Some(deadline)) => producer.reserve_timeout(len, Wait::remaining(deadline))?,
        };
        Ok(self.grant.insert(grant))
    }

    fn commit(&mut self, _len: usize) -> Result<(), BatchSendError> {
        if let Some(mut grant) = self.grant.take() {
            let kind = frame_kind(&grant);
            grant.set_message_type(u16::from(kind.0));
            grant.commit();
        }
        Ok(())
    }
}

/// The IPC message header type of a frame the encoder just wrote.
fn frame_kind(frame: &[u8]) -> MessageHeader {
    let meta_len = frame.get(4..8).map_or(0, |m| i32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    match usize::try_from(meta_len).ok().and_then(|m| frame.get(8..8 + m)) {
        Some(metadata) if !metadata.is_empty() => {
            // SAFETY: `metadata` is a `Message` flatbuffer that arrow's own
            // StreamEncoder wrote in this process a moment ago (and that
            // `split_into_frames` already parsed with verification).
            unsafe { arrow_ipc::root_as_message_unchecked(metadata) }.header_type()
        }
        _ => MessageHeader::NONE,
    }
}

// ---------------------------------------------------------------------------
// Receiving

/// Why no batch was received.
#[derive(Debug, thiserror::Error)]
pub enum BatchRecvError {
    /// No complete batch committed yet (`try_recv` only). Schema and
    /// dictionary frames that arrived were consumed.
    #[error("ring empty")]
    Empty,
    /// No batch arrived before the timeout passed.
    #[error("timed out waiting for a record batch")]
    Timeout,
    /// The producer is gone and everything it committed has been received.
    #[error("producer disconnected")]
    Disconnected,
    /// Too many records are held (batches not yet dropped): nothing more can
    /// be received until some are dropped (a refused frame stays in the ring
    /// and comes next).
    #[error("{0} leases outstanding: drop some batches before receiving more")]
    LeasesExhausted(usize),
    /// A ring record header is invalid; the ring cannot be read past it.
    #[error("corrupt ring record at position {position}: {reason}")]
    Corrupt {
        /// Position of the bad record header.
        position: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
    /// A frame was not valid Arrow IPC (or failed validation). It has been
    /// released and counted in [`BatchReceiver::dead_letters`]; the decoder's
    /// schema and dictionaries are unchanged and the next call reads on.
    #[error("frame of {len} bytes rejected: {reason}")]
    Rejected {
        /// The record's length.
        len: usize,
        /// What was wrong with it.
        reason: FrameDecodeError,
    },
}

ring_errors_into!(recv: BatchRecvError);

/// Receives record batches whose buffers point into the ring's shared memory.
///
/// Schema and dictionary frames are consumed internally (dictionaries are
/// copied out of the ring, see the module docs); each call returns the next
/// record batch. Arrow validation (offsets, UTF-8, nulls) is on by
/// default; a frame that fails it, or any framing or layout check, is
/// released, counted in [`dead_letters`](Self::dead_letters) and reported as
/// [`BatchRecvError::Rejected`]. See the module docs for how held batches
/// hold ring space.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow_array::{Int64Array, RecordBatch};
/// # use ipc_core::{PayloadAlign, RingBuilder};
/// # use schemas::channel::{BatchReceiver, BatchSender};
/// let ring = RingBuilder::new(1 << 20).payload_align(PayloadAlign::SixtyFour).create_anonymous()?;
/// let mut tx = BatchSender::new(ring.producer()?)?;
/// let mut rx = BatchReceiver::new(ring.consumer()?)?;
/// let batch = RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![1, 2])) as _)])?;
/// tx.try_send(&batch)?;
///
/// let got = rx.try_recv()?;
/// assert!(ring.status().head < ring.status().tail); // `got` holds its record
/// drop(got);
/// assert_eq!(ring.status().head, ring.status().tail); // space given back
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BatchReceiver {
    consumer: Consumer,
    decoder: ArrowFrameDecoder,
    dead_letters: u64,
}

impl fmt::Debug for BatchReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchReceiver")
            .field("segment", self.consumer.segment())
            .field("schema", &self.decoder.schema())
            .field("dead_letters", &self.dead_letters)
            .finish()
    }
}

impl BatchReceiver {
    /// A validating receiver over `consumer`, whose ring must have been
    /// built with [`PayloadAlign::SixtyFour`].
    pub fn new(mut consumer: Consumer) -> Result<Self, BatchChannelError> {
        check_alignment(consumer.segment().payload_align())?;
        // Batches release their records when dropped; cannot fail.
        let _ = consumer.set_release_mode(ipc_core::ReleaseMode::OnDrop);
        Ok(Self { consumer, decoder: ArrowFrameDecoder::new(), dead_letters: 0 })
    }

    /// Skips Arrow validation of array data, so receiving costs the same for
    /// 1 K or 1 M rows. Framing and layout bounds checks still run, and so
    /// does the per-column check that every validity, values, offsets and
    /// keys buffer is as long as its field node says (a short buffer is a
    /// [`BatchRecvError::Rejected`] frame, not a read past it).
    ///
    /// # Safety
    ///
    /// The peer must be trusted to write only valid Arrow data (e.g. a
    /// [`BatchSender`] in a trusted process); see
    /// [`ArrowFrameDecoder::with_skip_validation`]. Reading invalid arrays
    /// that skipped validation is undefined behaviour.
    pub unsafe fn trust_peer(mut self) -> Self {
        let decoder = std::mem::take(&mut self.decoder);
        // SAFETY: forwarded from this function's contract.
        self.decoder = unsafe { decoder.with_skip_validation(true) };
        self
    }

    /// Frames rejected since this receiver was made.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters
    }

    /// The current stream's schema, once a schema frame has arrived.
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.decoder.schema()
    }

    /// The consumer inside.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The next record batch without waiting ([`BatchRecvError::Empty`] if
    /// no batch frame is committed yet).
    pub fn try_recv(&mut self) -> Result<RecordBatch, BatchRecvError> {
        self.recv_with(Wait::No)
    }

    /// The next record batch, waiting with the consumer's wait strategy.
    pub fn recv(&mut self) -> Result<RecordBatch, BatchRecvError> {
        self.recv_with(Wait::Until(None))
    }

    /// Like [`recv`](Self::recv), giving up after `timeout` overall with
    /// [`BatchRecvError::Timeout`] (`None` waits forever).
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<RecordBatch, BatchRecvError> {
        self.recv_with(Wait::timeout(timeout))
    }

    fn recv_with(&mut self, wait: Wait) -> Result<RecordBatch, BatchRecvError> {
        loop {
            let guard = match wait {
                Wait::No => self.consumer.try_recv()?,
                Wait::Until(None) => self.consumer.recv()?,
                Wait::Until(Some(deadline)) => self.consumer.recv_timeout(Wait::remaining(deadline))?,
            };
            let len = guard.len();
            // Every frame is decoded where it lies; what outlives it is for the
            // decoder to decide from the message it parses (it copies
            // dictionaries), never from the record's message type, which is
            // the peer's claim.
            // A refused lease puts the frame back: it is received again once
            // the caller has dropped some batches.
            let lease = guard.into_lease().map_err(|refused| {
                let capacity = lease_capacity(refused.reason);
                refused.into_inner().requeue();
                BatchRecvError::LeasesExhausted(capacity)
            })?;
            let ptr = NonNull::from(lease.deref()).cast::<u8>();
            // SAFETY: `ptr..ptr + len` is the lease's record in the mapped
            // ring; the lease (the buffer's owner) keeps the mapping alive
            // and the record unreleased, so the producer does not write
            // it, until the last Buffer or array referring to it drops.
            let frame = unsafe { buffer_from_owner(ptr, len, Arc::new(lease)) };
            match self.decoder.decode(&frame) {
                Ok(DecodedFrame::RecordBatch(batch)) => return Ok(batch),
                Ok(DecodedFrame::Schema(_) | DecodedFrame::Dictionary { .. } | DecodedFrame::EndOfStream) => {}
                Err(reason) => {
                    // In the segment too, so `tadpole stat` shows it from any process.
                    self.consumer.count_dead_letter(ipc_core::DeadLetterReason::Malformed);
                    self.dead_letters += 1;
                    return Err(BatchRecvError::Rejected { len, reason });
                }
            }
        }
    }
}
