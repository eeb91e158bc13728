//! The receiving end: commits records of inbound streams into local rings, then acknowledges.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ipc_core::{Producer, TrySendError};

use super::checkpoint::{CheckpointError, Checkpoints, StreamState};
use super::counters::Counters;
use super::dedup::{DedupConfig, MessageIds, SeenIds};
use crate::wire::{self, Ack, Data, Frame, FrameError, RejectReason, Rejected, Welcome};

/// A local ring that inbound records of one route are committed into.
pub struct Route {
    producer: Producer,
    ids: Option<(Box<dyn MessageIds>, SeenIds)>,
}

impl Route {
    /// Records are committed as they come (deduplicated by position only).
    pub fn new(producer: Producer) -> Route {
        Route { producer, ids: None }
    }

    /// An envelope route: each payload must yield a `message_id` (else it is rejected as
    /// invalid), and an id seen within the `dedup` window is dropped as a duplicate.
    pub fn with_message_ids(producer: Producer, ids: impl MessageIds + 'static, dedup: DedupConfig) -> Route {
        Route { producer, ids: Some((Box::new(ids), SeenIds::new(dedup))) }
    }
}

/// Bounds of a [`Receiver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Most inbound streams `(origin, stream)` remembered (default 1024); HELLO or DATA for
    /// another is dropped and counted.
    pub max_streams: usize,
    /// Earlier source-ring epochs remembered per stream, whose DATA is refused as stale
    /// (default 8).
    pub retired_epochs: usize,
    /// How long [`Receiver::handle_from`] may hold back an ACK that only moves a stream on, so
    /// that one ACK answers several DATA messages (default zero: every DATA message is answered
    /// at once). The records are committed and the checkpoint saved as before; only the ACK
    /// waits, and what it acknowledges stays leased in the sender's ring meanwhile. Keep it far
    /// below the sender's request timeout.
    pub ack_delay: Duration,
    /// A held-back ACK goes out at once when it covers this many records (default 8192)...
    pub ack_records: u64,
    /// ...or this many payload bytes (default 4 MiB): both well inside a sender's default
    /// in-flight window (65536 records, 16 MiB), which would otherwise stall until `ack_delay`.
    pub ack_bytes: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_streams: 1024,
            retired_epochs: 8,
            ack_delay: Duration::ZERO,
            ack_records: 8192,
            ack_bytes: 4 << 20,
        }
    }
}

/// An ACK held back by [`Receiver::handle_from`]: what was saved last for its stream.
struct HeldAck {
    peer: Vec<u8>,
    ack: Ack,
    /// When the oldest DATA message it answers was handled.
    since: Instant,
    records: u64,
    bytes: u64,
}

/// The receiving end of a relay link. Socket-agnostic: [`handle`](Self::handle) takes one
/// message from a sender and returns the reply to send back to that sender (behind a ROUTER,
/// strip the routing id before and put it back after).
///
/// Records are committed into the route's local ring before they are acknowledged, and the
/// per-stream position is saved (checkpoint file) before the ACK goes out.
pub struct Receiver {
    config: ReceiverConfig,
    routes: HashMap<String, Route>,
    checkpoints: Checkpoints,
    counters: Arc<Counters>,
    /// Held-back ACKs, per `(origin, stream)`.
    held: HashMap<(String, String), HeldAck>,
}

impl Receiver {
    /// A receiver committing into `routes` (route name → local ring). With `checkpoint`, what
    /// was committed is saved to (and recovered from) that file; a recovered entry whose local
    /// ring has another epoch now (the ring was recreated) starts that stream afresh.
    pub fn new(
        config: ReceiverConfig,
        routes: impl IntoIterator<Item = (String, Route)>,
        checkpoint: Option<&Path>,
    ) -> Result<Receiver, CheckpointError> {
        let routes: HashMap<String, Route> = routes.into_iter().collect();
        let mut checkpoints = match checkpoint {
            Some(path) => Checkpoints::load(path)?,
            None => Checkpoints::default(),
        };
        for ((_, stream), state) in checkpoints.streams.iter_mut() {
            let local = routes.get(stream).map_or(0, |r| r.producer.segment().epoch());
            if state.local_epoch != local {
                state.next = 0;
                state.rejects.clear();
                state.local_epoch = local;
            }
        }
        Ok(Receiver { config, routes, checkpoints, counters: Arc::new(Counters::default()), held: HashMap::new() })
    }

