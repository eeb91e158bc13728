//! The engine over real rings, without sockets (messages handed across directly, time
//! injected): delivery once and in order, crashes of either end, replays, backpressure,
//! rejects into the dead-letter ring, envelope deduplication.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{check, drain, exchange, fill, message_type, record};
use ipc_core::{RingBuilder, Segment, TryRecvError};
use ipc_zmq::engine::{
    Backoff, BreakerState, DeadLetter, DedupConfig, InvalidEnvelope, Receiver, ReceiverConfig, Route, Sender,
    SenderConfig,
};
use ipc_zmq::wire::{self, Frame, RejectReason};

const ROUTE: &str = "orders";

fn config() -> SenderConfig {
    let mut c = SenderConfig::new("host-a", ROUTE);
    c.max_batch_records = 64;
    c.max_in_flight_records = 256;
    c.request_timeout = Duration::from_millis(500);
    c.backoff = Backoff { base: Duration::from_millis(10), factor: 2, max: Duration::from_millis(100) };
    c
}

fn ring(capacity: usize) -> Segment {
    RingBuilder::new(capacity).create_anonymous().unwrap()
}

fn receiver_into(dest: &Segment, checkpoint: Option<&std::path::Path>) -> Receiver {
    let routes = [(ROUTE.to_owned(), Route::new(dest.producer().unwrap()))];
    Receiver::new(ReceiverConfig::default(), routes, checkpoint).unwrap()
}

fn temp_checkpoint(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tadpole-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn assert_once_in_order(seen: &[u64], total: u64) {
    let expected: Vec<u64> = (0..total).collect();
    assert_eq!(seen.len() as u64, total, "records missing or duplicated");
    assert_eq!(seen, &expected[..], "records out of order");
}

#[test]
fn a_stream_arrives_once_in_order_with_bytes_and_types_preserved_and_the_source_is_released() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let (total, mut next, mut seen) = (20_000u64, 0u64, Vec::new());
    let now = Instant::now();
    while seen.len() < total as usize {
        fill(&mut producer, &mut next, total);
        exchange(&mut sender, &mut receiver, now);
        drain(&mut out, &mut seen);
    }
    assert_once_in_order(&seen, total);
    assert_eq!(sender.in_flight(), 0);
    assert_eq!(sender.consumer().release_position(), producer.frontier().position, "source not released");
    let (s, r) = (sender.counters(), receiver.counters());
    assert_eq!(r.records_committed.load(std::sync::atomic::Ordering::Relaxed), total);
    assert_eq!(r.duplicates_dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(s.resends.load(std::sync::atomic::Ordering::Relaxed), 0);
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn lost_data_messages_are_resent_after_the_request_timeout_and_the_gap_is_never_skipped() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let t0 = Instant::now();
    let mut next = 0;
    fill(&mut producer, &mut next, 300);
    // HELLO → WELCOME.
    let hello = sender.poll(t0).unwrap();
    sender.handle(&receiver.handle(&hello, t0).unwrap(), t0);
    // The first DATA message is lost on the way; the second arrives: a gap.
    let lost = sender.poll(t0).unwrap();
    assert!(matches!(wire::decode(&lost), Ok(Frame::Data(_))));
    let second = sender.poll(t0).unwrap();
    let reply = receiver.handle(&second, t0).unwrap();
    assert!(matches!(wire::decode(&reply), Ok(Frame::Welcome(_))), "a gap is answered with a WELCOME");
    assert_eq!(load(&receiver.counters().gaps), 1);
    assert_eq!(load(&receiver.counters().records_committed), 0, "nothing after a gap is committed");
    sender.handle(&reply, t0);
    exchange(&mut sender, &mut receiver, t0);
    let mut seen = Vec::new();
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 300);

    // Now an ACK is lost: the sender times out, resends, and the receiver drops the duplicates.
    fill(&mut producer, &mut next, 400);
    let data = sender.poll(t0).unwrap();
    let _lost_ack = receiver.handle(&data, t0).unwrap();
    assert!(sender.poll(t0 + Duration::from_millis(100)).is_some() || sender.in_flight() > 0);
    let later = t0 + Duration::from_secs(2);
    let _ = sender.poll(later); // times out, rewinds, pauses for the backoff
    exchange(&mut sender, &mut receiver, later + Duration::from_secs(1));
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 400);
    assert!(load(&sender.counters().timeouts) >= 1);
    assert!(load(&receiver.counters().duplicates_dropped) >= 1, "the resend was deduplicated");
}

#[test]
fn a_sender_killed_without_releasing_resumes_at_the_welcome_and_delivers_nothing_twice() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 500);
    {
        let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
        let hello = sender.poll(now).unwrap();
        sender.handle(&receiver.handle(&hello, now).unwrap(), now);
        // Two DATA messages committed far away, their ACKs never read: the sender "dies".
        for _ in 0..2 {
            let data = sender.poll(now).unwrap();
            receiver.handle(&data, now).unwrap();
        }
        assert_eq!(sender.consumer().release_position(), 0, "nothing was acknowledged to the ring");
    }
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 500);
    assert_eq!(load(&sender.counters().records_sent), 500 - 128, "the committed 128 were skipped, not resent");
}

