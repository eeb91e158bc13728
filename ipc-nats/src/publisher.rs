//! Ring → JetStream: publish every record, release it from the ring once JetStream stored it.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_nats::StatusCode;
use async_nats::header::{
    HeaderMap, HeaderName, HeaderValue, NATS_EXPECTED_LAST_MESSAGE_ID, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
    NATS_MESSAGE_ID,
};
use async_nats::jetstream;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use ipc_core::{Consumer, LeasesOutstanding, ReleaseMode, TryRecvError};
use tokio::io::unix::AsyncFd;

use crate::counters::Counters;
use crate::settings::{StreamSettings, ensure_stream};
use crate::{MESSAGE_TYPE_HEADER, PACK_ENTRY_HEADER, PACK_HEADER};

/// Reads the message id of an envelope record (`None`: not a valid envelope). The relay plugs
/// `schemas` envelope verification in, so this crate does not depend on it.
pub type MessageIdFn = Box<dyn Fn(&[u8]) -> Option<String> + Send>;

/// Where a [`Publisher`] publishes and how much it keeps in flight.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// The relay's name: the origin part of raw records' message ids.
    pub origin: String,
    /// The subject every record is published on.
    pub subject: String,
    /// The stream, created or updated at start.
    pub stream: StreamSettings,
    /// Most publishes awaiting their acknowledgement (default 1024).
    pub max_in_flight: usize,
    /// Chain publishes with `Nats-Expected-Last-Msg-Id`, so that after a failure (a server
    /// killed, a leader election) no later record can be stored before an earlier one (default
    /// `true`). Needs the stream to itself: another publisher's message in between fails the
    /// chain (and costs a republish, never a record).
    pub ordered: bool,
    /// First wait after a failure (default 100 ms); doubles up to `retry_max` (default 5 s).
    pub retry_min: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
    /// How long an acknowledgement may take before the publisher gives up on it and publishes
    /// again from that record (default 5 s).
    pub ack_timeout: Duration,
    /// Most records carried by one JetStream message (default 128; 1 turns packing off).
    /// Packing applies to raw rings (no envelope ids) with `ordered` on: the records the ring
    /// holds when the publisher looks, up to this many and `pack_max_bytes`, go out as one
    /// message (see [`PACK_HEADER`](crate::PACK_HEADER)), so JetStream's work per message
    /// (its id, its chain link, its acknowledgement) is shared by the records. A record alone
    /// goes out as a plain message, so at low rates nothing changes and nothing waits.
    pub pack_max_records: usize,
    /// A pack is closed once its payload reaches this many bytes (default 64 KiB): a pack is
    /// at most this plus one record. The feeding ring must hold a pack: one larger than half
    /// of it is dropped there as malformed.
    pub pack_max_bytes: usize,
}

/// Longest wait for an acknowledgement or a record before `stop` is looked at again.
const IDLE: Duration = Duration::from_millis(100);

impl PublisherConfig {
    /// The defaults for `origin`, `subject` and `stream`.
    pub fn new(origin: &str, subject: &str, stream: StreamSettings) -> PublisherConfig {
        PublisherConfig {
            origin: origin.to_owned(),
            subject: subject.to_owned(),
            stream,
            max_in_flight: 1024,
            ordered: true,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            pack_max_records: 128,
            pack_max_bytes: 64 << 10,
        }
    }
}

/// One published message awaiting its acknowledgement.
struct InFlight {
    /// The position of its (last) record.
    position: u64,
    /// Records in it.
    records: u32,
    /// When it was published: the acknowledgement is given up on `ack_timeout` later.
    sent: Instant,
    /// Acknowledged (`Some(duplicate)`), possibly ahead of an older record still waiting.
    acked: Option<bool>,
}

/// The next message to publish: one record, or a pack of them.
struct Outgoing {
    /// The position of its (last) record.
    position: u64,
    /// A lone record's message type (a pack carries its records' inside).
    message_type: u16,
    /// Records in it.
    records: u32,
    /// The message's payload: the record's bytes, or the pack.
    payload: Bytes,
    /// The records' payload bytes.
    record_bytes: u64,
}

