//! The FlatBuffers channel: envelopes through a ring, one copy in, none out.
//!
//! A ring record carries exactly one envelope (size prefix included, no
//! padding), and the record's `message_type` is the envelope's payload union
//! discriminant (`fb::Payload`), so a consumer can route or filter on the
//! record header without parsing the FlatBuffer:
//!
//! ```text
//!  ring record header              payload = one envelope, exactly encoded_len() bytes
//!  +-----+-------+--------------+  +--------+--------+--------+---------------------+
//!  | len | flags | message type |  | prefix | root   | "TDPL" | tables, strings ... |
//!  |     |       | = fb::Payload|  | u32 LE | uoffset|        |                     |
//!  +-----+-------+--------------+  +--------+--------+--------+---------------------+
//! ```

use std::fmt;
use std::time::Duration;

use flatbuffers::FlatBufferBuilder;
use ipc_core::{Consumer, CorruptReason, Lease, Producer, ReadGuard, SegmentFault};

use super::{Wait, lease_capacity};
use crate::envelope::{
    Envelope, EnvelopeEncoder, EnvelopeError, EnvelopeHeader, Event, PayloadOffset, VerifyOptions, envelope_unchecked,
    framed_record, verify_envelope,
};
use crate::fb;

// ---------------------------------------------------------------------------
// Sending

/// Why an envelope was not sent. Nothing was written to the ring in any case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeSendError {
    /// The ring has no room now (`try_send` only).
    #[error("ring full")]
    Full,
    /// No room before the timeout passed.
    #[error("timed out waiting for ring space")]
    Timeout,
    /// The encoded envelope is larger than the ring's maximum message length.
    #[error("envelope of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge {
        /// Encoded length.
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
}

ring_errors_into!(send: EnvelopeSendError);

/// Sends envelopes into a ring: builds each payload in a reused
/// [`EnvelopeEncoder`], reserves exactly the envelope's length in shared
/// memory, lays the envelope out there (header written in place, payload
/// copied once from the builder) and commits. Allocates nothing once the
/// encoder is warm.
///
/// ```
/// use ipc_core::RingBuilder;
/// use schemas::channel::{EnvelopeReceiver, EnvelopeSender};
/// use schemas::envelope::{EnvelopeHeader, Event};
/// use schemas::fb;
///
/// let ring = RingBuilder::new(1 << 16).create_anonymous()?;
/// let mut tx = EnvelopeSender::new(ring.producer()?);
/// let mut rx = EnvelopeReceiver::new(ring.consumer()?);
///
/// tx.try_send(&EnvelopeHeader::new("risk-1", "exec-1"), |fbb| {
///     fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence: 42, ..Default::default() })
/// })?;
///
/// let msg = rx.try_recv()?; // verified, borrows shared memory
/// assert_eq!(msg.message_type(), fb::Payload::Heartbeat); // from the ring header
/// assert_eq!(msg.envelope().source(), Some("risk-1"));
/// let Event::Heartbeat(hb) = msg.event()? else { unreachable!() };
/// assert_eq!(hb.sequence(), 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EnvelopeSender {
    producer: Producer,
    encoder: EnvelopeEncoder,
}

impl fmt::Debug for EnvelopeSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeSender").field("segment", self.producer.segment()).finish_non_exhaustive()
    }
}

impl EnvelopeSender {
    /// A sender writing into `producer`'s ring (any payload alignment).
    pub fn new(producer: Producer) -> Self {
        Self { producer, encoder: EnvelopeEncoder::new() }
    }

