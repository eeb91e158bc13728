//! JetStream → ring: commit each message of a durable pull consumer, then acknowledge it.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_nats::header::{HeaderName, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, Message, consumer};
use futures_util::{FutureExt, StreamExt};
use ipc_core::{Producer, TrySendError, WriteBatch};

use crate::checkpoint::{Checkpoint, CheckpointError, State};
use crate::counters::Counters;
use crate::{MESSAGE_TYPE_HEADER, PACK_ENTRY_HEADER, PACK_HEADER};

/// Which consumer a [`Feeder`] reads and how.
#[derive(Clone, Debug)]
pub struct FeederConfig {
    /// The stream read.
    pub stream: String,
    /// The durable consumer's name (made if missing).
    pub durable: String,
    /// Only messages on this subject (default: all of the stream's).
    pub filter_subject: Option<String>,
    /// Most messages delivered and not acknowledged, and most committed in one batch
    /// (default 256).
    pub batch: usize,
    /// How long JetStream waits for an acknowledgement before delivering again (default 30 s).
    pub ack_wait: Duration,
    /// Most message ids remembered to drop duplicates (default 100 000); the oldest is
    /// forgotten first.
    pub dedup_max_ids: usize,
    /// Where the feeder keeps what it has committed (see the crate docs); `None`: in memory
    /// only, so a crash replays what the durable consumer had not acknowledged.
    pub checkpoint: Option<PathBuf>,
    /// First wait after a failure (default 100 ms); doubles up to `retry_max` (default 5 s).
    pub retry_min: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
}