/// A corrupt record in the source ring: its position and why.
type RingFault = (u64, ipc_core::CorruptReason);

/// What an acknowledgement said about the record it names.
enum AckReply {
    /// Stored (`duplicate`: it was stored already).
    Stored { duplicate: bool },
    /// Refused (a JetStream error, no responders, or a reply that is not an acknowledgement).
    Refused(String),
}

/// The part of a JetStream publish acknowledgement the publisher reads.
#[derive(serde::Deserialize)]
struct AckBody {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

impl AckReply {
    fn parse(message: &async_nats::Message) -> AckReply {
        if let Some(status) = message.status {
            if status != StatusCode::OK {
                return AckReply::Refused(format!("status {status}"));
            }
        }
        match serde_json::from_slice::<AckBody>(&message.payload) {
            // Stored messages have a stream sequence; anything else is not an acknowledgement.
            Ok(AckBody { error: None, seq, duplicate }) if seq > 0 => AckReply::Stored { duplicate },
            _ => AckReply::Refused(String::from_utf8_lossy(&message.payload[..message.payload.len().min(512)]).into()),
        }
    }
}

/// Reads `<prefix><generation>.<position>`, the reply subject of a publish.
fn parse_reply(subject: &str, prefix: &str) -> Option<(u64, u64)> {
    let (generation, position) = subject.strip_prefix(prefix)?.split_once('.')?;
    Some((parse_decimal(generation)?, parse_decimal(position)?))
}

/// A `u64` written as plain decimal digits (no sign, no padding beyond 20 digits), or `None`.
fn parse_decimal(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if digits { s.parse::<u64>().ok() } else { None }
}

/// Appends `n` in decimal to `out`, without the formatting machinery.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // The slice holds ASCII digits only.
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// Drains a local ring into a JetStream subject, at least once, in order.
///
/// A record is released from the ring only when JetStream acknowledged it, so when NATS is
/// slow or down the ring fills and its producer feels backpressure; nothing is lost when the
/// relay is killed (the ring keeps what was not acknowledged, and it is published again with
/// the same message ids, which the stream's duplicate window drops). After a failure the
/// publisher rewinds to the first unacknowledged record and publishes one record at a time
/// until JetStream stores one it did not have; then it pipelines again.
///
/// When it packs records (see [`PublisherConfig::pack_max_records`]), a pack published again
/// could hold other records than the one stored, so it does not lean on the duplicate window:
/// at start and after every failure it reads the subject's last message from the stream's
/// leader, releases every record through the position its id names (with `ordered`, what the
/// stream holds of this ring is exactly the records up to there), and publishes from the next
/// one, the first message sent with `Nats-Expected-Last-Subject-Sequence` set to that
/// message's sequence, so that anything stored in between (a write the client sent again
/// after a reconnect) fails it and the publisher looks again. The subject must be this
/// publisher's alone.
///
/// Acknowledgements come to one subscription of the publisher's own: each publish's reply
/// subject names the record (`<inbox>.<generation>.<position>`), so a reply is matched to its
/// record without a pending-request table, a channel or a timer per message, and replies to
/// publishes made before a rewind (an older generation) are told apart and ignored.
pub struct Publisher {
    // Before `consumer`: deregistered before the descriptor it watches closes.
    doorbell: Option<AsyncFd<RawFd>>,
    config: PublisherConfig,
    consumer: Consumer,
    ids: Option<MessageIdFn>,
    counters: Arc<Counters>,
}

impl Publisher {
    /// A publisher draining `consumer` (switched to explicit release and rewound to its first
    /// unreleased record). With `ids`, records are envelopes and their message id is the
    /// envelope's; otherwise `origin/epoch/position`.
    pub fn new(
        config: PublisherConfig,
        mut consumer: Consumer,
        ids: Option<MessageIdFn>,
    ) -> Result<Publisher, LeasesOutstanding> {
        consumer.set_release_mode(ReleaseMode::Explicit)?;
        consumer.rewind();
        Ok(Publisher { doorbell: None, config, consumer, ids, counters: Arc::new(Counters::default()) })
    }