#[test]
fn a_receiver_restarted_from_its_checkpoint_resumes_exactly_where_it_acknowledged() {
    let path = temp_checkpoint("restart");
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 300);
    {
        let mut receiver = receiver_into(&dest, Some(&path));
        exchange(&mut sender, &mut receiver, now);
        // More arrives and is committed, but the receiver dies before its ACK leaves.
        fill(&mut producer, &mut next, 400);
        let data = sender.poll(now).unwrap();
        let _unsent_ack = receiver.handle(&data, now);
    }
    sender.on_link_down();
    let mut receiver = receiver_into(&dest, Some(&path));
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 400);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_receiver_killed_between_commit_and_checkpoint_delivers_exactly_that_one_data_message_again() {
    let path = temp_checkpoint("window");
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 100);
    let redelivered;
    {
        let mut receiver = receiver_into(&dest, Some(&path));
        exchange(&mut sender, &mut receiver, now);
        fill(&mut producer, &mut next, 150);
        // The process dies after the ring commit and before the checkpoint file is replaced:
        // the file still says what it said before this message.
        let before = std::fs::read(&path).unwrap();
        let data = sender.poll(now).unwrap();
        redelivered = match wire::decode(&data).unwrap() {
            wire::Frame::Data(d) => d.records.len() as u64,
            other => panic!("expected DATA, got {other:?}"),
        };
        receiver.handle(&data, now).unwrap();
        std::fs::write(&path, before).unwrap();
    }
    sender.on_link_down();
    let mut receiver = receiver_into(&dest, Some(&path));
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    // Everything once, in order, except the records of that one DATA message, which appear a
    // second time right after their first delivery: exactly what PROTOCOL.md promises.
    let mut tail = (0..100).collect::<Vec<u64>>();
    tail.extend(100..150);
    tail.extend(100..100 + redelivered);
    assert_eq!(redelivered, 50);
    assert_eq!(seen, tail);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn replayed_and_duplicated_data_messages_are_dropped_counted_and_traffic_continues() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 64);
    let hello = sender.poll(now).unwrap();
    sender.handle(&receiver.handle(&hello, now).unwrap(), now);
    let data = sender.poll(now).unwrap();
    sender.handle(&receiver.handle(&data, now).unwrap(), now);
    for _ in 0..3 {
        let reply = receiver.handle(&data, now).unwrap();
        assert!(matches!(wire::decode(&reply), Ok(Frame::Ack(a)) if !a.busy));
    }
    assert_eq!(load(&receiver.counters().duplicates_dropped), 3 * 64);
    // A HELLO replayed mid-stream does not reset anything either.
    assert!(receiver.handle(&hello, now).is_some());
    fill(&mut producer, &mut next, 200);
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 200);
}

#[test]
fn data_for_an_epoch_the_stream_moved_on_from_is_dropped_as_stale() {
    let (old_source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let mut old_producer = old_source.producer().unwrap();
    old_producer.try_send_typed(message_type(0), &record(0)).unwrap();
    let mut old_sender = Sender::new(config(), old_source.consumer().unwrap(), None).unwrap();
    let hello = old_sender.poll(now).unwrap();
    old_sender.handle(&receiver.handle(&hello, now).unwrap(), now);
    let old_data = old_sender.poll(now).unwrap();
    receiver.handle(&old_data, now).unwrap();
    // The source ring is recreated (a new epoch): its records start over at position 0.
    let new_source = ring(1 << 16);
    let mut producer = new_source.producer().unwrap();
    let mut sender = Sender::new(config(), new_source.consumer().unwrap(), None).unwrap();
    let (mut next, mut seen) = (1, Vec::new());
    fill(&mut producer, &mut next, 50);
    exchange(&mut sender, &mut receiver, now);
    assert!(receiver.handle(&old_data, now).is_none(), "the old epoch's DATA is refused");
    assert_eq!(load(&receiver.counters().stale_epochs), 1);
    drain(&mut out, &mut seen);
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}

#[test]
fn malformed_messages_are_counted_and_unanswered_and_the_stream_goes_on() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    let garbage: Vec<Vec<Vec<u8>>> = vec![
        vec![],
        vec![b"\x01".to_vec()],
        vec![b"\x07\x03garbage".to_vec()],
        vec![wire::data_header("host-a", ROUTE, 1, 0, 0, 2), {
            let mut body = wire::DataBody::new(0, 0);
            body.push(0, 0, b"only one").unwrap();
            body.into_bytes()
        }],
        vec![wire::data_header("host-a", ROUTE, source.epoch(), 0, 0, 1), b"short".to_vec()],
    ];
    for round in 0..5u64 {
        for g in &garbage {
            assert!(receiver.handle(g, now).is_none());
            sender.handle(g, now);
        }
        fill(&mut producer, &mut next, (round + 1) * 100);
        exchange(&mut sender, &mut receiver, now);
    }
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 500);
    assert_eq!(load(&receiver.counters().malformed), 25);
    assert_eq!(load(&sender.counters().malformed), 25);
}