    /// Builds an envelope around the payload `payload` creates (see
    /// [`EnvelopeEncoder::encode`]) and publishes it without waiting. On
    /// [`EnvelopeSendError::Full`] nothing was written: call again later.
    pub fn try_send<P, F>(&mut self, header: &EnvelopeHeader<'_>, payload: F) -> Result<(), EnvelopeSendError>
    where
        F: FnOnce(&mut FlatBufferBuilder<'static>) -> P,
        P: Into<PayloadOffset>,
    {
        self.send_with(header, payload, Wait::No)
    }

    /// Like [`try_send`](Self::try_send), waiting for ring space with the
    /// producer's wait strategy.
    pub fn send<P, F>(&mut self, header: &EnvelopeHeader<'_>, payload: F) -> Result<(), EnvelopeSendError>
    where
        F: FnOnce(&mut FlatBufferBuilder<'static>) -> P,
        P: Into<PayloadOffset>,
    {
        self.send_with(header, payload, Wait::Until(None))
    }

    /// Like [`send`](Self::send), giving up after `timeout` with
    /// [`EnvelopeSendError::Timeout`] (`None` waits forever).
    pub fn send_timeout<P, F>(
        &mut self,
        header: &EnvelopeHeader<'_>,
        payload: F,
        timeout: Option<Duration>,
    ) -> Result<(), EnvelopeSendError>
    where
        F: FnOnce(&mut FlatBufferBuilder<'static>) -> P,
        P: Into<PayloadOffset>,
    {
        self.send_with(header, payload, Wait::timeout(timeout))
    }

    fn send_with<P, F>(&mut self, header: &EnvelopeHeader<'_>, payload: F, wait: Wait) -> Result<(), EnvelopeSendError>
    where
        F: FnOnce(&mut FlatBufferBuilder<'static>) -> P,
        P: Into<PayloadOffset>,
    {
        let Self { producer, encoder } = self;
        let (mut grant, kind) = encoder.encode_into(header, payload, |len| match wait {
            Wait::No => producer.try_reserve(len).map_err(EnvelopeSendError::from),
            Wait::Until(None) => producer.reserve(len).map_err(EnvelopeSendError::from),
            Wait::Until(Some(deadline)) => {
                producer.reserve_timeout(len, Wait::remaining(deadline)).map_err(EnvelopeSendError::from)
            }
        })?;
        grant.set_message_type(u16::from(kind.0));
        grant.commit();
        Ok(())
    }

    /// The producer inside.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Gives the producer back (e.g. to hand the ring to another sender).
    pub fn into_producer(self) -> Producer {
        self.producer
    }
}

// ---------------------------------------------------------------------------
// Receiving

/// Why a record was refused as an envelope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// Framing, identifier or FlatBuffers verification failed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The ring header's message type is not the envelope's payload type, so
    /// a consumer filtering on record headers would be misled.
    #[error("record message type {record} but envelope payload type {payload}")]
    MessageTypeMismatch {
        /// `message_type` of the ring record.
        record: u16,
        /// `payload_type` inside the envelope.
        payload: u8,
    },
}

/// Why no envelope was received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeRecvError {
    /// Nothing committed yet (`try_recv` only).
    #[error("ring empty")]
    Empty,
    /// Nothing arrived before the timeout passed.
    #[error("timed out waiting for an envelope")]
    Timeout,
    /// The producer is gone and everything it committed has been received.
    #[error("producer disconnected")]
    Disconnected,
    /// Too many envelopes are held as [`OwnedEnvelope`]s: drop some, then
    /// receive again (a refused envelope stays in the ring and comes next).
    #[error("{0} leases outstanding: drop some before receiving more")]
    LeasesExhausted(usize),
    /// A ring record header is invalid; the ring cannot be read past it.
    #[error("corrupt ring record at position {position}: {reason}")]
    Corrupt {
        /// Position of the bad record header.
        position: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
    /// The record was not a valid envelope. It has been released and counted
    /// in [`EnvelopeReceiver::dead_letters`]; the next call receives the next
    /// record.
    #[error("record of {len} bytes (message type {message_type}) rejected: {reason}")]
    Rejected {
        /// The record header's message type.
        message_type: u16,
        /// The record's length.
        len: usize,
        /// What was wrong with it.
        reason: RejectReason,
    },
}

ring_errors_into!(recv: EnvelopeRecvError);

/// Receives envelopes from a ring as views into shared memory, verified
/// before they are handed out.
///
/// Verification (on by default) checks the framing (record length == size
/// prefix + 4, identifier `"TDPL"`), runs the FlatBuffers verifier with the
/// tight [`VerifyOptions::default`] limits, the envelope rules of
/// [`verify_envelope`] (a non-nil `message_id`, ...), and checks that the
/// record's message type equals the payload type. A record that fails is
/// released, counted in [`dead_letters`](Self::dead_letters) and reported as
/// [`EnvelopeRecvError::Rejected`]; the next call gets the next record.
///
/// # Trust boundary
///
/// By default the record is verified *in place*, in shared memory the
/// producer's process can also write. That guarantees the bytes were a valid
/// envelope at the moment they were checked, and that a producer following
/// the ring protocol (it never writes a committed record before the consumer
/// releases it) cannot change them while a view exists. It does **not**
/// protect against a producer that breaks the protocol and rewrites a record
/// after it was verified: the generated accessors then read offsets that
/// were never checked, which can read out of bounds of the record (within or
/// beyond the mapping) — undefined behaviour in the reading process.
///
/// For a producer that is not trusted that far, [`copy_before_verify`]
/// copies each record up to a given length into memory private to this
/// receiver, verifies the copy and reads the envelope from it: what was
/// verified is then what is read, whatever the peer does to the ring
/// afterwards. It costs one copy of the record per receive (see the channels
/// bench: a few ns for a 248-byte envelope); records longer than the limit are
/// still verified in place.
///
/// [`copy_before_verify`]: Self::copy_before_verify
///
/// ```
/// use ipc_core::RingBuilder;
/// use schemas::channel::{EnvelopeReceiver, EnvelopeRecvError, EnvelopeSender};
/// use schemas::envelope::EnvelopeHeader;
/// use schemas::fb;
///
/// let ring = RingBuilder::new(1 << 16).create_anonymous()?;
/// let mut raw = ring.producer()?;
/// let mut rx = EnvelopeReceiver::new(ring.consumer()?);
///
/// raw.try_send(b"not an envelope")?; // a misbehaving peer
/// drop(raw);
/// let mut tx = EnvelopeSender::new(ring.producer()?);
/// tx.try_send(&EnvelopeHeader::new("a", "b"), |fbb| fb::Heartbeat::create(fbb, &Default::default()))?;
///
/// assert!(matches!(rx.try_recv(), Err(EnvelopeRecvError::Rejected { .. })));
/// assert_eq!(rx.dead_letters(), 1);
/// assert_eq!(rx.try_recv()?.message_type(), fb::Payload::Heartbeat); // the stream goes on
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EnvelopeReceiver {
    consumer: Consumer,
    options: VerifyOptions,
    trusted: bool,
    dead_letters: u64,
    /// Private copies of records up to this many bytes (0: none); its
    /// length is the limit set by `copy_before_verify`.
    private_copy: Vec<u8>,
}

impl fmt::Debug for EnvelopeReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeReceiver")
            .field("segment", self.consumer.segment())
            .field("options", &self.options)
            .field("trusted", &self.trusted)
            .field("dead_letters", &self.dead_letters)
            .field("copy_before_verify", &self.private_copy.len())
            .finish()
    }
}

impl EnvelopeReceiver {
    /// A receiver that verifies every record with [`VerifyOptions::default`].
    /// The receiver releases each record when its envelope is done with
    /// ([`ipc_core::ReleaseMode::OnDrop`], which it sets).
    pub fn new(mut consumer: Consumer) -> Self {
        // Cannot fail: switching to on-drop release is always allowed.
        let _ = consumer.set_release_mode(ipc_core::ReleaseMode::OnDrop);
        Self { consumer, options: VerifyOptions::default(), trusted: false, dead_letters: 0, private_copy: Vec::new() }
    }

    /// Verifies a private copy of every record of at most `max_len` bytes
    /// instead of the record in shared memory, and reads the envelope from
    /// that copy, so a peer rewriting the ring after verification cannot
    /// change what is read (see the type docs' trust boundary). Allocates
    /// `max_len` bytes once, here; receiving still allocates nothing. Has
    /// no effect after [`trust_peer`](Self::trust_peer), which verifies
    /// nothing.
    ///
    /// ```
    /// # use ipc_core::RingBuilder;
    /// # use schemas::channel::{EnvelopeReceiver, EnvelopeSender};
    /// # use schemas::envelope::EnvelopeHeader;
    /// # use schemas::fb;
    /// # let ring = RingBuilder::new(1 << 16).create_anonymous()?;
    /// # let mut tx = EnvelopeSender::new(ring.producer()?);
    /// let mut rx = EnvelopeReceiver::new(ring.consumer()?).copy_before_verify(1024);
    /// tx.try_send(&EnvelopeHeader::new("a", "b"), |fbb| fb::Heartbeat::create(fbb, &Default::default()))?;
    /// let msg = rx.try_recv()?;
    /// assert_eq!(msg.envelope().source(), Some("a")); // read from the private copy
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn copy_before_verify(mut self, max_len: usize) -> Self {
        self.private_copy = vec![0; max_len];
        self
    }

    /// Replaces the verifier limits (e.g. a larger `max_apparent_size` for
    /// envelopes carrying big payloads).
    pub fn with_verify_options(mut self, options: VerifyOptions) -> Self {
        self.options = options;
        self
    }

    /// Skips the FlatBuffers verifier and the message-type check for a peer
    /// that is trusted to write only envelopes made by [`EnvelopeEncoder`]
    /// (e.g. the same binary). The framing check (length, size prefix,
    /// identifier: a few loads) still runs, so a truncated or foreign record
    /// is still rejected.
    ///
    /// # Safety
    ///
    /// Every record the peer commits must be a complete envelope as produced
    /// by [`EnvelopeEncoder`] (see [`envelope_unchecked`]). Reading a
    /// malformed record through the accessors is undefined behaviour.
    pub unsafe fn trust_peer(mut self) -> Self {
        self.trusted = true;
        self
    }

    /// Records refused as envelopes since this receiver was made.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters
    }

    /// The consumer inside.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// Gives the consumer back.
    pub fn into_consumer(self) -> Consumer {
        self.consumer
    }

    /// The next envelope, without waiting ([`EnvelopeRecvError::Empty`] if none).
    #[inline]
    pub fn try_recv(&mut self) -> Result<ReceivedEnvelope<'_>, EnvelopeRecvError> {
        let guard = self.consumer.try_recv()?;
        check(guard, &self.options, self.trusted, &mut self.private_copy, &mut self.dead_letters)
    }

    /// The next envelope, waiting with the consumer's wait strategy.
    pub fn recv(&mut self) -> Result<ReceivedEnvelope<'_>, EnvelopeRecvError> {
        self.recv_timeout(None)
    }

    /// Like [`recv`](Self::recv), giving up after `timeout` with
    /// [`EnvelopeRecvError::Timeout`] (`None` waits forever).
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<ReceivedEnvelope<'_>, EnvelopeRecvError> {
        let guard = match timeout {
            None => self.consumer.recv()?,
            Some(timeout) => self.consumer.recv_timeout(timeout)?,
        };
        check(guard, &self.options, self.trusted, &mut self.private_copy, &mut self.dead_letters)
    }
}

