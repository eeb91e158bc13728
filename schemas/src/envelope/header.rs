//! [`EnvelopeHeader`]: everything in an envelope but its payload.

use super::{Envelope, MessageId, SchemaVersion, now_unix_ns};

/// Everything in an envelope except the payload. It borrows its strings, so
/// making one (or a reply) allocates nothing.
///
/// ```
/// use schemas::envelope::EnvelopeHeader;
/// let h = EnvelopeHeader::new("risk-agent-1", "execution-1");
/// assert_eq!(h.correlation_id, h.message_id); // a request correlates to itself
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EnvelopeHeader<'a> {
    /// Unique per message; the deduplication key for at-least-once delivery.
    pub message_id: MessageId,
    /// The `message_id` of the request this answers, or its own id.
    pub correlation_id: MessageId,
    /// Unix nanoseconds when the message was made.
    pub timestamp_ns: u64,
    /// Sending agent/system identifier.
    pub source: &'a str,
    /// Target identifier; empty means broadcast.
    pub destination: &'a str,
    /// Schema version the writer was built with.
    pub schema_version: SchemaVersion,
    /// Routing/tracing annotations. The encoder sorts them by key.
    pub metadata: &'a [(&'a str, &'a str)],
}

impl<'a> EnvelopeHeader<'a> {
    /// A new request: fresh id, correlated to itself, stamped now.
    pub fn new(source: &'a str, destination: &'a str) -> Self {
        let id = MessageId::new_v4();
        Self {
            message_id: id,
            correlation_id: id,
            timestamp_ns: now_unix_ns(),
            source,
            destination,
            schema_version: SchemaVersion::CURRENT,
            metadata: &[],
        }
    }

    /// The same header with `metadata` attached.
    pub fn with_metadata(self, metadata: &'a [(&'a str, &'a str)]) -> Self {
        Self { metadata, ..self }
    }

    /// The header fields of a received envelope, borrowing its strings.
    /// Absent fields read as [`MessageId::NIL`], `0`, `""` and version 0.0.0.
    /// `metadata` is left empty: read it with `envelope.metadata()`.
    pub fn from_envelope(envelope: &Envelope<'a>) -> Self {
        Self {
            message_id: envelope.message_id().map_or(MessageId::NIL, MessageId::from_wire),
            correlation_id: envelope.correlation_id().map_or(MessageId::NIL, MessageId::from_wire),
            timestamp_ns: envelope.timestamp_ns(),
            source: envelope.source().unwrap_or(""),
            destination: envelope.destination().unwrap_or(""),
            schema_version: envelope
                .schema_version()
                .map_or(SchemaVersion { major: 0, minor: 0, patch: 0 }, SchemaVersion::from_wire),
            metadata: &[],
        }
    }

    /// The header of a reply to `request`: fresh id, `correlation_id` =
    /// the request's `message_id`, source and destination swapped, stamped now.
    ///
    /// ```
    /// use schemas::envelope::{verify_envelope, EnvelopeEncoder, EnvelopeHeader, VerifyOptions};
    /// use schemas::fb;
    /// let mut enc = EnvelopeEncoder::new();
    /// let req = EnvelopeHeader::new("risk-1", "exec-1");
    /// let bytes = enc.encode(&req, |fbb| {
    ///     fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence: 1, ..Default::default() })
    /// }).to_vec();
    /// let request = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
    /// let reply = EnvelopeHeader::reply_to(&request);
    /// assert_eq!(reply.correlation_id, req.message_id);
    /// assert_eq!((reply.source, reply.destination), ("exec-1", "risk-1"));
    /// ```
    pub fn reply_to(request: &Envelope<'a>) -> Self {
        let request = Self::from_envelope(request);
        Self {
            message_id: MessageId::new_v4(),
            correlation_id: request.message_id,
            timestamp_ns: now_unix_ns(),
            source: request.destination,
            destination: request.source,
            schema_version: SchemaVersion::CURRENT,
            metadata: &[],
        }
    }
}