#[test]
fn version_2_peers_and_malformed_v3_bodies_are_refused_counted_and_unanswered() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let epoch = source.epoch();
    // What a version 2 relay sends: its HELLO, and a DATA message with its 14-byte prefix.
    let mut v2_hello = Frame::Hello(wire::Hello { origin: "host-a".into(), stream: ROUTE.into(), epoch }).encode();
    v2_hello[0][0] = 2;
    let mut v2_head = wire::data_header("host-a", ROUTE, epoch, 0, 0, 1);
    v2_head[0] = 2;
    let mut v2_body = 0u64.to_le_bytes().to_vec();
    v2_body.extend_from_slice(&[0, 0, 1, 0, 0, 0, b'x']);
    // Version 3 bodies a hostile or broken peer could send, each behind a valid header.
    let v3 = |count: usize, body: &[u8]| vec![wire::data_header("host-a", ROUTE, epoch, 0, 0, count), body.to_vec()];
    let bad_v3 = [
        v3(1, &[0x80]),                                                             // step varint cut short
        v3(1, &[0x00, 0x09, b'x']),                                                 // length past the part
        v3(1, &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0x00]), // varint overflow
        v3(1, &[0x80, 0x00, 0x00]),                                                 // overlong varint
        v3(2, &[0x00, 0x01, b'x']),                                                 // fewer records than counted
        v3(1, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x00]),       // step 2^62: past u64
    ];
    assert!(receiver.handle(&v2_hello, now).is_none(), "a version 2 HELLO is not answered");
    assert!(receiver.handle(&[v2_head, v2_body], now).is_none());
    for bad in &bad_v3 {
        assert!(receiver.handle(bad, now).is_none(), "{bad:?} was answered");
    }
    let r = receiver.counters();
    assert_eq!((load(&r.unsupported_version), load(&r.malformed)), (2, 2 + bad_v3.len() as u64));
    assert_eq!(load(&r.records_committed), 0);
    // A version 2 reply reaching a sender is counted the same way.
    let mut v2_ack =
        Frame::Ack(wire::Ack { stream: ROUTE.into(), epoch, next: 0, busy: false, rejects: vec![] }).encode();
    v2_ack[0][0] = 2;
    sender.handle(&v2_ack, now);
    assert_eq!((load(&sender.counters().unsupported_version), load(&sender.counters().malformed)), (1, 1));
    // The version 3 stream goes through untouched by all that.
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 300);
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 300);
}

#[test]
fn a_data_message_of_a_known_stream_with_a_bad_record_after_good_ones_commits_none_of_them() {
    // Once the stream is known, the receiver checks a DATA body in the pass that commits it:
    // a bad record anywhere (even behind good ones, or behind a full local ring) must still
    // refuse the whole message, commit nothing, save nothing and answer nothing.
    let (source, dest) = (ring(1 << 16), ring(1 << 12));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let epoch = source.epoch();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 10);
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 10);
    let (_, expected) = receiver.next_expected("host-a", ROUTE).unwrap();
    // Good records at the positions that follow, then a bad tail.
    let first = expected.next_multiple_of(8);
    let good = |records: usize| {
        let mut body = wire::DataBody::new(expected, 0);
        for i in 0..records as u64 {
            body.push(first + 64 * i, 1, &[0x5a; 56]).unwrap();
        }
        body.into_bytes()
    };
    let data = |count: usize, body: Vec<u8>| vec![wire::data_header("host-a", ROUTE, epoch, expected, 0, count), body];
    let with = |records: usize, tail: &[u8]| {
        let mut body = good(records);
        body.extend_from_slice(tail);
        body
    };
    let bad = [
        data(3, with(2, &[0x00, 0x09, b'x'])),       // third record's length past the part
        data(3, with(2, &[0x80])),                   // third record's step cut short
        data(2, with(2, &[0x00])),                   // a byte after the last record
        data(3, good(2)),                            // fewer records than counted
        data(4, with(3, &[0x80, 0x80, 0x80, 0x00])), // overlong varint
        data(200, with(100, &[0x00, 0x40])),         // the ring fills before the bad record
    ];
    for message in &bad {
        assert!(receiver.handle(message, now).is_none(), "{:?} was answered", &message[1][..8]);
        assert!(out.try_recv().is_err(), "a record of a refused message was committed");
        assert_eq!(receiver.next_expected("host-a", ROUTE), Some((epoch, expected)));
    }
    let r = receiver.counters();
    assert_eq!(load(&r.malformed), bad.len() as u64);
    assert_eq!((load(&r.records_committed), load(&r.duplicates_dropped), load(&r.busy)), (10, 0, 0));
    // The stream goes on as if none of them had come.
    // (The small local ring holds less than a batch: the sender backs off and resumes.)
    fill(&mut producer, &mut next, 300);
    for round in 1..200 {
        exchange(&mut sender, &mut receiver, now + Duration::from_millis(100) * round);
        drain(&mut out, &mut seen);
    }
    assert_once_in_order(&seen, 300);
}