/// Verifies the record in `guard` (or its private copy in `private_copy`, if
/// it fits), or releases it and counts it.
#[inline]
fn check<'a>(
    guard: ReadGuard<'a>,
    options: &VerifyOptions,
    trusted: bool,
    private_copy: &'a mut [u8],
    dead_letters: &mut u64,
) -> Result<ReceivedEnvelope<'a>, EnvelopeRecvError> {
    let message_type = guard.message_type();
    let copy = match private_copy.get_mut(..guard.len()) {
        Some(copy) if !trusted => {
            copy.copy_from_slice(&guard);
            Some(&*copy)
        }
        _ => {
            pull_into_cache(&guard);
            None
        }
    };
    let bytes = copy.unwrap_or(&guard);
    let outcome = if trusted {
        framed_record(bytes, options.allow_padding_to_8).map(|_| ()).map_err(RejectReason::from)
    } else {
        verify_envelope(bytes, options).map_err(RejectReason::from).and_then(|env| {
            let payload = env.payload_type().0;
            if u16::from(payload) == message_type {
                Ok(())
            } else {
                Err(RejectReason::MessageTypeMismatch { record: message_type, payload })
            }
        })
    };
    match outcome {
        Ok(()) => Ok(ReceivedEnvelope { guard, copy }),
        Err(reason) => {
            let len = guard.len();
            // In the segment too, so `tadpole stat` shows it from any process.
            guard.count_dead_letter(ipc_core::DeadLetterReason::Malformed);
            drop(guard);
            *dead_letters += 1;
            Err(EnvelopeRecvError::Rejected { message_type, len, reason })
        }
    }
}

