//! Ring → JetStream: publish every record, release it from the ring once JetStream stored it.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishError, message::PublishMessage, publish::PublishAck};
use bytes::Bytes;
use futures_util::FutureExt;
use ipc_core::{Consumer, LeasesOutstanding, ReleaseMode, TryRecvError};
use tokio::io::unix::AsyncFd;

use crate::MESSAGE_TYPE_HEADER;
use crate::counters::Counters;
use crate::settings::{StreamSettings, ensure_stream};

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
}

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
        }
    }
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

struct InFlight {
    position: u64,
    ack: AckFuture,
}

/// Drains a local ring into a JetStream subject, at least once, in order.
///
/// A record is released from the ring only when JetStream acknowledged it, so when NATS is
/// slow or down the ring fills and its producer feels backpressure; nothing is lost when the
/// relay is killed (the ring keeps what was not acknowledged, and it is published again with
/// the same message ids, which the stream's duplicate window drops). After a failure the
/// publisher rewinds to the first unacknowledged record and publishes one record at a time
/// until JetStream stores one it did not have; then it pipelines again.
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

    fn message_id(&self, position: u64, payload: &[u8]) -> String {
        if let Some(ids) = &self.ids {
            if let Some(id) = ids(payload) {
                return id;
            }
            Counters::add(&self.counters.invalid_envelopes, 1);
        }
        format!("{}/{}/{}", self.config.origin, self.consumer.epoch(), position)
    }

    /// Publishes until `stop` is set. Errors are counted, logged and retried: it only returns
    /// when stopped.
    pub async fn run(mut self, js: jetstream::Context, stop: Arc<AtomicBool>) {
        let c = self.counters.clone();
        let stream = self.config.stream.name.clone();
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
        tracing::info!(event = "jetstream_publishing", stream = %stream, subject = %self.config.subject, "publishing ring");
        self.doorbell = self.consumer.pollable_doorbell().ok().and_then(|fd| {
            // SAFETY: `fd` is the consumer's pollable doorbell, owned by `self.consumer` and the
            // same descriptor for its whole life; the `AsyncFd` is `self.doorbell`, declared
            // before `consumer` so that it is dropped (deregistered) first.
            unsafe { AsyncFd::register(fd) }.ok()
        });
        backoff = self.config.retry_min;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut last_id: Option<String> = None;
        // One at a time, unchained, until JetStream stores a record it did not have: after a
        // (re)start or a failure, the records at the front may be stored already.
        let mut careful = true;
        while !stop.load(Relaxed) {
            let window = if careful { 1 } else { self.config.max_in_flight.max(1) };
            let mut failed: Option<String> = None;
            while in_flight.len() < window {
                let (position, message_type, payload) = match self.consumer.try_recv() {
                    Ok(record) => (record.position(), record.message_type(), Bytes::copy_from_slice(&record)),
                    Err(TryRecvError::Corrupt { position, reason }) => {
                        Counters::add(&c.errors, 1);
                        tracing::error!(event = "jetstream_ring_corrupt", position, reason = ?reason, "the source ring is corrupt");
                        tokio::time::sleep(self.config.retry_max).await;
                        break;
                    }
                    Err(_) => break,
                };
                let id = self.message_id(position, &payload);
                let len = payload.len() as u64;
                let mut message = PublishMessage::build()
                    .payload(payload)
                    .message_id(&id)
                    .header(MESSAGE_TYPE_HEADER, message_type.to_string().as_str());
                if let (true, false, Some(prev)) = (self.config.ordered, careful, &last_id) {
                    message = message.expected_last_message_id(prev);
                }
                match js.send_publish(self.config.subject.clone(), message).await {
                    Ok(ack) => {
                        Counters::add(&c.published, 1);
                        Counters::add(&c.bytes_published, len);
                        in_flight.push_back(InFlight { position, ack: ack.into_future() });
                        last_id = Some(id);
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
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
                let mut acked_through = None;
                let mut first = true;
                while let Some(front) = in_flight.front_mut() {
                    let result = if first { Some(front.ack.as_mut().await) } else { front.ack.as_mut().now_or_never() };
                    first = false;
                    match result {
                        None => break,
                        Some(Ok(ack)) => {
                            Counters::add(&c.acked, 1);
                            if ack.duplicate {
                                Counters::add(&c.acked_duplicates, 1);
                            } else {
                                careful = false;
                            }
                            acked_through = Some(front.position);
                            in_flight.pop_front();
                        }
                        Some(Err(e)) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                if let Some(position) = acked_through {
                    let _ = self.consumer.release_through(position);
                    backoff = self.config.retry_min;
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
                careful = true;
                last_id = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.config.retry_max);
            }
        }
    }

    /// Sleeps until the ring has a record (its pollable doorbell rings) or 100 ms pass.
    async fn wait_for_records(&mut self) {
        const IDLE: Duration = Duration::from_millis(100);
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
