//! The FlatBuffers channel through real rings: round trips, zero-copy views,
//! dead letters, leases, limits, and a second process.

mod common;

use std::time::Duration;

use ipc_core::{RingBuilder, Segment};
use schemas::channel::{EnvelopeReceiver, EnvelopeRecvError, EnvelopeSendError, EnvelopeSender, RejectReason};
use schemas::envelope::{EnvelopeEncoder, EnvelopeError, EnvelopeHeader, Event, MessageId, PayloadOffset};
use schemas::fb;

fn ring() -> Segment {
    RingBuilder::new(1 << 16).create_anonymous().unwrap()
}

fn heartbeat(
    sequence: u64,
) -> impl FnOnce(&mut flatbuffers::FlatBufferBuilder<'static>) -> flatbuffers::WIPOffset<fb::Heartbeat<'static>> {
    move |fbb| fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence, ..Default::default() })
}

/// Sends one envelope of each of four event types.
fn send_four(tx: &mut EnvelopeSender) {
    let h = EnvelopeHeader::new("market-analysis-1", "risk-1").with_metadata(&[("trace", "t-9")]);
    tx.try_send(&h, heartbeat(7)).unwrap();
    tx.try_send(&h, |fbb| {
        let symbol = fbb.create_string("BTC-USD");
        fb::TradingSignalGenerated::create(
            fbb,
            &fb::TradingSignalGeneratedArgs {
                symbol: Some(symbol),
                side: fb::Side::Sell,
                reference_price_e8: 6_512_345_000_000,
                ..Default::default()
            },
        )
    })
    .unwrap();
    tx.try_send(&h, |fbb| {
        let agent_id = fbb.create_string("agent-42");
        let caps = ["trade", "hedge"].map(|c| fbb.create_string(c));
        let capabilities = fbb.create_vector(&caps);
        fb::AgentSpawned::create(
            fbb,
            &fb::AgentSpawnedArgs {
                agent_id: Some(agent_id),
                pid: 4242,
                capabilities: Some(capabilities),
                ..Default::default()
            },
        )
    })
    .unwrap();
    let order = MessageId::new_v4().to_wire();
    tx.try_send(&h, |fbb| {
        let venue = fbb.create_string("V-1");
        fb::ExecutionOrderFilled::create(
            fbb,
            &fb::ExecutionOrderFilledArgs {
                order_id: Some(&order),
                venue_order_id: Some(venue),
                fill_quantity_e8: 150_000_000,
                liquidity: fb::Liquidity::Maker,
                ..Default::default()
            },
        )
    })
    .unwrap();
}

fn check_four(rx: &mut EnvelopeReceiver) {
    let msg = rx.try_recv().unwrap();
    assert_eq!(msg.message_type(), fb::Payload::Heartbeat);
    let env = msg.envelope();
    assert_eq!((env.source(), env.destination()), (Some("market-analysis-1"), Some("risk-1")));
    assert_eq!(env.metadata().unwrap().get(0).value(), Some("t-9"));
    let Ok(Event::Heartbeat(hb)) = msg.event() else { panic!("not a heartbeat") };
    assert_eq!(hb.sequence(), 7);
    drop(msg);

    let msg = rx.try_recv().unwrap();
    assert_eq!(msg.message_type(), fb::Payload::TradingSignalGenerated);
    let Ok(Event::TradingSignalGenerated(s)) = msg.event() else { panic!("not a signal") };
    assert_eq!((s.symbol(), s.side(), s.reference_price_e8()), (Some("BTC-USD"), fb::Side::Sell, 6_512_345_000_000));
    drop(msg);

    let msg = rx.try_recv().unwrap();
    assert_eq!(msg.message_type(), fb::Payload::AgentSpawned);
    let Ok(Event::AgentSpawned(a)) = msg.event() else { panic!("not a spawn") };
    assert_eq!((a.agent_id(), a.pid()), (Some("agent-42"), 4242));
    assert_eq!(a.capabilities().unwrap().iter().collect::<Vec<_>>(), ["trade", "hedge"]);
    drop(msg);

    let msg = rx.try_recv().unwrap();
    assert_eq!(msg.message_type(), fb::Payload::ExecutionOrderFilled);
    let Ok(Event::ExecutionOrderFilled(f)) = msg.event() else { panic!("not a fill") };
    assert_eq!((f.venue_order_id(), f.fill_quantity_e8()), (Some("V-1"), 150_000_000));
    assert_eq!(f.liquidity(), fb::Liquidity::Maker);
    drop(msg);

    assert_eq!(rx.try_recv().err(), Some(EnvelopeRecvError::Empty));
}