/// How much of a record [`pull_into_cache`] loads: envelopes are a few
/// hundred bytes; a larger one is only partly pulled ahead.
const PULL_AHEAD: usize = 1024;

/// Loads each cache line of the record's first [`PULL_AHEAD`] bytes with
/// independent loads before anything reads it. The producer's core has just
/// written those lines, so each is a cross-core transfer (~100 ns or more on
/// our VMs), and the verifier and accessors reach them through a chain of
/// offsets (root, vtable, table, payload table, strings): without this the
/// transfers happen one after another; with it they overlap.
#[inline]
fn pull_into_cache(bytes: &[u8]) {
    let head = &bytes[..bytes.len().min(PULL_AHEAD)];
    let last = head.last().copied().unwrap_or(0);
    std::hint::black_box(head.iter().step_by(64).fold(last, |acc, b| acc ^ b));
}

/// A received, verified envelope borrowing its record in shared memory. The
/// record is released (the producer may reuse the space) when this drops;
/// the receiver cannot receive again until then. Use
/// [`into_owned`](Self::into_owned) to keep it longer.
pub struct ReceivedEnvelope<'a> {
    guard: ReadGuard<'a>,
    /// The receiver's private copy of the record, verified instead of the
    /// record in `guard` (see [`EnvelopeReceiver::copy_before_verify`]).
    copy: Option<&'a [u8]>,
}