    /// The counters (shared: clone the `Arc` to read them elsewhere).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Every record of `(origin, stream)` below this position is done (committed, dropped as a
    /// duplicate, or rejected), for the stream's current epoch: `(epoch, next)`.
    pub fn next_expected(&self, origin: &str, stream: &str) -> Option<(u64, u64)> {
        self.checkpoints.streams.get(&(origin.to_owned(), stream.to_owned())).map(|s| (s.epoch, s.next))
    }

    /// Handles one message from a sender; returns the reply to send back, if any. Messages that
    /// fail to decode are counted (`malformed`) and get no reply. Every DATA message is
    /// answered at once (whatever [`ReceiverConfig::ack_delay`] says).
    pub fn handle<P: AsRef<[u8]>>(&mut self, parts: &[P], now: Instant) -> Option<Vec<Vec<u8>>> {
        self.handle_message(None, parts, now)
    }

    /// [`handle`](Self::handle) for a message from `peer` (e.g. its ROUTER routing id): with a
    /// nonzero [`ReceiverConfig::ack_delay`], an ACK that only moves the stream on (records
    /// committed, none rejected, the local ring not full) is held back instead of returned, to
    /// be answered together with the DATA messages that follow it; [`due_acks`](Self::due_acks)
    /// hands it out, addressed to the `peer` of the latest of them. Every other reply is
    /// returned at once.
    pub fn handle_from<P: AsRef<[u8]>>(&mut self, peer: &[u8], parts: &[P], now: Instant) -> Option<Vec<Vec<u8>>> {
        self.handle_message(Some(peer), parts, now)
    }

