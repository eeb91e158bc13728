//! What a route has done, as plain atomics (read from any thread, e.g. by `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one JetStream route; each field says which direction moves it. All are
/// monotonic except the gauges `in_flight` and `connected`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Publisher: records published (republished ones included; a pack counts its records).
    pub published: AtomicU64,
    /// Publisher: messages published that carry more than one record (packs).
    pub packs_published: AtomicU64,
    /// Publisher: payload bytes published.
    pub bytes_published: AtomicU64,
    /// Publisher: records whose publish JetStream acknowledged (stored, or knew; a pack's
    /// acknowledgement counts its records).
    pub acked: AtomicU64,
    /// Publisher: records acknowledged as duplicates (already stored: a republish after a lost
    /// acknowledgement or a relay restart).
    pub acked_duplicates: AtomicU64,
    /// Publisher: records a resume found stored already (their acknowledgements lost with a
    /// failure or a restart) and released without publishing them again (packing only).
    pub found_stored: AtomicU64,
    /// Publisher: rewinds to publish again everything not acknowledged (an acknowledgement
    /// timed out or failed).
    pub republishes: AtomicU64,
    /// Publisher: envelope records whose `message_id` could not be read (published with the
    /// position id instead).
    pub invalid_envelopes: AtomicU64,
    /// Publisher: replies on the acknowledgement subscription that name no record awaiting
    /// one (a reply subject that does not parse, an unknown record, a second reply): ignored.
    pub stray_acks: AtomicU64,
    /// Publisher: gauge, messages published and not acknowledged.
    pub in_flight: AtomicU64,
    /// Feeder: records committed into the local ring.
    pub committed: AtomicU64,
    /// Feeder: payload bytes committed.
    pub bytes_committed: AtomicU64,
    /// Feeder: messages JetStream delivered more than once (its delivery count above 1).
    pub redelivered: AtomicU64,
    /// Feeder: messages dropped as already committed (stream sequence or message id).
    pub duplicates_dropped: AtomicU64,
    /// Feeder: messages dropped because they cannot go into the ring (a bad type header, a
    /// payload larger than the ring's largest record). Acknowledged: redelivery cannot help.
    pub malformed: AtomicU64,
    /// Feeder: acknowledgements that failed (the messages come again and are dropped).
    pub ack_failures: AtomicU64,
    /// Feeder: checkpoint writes that failed (the batch was not committed; tried again).
    pub checkpoint_failures: AtomicU64,
    /// Feeder: times the pull was started again with the consumer made anew from the
    /// checkpoint, because deliveries stopped: two idle heartbeats missed in a row, or messages
    /// waiting in the consumer (pending or unacknowledged) and none delivered for a while.
    pub pull_restarts: AtomicU64,
    /// Feeder: times the consumer's leadership was handed to another replica because its
    /// leader had fallen behind the stream's (it delivered nothing more and said nothing was
    /// pending while the stream held more).
    pub leader_stepdowns: AtomicU64,
    /// Both: times the connection to NATS was lost.
    pub disconnects: AtomicU64,
    /// Both: times the connection to NATS was made again after a loss.
    pub reconnects: AtomicU64,
    /// Both: JetStream errors (stream or consumer setup, publish, fetch), each retried after a
    /// backoff.
    pub errors: AtomicU64,
    /// Both: gauge, 1 while connected to NATS.
    pub connected: AtomicU64,
}

impl Counters {
    pub(crate) fn add(field: &AtomicU64, n: u64) {
        field.fetch_add(n, Relaxed);
    }

    /// Reads one field.
    pub fn get(field: &AtomicU64) -> u64 {
        field.load(Relaxed)
    }
}
