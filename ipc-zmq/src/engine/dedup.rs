//! Deduplication of envelopes by `message_id`, for routes that carry envelopes.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The payload is not a valid envelope (the record is rejected with
/// [`RejectReason::InvalidEnvelope`](crate::wire::RejectReason::InvalidEnvelope)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid envelope")]
pub struct InvalidEnvelope;

/// Reads the 16-byte `message_id` of an envelope payload. Pluggable so that this crate does
/// not depend on `schemas` (the relay binary plugs `schemas::envelope` verification in); any
/// `Fn(&[u8]) -> Result<[u8; 16], InvalidEnvelope> + Send` is one.
pub trait MessageIds: Send {
    /// The id of the envelope in `payload`, or why it is not a valid envelope.
    fn message_id(&self, payload: &[u8]) -> Result<[u8; 16], InvalidEnvelope>;
}

impl<F: Fn(&[u8]) -> Result<[u8; 16], InvalidEnvelope> + Send> MessageIds for F {
    fn message_id(&self, payload: &[u8]) -> Result<[u8; 16], InvalidEnvelope> {
        self(payload)
    }
}

/// Bounds of the seen-id window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupConfig {
    /// An id is forgotten this long after it was first seen (default 24 h).
    pub max_age: Duration,
    /// Most ids remembered; the oldest is forgotten first (default 1 000 000, about 40 MB).
    pub max_ids: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig { max_age: Duration::from_secs(24 * 3600), max_ids: 1_000_000 }
    }
}

/// The ids seen in the window, oldest first. An id forgotten (expired or evicted) and seen
/// again is delivered again: each forgetting is counted.
///
/// ```
/// use std::time::{Duration, Instant};
/// use ipc_zmq::engine::{DedupConfig, SeenIds};
/// let mut seen = SeenIds::new(DedupConfig { max_age: Duration::from_secs(60), max_ids: 2 });
/// let t0 = Instant::now();
/// assert!(seen.first_sighting([1; 16], t0));
/// assert!(!seen.first_sighting([1; 16], t0));
/// assert!(seen.first_sighting([1; 16], t0 + Duration::from_secs(61))); // expired
/// assert_eq!(seen.expired(), 1);
/// ```
#[derive(Debug)]
pub struct SeenIds {
    config: DedupConfig,
    ids: HashMap<[u8; 16], Instant>,
    order: VecDeque<([u8; 16], Instant)>,
    expired: u64,
    evicted: u64,
}

impl SeenIds {
    /// An empty window.
    pub fn new(config: DedupConfig) -> SeenIds {
        SeenIds { config, ids: HashMap::new(), order: VecDeque::new(), expired: 0, evicted: 0 }
    }

    /// Whether `id` was not seen in the window (it is remembered from now on).
    pub fn first_sighting(&mut self, id: [u8; 16], now: Instant) -> bool {
        if self.contains(&id, now) {
            return false;
        }
        self.insert(id, now);
        true
    }

    /// Whether `id` is in the window (forgetting what aged out by `now` first).
    pub fn contains(&mut self, id: &[u8; 16], now: Instant) -> bool {
        self.expire(now);
        self.ids.contains_key(id)
    }

    /// Remembers `id` from `now` on (call after [`contains`](Self::contains) said it is new).
    pub fn insert(&mut self, id: [u8; 16], now: Instant) {
        while self.ids.len() >= self.config.max_ids.max(1) {
            let Some((old, _)) = self.order.pop_front() else { break };
            self.ids.remove(&old);
            self.evicted += 1;
        }
        self.ids.insert(id, now);
        self.order.push_back((id, now));
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(id, seen)) = self.order.front() {
            if now.saturating_duration_since(seen) < self.config.max_age {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&id);
            self.expired += 1;
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Ids forgotten because they aged out.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Ids forgotten to stay within `max_ids`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}