    /// The held-back ACKs due at `now` (the oldest DATA message each answers was handled
    /// [`ReceiverConfig::ack_delay`] ago), or all of them with `all` (call it so before the
    /// event loop sleeps): `(peer, parts)` each. Allocates nothing when none is held.
    pub fn due_acks(&mut self, now: Instant, all: bool) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        let mut out = Vec::new();
        if self.held.is_empty() {
            return out;
        }
        let delay = self.config.ack_delay;
        self.held.retain(|_, held| {
            if !all && now.saturating_duration_since(held.since) < delay {
                return true;
            }
            out.push((std::mem::take(&mut held.peer), Frame::Ack(held.ack.clone()).encode()));
            false
        });
        Counters::add(&self.counters.acks, out.len() as u64);
        out
    }

    /// When the next held-back ACK falls due; `None` when none is held.
    pub fn next_ack_due(&self) -> Option<Instant> {
        self.held.values().map(|held| held.since + self.config.ack_delay).min()
    }

    fn handle_message<P: AsRef<[u8]>>(
        &mut self,
        peer: Option<&[u8]>,
        parts: &[P],
        now: Instant,
    ) -> Option<Vec<Vec<u8>>> {
        // A DATA body is checked by `on_data`, in the pass that commits it where it can be.
        let frame = match wire::decode_deferred(parts) {
            Ok(frame) => frame,
            Err(e) => {
                if let FrameError::UnsupportedVersion(_) = e {
                    Counters::add(&self.counters.unsupported_version, 1);
                }
                Counters::add(&self.counters.malformed, 1);
                return None;
            }
        };
        match frame {
            Frame::Hello(h) => {
                // The WELCOME says at least what a held ACK would.
                self.held.remove(&(h.origin.clone(), h.stream.clone()));
                let state = self.stream(&h.origin, &h.stream, h.epoch)?;
                let welcome = welcome(&h.stream, h.epoch, state);
                Some(Frame::Welcome(welcome).encode())
            }
            Frame::Data(d) => self.on_data(d, peer, now),
            Frame::Welcome(_) | Frame::Ack(_) => {
                Counters::add(&self.counters.malformed, 1);
                None
            }
        }
    }

    fn on_data(&mut self, d: Data<'_>, peer: Option<&[u8]>, now: Instant) -> Option<Vec<Vec<u8>>> {
        let c = Arc::clone(&self.counters);
        let Data { origin, stream, epoch, released, records } = d;
        let key = (origin, stream);
        // The body came unchecked (`decode_deferred`). In the common case — a known stream of
        // this epoch, records that follow on, no reject to forget, a plain route — it is
        // checked in the pass that commits its records, and a malformed one undoes that pass
        // (nothing published, nothing saved, nothing counted but `malformed`). Anything else
        // could change state before the records are read (a new stream saved, a WELCOME for a
        // gap, rejects forgotten), so there the body is checked first, as `decode` does.
        let checked_in_pass = self.routes.get(&key.1).is_some_and(|r| r.ids.is_none())
            && self.checkpoints.streams.get(&key).is_some_and(|state| {
                state.epoch == epoch
                    && records.from() <= state.next
                    && state.rejects.front().is_none_or(|r| r.position >= released)
            });
        if !checked_in_pass && records.validate().is_err() {
            Counters::add(&c.malformed, 1);
            return None;
        }
        let local = self.routes.get(&key.1).map_or(0, |r| r.producer.segment().epoch());
        let state = stream_state(&mut self.checkpoints, &self.config, &c, &key, epoch, local)?;
        if records.from() > state.next {
            // Records between were lost on the way (a DATA message dropped with a connection):
            // tell the sender where to resume.
            Counters::add(&c.gaps, 1);
            return Some(Frame::Welcome(welcome(&key.1, epoch, state)).encode());
        }
        let before = (state.next, state.rejects.len());
        while state.rejects.front().is_some_and(|r| r.position < released) {
            state.rejects.pop_front();
        }
        let pruned = state.rejects.len() != before.1;
        let rejects_kept = state.rejects.len();
        let next_kept = state.next;
        let mut busy = false;
        let (mut committed, mut bytes, mut duplicates) = (0u64, 0u64, 0u64);
        let mut rejected_by = [0u64; 3];
        let mut id_duplicates = 0u64;
        let route = self.routes.get_mut(&key.1);
        let reject = |state: &mut StreamState, counts: &mut [u64; 3], position: u64, reason: RejectReason| -> bool {
            if state.rejects.len() >= wire::MAX_REJECTS {
                return false;
            }
            counts[reason.index()] += 1;
            state.rejects.push_back(Rejected { position, reason });
            state.next = position + 1;
            true
        };
        let mut body = records.checked();
        // Where the pass ends: the body read to its end, or the first malformed record.
        let read: Result<(), wire::FrameError> = (|| {
            match route {
                None => {
                    while let Some(rec) = body.next_checked()? {
                        if rec.position < state.next {
                            duplicates += 1;
                        } else if !reject(state, &mut rejected_by, rec.position, RejectReason::UnknownRoute) {
                            busy = true;
                            break;
                        }
                    }
                    body.finish()
                }
                Some(route) => {
                    let max = route.producer.max_message_len();
                    let mut batch = route.producer.batch();
                    while let Some(rec) = body.next_checked()? {
                        if rec.position < state.next {
                            duplicates += 1;
                            continue;
                        }
                        if rec.payload.len() > max {
                            if !reject(state, &mut rejected_by, rec.position, RejectReason::TooLarge) {
                                busy = true;
                                break;
                            }
                            continue;
                        }
                        let mut id = None;
                        if let Some((ids, seen)) = &mut route.ids {
                            match ids.message_id(rec.payload) {
                                Err(_) => {
                                    if !reject(state, &mut rejected_by, rec.position, RejectReason::InvalidEnvelope) {
                                        busy = true;
                                        break;
                                    }
                                    continue;
                                }
                                Ok(found) if seen.contains(&found, now) => {
                                    id_duplicates += 1;
                                    state.next = rec.position + 1;
                                    continue;
                                }
                                Ok(found) => id = Some(found),
                            }
                        }
                        match batch.try_reserve(rec.payload.len(), rec.message_type) {
                            Ok(space) => {
                                space.copy_from_slice(rec.payload);
                                if let (Some(found), Some((_, seen))) = (id, &mut route.ids) {
                                    seen.insert(found, now);
                                }
                                state.next = rec.position + 1;
                                committed += 1;
                                bytes += rec.payload.len() as u64;
                            }
                            Err(TrySendError::TooLarge { .. }) => {
                                if !reject(state, &mut rejected_by, rec.position, RejectReason::TooLarge) {
                                    busy = true;
                                    break;
                                }
                            }
                            Err(TrySendError::Full | TrySendError::Disconnected | TrySendError::Corrupt(_)) => {
                                busy = true;
                                break;
                            }
                        }
                    }
                    // The records not taken must be well formed too before any is published:
                    // dropping the batch publishes nothing.
                    body.finish()?;
                    batch.commit();
                    if let Some((_, seen)) = &route.ids {
                        c.ids_expired.store(seen.expired(), Relaxed);
                        c.ids_evicted.store(seen.evicted(), Relaxed);
                    }
                    Ok(())
                }
            }
        })();
        if read.is_err() {
            // Only a body left to this pass can fail here (one checked before cannot): nothing
            // of it was published, and the stream is put back as it was.
            state.next = next_kept;
            state.rejects.truncate(rejects_kept);
            Counters::add(&c.malformed, 1);
            return None;
        }
        Counters::add(&c.records_committed, committed);
        Counters::add(&c.bytes_committed, bytes);
        Counters::add(&c.duplicates_dropped, duplicates);
        Counters::add(&c.id_duplicates_dropped, id_duplicates);
        for (counter, &n) in c.rejects.iter().zip(&rejected_by) {
            Counters::add(counter, n);
        }
        if busy {
            Counters::add(&c.busy, 1);
        }
        let ack = Ack {
            stream: key.1.clone(),
            epoch,
            next: state.next,
            busy,
            rejects: state.rejects.iter().copied().collect(),
        };
        let moved = state.next != before.0;
        let rejected = state.rejects.len() > rejects_kept;
        if (state.next, state.rejects.len()) != before || pruned {
            if self.checkpoints.store().is_err() {
                // Committed but not saved: withhold the ACK, so that a crash now cannot widen
                // the duplicate window past this message (the sender resends; the records are
                // dropped as duplicates while this process lives). An ACK held back before
                // names only what was saved then: it may still go.
                Counters::add(&c.checkpoint_failures, 1);
                return None;
            }
        }
        let held = self.held.remove(&key);
        // Only plain progress waits; a refusal, a full ring, or a resend the receiver already
        // had is answered at once, so the sender can act on it.
        let hold = peer.filter(|_| self.config.ack_delay > Duration::ZERO && moved && !busy && !rejected);
        if let Some(peer) = hold {
            let (since, records, held_bytes) = match held {
                Some(h) => (h.since, h.records + committed, h.bytes + bytes),
                None => (now, committed, bytes),
            };
            if records < self.config.ack_records && held_bytes < self.config.ack_bytes {
                let held = HeldAck { peer: peer.to_vec(), ack, since, records, bytes: held_bytes };
                self.held.insert(key, held);
                return None;
            }
        }
        Counters::add(&c.acks, 1);
        Some(Frame::Ack(ack).encode())
    }

    fn stream(&mut self, origin: &str, stream: &str, epoch: u64) -> Option<&mut StreamState> {
        let local = self.routes.get(stream).map_or(0, |r| r.producer.segment().epoch());
        let c = Arc::clone(&self.counters);
        let key = (origin.to_owned(), stream.to_owned());
        let state = stream_state(&mut self.checkpoints, &self.config, &c, &key, epoch, local)?;
        Some(state)
    }
}