    /// The counters (shared: clone the `Arc` to read them elsewhere).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Uses `counters` instead of the publisher's own (to share them with the connection's).
    pub fn set_counters(&mut self, counters: Arc<Counters>) {
        self.counters = counters;
    }

    /// Whether records are packed (see [`PublisherConfig::pack_max_records`]).
    fn packs(&self) -> bool {
        self.ids.is_none() && self.config.ordered && self.config.pack_max_records > 1
    }

    /// The next record as a message of its own (`Ok(None)`: the ring has none now).
    fn next_record(&mut self) -> Result<Option<Outgoing>, RingFault> {
        match self.consumer.try_recv() {
            Ok(record) => Ok(Some(Outgoing {
                position: record.position(),
                message_type: record.message_type(),
                records: 1,
                payload: Bytes::copy_from_slice(&record),
                record_bytes: record.len() as u64,
            })),
            Err(TryRecvError::Corrupt { position, reason }) => Err((position, reason)),
            Err(_) => Ok(None),
        }
    }

    /// Every record the ring holds now, up to the pack limits, as one message; a record alone
    /// as a plain message. `buf` is reused for the packs.
    fn next_pack(&mut self, buf: &mut BytesMut) -> Result<Option<Outgoing>, RingFault> {
        let max_records = self.config.pack_max_records.max(1);
        let max_bytes = self.config.pack_max_bytes;
        let mut batch = match self.consumer.read_batch(max_records) {
            Ok(batch) => batch,
            Err(TryRecvError::Corrupt { position, reason }) => return Err((position, reason)),
            Err(_) => return Ok(None),
        };
        // The pack is closed once it reaches `max_bytes`; the records after go back unread.
        let (mut take, mut size) = (0usize, 0usize);
        for record in batch.iter() {
            if take > 0 && size >= max_bytes {
                break;
            }
            take += 1;
            size += PACK_ENTRY_HEADER + record.payload.len();
        }
        batch.truncate(take);
        let mut records = batch.iter();
        let Some(first) = records.next() else { return Ok(None) };
        if take == 1 {
            return Ok(Some(Outgoing {
                position: first.position,
                message_type: first.message_type,
                records: 1,
                payload: Bytes::copy_from_slice(first.payload),
                record_bytes: first.payload.len() as u64,
            }));
        }
        buf.reserve(size);
        let mut position = first.position;
        let mut record_bytes = 0u64;
        for record in std::iter::once(first).chain(records) {
            // A record's length fits `u32`: the ring's records are at most half a ring, which
            // is below 4 GiB for every ring the crate makes (`max_message_len_for`).
            buf.put_u32_le(record.payload.len() as u32);
            buf.put_u16_le(record.message_type);
            buf.put_slice(record.payload);
            record_bytes += record.payload.len() as u64;
            position = record.position;
        }
        Ok(Some(Outgoing {
            position,
            message_type: 0,
            records: take as u32,
            payload: buf.split().freeze(),
            record_bytes,
        }))
    }