#[test]
fn four_event_types_round_trip_through_an_anonymous_ring() {
    let ring = ring();
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());
    for _ in 0..50 {
        // 50 laps of four messages: wraps the 64 KiB ring several times.
        send_four(&mut tx);
        check_four(&mut rx);
    }
    assert_eq!(rx.dead_letters(), 0);
    assert_eq!(ring.status().head, ring.status().tail, "everything released");
}

#[test]
fn received_envelope_is_read_in_place_in_shared_memory() {
    let name = common::unique_name("env-in-place");
    let ring = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());
    send_four(&mut tx);

    let data = common::data_region(&common::shm_mapping(&name));
    let msg = rx.try_recv().unwrap();
    let bytes = msg.bytes();
    assert!(common::within(bytes, &data), "record {:p} outside the ring's data region {data:x?}", bytes.as_ptr());
    let env = msg.envelope();
    // The view's buffer is the record itself, and its strings point into it.
    assert_eq!(env._tab.buf().as_ptr(), bytes.as_ptr());
    assert_eq!(env._tab.buf().len(), bytes.len());
    let source = env.source().unwrap();
    let record = bytes.as_ptr_range();
    assert!(record.contains(&source.as_ptr()), "string copied out of the record");
    // The ring record is exactly the envelope: size prefix + 4 == record length.
    assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize + 4, bytes.len());
}

/// The bytes of one valid heartbeat envelope.
fn valid_envelope(sequence: u64) -> Vec<u8> {
    let mut enc = EnvelopeEncoder::new();
    enc.encode(&EnvelopeHeader::new("a", "b"), heartbeat(sequence)).to_vec()
}

#[test]
fn garbage_records_are_skipped_counted_and_the_stream_goes_on() {
    let ring = ring();
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());
    let heartbeat_type = u16::from(fb::Payload::Heartbeat.0);

    // A misbehaving peer writes raw records on the same ring.
    let mut raw = ring.producer().unwrap();
    let good = valid_envelope(1);
    let mut wrong_ident = good.clone();
    wrong_ident[8..12].copy_from_slice(b"NOPE");
    raw.try_send_typed(heartbeat_type, &wrong_ident).unwrap();
    raw.try_send_typed(heartbeat_type, &good[..good.len() - 8]).unwrap(); // truncated
    let mut prefix_lie = good.clone();
    prefix_lie[..4].copy_from_slice(&(good.len() as u32 + 64).to_le_bytes());
    raw.try_send_typed(heartbeat_type, &prefix_lie).unwrap();
    let mut offsets_lie = good.clone();
    offsets_lie[4..8].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes()); // root offset far outside
    raw.try_send_typed(heartbeat_type, &offsets_lie).unwrap();
    raw.try_send_typed(heartbeat_type, &[0xA5; 3]).unwrap(); // shorter than any envelope
    raw.try_send_typed(u16::from(fb::Payload::AgentSpawned.0), &good).unwrap(); // lies about its type
    raw.try_send_typed(heartbeat_type, &valid_envelope(2)).unwrap();

    // Then a well-behaved sender takes over the ring.
    let mut tx = EnvelopeSender::new(raw);
    tx.try_send(&EnvelopeHeader::new("a", "b"), heartbeat(3)).unwrap();

    let mut rejected = Vec::new();
    let mut sequences = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(msg) => sequences.push(msg.envelope().payload_as_heartbeat().unwrap().sequence()),
            Err(EnvelopeRecvError::Rejected { reason, .. }) => rejected.push(reason),
            Err(EnvelopeRecvError::Empty) => break,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sequences, [2, 3], "valid messages after garbage still arrive, in order");
    assert_eq!(rx.dead_letters(), 6);
    assert!(
        matches!(rejected[0], RejectReason::Envelope(EnvelopeError::WrongIdentifier { found }) if &found == b"NOPE")
    );
    assert!(matches!(rejected[1], RejectReason::Envelope(EnvelopeError::SizePrefixMismatch { .. })));
    assert!(matches!(rejected[2], RejectReason::Envelope(EnvelopeError::SizePrefixMismatch { .. })));
    assert!(matches!(rejected[3], RejectReason::Envelope(EnvelopeError::Invalid(_))));
    assert!(matches!(rejected[4], RejectReason::Envelope(EnvelopeError::Truncated { len: 3 })));
    assert!(matches!(rejected[5], RejectReason::MessageTypeMismatch { record: 1, payload: 20 }));
    assert_eq!(ring.status().head, ring.status().tail, "rejected records were released");
    assert_eq!(ring.status().consumed.corrupt_records, 0, "garbage payloads are not ring corruption");
}