#[test]
fn a_full_local_ring_holds_the_window_back_to_the_source_producer_and_loses_nothing() {
    let (source, dest) = (ring(1 << 14), ring(1 << 12));
    let mut producer = source.producer().unwrap();
    let mut cfg = config();
    cfg.max_in_flight_records = 40;
    cfg.max_batch_records = 16;
    let mut sender = Sender::new(cfg, source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let mut now = Instant::now();
    let (total, mut next, mut seen) = (3_000u64, 0u64, Vec::new());
    let mut source_full = false;
    // Nobody reads the far ring for a while: it fills, then the source ring fills.
    for _ in 0..50 {
        source_full |= fill(&mut producer, &mut next, total);
        exchange(&mut sender, &mut receiver, now);
        assert!(sender.in_flight() <= 40, "in flight {} beyond the window", sender.in_flight());
        now += Duration::from_millis(200);
    }
    assert!(source_full, "the source producer never felt backpressure");
    assert!(load(&receiver.counters().busy) > 0);
    assert!(next < total, "the source ring absorbed everything: no backpressure");
    // The far consumer catches up: everything arrives, once, in order.
    while seen.len() < total as usize {
        fill(&mut producer, &mut next, total);
        exchange(&mut sender, &mut receiver, now);
        drain(&mut out, &mut seen);
        assert!(sender.in_flight() <= 40);
        now += Duration::from_millis(200);
    }
    assert_once_in_order(&seen, total);
}

#[test]
fn rejected_records_go_to_the_dead_letter_ring_with_their_reason_and_the_rest_is_delivered() {
    let source = ring(1 << 16);
    let dest = RingBuilder::new(1 << 16).max_message_len(40).create_anonymous().unwrap();
    let dlq = ring(1 << 16);
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), Some(dlq.producer().unwrap())).unwrap();
    let ids = |payload: &[u8]| -> Result<[u8; 16], InvalidEnvelope> {
        if payload.first() == Some(&b'!') {
            return Err(InvalidEnvelope);
        }
        let mut id = [0; 16];
        id[..8].copy_from_slice(&payload[..8]);
        Ok(id)
    };
    let routes = [(ROUTE.to_owned(), Route::with_message_ids(dest.producer().unwrap(), ids, DedupConfig::default()))];
    let mut receiver = Receiver::new(ReceiverConfig::default(), routes, None).unwrap();
    let mut out = dest.consumer().unwrap();
    let mut dead = dlq.consumer().unwrap();
    let now = Instant::now();
    producer.try_send_typed(1, &[7u8; 16]).unwrap(); // delivered
    producer.try_send_typed(2, &[8u8; 100]).unwrap(); // too large for the far ring
    producer.try_send_typed(3, b"!not an envelope").unwrap(); // invalid
    producer.try_send_typed(4, &[7u8; 16]).unwrap(); // same id as the first: dropped
    producer.try_send_typed(5, &[9u8; 16]).unwrap(); // delivered
    exchange(&mut sender, &mut receiver, now);
    exchange(&mut sender, &mut receiver, now);
    let mut got = Vec::new();
    while let Ok(g) = out.try_recv() {
        got.push((g.message_type(), g.to_vec()));
    }
    assert_eq!(got, vec![(1, vec![7; 16]), (5, vec![9; 16])]);
    let mut letters = Vec::new();
    while let Ok(g) = dead.try_recv() {
        let letter = DeadLetter::decode(&g).expect("a dead-letter record");
        assert_eq!(g.message_type(), letter.message_type, "the record keeps the original type");
        letters.push((letter.reason, letter.message_type, letter.payload.to_vec(), letter.stream.to_owned()));
    }
    assert_eq!(
        letters,
        vec![
            (RejectReason::TooLarge, 2, vec![8; 100], ROUTE.to_owned()),
            (RejectReason::InvalidEnvelope, 3, b"!not an envelope".to_vec(), ROUTE.to_owned()),
        ]
    );
    assert_eq!(load(&sender.counters().dead_letters), 2);
    assert_eq!(load(&receiver.counters().id_duplicates_dropped), 1);
    assert_eq!(receiver.counters().rejected(RejectReason::TooLarge), 1);
    assert_eq!(sender.consumer().release_position(), producer.frontier().position, "all released");
    // The receiver forgets the rejects once the sender says they are released.
    producer.try_send_typed(6, &[10u8; 16]).unwrap();
    exchange(&mut sender, &mut receiver, now);
    let data = {
        producer.try_send_typed(7, &[11u8; 16]).unwrap();
        sender.poll(now).unwrap()
    };
    match wire::decode(&receiver.handle(&data, now).unwrap()) {
        Ok(Frame::Ack(a)) => assert!(a.rejects.is_empty(), "rejects kept after release: {:?}", a.rejects),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stream_to_an_unknown_route_is_dead_lettered_whole_and_never_blocks_the_source() {
    let (source, dest, dlq) = (ring(1 << 14), ring(1 << 14), ring(1 << 20));
    let mut producer = source.producer().unwrap();
    let mut cfg = config();
    cfg.stream = "nowhere".into();
    let mut sender = Sender::new(cfg, source.consumer().unwrap(), Some(dlq.producer().unwrap())).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut dead = dlq.consumer().unwrap();
    let now = Instant::now();
    let (total, mut next) = (2_000u64, 0u64);
    let mut letters = Vec::new();
    while letters.len() < total as usize {
        fill(&mut producer, &mut next, total);
        exchange(&mut sender, &mut receiver, now);
        while let Ok(g) = dead.try_recv() {
            let letter = DeadLetter::decode(&g).unwrap();
            assert_eq!(letter.reason, RejectReason::UnknownRoute);
            letters.push(check(letter.payload, letter.message_type));
        }
    }
    assert_eq!(letters, (0..total).collect::<Vec<_>>());
    assert_eq!(dest.consumer().unwrap().try_recv().err(), Some(TryRecvError::Empty));
}

#[test]
fn envelope_ids_leave_the_window_by_age_and_by_count_and_each_is_counted() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let ids = |payload: &[u8]| -> Result<[u8; 16], InvalidEnvelope> {
        let mut id = [0; 16];
        id[0] = payload[0];
        Ok(id)
    };
    let dedup = DedupConfig { max_age: Duration::from_secs(60), max_ids: 2 };
    let routes = [(ROUTE.to_owned(), Route::with_message_ids(dest.producer().unwrap(), ids, dedup))];
    let mut receiver = Receiver::new(ReceiverConfig::default(), routes, None).unwrap();
    let mut out = dest.consumer().unwrap();
    let t0 = Instant::now();
    let mut send = |ids: &[u8], now: Instant, sender: &mut Sender, receiver: &mut Receiver| {
        for &id in ids {
            producer.try_send(&[id]).unwrap();
        }
        exchange(sender, receiver, now);
    };
    send(&[1, 1, 2], t0, &mut sender, &mut receiver); // 1, 2 (second 1 dropped)
    send(&[3, 1], t0, &mut sender, &mut receiver); // 3 evicts 1, so 1 comes again
    send(&[3], t0 + Duration::from_secs(61), &mut sender, &mut receiver); // 3 aged out: again
    let mut got = Vec::new();
    while let Ok(g) = out.try_recv() {
        got.push(g[0]);
    }
    assert_eq!(got, vec![1, 2, 3, 1, 3]);
    let c = receiver.counters();
    assert_eq!(load(&c.id_duplicates_dropped), 1);
    assert!(load(&c.ids_evicted) >= 2, "evicted {}", load(&c.ids_evicted));
    assert!(load(&c.ids_expired) >= 1);
}