impl FeederConfig {
    /// The defaults for `stream` and `durable`.
    pub fn new(stream: &str, durable: &str) -> FeederConfig {
        FeederConfig {
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            filter_subject: None,
            batch: 256,
            ack_wait: Duration::from_secs(30),
            dedup_max_ids: 100_000,
            checkpoint: None,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// The message ids of the last records committed, oldest first, bounded by count. An id is kept
/// as 128 bits of two keyed hashes (random keys per process), not as a string: no allocation
/// per record, and a false match (a record dropped as a duplicate it is not) needs two ids to
/// collide in both hashes, about 1 in 10^33 per lookup with a full window, and cannot be aimed
/// at without the keys.
struct SeenIds {
    max: usize,
    keys: (RandomState, RandomState),
    ids: HashSet<u128, BuildHasherDefault<FoldHasher>>,
    order: VecDeque<u128>,
}

impl SeenIds {
    fn new(max: usize) -> SeenIds {
        SeenIds { max, keys: (RandomState::new(), RandomState::new()), ids: HashSet::default(), order: VecDeque::new() }
    }

    fn key(&self, id: &str) -> u128 {
        let (a, b) = (self.keys.0.hash_one(id), self.keys.1.hash_one(id));
        (u128::from(a) << 64) | u128::from(b)
    }

    fn contains(&self, key: u128) -> bool {
        self.ids.contains(&key)
    }

    fn insert(&mut self, key: u128) {
        while self.ids.len() >= self.max.max(1) {
            let Some(old) = self.order.pop_front() else { break };
            self.ids.remove(&old);
        }
        if self.ids.insert(key) {
            self.order.push_back(key);
        }
    }
}

/// The hasher of [`SeenIds`]' set: its keys are keyed hashes already, so it only folds them.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
}

/// Commits a durable JetStream consumer's messages into a local ring, each exactly once.
///
/// Messages are committed in batches, each acknowledged (cumulatively: the consumer acks all)
/// only after its commit. Two guards drop duplicates: the checkpoint's stream sequence (every
/// message at or below it is done, exact across crashes) and a window of message ids (a record
/// published twice, e.g. by a relay restarted after the stream's duplicate window). Should a
/// delivery be lost on the way (a server killed mid-delivery: the consumer's delivery sequence
/// skips), the consumer is made again from the checkpoint, so nothing is skipped and the
/// ring's order is the stream's.
pub struct Feeder {
    config: FeederConfig,
    producer: Producer,
    state: State,
    /// `config.checkpoint`, open.
    checkpoint_file: Option<Checkpoint>,
    seen: SeenIds,
    /// The ids of the batch being committed (reused).
    batch_ids: HashSet<u128, BuildHasherDefault<FoldHasher>>,
    counters: Arc<Counters>,
}

/// A message of a delivered batch that goes into the ring.
struct Kept {
    /// Its index in the batch.
    index: usize,
    /// Its stream sequence.
    sequence: u64,
    /// Its message id's key, if it has one.
    id: Option<u128>,
    /// Its records, in the batch's `parts`.
    parts: std::ops::Range<usize>,
}

/// One record of a message: where its bytes are in the payload, and its type.
struct Part {
    start: usize,
    len: usize,
    message_type: u16,
}

/// What [`reserve`] reserved.
#[derive(Default)]
struct Reserved {
    /// Whole messages.
    messages: usize,
    /// Their records.
    records: u64,
    /// Their payload bytes.
    bytes: u64,
    /// Some records of the next message were reserved, not all: the batch must not commit.
    partial: bool,
    /// Why the next message's (next) record could not be reserved.
    held_by: Option<TrySendError>,
}

/// Reserves and fills, in `ring`, the records of `keep`'s messages, in order, until one does
/// not fit.
fn reserve(ring: &mut WriteBatch<'_>, keep: &[Kept], parts: &[Part], batch: &[Message]) -> Reserved {
    let mut done = Reserved::default();
    for kept in keep {
        let payload = &batch[kept.index].payload;
        let (mut records, mut bytes) = (0u64, 0u64);
        for part in &parts[kept.parts.clone()] {
            match ring.try_reserve(part.len, part.message_type) {
                Ok(space) => {
                    space.copy_from_slice(&payload[part.start..part.start + part.len]);
                    records += 1;
                    bytes += part.len as u64;
                }
                // Full (or no consumer yet): backpressure. Corrupt: nothing can be written.
                // Too large cannot happen (checked when unpacked) but would wait the same way.
                Err(e) => {
                    done.partial = records > 0;
                    done.held_by = Some(e);
                    return done;
                }
            }
        }
        done.messages += 1;
        done.records += records;
        done.bytes += bytes;
    }
    done
}

/// Reads a pack ([`PACK_HEADER`]) of `count` records into `parts`, refusing one that does not
/// parse exactly or that `producer`'s ring could not take whole (a record larger than its
/// largest, or records filling more than half of it: a pack goes in whole).
fn unpack(count: &str, payload: &[u8], producer: &Producer, parts: &mut Vec<Part>) -> Result<(), &'static str> {
    let count = count.parse::<usize>().map_err(|_| "bad pack header")?;
    // Every record takes at least its entry header: a count the payload cannot hold is a lie.
    if count < 2 || count > payload.len() / PACK_ENTRY_HEADER {
        return Err("bad pack header");
    }
    let (max_len, mut footprint) = (producer.max_message_len(), 0u64);
    let mut at = 0usize;
    for _ in 0..count {
        let Some(entry) = payload.get(at..at + PACK_ENTRY_HEADER) else { return Err("truncated pack") };
        let len = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        let message_type = u16::from_le_bytes([entry[4], entry[5]]);
        let start = at + PACK_ENTRY_HEADER;
        if len > payload.len() - start {
            return Err("truncated pack");
        }
        if len > max_len {
            return Err("a packed record larger than the ring's largest");
        }
        footprint += ipc_core::layout::record_len(len as u64);
        parts.push(Part { start, len, message_type });
        at = start + len;
    }
    if at != payload.len() {
        return Err("bytes after the pack's last record");
    }
    if footprint > producer.segment().capacity() as u64 / 2 {
        return Err("a pack larger than half the ring");
    }
    Ok(())
}

/// Why the consumer must be made again from the checkpoint.
struct Gap;

/// Why deliveries stopped (see [`Feeder::stalled`]).
enum Stall {
    /// Messages wait in the consumer and none come: it is made anew from the checkpoint.
    Undelivered(String),
    /// The consumer's leader had fallen behind the stream and its leadership was handed on:
    /// it is pulled from again as it is.
    LeaderBehind(String),
}

/// How long messages may wait in the consumer with none delivered before the pull is started
/// again (looked at, with a consumer info request, at most this often).
const STALLED: Duration = Duration::from_secs(5);

impl Feeder {
    /// A feeder committing into `producer`, resuming from the checkpoint file if there is one.
    pub fn new(config: FeederConfig, producer: Producer) -> Result<Feeder, CheckpointError> {
        let epoch = producer.segment().epoch();
        let (checkpoint_file, recorded) = match &config.checkpoint {
            Some(path) => {
                let (file, state) = Checkpoint::open(path)?;
                (Some(file), state)
            }
            None => (None, None),
        };
        let state =
            recorded.unwrap_or(State { epoch, ..State::default() }).resolve(epoch, producer.frontier().position);
        let seen = SeenIds::new(config.dedup_max_ids);
        Ok(Feeder {
            config,
            producer,
            state,
            checkpoint_file,
            seen,
            batch_ids: HashSet::default(),
            counters: Arc::new(Counters::default()),
        })
    }