#[test]
fn trusted_receiver_reads_the_same_envelopes_and_still_checks_framing() {
    let ring = ring();
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    // SAFETY: the only peer is the EnvelopeSender above (and one raw record
    // that fails the framing check, which trusted mode still runs).
    let mut rx = unsafe { EnvelopeReceiver::new(ring.consumer().unwrap()).trust_peer() };
    send_four(&mut tx);
    check_four(&mut rx);

    let mut raw = tx.into_producer();
    let mut bad = valid_envelope(1);
    bad[8..12].copy_from_slice(b"XXXX");
    raw.try_send(&bad).unwrap();
    let mut tx = EnvelopeSender::new(raw);
    tx.try_send(&EnvelopeHeader::new("a", "b"), heartbeat(5)).unwrap();
    assert!(matches!(
        rx.try_recv(),
        Err(EnvelopeRecvError::Rejected { reason: RejectReason::Envelope(EnvelopeError::WrongIdentifier { .. }), .. })
    ));
    assert_eq!(rx.try_recv().unwrap().envelope().payload_as_heartbeat().unwrap().sequence(), 5);
    assert_eq!(rx.dead_letters(), 1);
}

#[test]
fn owned_envelopes_outlive_later_receives_and_hold_ring_space_until_dropped() {
    let ring = ring();
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());
    for n in 0..3 {
        tx.try_send(&EnvelopeHeader::new("a", "b"), heartbeat(n)).unwrap();
    }
    let start = ring.status().head;
    let first = rx.try_recv().unwrap().into_owned().unwrap();
    let second = rx.try_recv().unwrap().envelope().payload_as_heartbeat().unwrap().sequence();
    let third = rx.try_recv().unwrap().into_owned().unwrap();
    assert_eq!(second, 1);
    assert_eq!(ring.status().head, start, "the first owned envelope holds everything after it");

    let seq = |e: &schemas::channel::OwnedEnvelope| e.envelope().payload_as_heartbeat().unwrap().sequence();
    let first_seq = std::thread::spawn(move || seq(&first)).join().unwrap(); // moved, read, dropped
    assert_eq!(first_seq, 0);
    assert!(ring.status().head > start && ring.status().head < ring.status().tail, "released up to the third");
    assert_eq!(seq(&third), 2);
    assert_eq!(third.message_type(), fb::Payload::Heartbeat);
    drop(third);
    assert_eq!(ring.status().head, ring.status().tail);
}