#[test]
fn an_unanswered_link_opens_the_breaker_after_five_timeouts_then_half_opens_and_recovers() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut cfg = config();
    cfg.max_attempts = 100; // keep the stream open: this test is about the breaker
    let mut sender = Sender::new(cfg, source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let mut now = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 100);
    let hello = sender.poll(now).unwrap();
    sender.handle(&receiver.handle(&hello, now).unwrap(), now);
    // The far side goes silent: every DATA message is lost.
    for _ in 0..200 {
        while sender.poll(now).is_some() {}
        now += Duration::from_millis(300);
        if sender.breaker_state() == BreakerState::Open {
            break;
        }
    }
    assert_eq!(sender.breaker_state(), BreakerState::Open);
    assert_eq!(load(&sender.counters().timeouts), 5);
    assert!(sender.poll(now + Duration::from_secs(29)).is_none(), "an open breaker sends nothing");
    // After 30 s it lets test requests through; the far side answers again and it closes.
    now += Duration::from_secs(31);
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 100);
    assert_eq!(sender.breaker_state(), BreakerState::Closed);
    assert_eq!(load(&sender.counters().breaker_opened), 1);
}

#[test]
fn one_lost_message_costs_one_resend_however_many_messages_were_in_flight_behind_it() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut cfg = config();
    cfg.max_batch_records = 16;
    let mut sender = Sender::new(cfg, source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 256);
    let hello = sender.poll(now).unwrap();
    sender.handle(&receiver.handle(&hello, now).unwrap(), now);
    let mut in_flight = Vec::new();
    while let Some(m) = sender.poll(now) {
        in_flight.push(m);
    }
    assert_eq!(in_flight.len(), 16);
    // The first is lost; each of the 15 behind it is a gap, answered with the same WELCOME.
    let replies: Vec<_> = in_flight[1..].iter().map(|m| receiver.handle(m, now).unwrap()).collect();
    assert_eq!(load(&receiver.counters().gaps), 15);
    for reply in &replies {
        sender.handle(reply, now);
    }
    assert_eq!(load(&sender.counters().resends), 1, "every gap answer rewound the sender again");
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 256);
    assert_eq!(load(&sender.counters().records_sent), 512, "the window went twice, not sixteen times");
}