    /// Packing: reads the subject's last message from the stream's leader; when its id names a
    /// record of this ring (`<origin>/<epoch>/<position>`), every record through that position
    /// is stored, so it is released, and the ring is rewound to the next. Returns the
    /// message's subject sequence (0: the subject holds none), which the next publish must
    /// follow.
    async fn resume(&mut self, js: &jetstream::Context, id_prefix: &str) -> Result<u64, String> {
        let stream = js.get_stream(&self.config.stream.name).await.map_err(|e| e.to_string())?;
        let last = match stream.get_last_raw_message_by_subject(&self.config.subject).await {
            Ok(last) => last,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                self.consumer.rewind();
                return Ok(0);
            }
            Err(e) => return Err(e.to_string()),
        };
        let through = last
            .headers
            .get(NATS_MESSAGE_ID)
            .and_then(|id| id.as_str().strip_prefix(id_prefix))
            .and_then(parse_decimal);
        self.consumer.rewind();
        let (mut released, mut found) = (None, 0u64);
        if let Some(through) = through {
            loop {
                match self.consumer.try_recv() {
                    Ok(record) if record.position() <= through => {
                        released = Some(record.position());
                        found += 1;
                    }
                    Ok(record) => {
                        record.requeue();
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(position) = released {
                let _ = self.consumer.release_through(position);
                Counters::add(&self.counters.found_stored, found);
            }
        }
        tracing::info!(
            event = "jetstream_publish_resumed",
            subject = %self.config.subject,
            last_sequence = last.sequence,
            stored_through = ?through,
            released = ?released,
            found_stored = found,
            "publishing from the first record the stream does not hold"
        );
        Ok(last.sequence)
    }

    /// `<id_prefix><position>`: the id of a raw record, and of a pack (by its last record).
    fn position_id(&self, id_prefix: &str, position: u64) -> HeaderValue {
        let mut id = String::with_capacity(id_prefix.len() + 20);
        id.push_str(id_prefix);
        push_decimal(&mut id, position);
        // Digits after a prefix checked in `run`.
        id.parse::<HeaderValue>().unwrap_or_default()
    }

    /// The record's message id: the envelope's, or `<id_prefix><position>` (`origin/epoch/`).
    fn message_id(&self, id_prefix: &str, position: u64, payload: &[u8]) -> HeaderValue {
        if let Some(ids) = &self.ids {
            // An id that cannot be a header value (CR or LF in it) is refused like one that
            // cannot be read.
            if let Some(id) = ids(payload).and_then(|id| id.parse::<HeaderValue>().ok()) {
                return id;
            }
            Counters::add(&self.counters.invalid_envelopes, 1);
        }
        self.position_id(id_prefix, position)
    }

    /// Publishes until `stop` is set. Errors are counted, logged and retried: it only returns
    /// when stopped.
    pub async fn run(mut self, js: jetstream::Context, stop: Arc<AtomicBool>) {
        let c = self.counters.clone();
        let stream = self.config.stream.name.clone();
        let client = js.client();
        let mut backoff = self.config.retry_min;
        while !stop.load(Relaxed) {
            match ensure_stream(&js, &self.config.stream).await {
                Ok(()) => break,
                Err(e) => {
                    Counters::add(&c.errors, 1);
                    tracing::warn!(event = "jetstream_stream_setup", stream = %stream, error = %e, "cannot create or update the stream; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
        // The acknowledgements' subscription, made once: the client subscribes again by itself
        // after a reconnect.
        let inbox = client.new_inbox();
        let mut acks = loop {
            if stop.load(Relaxed) {
                return;
            }
            match client.subscribe(format!("{inbox}.>")).await {
                Ok(acks) => break acks,
                Err(e) => {
                    Counters::add(&c.errors, 1);
                    tracing::warn!(event = "jetstream_ack_subscribe", stream = %stream, error = %e, "cannot subscribe to publish acknowledgements; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        };
        let reply_prefix = format!("{inbox}.");
        let subject = async_nats::Subject::from(self.config.subject.as_str());
        // The origin goes into every message id, a header value: no CR or LF.
        let origin: String =
            self.config.origin.chars().map(|ch| if ch == '\r' || ch == '\n' { '_' } else { ch }).collect();
        let id_prefix = format!("{origin}/{}/", self.consumer.epoch());
        tracing::info!(event = "jetstream_publishing", stream = %stream, subject = %self.config.subject, "publishing ring");
        self.doorbell = self.consumer.pollable_doorbell().ok().and_then(|fd| {
            // SAFETY: `fd` is the consumer's pollable doorbell, owned by `self.consumer` and the
            // same descriptor for its whole life; the `AsyncFd` is `self.doorbell`, declared
            // before `consumer` so that it is dropped (deregistered) first.
            unsafe { AsyncFd::register(fd) }.ok()
        });
        backoff = self.config.retry_min;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut last_id: Option<HeaderValue> = None;
        // Bumped at every rewind: replies to what was published before it are ignored.
        let mut generation = 0u64;
        // One at a time, unchained, until JetStream stores a record it did not have: after a
        // (re)start or a failure, the records at the front may be stored already.
        // Packing: the stream is asked where this ring's copy ends before anything is published
        // (see the type's docs), at start and after every failure; `careful` stays off.
        let packing = self.packs();
        let mut careful = !packing;
        let mut resume = packing;
        // Packing: the subject sequence the first publish after a resume must follow.
        let mut anchor: Option<u64> = None;
        let mut pack = BytesMut::new();
        let mut reply_to = String::with_capacity(reply_prefix.len() + 42);
        while !stop.load(Relaxed) {
            if resume {
                match self.resume(&js, &id_prefix).await {
                    Ok(sequence) => {
                        anchor = Some(sequence);
                        resume = false;
                    }
                    Err(e) => {
                        Counters::add(&c.errors, 1);
                        tracing::warn!(event = "jetstream_resume_failed", stream = %stream, subject = %self.config.subject, error = %e, "cannot read where the stream's copy of the ring ends; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.retry_max);
                        continue;
                    }
                }
            }
            let window = if careful { 1 } else { self.config.max_in_flight.max(1) };
            let mut failed: Option<String> = None;
            while in_flight.len() < window {
                let next = if packing { self.next_pack(&mut pack) } else { self.next_record() };
                let Outgoing { position, message_type, records, payload, record_bytes } = match next {
                    Ok(Some(outgoing)) => outgoing,
                    Ok(None) => break,
                    Err((position, reason)) => {
                        Counters::add(&c.errors, 1);
                        tracing::error!(event = "jetstream_ring_corrupt", position, reason = ?reason, "the source ring is corrupt");
                        tokio::time::sleep(self.config.retry_max).await;
                        break;
                    }
                };
                let id = if records > 1 {
                    self.position_id(&id_prefix, position)
                } else {
                    self.message_id(&id_prefix, position, &payload)
                };
                let mut headers = HeaderMap::new();
                // Type 0 (raw records) travels as no header at all: the feeder reads a missing
                // type as 0, and every header costs the server and the feeder a parse. A pack
                // carries its records' types inside.
                if records > 1 {
                    headers.insert(HeaderName::from_static(PACK_HEADER), HeaderValue::from(records));
                } else if message_type != 0 {
                    headers.insert(HeaderName::from_static(MESSAGE_TYPE_HEADER), HeaderValue::from(message_type));
                }
                if let Some(sequence) = anchor.take() {
                    headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, HeaderValue::from(sequence));
                    last_id = None;
                } else if self.config.ordered && !careful {
                    if let Some(prev) = last_id.take() {
                        headers.insert(NATS_EXPECTED_LAST_MESSAGE_ID, prev);
                    }
                }
                if self.config.ordered {
                    last_id = Some(id.clone());
                }
                headers.insert(NATS_MESSAGE_ID, id);
                reply_to.clear();
                reply_to.push_str(&reply_prefix);
                push_decimal(&mut reply_to, generation);
                reply_to.push('.');
                push_decimal(&mut reply_to, position);
                let to = async_nats::Subject::from(reply_to.as_str());
                let publish = client.publish_with_reply_and_headers(subject.clone(), to, headers, payload);
                let mut publish = std::pin::pin!(publish);
                // Queued at once unless the client's queue is full (NATS slow or down): only
                // then is a timer set, so that a stop is not held up.
                let published = match publish.as_mut().now_or_never() {
                    Some(result) => result.map_err(|e| e.to_string()),
                    None => match tokio::time::timeout(self.config.ack_timeout, publish).await {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err("publish timed out (the client's queue stayed full)".into()),
                    },
                };
                match published {
                    Ok(()) => {
                        Counters::add(&c.published, u64::from(records));
                        Counters::add(&c.bytes_published, record_bytes);
                        if records > 1 {
                            Counters::add(&c.packs_published, 1);
                        }
                        in_flight.push_back(InFlight { position, records, sent: Instant::now(), acked: None });
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            c.in_flight.store(in_flight.len() as u64, Relaxed);
            if failed.is_none() {
                if in_flight.is_empty() {
                    self.wait_for_records().await;
                    continue;
                }
                // Wait for an acknowledgement (or, with room in the window, for a record), at
                // most until the oldest record's acknowledgement is overdue.
                let overdue = in_flight.front().map(|f| f.sent + self.config.ack_timeout);
                let until = overdue.map_or(Instant::now(), |t| t.min(Instant::now() + IDLE));
                let room = in_flight.len() < window;
                let mut reply = self.next_reply(&mut acks, room, until).await;
                // Then everything that is already there.
                while let Some(message) = reply {
                    match message {
                        None => {
                            failed = Some("the acknowledgement subscription ended".into());
                            break;
                        }
                        Some(message) => {
                            if let Err(e) =
                                self.take_reply(&message, &reply_prefix, generation, &mut in_flight, &mut careful)
                            {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    reply = acks.next().now_or_never();
                }
                let mut acked_through = None;
                while let Some(InFlight { position, acked: Some(_), .. }) = in_flight.front() {
                    acked_through = Some(*position);
                    in_flight.pop_front();
                }
                if let Some(position) = acked_through {
                    let _ = self.consumer.release_through(position);
                    backoff = self.config.retry_min;
                }
                if failed.is_none() && in_flight.front().is_some_and(|f| f.sent.elapsed() >= self.config.ack_timeout) {
                    failed = Some("publish acknowledgement timed out".into());
                }
                c.in_flight.store(in_flight.len() as u64, Relaxed);
            }
            if let Some(error) = failed {
                // Everything after the failure is published again: what JetStream stored of it
                // comes back as duplicates, in order.
                Counters::add(&c.errors, 1);
                Counters::add(&c.republishes, 1);
                tracing::warn!(
                    event = "jetstream_publish_failed",
                    stream = %stream,
                    subject = %self.config.subject,
                    in_flight = in_flight.len(),
                    error = %error,
                    "publish failed; publishing again from the first unacknowledged record"
                );
                in_flight.clear();
                c.in_flight.store(0, Relaxed);
                self.consumer.rewind();
                careful = !packing;
                resume = packing;
                anchor = None;
                last_id = None;
                generation += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.config.retry_max);
            }
        }
    }

    /// Waits until `until` for a reply on `acks` (`Some(None)`: the subscription ended); with
    /// `room`, a record arriving in the ring ends the wait too (`None`).
    async fn next_reply(
        &mut self,
        acks: &mut async_nats::Subscriber,
        room: bool,
        until: Instant,
    ) -> Option<Option<async_nats::Message>> {
        let mut until = until;
        let armed = match (room, &self.doorbell) {
            (true, Some(_)) => match self.consumer.arm_doorbell() {
                Ok(true) => true,
                // A record is there already: publish it first.
                Ok(false) => return acks.next().now_or_never(),
                Err(_) => false,
            },
            _ => false,
        };
        if room && !armed {
            // No doorbell to sleep on: look at the ring again in a millisecond.
            until = until.min(Instant::now() + Duration::from_millis(1));
        }
        let deadline = tokio::time::Instant::from_std(until);
        let reply = {
            let doorbell = async {
                match (&self.doorbell, armed) {
                    (Some(bell), true) => {
                        if let Ok(mut ready) = bell.readable().await {
                            ready.clear_ready();
                        }
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                reply = acks.next() => Some(reply),
                () = doorbell => None,
                () = tokio::time::sleep_until(deadline) => None,
            }
        };
        if armed {
            self.consumer.disarm_doorbell();
        }
        reply
    }

    /// Marks the record a reply names as acknowledged; `Err` when JetStream refused it.
    fn take_reply(
        &self,
        message: &async_nats::Message,
        reply_prefix: &str,
        generation: u64,
        in_flight: &mut VecDeque<InFlight>,
        careful: &mut bool,
    ) -> Result<(), String> {
        let c = &self.counters;
        let Some((of, position)) = parse_reply(message.subject.as_str(), reply_prefix) else {
            Counters::add(&c.stray_acks, 1);
            return Ok(());
        };
        if of != generation {
            // For a publish made before the last rewind: that record is published again.
            return Ok(());
        }
        let Ok(index) = in_flight.binary_search_by_key(&position, |f| f.position) else {
            Counters::add(&c.stray_acks, 1);
            return Ok(());
        };
        let slot = &mut in_flight[index];
        if slot.acked.is_some() {
            Counters::add(&c.stray_acks, 1);
            return Ok(());
        }
        match AckReply::parse(message) {
            AckReply::Stored { duplicate } => {
                Counters::add(&c.acked, u64::from(slot.records));
                if duplicate {
                    Counters::add(&c.acked_duplicates, u64::from(slot.records));
                } else {
                    *careful = false;
                }
                slot.acked = Some(duplicate);
                Ok(())
            }
            AckReply::Refused(why) => Err(why),
        }
    }

    /// Sleeps until the ring has a record (its pollable doorbell rings) or 100 ms pass.
    async fn wait_for_records(&mut self) {
        let Some(doorbell) = &self.doorbell else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            return;
        };
        match self.consumer.arm_doorbell() {
            Ok(true) => {
                if let Ok(Ok(mut ready)) = tokio::time::timeout(IDLE, doorbell.readable()).await {
                    ready.clear_ready();
                }
                self.consumer.disarm_doorbell();
            }
            Ok(false) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_as_format_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut out = String::from("x/");
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x/{n}"));
        }
    }

    #[test]
    fn a_reply_subject_names_a_generation_and_a_position_or_nothing() {
        let prefix = "_INBOX.abc.";
        assert_eq!(parse_reply("_INBOX.abc.3.4096", prefix), Some((3, 4096)));
        assert_eq!(parse_reply(&format!("_INBOX.abc.0.{}", u64::MAX), prefix), Some((0, u64::MAX)));
        for bad in [
            "_INBOX.abd.3.4096",
            "_INBOX.abc.3",
            "_INBOX.abc.3.",
            "_INBOX.abc..4096",
            "_INBOX.abc.3.40x6",
            "_INBOX.abc.3.4096.1",
            "_INBOX.abc.-3.4096",
            "_INBOX.abc.+3.4096",
            "_INBOX.abc.3.18446744073709551616",
            "_INBOX.abc.3.000000000000000000004096",
            "",
        ] {
            assert_eq!(parse_reply(bad, prefix), None, "{bad:?}");
        }
    }

    fn reply(payload: &'static str, status: Option<StatusCode>) -> async_nats::Message {
        async_nats::Message {
            subject: "_INBOX.abc.0.1".into(),
            reply: None,
            payload: Bytes::from_static(payload.as_bytes()),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn only_a_stored_acknowledgement_releases_a_record() {
        let stored = |payload, status| matches!(AckReply::parse(&reply(payload, status)), AckReply::Stored { .. });
        assert!(stored(r#"{"stream":"S","seq":7}"#, None));
        assert!(matches!(
            AckReply::parse(&reply(r#"{"stream":"S","seq":7,"duplicate":true}"#, None)),
            AckReply::Stored { duplicate: true }
        ));
        assert!(stored(r#"{"stream":"S","seq":7}"#, Some(StatusCode::OK)));
        for refused in [
            r#"{"error":{"code":400,"err_code":10071,"description":"wrong last msg ID"},"stream":"S","seq":0}"#,
            r#"{"error":{"code":503},"stream":"S","seq":9}"#,
            r#"{"stream":"S"}"#,
            r#"{"stream":"S","seq":0}"#,
            r#"{"stream":"S","seq":-1}"#,
            "",
            "not json",
            "[]",
        ] {
            assert!(!stored(refused, None), "{refused:?}");
        }
        assert!(!stored("", Some(StatusCode::NO_RESPONDERS)));
        assert!(!stored(r#"{"stream":"S","seq":7}"#, Some(StatusCode::NO_RESPONDERS)));
    }
}