#[test]
fn an_envelope_that_cannot_be_owned_stays_in_the_ring_and_comes_next() {
    let ring = ring();
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    let mut consumer = ring.consumer().unwrap();
    consumer.set_max_leases(2);
    let mut rx = EnvelopeReceiver::new(consumer);
    for n in 0..4 {
        tx.try_send(&EnvelopeHeader::new("a", "b"), heartbeat(n)).unwrap();
    }
    let seq = |e: &schemas::envelope::Envelope<'_>| e.payload_as_heartbeat().unwrap().sequence();
    // One owned envelope and one ordinary release behind it fill the two lease entries.
    let owned = rx.try_recv().unwrap().into_owned().unwrap();
    assert_eq!(seq(&rx.try_recv().unwrap().envelope()), 1);
    let refused = rx.try_recv().unwrap().into_owned();
    assert!(matches!(refused, Err(EnvelopeRecvError::LeasesExhausted(2))), "{refused:?}");
    drop(owned);
    // The refused envelope was put back, not released: it is the next one received.
    let again = rx.try_recv().unwrap().into_owned().unwrap();
    assert_eq!(seq(&again.envelope()), 2);
    assert_eq!(seq(&rx.try_recv().unwrap().envelope()), 3);
}

#[test]
fn full_ring_and_oversized_envelopes_are_errors_not_waits() {
    let ring = RingBuilder::new(4096).max_message_len(256).create_anonymous().unwrap();
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());

    let long = "x".repeat(300);
    let big = EnvelopeHeader::new(&long, "b");
    assert!(matches!(tx.try_send(&big, heartbeat(0)), Err(EnvelopeSendError::TooLarge { max: 256, .. })));

    let mut sent = 0;
    while tx.try_send(&EnvelopeHeader::new("a", "b"), heartbeat(sent)).is_ok() {
        sent += 1;
    }
    assert!(sent > 5);
    // The envelope just refused, again: `heartbeat(0)` would be 8 bytes
    // shorter (a zero sequence is not stored) and might still fit.
    assert_eq!(tx.try_send(&EnvelopeHeader::new("a", "b"), heartbeat(sent)), Err(EnvelopeSendError::Full));
    let t = std::time::Instant::now();
    let timeout = Some(Duration::from_millis(20));
    assert_eq!(
        tx.send_timeout(&EnvelopeHeader::new("a", "b"), heartbeat(sent), timeout),
        Err(EnvelopeSendError::Timeout)
    );
    assert!(t.elapsed() >= Duration::from_millis(20));

    for n in 0..sent {
        assert_eq!(rx.recv_timeout(timeout).unwrap().envelope().payload_as_heartbeat().unwrap().sequence(), n);
    }
    assert_eq!(rx.recv_timeout(timeout).err(), Some(EnvelopeRecvError::Timeout));
    drop(tx);
    assert_eq!(rx.recv().err(), Some(EnvelopeRecvError::Disconnected));
}

const CHILD_SEGMENT: &str = "TADPOLE_SCHEMAS_TEST_CHILD_SEGMENT";
const CROSS_PROCESS_MESSAGES: u64 = 10_000;