impl ReceivedEnvelope<'_> {
    /// The envelope, read in place.
    #[inline]
    pub fn envelope(&self) -> Envelope<'_> {
        // SAFETY: the receiver verified these bytes (or its owner promised, in
        // `trust_peer`, that the peer writes only valid envelopes). A private
        // copy is borrowed from the receiver for as long as `self` lives and
        // nothing else writes it; a record in the ring is not written by the
        // producer before it is released, which happens only when
        // `self.guard` drops after every borrow of `self` (the trust boundary
        // in `EnvelopeReceiver`'s docs).
        unsafe { envelope_unchecked(self.bytes()) }
    }

    /// The typed payload ([`EnvelopeError::UnknownPayload`] for a payload
    /// type added by a newer schema).
    pub fn event(&self) -> Result<Event<'_>, EnvelopeError> {
        Event::from_envelope(&self.envelope())
    }

    /// The payload type, read from the ring record header.
    #[inline]
    pub fn message_type(&self) -> fb::Payload {
        fb::Payload(self.guard.message_type() as u8)
    }

    /// The envelope's bytes (size prefix included): the verified private
    /// copy if the receiver made one, else the record in shared memory.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.copy.unwrap_or(&self.guard)
    }

    /// Keeps the envelope beyond the next receive, e.g. to hand it to another
    /// thread. It still lives in the ring: until it drops, neither its space
    /// nor that of any later record is given back to the producer (the ring
    /// releases in order), so holding many applies backpressure. On
    /// [`EnvelopeRecvError::LeasesExhausted`] the envelope is put back in the
    /// ring, unreleased: the next receive returns it again.
    ///
    /// An envelope read from a private copy (see
    /// [`EnvelopeReceiver::copy_before_verify`]) stays a private copy: it is
    /// copied onto the heap (one allocation) and its record is released now.
    pub fn into_owned(self) -> Result<OwnedEnvelope, EnvelopeRecvError> {
        let storage = match self.copy {
            Some(copy) => Storage::Copy { bytes: copy.into(), message_type: self.guard.message_type() },
            // A refused lease puts the envelope back in the ring, unreleased:
            // the next receive returns it again.
            None => Storage::Lease(self.guard.into_lease().map_err(|refused| {
                let capacity = lease_capacity(refused.reason);
                refused.into_inner().requeue();
                EnvelopeRecvError::LeasesExhausted(capacity)
            })?),
        };
        Ok(OwnedEnvelope { storage })
    }
}

