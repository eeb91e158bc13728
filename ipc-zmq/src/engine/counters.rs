//! What a sender or receiver has done, as plain atomics (read them from any thread, e.g. for
//! `tadpole stat`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
    /// Sender: corrupt records met in the source ring (a record header that fails the ring's
    /// checks, or a ring whose file was truncated), each counted once. The ring cannot be read
    /// past one: the route stops there, and `source_blocked` says so.
    pub source_corrupt: AtomicU64,
    /// Sender: gauge, 1 while the route is stopped at a corrupt record of its source ring (it
    /// stays so until a new ring replaces it: [`Sender::replace_source`](super::Sender::replace_source)), else 0.
    pub source_blocked: AtomicU64,
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
    /// Both: messages of another protocol version than [`wire::VERSION`](crate::wire::VERSION)
    /// (a relay of an older or newer release), refused unanswered; also counted in `malformed`.
    pub unsupported_version: AtomicU64,
    /// Sender: time from sending a DATA message to the ACK that covers it (messages that were
    /// resent are not measured: which send an ACK answers is unknown).
    pub round_trips: RoundTrips,
}

/// Upper bounds of the [`RoundTrips`] buckets, in seconds (the last bucket, `+Inf`, is implied).
pub const ROUND_TRIP_BOUNDS: [f64; 17] =
    [50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram of link round trips, in fixed buckets of atomics: the sender's thread records,
/// any thread reads (`/metrics`), no lock.
#[derive(Debug, Default)]
pub struct RoundTrips {
    /// Observations per bucket (not cumulative); index `ROUND_TRIP_BOUNDS.len()` is `+Inf`.
    buckets: [AtomicU64; ROUND_TRIP_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl RoundTrips {
    /// Records one round trip.
    pub fn observe(&self, rtt: Duration) {
        let secs = rtt.as_secs_f64();
        let bucket = ROUND_TRIP_BOUNDS.iter().position(|&bound| secs <= bound).unwrap_or(ROUND_TRIP_BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Round trips recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Sum of every round trip, in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_ns.load(Relaxed) as f64 / 1e9
    }

    /// `(upper bound in seconds, observations in that bucket)`, the last bound `f64::MAX`
    /// (`+Inf`): what `prometheus-client` encodes.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let bounds = ROUND_TRIP_BOUNDS.iter().copied().chain(std::iter::once(f64::MAX));
        bounds.zip(&self.buckets).map(|(bound, n)| (bound, n.load(Relaxed))).collect()
    }
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