#[test]
fn an_ack_naming_the_middle_of_a_data_message_releases_what_it_names_and_keeps_the_rest_in_flight() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let epoch = source.epoch();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 10);
    let hello = sender.poll(now).unwrap();
    sender.handle(&receiver.handle(&hello, now).unwrap(), now);
    let data = sender.poll(now).unwrap();
    let Ok(Frame::Data(d)) = wire::decode(&data) else { panic!("not a DATA message") };
    let positions: Vec<u64> = d.records.iter().map(|r| r.position).collect();
    assert_eq!((positions.len(), sender.in_flight()), (10, 10));
    let ack = |next: u64| Frame::Ack(wire::Ack { stream: ROUTE.into(), epoch, next, busy: false, rejects: vec![] });
    // The first four records done: released in the source ring; the message stays in flight.
    sender.handle(&ack(positions[3] + 1).encode(), now);
    assert_eq!(sender.acknowledged(), positions[3] + 1);
    assert_eq!(sender.consumer().release_position(), positions[4], "the first four records released");
    assert_eq!(sender.in_flight(), 10, "a message in flight counts whole until it is all acknowledged");
    // A position inside a record releases nothing more.
    sender.handle(&ack(positions[5] + 3).encode(), now);
    assert_eq!(sender.consumer().release_position(), positions[4]);
    // The rest.
    sender.handle(&receiver.handle(&data, now).unwrap(), now);
    assert_eq!((sender.in_flight(), sender.acknowledged()), (0, positions[9] + 1));
    assert!(sender.consumer().release_position() > positions[9], "all ten released");
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 10);
    assert_eq!(load(&sender.counters().malformed), 0);
}

#[test]
fn acks_and_welcomes_naming_positions_never_sent_are_ignored_and_counted() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let now = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 10);
    let epoch = source.epoch();
    // A WELCOME claiming the far side has far more than the ring ever held would skip records.
    let bogus_welcome = Frame::Welcome(wire::Welcome { stream: ROUTE.into(), epoch, next: 1 << 40, rejects: vec![] });
    sender.handle(&bogus_welcome.encode(), now);
    assert!(!sender.is_open());
    let hello = sender.poll(now).unwrap();
    sender.handle(&receiver.handle(&hello, now).unwrap(), now);
    let data = sender.poll(now).unwrap();
    // An ACK beyond what was sent would release records nobody has.
    let bogus_ack = Frame::Ack(wire::Ack { stream: ROUTE.into(), epoch, next: 1 << 40, busy: false, rejects: vec![] });
    sender.handle(&bogus_ack.encode(), now);
    assert_eq!(sender.consumer().release_position(), 0, "nothing released on a bogus ACK");
    assert_eq!(load(&sender.counters().malformed), 2);
    sender.handle(&receiver.handle(&data, now).unwrap(), now);
    exchange(&mut sender, &mut receiver, now);
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 10);
}

#[test]
fn a_checkpoint_file_with_both_copies_damaged_is_refused_with_a_typed_error() {
    let path = temp_checkpoint("damaged");
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    producer.try_send(&record(0)).unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    {
        let mut receiver = receiver_into(&dest, Some(&path));
        exchange(&mut sender, &mut receiver, Instant::now());
    }
    let mut text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("host-a\torders\t").count(), 2, "two copies of the state: {text:?}");
    text = text.replace("host-a", "host-b");
    std::fs::write(&path, text).unwrap();
    let routes = [(ROUTE.to_owned(), Route::new(dest.producer().unwrap()))];
    let refused = Receiver::new(ReceiverConfig::default(), routes, Some(&path));
    assert!(matches!(refused, Err(ipc_zmq::engine::CheckpointError::Invalid { .. })));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_checkpoint_save_torn_by_a_crash_falls_back_to_the_state_before_it() {
    let path = temp_checkpoint("torn");
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let now = Instant::now();
    let mut next = 0;
    fill(&mut producer, &mut next, 10);
    let acknowledged;
    {
        let mut receiver = receiver_into(&dest, Some(&path));
        exchange(&mut sender, &mut receiver, now);
        acknowledged = receiver.next_expected("host-a", ROUTE).unwrap();
        // The next save is torn: the slot it was overwriting is garbage, the other one holds
        // the state acknowledged before it.
        fill(&mut producer, &mut next, 20);
        let before = std::fs::read(&path).unwrap();
        let data = sender.poll(now).unwrap();
        receiver.handle(&data, now).unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(before.len(), after.len(), "saved in place");
        let changed: Vec<usize> = (0..after.len()).filter(|&i| before[i] != after[i]).collect();
        let (first, last) = (changed[0], *changed.last().unwrap());
        assert!(last - first < after.len() / 2, "one slot written");
        let mut torn = after.clone();
        torn[first..=last].fill(b'#');
        std::fs::write(&path, torn).unwrap();
    }
    let receiver = receiver_into(&dest, Some(&path));
    assert_eq!(receiver.next_expected("host-a", ROUTE), Some(acknowledged));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_delayed_ack_answers_several_data_messages_once_after_the_delay_and_refusals_go_at_once() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let delay = Duration::from_millis(5);
    let routes = [(ROUTE.to_owned(), Route::new(dest.producer().unwrap()))];
    let config = ReceiverConfig { ack_delay: delay, ..ReceiverConfig::default() };
    let mut receiver = Receiver::new(config, routes, None).unwrap();
    let mut out = dest.consumer().unwrap();
    let t0 = Instant::now();
    let hello = sender.poll(t0).unwrap();
    let welcome = receiver.handle_from(b"peer-1", &hello, t0).expect("a WELCOME is never held back");
    sender.handle(&welcome, t0);
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 200);
    let mut messages = 0;
    while let Some(data) = sender.poll(t0) {
        assert!(receiver.handle_from(b"peer-1", &data, t0).is_none(), "plain progress waits");
        messages += 1;
    }
    assert!(messages > 1, "{messages} DATA messages");
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 200);
    assert_eq!(sender.in_flight(), 200, "nothing released before the ACK");
    assert!(receiver.due_acks(t0 + delay / 2, false).is_empty(), "not due yet");
    assert_eq!(receiver.next_ack_due(), Some(t0 + delay));
    let due = receiver.due_acks(t0 + delay, false);
    assert_eq!(due.len(), 1, "one ACK for {messages} DATA messages");
    assert_eq!(due[0].0, b"peer-1");
    sender.handle(&due[0].1, t0 + delay);
    assert_eq!(sender.in_flight(), 0, "the one ACK released every record");
    assert_eq!(receiver.next_ack_due(), None);
    // Before the event loop sleeps, everything held goes, to the peer of the latest message.
    sender.on_link_down();
    let hello = sender.poll(t0 + delay).unwrap();
    sender.handle(&receiver.handle_from(b"peer-2", &hello, t0 + delay).unwrap(), t0 + delay);
    fill(&mut producer, &mut next, 210);
    let data = sender.poll(t0 + delay).unwrap();
    assert!(receiver.handle_from(b"peer-2", &data, t0 + delay).is_none());
    let all = receiver.due_acks(t0 + delay, true);
    assert_eq!((all.len(), all[0].0.as_slice()), (1, &b"peer-2"[..]));
}