    /// The counters (shared: clone the `Arc` to read them elsewhere).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Uses `counters` instead of the feeder's own (to share them with the connection's).
    pub fn set_counters(&mut self, counters: Arc<Counters>) {
        self.counters = counters;
    }

    /// Every stream sequence through this is committed (or dropped as a duplicate).
    pub fn committed(&self) -> u64 {
        self.state.committed
    }

    fn consumer_config(&self, deliver_policy: consumer::DeliverPolicy) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.config.durable.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::All,
            ack_wait: self.config.ack_wait,
            // No more in flight than one batch: what a lost delivery holds up is redelivered
            // before anything newer.
            max_ack_pending: self.config.batch.max(1) as i64,
            filter_subject: self.config.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// The durable consumer: as JetStream has it when there is no checkpoint (its
    /// acknowledgements say where to resume), else made again to start just past the
    /// checkpoint, which is exact.
    async fn open(
        &self,
        js: &jetstream::Context,
    ) -> Result<(jetstream::stream::Stream, consumer::PullConsumer), String> {
        let stream = js.get_stream(&self.config.stream).await.map_err(|e| e.to_string())?;
        if self.state.committed == 0 {
            let config = self.consumer_config(consumer::DeliverPolicy::All);
            let consumer =
                stream.get_or_create_consumer(&self.config.durable, config).await.map_err(|e| e.to_string())?;
            return Ok((stream, consumer));
        }
        // Not found is fine: the first start with a checkpoint, or a consumer removed by hand.
        let _ = stream.delete_consumer(&self.config.durable).await;
        let start = consumer::DeliverPolicy::ByStartSequence { start_sequence: self.state.committed + 1 };
        let consumer = stream.create_consumer(self.consumer_config(start)).await.map_err(|e| e.to_string())?;
        Ok((stream, consumer))
    }

    /// Why deliveries stopped, when they stopped for no good reason: the consumer has messages
    /// for this feeder (pending or unacknowledged) that it does not deliver, or its leader sees
    /// fewer messages than the stream's leader holds (a replica that fell behind, e.g. a server
    /// restarted that has not caught up: it delivers nothing past its own last message and
    /// reports nothing pending), in which case its leadership is handed to another replica.
    /// `None`: nothing waits for this feeder, or the cluster could not be asked.
    async fn stalled(
        &self,
        js: &jetstream::Context,
        stream: &jetstream::stream::Stream,
        consumer: &consumer::PullConsumer,
    ) -> Option<Stall> {
        let info = consumer.get_info().await.ok()?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return Some(Stall::Undelivered(format!(
                "{} messages pending and {} unacknowledged",
                info.num_pending, info.num_ack_pending
            )));
        }
        // The last message for this feeder, as the stream's leader has it.
        let last = match self.config.filter_subject.as_deref() {
            None => stream.get_info().await.ok()?.state.last_sequence,
            Some(subject) => stream.get_last_raw_message_by_subject(subject).await.ok()?.sequence,
        };
        let delivered = info.delivered.stream_sequence;
        if last <= delivered.max(self.state.committed) {
            return None;
        }
        let subject = format!("CONSUMER.LEADER.STEPDOWN.{}.{}", self.config.stream, self.config.durable);
        let answer = js.request::<_, (), serde_json::Value>(subject, &()).await;
        let handed = answer.as_ref().is_ok_and(|v| v.get("success").and_then(serde_json::Value::as_bool) == Some(true));
        if handed {
            Counters::add(&self.counters.leader_stepdowns, 1);
        }
        let why = format!(
            "the consumer's leader ({}) has delivered through stream sequence {delivered} and sees nothing pending, while the stream holds {last}: {}",
            info.cluster.as_ref().and_then(|c| c.leader.clone()).unwrap_or_default(),
            if handed { "its leadership was handed to another replica" } else { "handing its leadership on failed" }
        );
        // Not handed on (a consumer of one replica): made anew, perhaps on another server.
        Some(if handed { Stall::LeaderBehind(why) } else { Stall::Undelivered(why) })
    }