/// Parent: creates a named ring and receives; child (this test re-executed with
/// `CHILD_SEGMENT` set): opens the ring by name and sends.
#[test]
fn envelopes_cross_a_process_boundary_through_named_shared_memory() {
    if let Ok(name) = std::env::var(CHILD_SEGMENT) {
        let ring = Segment::open(&name).unwrap();
        let mut tx = EnvelopeSender::new(ring.producer().unwrap());
        let pid = std::process::id().to_string();
        for n in 0..CROSS_PROCESS_MESSAGES {
            tx.send_timeout(&EnvelopeHeader::new(&pid, "parent"), heartbeat(n), Some(Duration::from_secs(20))).unwrap();
        }
        return;
    }

    let name = common::unique_name("env-xproc");
    let ring = RingBuilder::new(1 << 14).create_named(&name).unwrap();
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "envelopes_cross_a_process_boundary_through_named_shared_memory", "--nocapture"])
        .env(CHILD_SEGMENT, &name)
        .spawn()
        .unwrap();
    let child_pid = child.id().to_string();
    let mut expected = 0;
    loop {
        match rx.recv_timeout(Some(Duration::from_secs(20))) {
            Ok(msg) => {
                let env = msg.envelope();
                assert_eq!(env.source(), Some(child_pid.as_str()));
                assert_eq!(env.payload_as_heartbeat().unwrap().sequence(), expected);
                expected += 1;
            }
            Err(EnvelopeRecvError::Disconnected) => break,
            Err(e) => panic!("after {expected} messages: {e}"),
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(expected, CROSS_PROCESS_MESSAGES);
    assert_eq!(rx.dead_letters(), 0);
}

#[test]
fn envelope_without_payload_is_sent_and_received() {
    let ring = ring();
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());
    let header = EnvelopeHeader::new("probe", "peer");
    tx.try_send(&header, |_| PayloadOffset::none()).unwrap();
    let msg = rx.try_recv().unwrap();
    assert_eq!(msg.message_type(), fb::Payload::NONE);
    assert_eq!(msg.envelope().payload_type(), fb::Payload::NONE);
    assert_eq!(EnvelopeHeader::from_envelope(&msg.envelope()).message_id, header.message_id);
    assert_eq!(msg.event().unwrap_err(), EnvelopeError::MissingPayload);
    drop(msg);
    assert_eq!(rx.dead_letters(), 0);
}

#[test]
fn envelope_with_a_nil_message_id_is_a_counted_dead_letter() {
    let ring = ring();
    let mut raw = ring.producer().unwrap();
    let mut rx = EnvelopeReceiver::new(ring.consumer().unwrap());
    let mut header = EnvelopeHeader::new("a", "b");
    header.message_id = MessageId::NIL;
    let nil = EnvelopeEncoder::new().encode(&header, heartbeat(1)).to_vec();
    raw.try_send_typed(u16::from(fb::Payload::Heartbeat.0), &nil).unwrap();
    raw.try_send_typed(u16::from(fb::Payload::Heartbeat.0), &valid_envelope(2)).unwrap();
    match rx.try_recv() {
        Err(EnvelopeRecvError::Rejected {
            reason: RejectReason::Envelope(EnvelopeError::MissingMessageId), ..
        }) => {}
        other => panic!("expected a MissingMessageId rejection, got {other:?}"),
    }
    assert_eq!(rx.dead_letters(), 1);
    assert_eq!(rx.try_recv().unwrap().envelope().payload_as_heartbeat().unwrap().sequence(), 2);
}

/// Overwrites `len` bytes of the named segment's file at the address `at` of
/// this process's mapping: what a producer that ignores the ring protocol
/// does to a committed record, through its own mapping.
fn rewrite_shared_memory(name: &str, at: *const u8, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let mapping = common::shm_mapping(name);
    let path = format!("/dev/shm/{}{name}", ipc_core::NAME_PREFIX);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, (at as usize - mapping.start) as u64).unwrap();
}