#[test]
fn link_round_trips_are_measured_per_acknowledged_data_message_and_not_for_resends() {
    let (source, dest) = (ring(1 << 16), ring(1 << 16));
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    let mut receiver = receiver_into(&dest, None);
    let mut out = dest.consumer().unwrap();
    let t0 = Instant::now();
    let (mut next, mut seen) = (0, Vec::new());
    let hello = sender.poll(t0).unwrap();
    sender.handle(&receiver.handle(&hello, t0).unwrap(), t0);
    // Two DATA messages (64 records each), acknowledged 3 ms and 30 ms after they went.
    fill(&mut producer, &mut next, 128);
    let first = sender.poll(t0).unwrap();
    let second = sender.poll(t0).unwrap();
    let (ack1, ack2) = (receiver.handle(&first, t0).unwrap(), receiver.handle(&second, t0).unwrap());
    sender.handle(&ack1, t0 + Duration::from_millis(3));
    sender.handle(&ack2, t0 + Duration::from_millis(30));
    let rtt = &sender.counters().round_trips;
    assert_eq!(rtt.count(), 2);
    assert!((rtt.sum_secs() - 0.033).abs() < 1e-6, "{}", rtt.sum_secs());
    let buckets = rtt.buckets();
    let in_bucket = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
    assert_eq!((in_bucket(5e-3), in_bucket(50e-3)), (1, 1), "{buckets:?}");
    // A message whose ACK is lost is resent after the timeout: its ACK is not measured.
    fill(&mut producer, &mut next, 192);
    let lost = sender.poll(t0).unwrap();
    let _lost_ack = receiver.handle(&lost, t0).unwrap();
    let later = t0 + Duration::from_secs(2);
    assert!(sender.poll(later).is_none(), "times out, rewinds, waits for the backoff");
    exchange(&mut sender, &mut receiver, later + Duration::from_secs(1));
    drain(&mut out, &mut seen);
    assert_once_in_order(&seen, 192);
    assert!(load(&sender.counters().resends) >= 1);
    // The resend after the backoff was sent and acknowledged at the same instant.
    let rtt = &sender.counters().round_trips;
    assert_eq!(rtt.count(), 3, "only the resend's own round trip is added");
    assert!((rtt.sum_secs() - 0.033).abs() < 1e-6, "the lost message's 3 s wait is not a round trip");
}

/// A named source ring (a file in /dev/shm another process could damage), fresh.
fn named_source(tag: &str) -> (String, Segment) {
    let name = format!("engine-{tag}-{}", std::process::id());
    let _ = Segment::unlink(&name);
    let source = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    (name, source)
}

/// The source's producer, a sender draining it into a receiver that commits into a new ring,
/// and that ring's consumer.
fn route_from(source: &Segment) -> (ipc_core::Producer, Sender, Receiver, ipc_core::Consumer) {
    let dest = ring(1 << 16);
    let sender = Sender::new(config(), source.consumer().unwrap(), None).unwrap();
    (source.producer().unwrap(), sender, receiver_into(&dest, None), dest.consumer().unwrap())
}

/// Flips the check byte of the header of the record after the first `skip` in the named ring
/// `name` (`source`), through its file, as a hostile process could; returns its position.
fn flip_check_byte(name: &str, source: &Segment, skip: usize) -> u64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/{}{name}", ipc_core::NAME_PREFIX))
        .unwrap();
    let status = source.status();
    let bounds = ipc_core::layout::RecordBounds {
        capacity: status.capacity,
        max_message_len: status.max_message_len,
        payload_align: status.payload_align.bytes(),
    };
    let offset = |pos: u64| ipc_core::layout::HEADER_LEN as u64 + (pos & (status.capacity - 1));
    let word_at = |pos: u64| {
        let mut bytes = [0u8; 8];
        file.read_exact_at(&mut bytes, offset(pos)).unwrap();
        u64::from_le_bytes(bytes)
    };
    let mut pos = 0;
    for _ in 0..skip {
        pos = ipc_core::layout::check_record(pos, word_at(pos), bounds, u64::MAX).unwrap().unwrap().end;
    }
    file.write_all_at(&(word_at(pos) ^ 0x5a << 56).to_le_bytes(), offset(pos)).unwrap();
    pos
}