    /// Feeds until `stop` is set. Errors are counted, logged and retried: it only returns when
    /// stopped.
    pub async fn run(mut self, js: jetstream::Context, stop: Arc<AtomicBool>) {
        let c = self.counters.clone();
        let mut backoff = self.config.retry_min;
        // The consumer to pull from again as it is, instead of making it anew from the
        // checkpoint (after its leadership moved, with nothing of it unacknowledged).
        let mut reuse = None;
        while !stop.load(Relaxed) {
            let opened = match reuse.take() {
                Some(opened) => Ok(opened),
                None => self.open(&js).await,
            };
            let (stream, consumer) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    Counters::add(&c.errors, 1);
                    tracing::warn!(event = "jetstream_consumer_setup", stream = %self.config.stream, durable = %self.config.durable, error = %e, "cannot open the durable consumer; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_max);
                    continue;
                }
            };
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.config.batch.max(1))
                .heartbeat(Duration::from_secs(1))
                .expires(Duration::from_secs(5))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(e) => {
                    Counters::add(&c.errors, 1);
                    tracing::warn!(event = "jetstream_pull_failed", stream = %self.config.stream, error = %e, "cannot pull; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_max);
                    continue;
                }
            };
            tracing::info!(event = "jetstream_feeding", stream = %self.config.stream, durable = %self.config.durable, from = self.state.committed + 1, "feeding ring");
            let mut last_delivery = 0u64;
            // Deliveries can stop for good while the client sees nothing wrong: a pull request
            // lost with a server killed or a consumer leader moved, after which the client
            // only asks again `expires` + 5 s later; or a consumer whose leader is a replica
            // that fell behind the stream and delivers nothing more. So the pull is started
            // again after two idle heartbeats missed in a row (as the NATS clients' ordered
            // consumers do), or when the consumer has messages for this feeder (pending or
            // unacknowledged) and none came for `STALLED`; a leader fallen behind hands its
            // leadership on (see `stalled`). The consumer is made anew from the checkpoint,
            // unless nothing of it is unacknowledged: then it is pulled from again as it is.
            let mut missed_heartbeats = 0u32;
            let mut last_message = Instant::now();
            let mut last_check = Instant::now();
            let restart = loop {
                if stop.load(Relaxed) {
                    break None;
                }
                let first = match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
                    Err(_) => {
                        if last_message.elapsed() >= STALLED && last_check.elapsed() >= STALLED {
                            last_check = Instant::now();
                            if let Some(stall) = self.stalled(&js, &stream, &consumer).await {
                                let quiet = last_message.elapsed().as_millis();
                                break Some(match stall {
                                    Stall::Undelivered(why) => format!("nothing delivered for {quiet} ms: {why}"),
                                    Stall::LeaderBehind(why) => {
                                        // Nothing of it is unacknowledged: pulling from it again
                                        // goes on exactly after the last acknowledged message.
                                        reuse = Some((stream, consumer));
                                        format!("nothing delivered for {quiet} ms: {why}")
                                    }
                                });
                            }
                        }
                        continue;
                    }
                    Ok(None) => break Some("the pull ended".to_owned()),
                    Ok(Some(Err(e))) => {
                        Counters::add(&c.errors, 1);
                        tracing::warn!(event = "jetstream_pull_error", stream = %self.config.stream, error = %e, "pull error");
                        if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat {
                            missed_heartbeats += 1;
                            if missed_heartbeats >= 2 {
                                // With nothing of it unacknowledged, the consumer is pulled from
                                // again as it is (made anew, it could be placed on a lagging
                                // replica again); else, or when it cannot be asked, made anew.
                                if consumer.get_info().await.is_ok_and(|info| info.num_ack_pending == 0) {
                                    reuse = Some((stream, consumer));
                                }
                                break Some("two idle heartbeats missed in a row".to_owned());
                            }
                        }
                        continue;
                    }
                    Ok(Some(Ok(message))) => message,
                };
                missed_heartbeats = 0;
                let mut batch = vec![first];
                while batch.len() < self.config.batch.max(1) {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(message))) => batch.push(message),
                        _ => break,
                    }
                }
                match self.deliver(batch, &mut last_delivery, &stop).await {
                    Ok(()) => backoff = self.config.retry_min,
                    Err(Gap) => {
                        tracing::warn!(event = "jetstream_delivery_gap", stream = %self.config.stream, from = self.state.committed + 1, "a delivery was lost; making the consumer again from the checkpoint");
                        break None;
                    }
                }
                last_message = Instant::now();
            };
            if let Some(why) = restart {
                Counters::add(&c.pull_restarts, 1);
                tracing::warn!(event = "jetstream_pull_restart", stream = %self.config.stream, durable = %self.config.durable, from = self.state.committed + 1, reason = %why, "deliveries stopped; pulling again");
            }
        }
    }

    /// Commits `batch` (after dropping what is done already), then acknowledges it.
    async fn deliver(&mut self, batch: Vec<Message>, last_delivery: &mut u64, stop: &AtomicBool) -> Result<(), Gap> {
        let c = self.counters.clone();
        // What goes in the ring: per message, its records (ranges of its payload) in `parts`.
        let mut keep: Vec<Kept> = Vec::with_capacity(batch.len());
        let mut parts: Vec<Part> = Vec::with_capacity(batch.len());
        self.batch_ids.clear();
        let mut done_through = self.state.committed;
        // The latest delivery: acknowledging it acknowledges the whole batch.
        let mut newest: Option<(u64, usize)> = None;
        for (index, message) in batch.iter().enumerate() {
            let Ok(info) = message.info() else {
                Counters::add(&c.malformed, 1);
                continue;
            };
            let (sequence, delivery, delivered) = (info.stream_sequence, info.consumer_sequence, info.delivered);
            if *last_delivery != 0 && delivery > *last_delivery + 1 {
                // Deliveries in between never arrived: take nothing after them.
                return Err(Gap);
            }
            *last_delivery = delivery.max(*last_delivery);
            if newest.is_none_or(|(d, _)| delivery > d) {
                newest = Some((delivery, index));
            }
            if delivered > 1 {
                Counters::add(&c.redelivered, 1);
            }
            if sequence <= done_through {
                Counters::add(&c.duplicates_dropped, 1);
                continue;
            }
            done_through = sequence;
            let headers = message.headers.as_ref();
            let id = headers.and_then(|h| h.get(NATS_MESSAGE_ID)).map(|v| self.seen.key(v.as_str()));
            // Seen in an earlier batch, or earlier in this one.
            if id.is_some_and(|id| self.seen.contains(id) || self.batch_ids.contains(&id)) {
                Counters::add(&c.duplicates_dropped, 1);
                continue;
            }
            let first = parts.len();
            let pack = headers.and_then(|h| h.get(HeaderName::from_static(PACK_HEADER)));
            let parsed = match pack {
                Some(count) => unpack(count.as_str(), &message.payload, &self.producer, &mut parts),
                None => {
                    let message_type = match headers.and_then(|h| h.get(HeaderName::from_static(MESSAGE_TYPE_HEADER))) {
                        None => Ok(0),
                        Some(v) => v.as_str().parse::<u16>().map_err(|_| "bad type header"),
                    };
                    message_type.and_then(|message_type| {
                        if message.payload.len() > self.producer.max_message_len() {
                            return Err("larger than the ring's largest record");
                        }
                        parts.push(Part { start: 0, len: message.payload.len(), message_type });
                        Ok(())
                    })
                }
            };
            if let Err(why) = parsed {
                parts.truncate(first);
                Counters::add(&c.malformed, 1);
                tracing::warn!(event = "jetstream_malformed", stream = %self.config.stream, sequence, len = message.payload.len(), reason = why, "message dropped: it cannot go into the ring");
                continue;
            }
            if let Some(id) = id {
                self.batch_ids.insert(id);
            }
            keep.push(Kept { index, sequence, id, parts: first..parts.len() });
        }
        let mut next = 0;
        let mut waits = 0u32;
        while next < keep.len() {
            if stop.load(Relaxed) {
                return Ok(());
            }
            let from = self.producer.frontier().position;
            let mut ring = self.producer.batch();
            let mut reserved = reserve(&mut ring, &keep[next..], &parts, &batch);
            if reserved.partial {
                // A pack only partly reserved: none of it may be committed. The batch is made
                // again with the whole messages before it, which fit as they did (a batch
                // replaced uncommitted publishes nothing).
                ring = self.producer.batch();
                let whole = reserved.messages;
                reserved = reserve(&mut ring, &keep[next..next + whole], &parts, &batch);
                if reserved.partial || reserved.messages < whole {
                    // Cannot happen (the consumer only frees space); wait as for a full ring.
                    ring = self.producer.batch();
                    reserved = Reserved::default();
                }
            }
            let Reserved { messages: reserved, records, bytes, held_by, .. } = reserved;
            if reserved == 0 {
                waits += 1;
                if waits == 1000 {
                    if let Some(e) = held_by.filter(|e| !matches!(e, TrySendError::Full)) {
                        // Not mere backpressure: say so once per batch.
                        tracing::warn!(event = "jetstream_ring_blocked", stream = %self.config.stream, error = %e, "records wait: the local ring takes none");
                    }
                }
                if waits % 1000 == 0 {
                    // Held back by a full ring for a while: tell JetStream the batch is being
                    // worked on, so it does not deliver it again meanwhile.
                    let _ = batch[keep[next].index].ack_with(jetstream::AckKind::Progress).await;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let last = next + reserved - 1;
            // A message dropped after the last one reserved is done only once that one is.
            let pending = if last + 1 == keep.len() { done_through } else { keep[last].sequence };
            let intent = State { epoch: self.state.epoch, committed: self.state.committed, pending, from };
            if let Some(file) = &mut self.checkpoint_file {
                if let Err(e) = file.store(&intent) {
                    Counters::add(&c.checkpoint_failures, 1);
                    tracing::warn!(event = "jetstream_checkpoint_failed", error = %e, "cannot write the checkpoint; retrying");
                    tokio::time::sleep(self.config.retry_min).await;
                    continue;
                }
            }
            ring.commit();
            self.state.committed = pending;
            Counters::add(&c.committed, records);
            Counters::add(&c.bytes_committed, bytes);
            for kept in &mut keep[next..=last] {
                if let Some(id) = kept.id.take() {
                    self.seen.insert(id);
                }
            }
            next = last + 1;
        }
        if done_through > self.state.committed {
            // Only duplicates or dropped messages after the last commit.
            self.state.committed = done_through;
            if let Some(file) = &mut self.checkpoint_file {
                if file.store(&self.state).is_err() {
                    Counters::add(&c.checkpoint_failures, 1);
                }
            }
        }
        if let Some((_, index)) = newest {
            if batch[index].ack().await.is_err() {
                Counters::add(&c.ack_failures, 1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_core::RingBuilder;

    fn pack(records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (message_type, bytes) in records {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&message_type.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn a_pack_reads_as_its_records_and_anything_else_is_refused_whole() {
        let ring = RingBuilder::new(1 << 12).create_anonymous().unwrap();
        let producer = ring.producer().unwrap();
        let good = pack(&[(7, b"first"), (0, b""), (65535, b"third!")]);
        let mut parts = Vec::new();
        unpack("3", &good, &producer, &mut parts).unwrap();
        let read: Vec<(u16, &[u8])> = parts.iter().map(|p| (p.message_type, &good[p.start..p.start + p.len])).collect();
        assert_eq!(read, [(7, &b"first"[..]), (0, &b""[..]), (65535, &b"third!"[..])]);

        let too_long = pack(&[(1, &[0u8; 2048]), (1, b"x")]);
        let half = pack(&[(1, &[0u8; 1000]), (1, &[0u8; 1000]), (1, &[0u8; 1000])]);
        let mut lying = pack(&[(1, b"ab"), (2, b"cd")]);
        lying[0] = 200; // the first record claims more bytes than there are
        let mut trailing = good.clone();
        trailing.push(0);
        for (count, payload, why) in [
            ("2", &good[..], "bytes after the pack's last record"),
            ("4", &good[..], "truncated pack"),
            ("3", &good[..good.len() - 1], "truncated pack"),
            ("3", &trailing[..], "bytes after the pack's last record"),
            ("1", &good[..], "bad pack header"),
            ("0", &good[..], "bad pack header"),
            ("-3", &good[..], "bad pack header"),
            ("three", &good[..], "bad pack header"),
            ("99999999999999999999999", &good[..], "bad pack header"),
            ("1000000", &good[..], "bad pack header"),
            ("2", &[][..], "bad pack header"),
            ("2", &lying[..], "truncated pack"),
            ("2", &too_long[..], "a packed record larger than the ring's largest"),
            ("3", &half[..], "a pack larger than half the ring"),
        ] {
            let mut parts = Vec::new();
            assert_eq!(unpack(count, payload, &producer, &mut parts).err(), Some(why), "{count} {payload:?}");
        }
    }
}