impl fmt::Debug for ReceivedEnvelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedEnvelope")
            .field("message_type", &self.message_type())
            .field("len", &self.guard.len())
            .finish()
    }
}

/// A verified envelope that owns its record in shared memory until dropped
/// (`Send + Sync`). See [`ReceivedEnvelope::into_owned`].
///
/// ```
/// # use ipc_core::RingBuilder;
/// # use schemas::channel::{EnvelopeReceiver, EnvelopeSender};
/// # use schemas::envelope::EnvelopeHeader;
/// # use schemas::fb;
/// # let ring = RingBuilder::new(1 << 16).create_anonymous()?;
/// # let mut tx = EnvelopeSender::new(ring.producer()?);
/// # let mut rx = EnvelopeReceiver::new(ring.consumer()?);
/// # let hb = |n| move |fbb: &mut _| fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence: n, ..Default::default() });
/// tx.try_send(&EnvelopeHeader::new("a", "b"), hb(1))?;
/// tx.try_send(&EnvelopeHeader::new("a", "b"), hb(2))?;
/// let first = rx.try_recv()?.into_owned()?;
/// let second = rx.try_recv()?; // `first` is still readable
/// let seq = |e: schemas::envelope::Envelope<'_>| e.payload_as_heartbeat().unwrap().sequence();
/// assert_eq!((seq(first.envelope()), seq(second.envelope())), (1, 2));
/// std::thread::spawn(move || assert_eq!(first.envelope().source(), Some("a"))).join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct OwnedEnvelope {
    storage: Storage,
}

/// Where an [`OwnedEnvelope`]'s verified bytes live.
enum Storage {
    /// The record in the ring, kept unreleased.
    Lease(Lease),
    /// A verified private copy and its record's message type.
    Copy { bytes: Box<[u8]>, message_type: u16 },
}

impl OwnedEnvelope {
    /// The envelope, read in place.
    #[inline]
    pub fn envelope(&self) -> Envelope<'_> {
        // SAFETY: made only from a `ReceivedEnvelope`, whose bytes were
        // verified (or trusted): either a private copy this value owns, or a
        // record the lease keeps unreleased, so unwritten, until it drops.
        unsafe { envelope_unchecked(self.bytes()) }
    }

    /// The typed payload.
    pub fn event(&self) -> Result<Event<'_>, EnvelopeError> {
        Event::from_envelope(&self.envelope())
    }

    /// The payload type, read from the ring record header.
    pub fn message_type(&self) -> fb::Payload {
        let message_type = match &self.storage {
            Storage::Lease(lease) => lease.message_type(),
            Storage::Copy { message_type, .. } => *message_type,
        };
        fb::Payload(message_type as u8)
    }

    /// The envelope's bytes: in shared memory, or the private copy.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Lease(lease) => lease,
            Storage::Copy { bytes, .. } => bytes,
        }
    }
}

impl fmt::Debug for OwnedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedEnvelope")
            .field("message_type", &self.message_type())
            .field("len", &self.bytes().len())
            .finish()
    }
}