#[test]
fn a_corrupt_record_header_in_the_source_ring_stops_the_route_there_counted_once_and_flagged() {
    let (name, source) = named_source("corrupt");
    let (mut producer, mut sender, mut receiver, mut out) = route_from(&source);
    let mut next = 0;
    fill(&mut producer, &mut next, 10);
    // Flip the check byte of the 6th record's header, as a hostile producer could.
    let pos = flip_check_byte(&name, &source, 5);

    let now = Instant::now();
    let mut seen = Vec::new();
    for _ in 0..20 {
        exchange(&mut sender, &mut receiver, now);
        drain(&mut out, &mut seen);
    }
    assert_eq!(seen, [0, 1, 2, 3, 4], "the records before the corrupt one, once, in order");
    let c = sender.counters();
    assert_eq!(load(&c.source_corrupt), 1, "met on every poll, counted once");
    assert_eq!(load(&c.source_blocked), 1);
    assert_eq!(load(&c.malformed), 0, "nothing from the network was malformed");
    assert_eq!(sender.consumer().release_position(), pos, "released up to the corrupt record");
    drop((producer, sender, source));
    let _ = Segment::unlink(&name);
}

#[test]
fn a_source_ring_truncated_under_the_sender_stops_the_route_with_nothing_sent_from_the_zeros() {
    let (name, source) = named_source("truncated");
    let (mut producer, mut sender, mut receiver, mut out) = route_from(&source);
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 5);
    exchange(&mut sender, &mut receiver, Instant::now());
    drain(&mut out, &mut seen);
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    fill(&mut producer, &mut next, 10);
    // Another process with write access cuts the file: this process's mapping faults, and
    // ipc-core maps zeros over it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{}{name}", ipc_core::NAME_PREFIX))
        .unwrap()
        .set_len(0)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while load(&sender.counters().source_blocked) == 0 && Instant::now() < deadline {
        exchange(&mut sender, &mut receiver, Instant::now());
        drain(&mut out, &mut seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(seen, [0, 1, 2, 3, 4], "nothing read from the zeros was delivered");
    assert_eq!(load(&sender.counters().source_blocked), 1, "the route says it stopped");
    assert_eq!(load(&sender.counters().source_corrupt), 1);
    assert!(source.was_truncated());
    drop((producer, sender, source));
    let _ = Segment::unlink(&name);
}

#[test]
fn a_route_stopped_at_a_corrupt_source_ring_goes_on_from_a_replacement_ring_under_a_new_epoch() {
    let (name, source) = named_source("replaced");
    let (mut producer, mut sender, mut receiver, mut out) = route_from(&source);
    let counters = sender.counters().clone();
    let (mut next, mut seen) = (0, Vec::new());
    fill(&mut producer, &mut next, 5);
    exchange(&mut sender, &mut receiver, Instant::now());
    drain(&mut out, &mut seen);
    fill(&mut producer, &mut next, 10);
    // The 6th record's check byte flipped in the file.
    flip_check_byte(&name, &source, 5);
    for _ in 0..5 {
        exchange(&mut sender, &mut receiver, Instant::now());
    }
    assert!(sender.is_source_stopped());
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    let sent_before = load(&counters.records_sent);
    let old_epoch = sender.epoch();

    // The operator's repair: a new ring under the name.
    drop(producer);
    Segment::unlink(&name).unwrap();
    let replacement = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    assert_ne!(replacement.epoch(), old_epoch);
    sender.replace_source(Segment::open(&name).unwrap().consumer().unwrap()).unwrap();
    assert_eq!(sender.epoch(), replacement.epoch());
    assert!(!sender.is_source_stopped());
    assert!(Arc::ptr_eq(sender.counters(), &counters), "the same counters go on");
    assert_eq!(load(&counters.source_blocked), 0);
    assert_eq!(load(&counters.source_corrupt), 1, "a total, kept");
    let mut producer = replacement.producer().unwrap();
    let mut next = 0;
    fill(&mut producer, &mut next, 20);
    for _ in 0..5 {
        exchange(&mut sender, &mut receiver, Instant::now());
        drain(&mut out, &mut seen);
    }
    let expected: Vec<u64> = (0..5).chain(0..20).collect();
    assert_eq!(seen, expected, "the new ring's records, once, in order, after the old ring's first 5");
    assert_eq!(receiver.next_expected("host-a", ROUTE).map(|(epoch, _)| epoch), Some(replacement.epoch()));
    assert_eq!(load(&counters.records_sent), sent_before + 20, "counters go on from their totals");
    assert_eq!(sender.consumer().release_position(), producer.frontier().position, "the new ring is released");
    drop((producer, sender, source, replacement));
    let _ = Segment::unlink(&name);
}