fn welcome(stream: &str, epoch: u64, state: &StreamState) -> Welcome {
    Welcome { stream: stream.to_owned(), epoch, next: state.next, rejects: state.rejects.iter().copied().collect() }
}

/// The state of `(origin, stream)` at `epoch`, made (and saved) if new; `None` (counted) when
/// `epoch` is one the stream moved on from, or too many streams are known.
fn stream_state<'a>(
    checkpoints: &'a mut Checkpoints,
    config: &ReceiverConfig,
    c: &Counters,
    key: &(String, String),
    epoch: u64,
    local_epoch: u64,
) -> Option<&'a mut StreamState> {
    let known = checkpoints.streams.len();
    let changed = match checkpoints.streams.get_mut(key) {
        Some(state) if state.epoch == epoch => false,
        Some(state) if state.retired.contains(&epoch) => {
            Counters::add(&c.stale_epochs, 1);
            return None;
        }
        Some(state) => {
            // The source ring was recreated: a new stream of positions from 0.
            state.retired.push_back(state.epoch);
            while state.retired.len() > config.retired_epochs {
                state.retired.pop_front();
            }
            state.epoch = epoch;
            state.next = 0;
            state.rejects.clear();
            true
        }
        None if known >= config.max_streams => {
            Counters::add(&c.streams_refused, 1);
            return None;
        }
        None => {
            let fresh = StreamState { epoch, next: 0, local_epoch, retired: VecDeque::new(), rejects: VecDeque::new() };
            checkpoints.streams.insert(key.clone(), fresh);
            true
        }
    };
    if changed && checkpoints.store().is_err() {
        Counters::add(&c.checkpoint_failures, 1);
    }
    checkpoints.streams.get_mut(key)
}
