//! The sending end of a route: drains a local ring (explicit release) into DATA messages and
//! releases only what the far side acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ipc_core::{Consumer, DeadLetterReason, LeasesOutstanding, Producer, ReleaseMode, TryRecvError, TrySendError};

use super::counters::Counters;
use super::dead_letter::DeadLetter;
use super::policy::{Backoff, Breaker, BreakerConfig, BreakerState, Jitter};
use crate::wire::{self, Ack, DataBody, Frame, FrameError, Hello, RejectReason, Welcome};

/// How a [`Sender`] batches, bounds what is in flight, and retries.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// This relay's name (the origin of every record), a valid wire name.
    pub origin: String,
    /// The route: which ring on the far side receives the records.
    pub stream: String,
    /// Most records sent and not acknowledged (default 65536).
    pub max_in_flight_records: usize,
    /// Most payload bytes sent and not acknowledged (default 16 MiB; one larger record may go
    /// alone).
    pub max_in_flight_bytes: usize,
    /// Most records per DATA message (default 512, at most [`wire::MAX_RECORDS`]).
    pub max_batch_records: usize,
    /// Most payload bytes per DATA message (default 1 MiB; one larger record may go alone).
    pub max_batch_bytes: usize,
    /// How long to wait for a WELCOME before sending HELLO again (connection timeout, 1 s).
    pub hello_interval: Duration,
    /// How long the oldest unacknowledged record may wait for its ACK before everything
    /// unacknowledged is resent (request timeout, 5 s).
    pub request_timeout: Duration,
    /// Wait between attempts (after a timeout or a busy receiver): 1 s, ×2, at most 10 s.
    pub backoff: Backoff,
    /// Consecutive attempts without progress after which the stream is reopened with a HELLO
    /// (default 3); retries go on forever, with capped backoff.
    pub max_attempts: u32,
    /// The circuit breaker of this link.
    pub breaker: BreakerConfig,
}