#[test]
fn private_copy_is_what_is_read_when_the_peer_rewrites_the_record_after_verification() {
    let name = common::unique_name("env-private-copy");
    let ring = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut tx = EnvelopeSender::new(ring.producer().unwrap());
    let data = common::data_region(&common::shm_mapping(&name));

    // In place: the view is the ring record, so a rewrite shows through.
    let mut in_place = EnvelopeReceiver::new(ring.consumer().unwrap());
    tx.try_send(&EnvelopeHeader::new("honest", "b"), heartbeat(1)).unwrap();
    let msg = in_place.try_recv().unwrap();
    let original = msg.bytes().to_vec();
    rewrite_shared_memory(&name, msg.bytes().as_ptr(), &vec![0xEE; original.len()]);
    assert_ne!(msg.bytes(), &original[..], "in place, the peer's rewrite reaches the view");
    drop(msg); // never read through the accessors: the bytes are no envelope now
    let consumer = in_place.into_consumer();

    // Copied: verification and every read use the receiver's own memory.
    let mut copied = EnvelopeReceiver::new(consumer).copy_before_verify(1024);
    tx.try_send(&EnvelopeHeader::new("honest", "b"), heartbeat(2)).unwrap();
    let msg = copied.try_recv().unwrap();
    assert!(!common::within(msg.bytes(), &data), "the copy is private memory");
    // Find the record in the ring (its message id makes it unique) and wreck it.
    // SAFETY: `data` is this process's live mapping of the segment.
    let region = unsafe { std::slice::from_raw_parts(data.start as *const u8, data.end - data.start) };
    let at = region.windows(msg.bytes().len()).position(|w| w == msg.bytes()).expect("record in the ring");
    rewrite_shared_memory(&name, region[at..].as_ptr(), &vec![0xEE; msg.bytes().len()]);
    assert_eq!(msg.envelope().source(), Some("honest"));
    assert_eq!(msg.envelope().payload_as_heartbeat().unwrap().sequence(), 2);
    let owned = msg.into_owned().unwrap();
    assert_eq!(owned.envelope().payload_as_heartbeat().unwrap().sequence(), 2);
    assert_eq!(owned.message_type(), fb::Payload::Heartbeat);
    drop(owned);
    assert_eq!(ring.status().head, ring.status().tail, "the copied record was released");

    // Longer records than the limit are verified in place, as before.
    let mut small = EnvelopeReceiver::new(copied.into_consumer()).copy_before_verify(16);
    tx.try_send(&EnvelopeHeader::new("honest", "b"), heartbeat(3)).unwrap();
    let msg = small.try_recv().unwrap();
    assert!(common::within(msg.bytes(), &data));
}

/// The sender lays each envelope out straight into its ring grant, which may hold the bytes of
/// records long since received; the envelope's padding and string terminators must still read
/// zero, so every envelope verifies and reads back byte for byte what the encoder would make.
#[test]
fn envelopes_built_in_place_over_stale_ring_bytes_are_the_encoders_bytes() {
    let segment = RingBuilder::new(4096).create_anonymous().unwrap();
    let mut raw = segment.producer().unwrap();
    let mut rx = EnvelopeReceiver::new(segment.consumer().unwrap());
    let mut encoder = EnvelopeEncoder::new();
    // Several laps of the 4 KiB ring: every envelope lands on space that held 0xFF bytes.
    for round in 0..200u64 {
        raw.try_send(&[0xFF; 400]).unwrap();
        assert!(matches!(rx.try_recv(), Err(EnvelopeRecvError::Rejected { .. })));
        drop(raw);
        let mut tx = EnvelopeSender::new(segment.producer().unwrap());
        // Strings of every length modulo 4, so each padding position occurs.
        let source = "s".repeat(1 + (round % 7) as usize);
        let meta = [("k", "v".repeat((round % 5) as usize))];
        let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let meta = if round % 2 == 0 { &meta[..] } else { &[][..] };
        let header = EnvelopeHeader::new(&source, "d").with_metadata(meta);
        let text = "t".repeat((round % 9) as usize);
        let build = |fbb: &mut flatbuffers::FlatBufferBuilder<'static>| {
            let key = fbb.create_string(&text);
            fb::SystemConfigurationChanged::create(
                fbb,
                &fb::SystemConfigurationChangedArgs { key: Some(key), config_version: round, ..Default::default() },
            )
        };
        tx.try_send(&header, build).unwrap();
        let expected = encoder.encode(&header, build).to_vec();
        let msg = rx.try_recv().unwrap();
        assert_eq!(msg.bytes(), &expected[..], "round {round}");
        let change = msg.envelope().payload_as_system_configuration_changed().unwrap();
        assert_eq!((change.config_version(), change.key()), (round, Some(text.as_str())));
        drop(msg);
        raw = tx.into_producer();
    }
}
