//! What a sender or receiver has done, as plain atomics (read them from any thread, e.g. for
//! `tadpole stat`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::wire::RejectReason;

/// Counters of one [`Sender`](super::Sender) or [`Receiver`](super::Receiver); each field says
/// which side moves it. All are monotonic except the gauges `in_flight_*` and `breaker_state`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sender: records put in DATA messages (resends included).
    pub records_sent: AtomicU64,
    /// Sender: payload bytes put in DATA messages.
    pub bytes_sent: AtomicU64,
    /// Sender: DATA messages built.
    pub data_messages: AtomicU64,
    /// Sender: HELLOs built.
    pub hellos: AtomicU64,
    /// Sender: ACKs that moved the acknowledged position on. Receiver: ACKs sent.
    pub acks: AtomicU64,
    /// Sender: rewinds to resend what was not acknowledged (timeout, busy receiver, gap).
    pub resends: AtomicU64,
    /// Sender: request timeouts (no acknowledgement in time).
    pub timeouts: AtomicU64,
    /// Sender: records written to the dead-letter ring.
    pub dead_letters: AtomicU64,
    /// Sender: rejected records dropped because no dead-letter ring is configured.
    pub dead_letters_dropped: AtomicU64,
    /// Sender: gauge, records sent and not acknowledged.
    pub in_flight_records: AtomicU64,
    /// Sender: gauge, payload bytes sent and not acknowledged.
    pub in_flight_bytes: AtomicU64,
    /// Sender: gauge, [`BreakerState`](super::BreakerState) as its `u8` value.
    pub breaker_state: AtomicU64,
    /// Sender: times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Receiver: records committed into a local ring.
    pub records_committed: AtomicU64,
    /// Receiver: payload bytes committed.
    pub bytes_committed: AtomicU64,
    /// Receiver: records dropped because their position was already committed.
    pub duplicates_dropped: AtomicU64,
    /// Receiver: envelopes dropped because their `message_id` was seen in the window.
    pub id_duplicates_dropped: AtomicU64,
    /// Receiver: ids forgotten by the dedup window because they aged out.
    pub ids_expired: AtomicU64,
    /// Receiver: ids forgotten by the dedup window to stay within its count.
    pub ids_evicted: AtomicU64,
    /// Receiver: records rejected, by [`RejectReason`] (index `code - 1`). Sender: rejects learnt.
    pub rejects: [AtomicU64; 3],
    /// Receiver: DATA messages refused because they did not follow on from what was committed
    /// (records lost on the way); answered with a WELCOME.
    pub gaps: AtomicU64,
    /// Receiver: DATA messages for a ring epoch the stream has moved on from, dropped.
    pub stale_epochs: AtomicU64,
    /// Receiver: DATA messages stopped short because the local ring was full (backpressure).
    pub busy: AtomicU64,
    /// Receiver: messages for a new stream refused because `max_streams` are known.
    pub streams_refused: AtomicU64,
    /// Receiver: checkpoint file writes that failed (the ACK was withheld).
    pub checkpoint_failures: AtomicU64,
    /// Both: messages that failed to decode ([`FrameError`](crate::wire::FrameError)), or that
    /// decoded but contradict the protocol (an ACK beyond what was sent, a frame for another
    /// stream). Dropped; the link keeps serving.
    pub malformed: AtomicU64,
}

impl Counters {
    /// Rejects for `reason` so far.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejects[reason.index()].load(Relaxed)
    }

    pub(crate) fn add(field: &AtomicU64, n: u64) {
        field.fetch_add(n, Relaxed);
    }
}