impl SenderConfig {
    /// The defaults for `origin` and `stream`.
    pub fn new(origin: &str, stream: &str) -> SenderConfig {
        SenderConfig {
            origin: origin.to_owned(),
            stream: stream.to_owned(),
            max_in_flight_records: 65536,
            max_in_flight_bytes: 16 << 20,
            max_batch_records: 512,
            max_batch_bytes: 1 << 20,
            hello_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
            max_attempts: 3,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Why a [`Sender`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The origin or stream name is empty, longer than [`wire::MAX_NAME_LEN`] or holds control
    /// characters.
    #[error("invalid origin or stream name")]
    BadName,
    /// The consumer holds leases, so it cannot release explicitly.
    #[error(transparent)]
    Leases(#[from] LeasesOutstanding),
}

/// The sending end of one route. Socket-agnostic: [`poll`](Self::poll) returns the next message
/// to send, [`handle`](Self::handle) takes each message from the far side; the caller moves them
/// over its socket (a DEALER connected to the far relay's ROUTER).
///
/// Every record stays unreleased in the source ring until the far side acknowledges it, so the
/// ring's producer feels backpressure (`Full`) when the link is slow or down; nothing is lost
/// when either relay is killed.
pub struct Sender {
    config: SenderConfig,
    consumer: Consumer,
    dead_letters: Option<Producer>,
    epoch: u64,
    welcomed: bool,
    hello_due: Option<Instant>,
    /// Every record below this is done on the far side.
    committed_next: u64,
    /// Every record below this is released from the source ring.
    released_next: u64,
    /// `from` of the next DATA message: just past the last record sent since the last rewind.
    sent_next: u64,
    /// Past the highest record ever sent: no ACK may name more.
    sent_high: u64,
    /// Each DATA message sent and not wholly acknowledged since the last rewind, oldest first:
    /// one entry a message, not a record (at 64-byte records a window of 65536 records kept a
    /// megabyte of entries moving through the cache, the size of the CPU's L2).
    in_flight: VecDeque<InFlight>,
    /// Records and payload bytes of `in_flight`.
    in_flight_records: usize,
    in_flight_bytes: usize,
    /// Each DATA message sent since the last rewind: the position past its last record, and
    /// when it went (for the round-trip histogram).
    sent_at: VecDeque<(u64, Instant)>,
    pending_rejects: BTreeMap<u64, RejectReason>,
    ack_deadline: Option<Instant>,
    /// Where the last rewind resumed from, until an ACK moves on, and how many DATA messages
    /// went before it: each of those may still be answered by a WELCOME naming the same
    /// position (every message in flight behind a lost one is a gap), which asks for nothing new.
    rewound_from: Option<u64>,
    stale_answers: usize,
    /// DATA messages built since the last rewind.
    sent_since_rewind: usize,
    paused_until: Option<Instant>,
    /// Bytes of the last DATA body built: what the next one reserves.
    last_body_len: usize,
    attempts: u32,
    breaker: Breaker,
    jitter: Jitter,
    counters: Arc<Counters>,
    dead_letter_hook: Option<DeadLetterHook>,
    /// Whether the source ring was found corrupt or truncated: the route has stopped.
    source_stopped: bool,
}

/// Called with each record the far side rejected, once it is dead-lettered: the letter, and
/// whether it was kept in the dead-letter ring (`false`: dropped, no ring or too large for it).
pub type DeadLetterHook = Box<dyn FnMut(&DeadLetter<'_>, bool) + Send>;

impl Sender {
    /// A sender draining `consumer` (switched to [`ReleaseMode::Explicit`] and rewound to its
    /// first unreleased record), dead-lettering rejected records into `dead_letters` if given
    /// (otherwise they are dropped and counted).
    pub fn new(
        config: SenderConfig,
        mut consumer: Consumer,
        dead_letters: Option<Producer>,
    ) -> Result<Sender, SenderError> {
        if !wire::valid_name(&config.origin) || !wire::valid_name(&config.stream) {
            return Err(SenderError::BadName);
        }
        consumer.set_release_mode(ReleaseMode::Explicit)?;
        Ok(Sender::draining(config, consumer, dead_letters, Arc::new(Counters::default()), None))
    }

    /// A fresh sender on `consumer` (already in [`ReleaseMode::Explicit`]), rewound to its first
    /// unreleased record, counting into `counters`.
    fn draining(
        config: SenderConfig,
        mut consumer: Consumer,
        dead_letters: Option<Producer>,
        counters: Arc<Counters>,
        dead_letter_hook: Option<DeadLetterHook>,
    ) -> Sender {
        let head = consumer.rewind();
        let epoch = consumer.epoch();
        let breaker = Breaker::new(config.breaker);
        Sender {
            config,
            consumer,
            dead_letters,
            epoch,
            welcomed: false,
            hello_due: None,
            committed_next: head,
            released_next: head,
            sent_next: head,
            sent_high: head,
            in_flight: VecDeque::new(),
            in_flight_records: 0,
            in_flight_bytes: 0,
            sent_at: VecDeque::new(),
            pending_rejects: BTreeMap::new(),
            ack_deadline: None,
            rewound_from: None,
            stale_answers: 0,
            sent_since_rewind: 0,
            paused_until: None,
            last_body_len: 0,
            attempts: 0,
            breaker,
            jitter: Jitter::new(),
            counters,
            dead_letter_hook,
            source_stopped: false,
        }
    }

    /// Starts the route over on `consumer`, a new source ring (the operator replaced one found
    /// corrupt or truncated: a new segment under the same name, with a new epoch): the stream is
    /// reopened with a HELLO announcing the new epoch, and the far side starts it afresh (see
    /// `PROTOCOL.md`). Whatever the old ring held unacknowledged is lost with it. The config,
    /// the dead-letter ring, the dead-letter hook and the counters are kept (the monotonic ones
    /// go on from their totals; `source_blocked` and the in-flight gauges go back to 0). On an
    /// error the sender is left as it was.
    ///
    /// ```
    /// use ipc_core::RingBuilder;
    /// use ipc_zmq::engine::{Sender, SenderConfig};
    ///
    /// let old = RingBuilder::new(4096).create_anonymous()?;
    /// let mut sender = Sender::new(SenderConfig::new("host-a", "orders"), old.consumer()?, None)?;
    /// let new = RingBuilder::new(4096).create_anonymous()?;
    /// sender.replace_source(new.consumer()?)?;
    /// assert_eq!(sender.epoch(), new.epoch());
    /// assert!(!sender.is_source_stopped());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replace_source(&mut self, mut consumer: Consumer) -> Result<(), SenderError> {
        consumer.set_release_mode(ReleaseMode::Explicit)?;
        let fresh = Sender::draining(
            self.config.clone(),
            consumer,
            self.dead_letters.take(),
            self.counters.clone(),
            self.dead_letter_hook.take(),
        );
        *self = fresh;
        self.counters.source_blocked.store(0, Relaxed);
        self.publish_gauges();
        Ok(())
    }

    /// The source ring's epoch, which the HELLO and every DATA message name.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the route has stopped at a corrupt record (or a truncation) of its source ring:
    /// nothing more is read from it, and only [`replace_source`](Self::replace_source) goes on.
    /// Counters' `source_blocked` says the same to other threads.
    pub fn is_source_stopped(&self) -> bool {
        self.source_stopped
    }

    /// Calls `hook` for every record dead-lettered from now on (e.g. to log it with the
    /// envelope's correlation id); rare, off the fast path.
    pub fn on_dead_letter(&mut self, hook: impl FnMut(&DeadLetter<'_>, bool) + Send + 'static) {
        self.dead_letter_hook = Some(Box::new(hook));
    }

    /// The counters (shared: clone the `Arc` to read them elsewhere).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Whether a WELCOME has been received since the stream was last (re)opened.
    pub fn is_open(&self) -> bool {
        self.welcomed
    }

    /// Records sent and not acknowledged (those of a DATA message acknowledged only in part
    /// count until the whole message is, or it is resent).
    pub fn in_flight(&self) -> usize {
        self.in_flight_records
    }

    /// Every source-ring record below this position is acknowledged by the far side.
    pub fn acknowledged(&self) -> u64 {
        self.committed_next
    }

    /// The source ring's consumer.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The source ring's pollable doorbell ([`Consumer::pollable_doorbell`]): an event loop
    /// polls it beside the link's socket, so that a record committed into an idle ring wakes
    /// it. Made on the first call.
    pub fn doorbell_fd(&mut self) -> std::io::Result<std::os::fd::RawFd> {
        self.consumer.pollable_doorbell()
    }

    /// Before the event loop sleeps: `Ok(true)` when it may (nothing this sender could send
    /// now is waiting; if it could send, the doorbell is armed and rings on the next commit),
    /// `Ok(false)` when records are waiting that [`poll`](Self::poll) would send — turn again
    /// instead. While it cannot send (no WELCOME yet, a backoff, the breaker open, the window
    /// full) the doorbell stays unarmed: new records would only wake the loop for nothing, and
    /// what unblocks the sender is a message on the socket or
    /// [`next_deadline`](Self::next_deadline); so does a route stopped at a corrupt source
    /// ring. Call [`disarm_doorbell`](Self::disarm_doorbell) after the sleep.
    pub fn arm_doorbell(&mut self, now: Instant) -> std::io::Result<bool> {
        let paused = self.paused_until.is_some_and(|until| now < until);
        let window_full = self.in_flight_records >= self.config.max_in_flight_records
            || self.in_flight_bytes >= self.config.max_in_flight_bytes;
        // A stopped route reads nothing more from its ring, whose corrupt record would otherwise
        // look like news on every arm: the loop would spin.
        if !self.welcomed || paused || window_full || self.breaker.state() == BreakerState::Open || self.source_stopped
        {
            return Ok(true);
        }
        self.consumer.arm_doorbell()
    }

    /// Ends the sleep [`arm_doorbell`](Self::arm_doorbell) prepared (harmless when it did not
    /// arm).
    pub fn disarm_doorbell(&mut self) {
        self.consumer.disarm_doorbell();
    }

    /// The link went down (or the socket was recreated): reopen the stream with a HELLO and
    /// resend everything unacknowledged after the WELCOME.
    pub fn on_link_down(&mut self) {
        self.welcomed = false;
        self.hello_due = None;
        let from = self.committed_next;
        self.rewind_to(from);
    }

    /// When [`poll`](Self::poll) has something time-driven to do (a HELLO to repeat, a backoff
    /// ending, an acknowledgement overdue); `None` when only new records or messages matter.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hello = if self.welcomed { None } else { self.hello_due };
        [hello, self.paused_until, self.ack_deadline, self.breaker.half_opens_at()].into_iter().flatten().min()
    }

    /// The next message to send, if any: a HELLO while the stream is not open, else a DATA
    /// message of the records the window, the batch limits, the backoff and the breaker allow.
    /// Call it whenever the ring may have records, a message was handled, or
    /// [`next_deadline`](Self::next_deadline) passed.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<Vec<u8>>> {
        self.check_timeout(now);
        if !self.welcomed {
            if self.hello_due.is_some_and(|due| now < due) {
                return None;
            }
            self.hello_due = Some(now + self.config.hello_interval);
            Counters::add(&self.counters.hellos, 1);
            let hello =
                Hello { origin: self.config.origin.clone(), stream: self.config.stream.clone(), epoch: self.epoch };
            return Some(Frame::Hello(hello).encode());
        }
        if self.paused_until.is_some_and(|until| now < until) {
            return None;
        }
        self.paused_until = None;
        let permitted = self.breaker.permits(now);
        self.publish_gauges();
        if !permitted {
            return None;
        }
        let message = self.build()?;
        self.sent_at.push_back((self.sent_next, now));
        self.breaker.on_request();
        self.ack_deadline.get_or_insert(now + self.config.request_timeout);
        self.publish_gauges();
        Some(message)
    }

    /// Takes a message from the far side (WELCOME or ACK). Anything else, or anything that
    /// fails to decode or contradicts what was sent, is counted in `malformed` and ignored.
    pub fn handle<P: AsRef<[u8]>>(&mut self, parts: &[P], now: Instant) {
        match wire::decode(parts) {
            Ok(Frame::Welcome(w)) if w.stream == self.config.stream && w.epoch == self.epoch => self.on_welcome(w),
            Ok(Frame::Ack(a)) if a.stream == self.config.stream && a.epoch == self.epoch => self.on_ack(a, now),
            Err(FrameError::UnsupportedVersion(_)) => {
                Counters::add(&self.counters.unsupported_version, 1);
                Counters::add(&self.counters.malformed, 1);
            }
            _ => Counters::add(&self.counters.malformed, 1),
        }
        self.publish_gauges();
    }

    fn on_welcome(&mut self, w: Welcome) {
        // A WELCOME can name at most the end of what the ring holds.
        if w.next > self.consumer.segment().status().tail + 1 {
            Counters::add(&self.counters.malformed, 1);
            return;
        }
        self.learn_rejects(&w.rejects);
        if self.welcomed {
            // An answer to a gap, or a late answer to an earlier HELLO: resend from there, unless
            // it answers a message sent before the last rewind, which already resends from
            // there. (Counting may take a fresh answer for a stale one: then a resend lost again
            // is found by the request timeout instead.)
            if self.rewound_from == Some(w.next) && self.stale_answers > 0 {
                self.stale_answers -= 1;
                return;
            }
            Counters::add(&self.counters.resends, 1);
        }
        self.welcomed = true;
        self.breaker.on_success();
        self.committed_next = self.committed_next.max(w.next);
        self.sent_high = self.sent_high.max(w.next);
        self.rewind_to(w.next);
    }

    fn on_ack(&mut self, a: Ack, now: Instant) {
        if a.next > self.sent_high {
            Counters::add(&self.counters.malformed, 1);
            return;
        }
        self.learn_rejects(&a.rejects);
        if a.next > self.committed_next {
            self.committed_next = a.next;
            self.rewound_from = None;
            Counters::add(&self.counters.acks, 1);
            self.attempts = 0;
            self.breaker.on_success();
            while let Some(&(_, sent)) = self.sent_at.front().filter(|(end, _)| *end <= a.next) {
                self.sent_at.pop_front();
                self.counters.round_trips.observe(now.saturating_duration_since(sent));
            }
            let mut last = None;
            while let Some(&sent) = self.in_flight.front().filter(|m| m.last < a.next) {
                self.in_flight.pop_front();
                self.in_flight_records -= sent.records;
                self.in_flight_bytes -= sent.bytes;
                last = Some(sent.last);
            }
            if self.in_flight.front().is_some_and(|m| m.first < a.next) {
                // A message acknowledged in part (the far ring filled, or a reject list ran
                // out): the ACK names the position just past the last record done, so what is
                // done is released (a position that is no record is refused below and
                // changes nothing); the message stays counted in flight, whole, until the
                // rest is acknowledged or resent.
                last = Some(a.next - 1);
            }
            if !self.sweep_needed() {
                if let Some(pos) = last {
                    if self.consumer.release_through(pos).is_ok() {
                        self.released_next = pos + 1;
                    }
                }
            }
            self.ack_deadline = if self.in_flight.is_empty() { None } else { Some(now + self.config.request_timeout) };
        }
        if self.sweep_needed() {
            // A rejected record to dead-letter that delivery has passed: go back over the ring
            // to it (the records between are released as they are passed again).
            let from = self.committed_next;
            self.rewind_to(from);
        }
        if a.busy {
            // The far ring is full: what it did not take is resent after a backoff.
            self.attempts += 1;
            self.paused_until = Some(now + self.config.backoff.delay(self.attempts - 1, &mut self.jitter));
            Counters::add(&self.counters.resends, 1);
            let from = self.committed_next;
            self.rewind_to(from);
        }
    }

    /// Whether a rejected record waits to be dead-lettered behind the read position.
    fn sweep_needed(&self) -> bool {
        let first = self.pending_rejects.range(..self.committed_next).next();
        first.is_some_and(|(&pos, _)| self.consumer.read_position() > pos)
    }

    fn learn_rejects(&mut self, rejects: &[wire::Rejected]) {
        for r in rejects {
            if r.position >= self.released_next && self.pending_rejects.insert(r.position, r.reason).is_none() {
                Counters::add(&self.counters.rejects[r.reason.index()], 1);
            }
        }
    }

    fn check_timeout(&mut self, now: Instant) {
        let overdue = self.ack_deadline.is_some_and(|deadline| now >= deadline) && !self.in_flight.is_empty();
        if !overdue {
            return;
        }
        Counters::add(&self.counters.timeouts, 1);
        Counters::add(&self.counters.resends, 1);
        let was_open = self.breaker.state() == BreakerState::Open;
        self.breaker.on_failure(now);
        if !was_open && self.breaker.state() == BreakerState::Open {
            Counters::add(&self.counters.breaker_opened, 1);
        }
        self.attempts += 1;
        let resume = now + self.config.backoff.delay(self.attempts - 1, &mut self.jitter);
        self.paused_until = Some(resume);
        let from = self.committed_next;
        self.rewind_to(from);
        if self.attempts >= self.config.max_attempts {
            // The far relay may have restarted: reopen the stream, after the backoff.
            self.welcomed = false;
            self.hello_due = Some(resume);
        }
    }

    /// Delivery goes back to the first unreleased record; the next DATA message claims to follow
    /// on from `from`.
    fn rewind_to(&mut self, from: u64) {
        self.rewound_from = Some(from);
        self.stale_answers = self.sent_since_rewind;
        self.sent_since_rewind = 0;
        self.consumer.rewind();
        self.in_flight.clear();
        self.in_flight_records = 0;
        self.in_flight_bytes = 0;
        // Karn: an ACK after a resend may answer either send; neither is measured.
        self.sent_at.clear();
        self.sent_next = from;
        self.ack_deadline = None;
    }

    /// One DATA message of what the limits allow; passes over (releasing, dead-lettering) the
    /// records the far side already has.
    fn build(&mut self) -> Option<Vec<Vec<u8>>> {
        let max_records = self.config.max_batch_records.clamp(1, wire::MAX_RECORDS);
        let from = self.sent_next;
        // Usually one allocation per message: the last message's size is the best guess of this
        // one's (a steady stream sends full batches, a trickle single records).
        let mut body = DataBody::new(from, self.last_body_len);
        let (mut count, mut batch_bytes, mut release, mut first) = (0usize, 0usize, None, None);
        // Records are read a batch at a time (one pass over the ring's headers, delivery moved
        // on once per batch); where the window or the batch is full, the rest of the ring batch
        // goes back unread.
        let (mut stopped, mut corrupt, mut empty) = (false, false, false);
        while count < max_records && !stopped {
            let mut batch = match self.consumer.read_batch(max_records - count) {
                Ok(batch) => batch,
                Err(TryRecvError::Corrupt { .. }) => {
                    // Met again on every poll: counted once.
                    corrupt = true;
                    break;
                }
                Err(TryRecvError::Empty) => {
                    empty = true;
                    break;
                }
                Err(_) => break,
            };
            let mut taken = 0;
            for rec in &batch {
                let (pos, len) = (rec.position, rec.payload.len());
                if pos < self.committed_next {
                    if let Some(&reason) = self.pending_rejects.get(&pos) {
                        let letter = DeadLetter {
                            reason,
                            message_type: rec.message_type,
                            position: pos,
                            epoch: self.epoch,
                            stream: &self.config.stream,
                            payload: rec.payload,
                        };
                        match write_dead_letter(&mut self.dead_letters, &letter) {
                            Ok(written) => {
                                let field = if written {
                                    &self.counters.dead_letters
                                } else {
                                    &self.counters.dead_letters_dropped
                                };
                                Counters::add(field, 1);
                                // In the source ring's segment too, for `tadpole stat`.
                                batch.count_dead_letter(match reason {
                                    RejectReason::InvalidEnvelope => DeadLetterReason::Malformed,
                                    RejectReason::UnknownRoute | RejectReason::TooLarge => {
                                        DeadLetterReason::Undeliverable
                                    }
                                });
                                if let Some(hook) = self.dead_letter_hook.as_mut() {
                                    hook(&letter, written);
                                }
                                self.pending_rejects.remove(&pos);
                            }
                            Err(()) => {
                                // The dead-letter ring is full: try again on the next poll.
                                stopped = true;
                                break;
                            }
                        }
                    }
                    taken += 1;
                    release = Some(pos);
                    continue;
                }
                let records_in_flight = self.in_flight_records + count;
                let window_full = records_in_flight >= self.config.max_in_flight_records
                    || (records_in_flight > 0
                        && self.in_flight_bytes + batch_bytes + len > self.config.max_in_flight_bytes)
                    || (count > 0 && batch_bytes + len > self.config.max_batch_bytes);
                if window_full {
                    stopped = true;
                    break;
                }
                if body.push(pos, rec.message_type, rec.payload).is_err() {
                    // Ring positions only grow, and every one below `from` was passed over above:
                    // not reachable, but not worth a panic either.
                    Counters::add(&self.counters.malformed, 1);
                    stopped = true;
                    break;
                }
                taken += 1;
                count += 1;
                first.get_or_insert(pos);
                batch_bytes += len;
                self.sent_next = pos + 1;
            }
            batch.truncate(taken);
        }
        if let Some(pos) = release {
            if self.consumer.release_through(pos).is_ok() {
                self.released_next = pos + 1;
            }
        }
        // A ring whose file was cut reads as zeros, which is "empty": found here at once (the
        // consumer itself says so only after 64 empty polls and a clock tick, seconds for an idle
        // relay). One fence and two loads an empty poll; no syscall.
        if corrupt || (empty && self.consumer.segment().was_truncated()) {
            self.stop_at_corrupt_source();
        }
        let first = first?;
        // The payloads are copied into the body: if a truncation of the source ring's file put
        // zeros under them meanwhile, none of them is sent (they are lost with the ring). One
        // fence and two loads a DATA message.
        if self.consumer.segment().was_truncated() {
            self.stop_at_corrupt_source();
            let from = self.committed_next;
            self.rewind_to(from);
            return None;
        }
        self.in_flight.push_back(InFlight { first, last: self.sent_next - 1, records: count, bytes: batch_bytes });
        self.in_flight_records += count;
        self.in_flight_bytes += batch_bytes;
        self.sent_high = self.sent_high.max(self.sent_next);
        let header =
            wire::data_header(&self.config.origin, &self.config.stream, self.epoch, from, self.released_next, count);
        self.sent_since_rewind += 1;
        let c = &self.counters;
        Counters::add(&c.data_messages, 1);
        Counters::add(&c.records_sent, count as u64);
        Counters::add(&c.bytes_sent, batch_bytes as u64);
        self.last_body_len = body.byte_len();
        Some(vec![header, body.into_bytes()])
    }

    /// The source ring cannot be read on (a corrupt record header, or its file truncated): the
    /// route stops there, counted once and flagged for `/health`.
    fn stop_at_corrupt_source(&mut self) {
        if !self.source_stopped {
            self.source_stopped = true;
            Counters::add(&self.counters.source_corrupt, 1);
            self.counters.source_blocked.store(1, Relaxed);
        }
    }

    fn publish_gauges(&self) {
        let c = &self.counters;
        c.in_flight_records.store(self.in_flight_records as u64, Relaxed);
        c.in_flight_bytes.store(self.in_flight_bytes as u64, Relaxed);
        c.breaker_state.store(self.breaker.state() as u64, Relaxed);
    }
}

/// A DATA message in flight: the positions of its first and last records, how many records
/// and payload bytes it holds.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    first: u64,
    last: u64,
    records: usize,
    bytes: usize,
}

/// Writes `letter` into the dead-letter ring: `Ok(true)` written, `Ok(false)` dropped (no ring,
/// or too large for it), `Err` the ring is full or has lost its consumer (retry later).
fn write_dead_letter(ring: &mut Option<Producer>, letter: &DeadLetter<'_>) -> Result<bool, ()> {
    let Some(producer) = ring else { return Ok(false) };
    match producer.try_reserve(letter.encoded_len()) {
        Ok(mut grant) => {
            letter.write_to(&mut grant);
            grant.set_message_type(letter.message_type);
            grant.commit();
            Ok(true)
        }
        Err(TrySendError::TooLarge { .. } | TrySendError::Corrupt(_)) => Ok(false),
        Err(TrySendError::Full | TrySendError::Disconnected) => Err(()),
    }
}
