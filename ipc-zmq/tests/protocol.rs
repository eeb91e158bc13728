//! The wire format: every kind round-trips, and the decoder refuses (never panics on) anything
//! else — random bytes, mutations and truncations of valid messages.

use ipc_zmq::wire::{
    self, Ack, Data, DataBody, DataRecord, Frame, FrameError, Hello, Records, RejectReason, Rejected, VERSION, Welcome,
};
use proptest::prelude::*;

fn samples() -> Vec<Frame<'static>> {
    vec![
        Frame::Hello(Hello { origin: "host-a".into(), stream: "orders".into(), epoch: 0xDEAD_BEEF }),
        Frame::Welcome(Welcome { stream: "orders".into(), epoch: 1, next: 4097, rejects: vec![] }),
        Frame::Welcome(Welcome {
            stream: "o".into(),
            epoch: u64::MAX,
            next: 65,
            rejects: vec![Rejected { position: 64, reason: RejectReason::TooLarge }],
        }),
        Frame::Data(Data {
            origin: "host-a".into(),
            stream: "orders".into(),
            epoch: 9,
            released: 8,
            records: Records::encode(
                13,
                &[
                    DataRecord { position: 16, message_type: 3, payload: b"first" },
                    DataRecord { position: 48, message_type: 0, payload: b"" },
                    DataRecord { position: 56, message_type: 0, payload: &[0xFF; 300] },
                    DataRecord { position: 1 << 40, message_type: u16::MAX, payload: b"far" },
                ],
            )
            .unwrap(),
        }),
        Frame::Ack(Ack { stream: "orders".into(), epoch: 9, next: 57, busy: true, rejects: vec![] }),
        Frame::Ack(Ack {
            stream: "orders".into(),
            epoch: 9,
            next: 57,
            busy: false,
            rejects: vec![
                Rejected { position: 0, reason: RejectReason::UnknownRoute },
                Rejected { position: 48, reason: RejectReason::InvalidEnvelope },
            ],
        }),
    ]
}

#[test]
fn every_frame_kind_round_trips_byte_for_byte() {
    for frame in samples() {
        let parts = frame.encode();
        assert_eq!(parts[0][0], VERSION);
        assert_eq!(wire::decode(&parts).unwrap(), frame);
    }
}

#[test]
fn every_strict_prefix_of_a_header_is_refused() {
    for frame in samples() {
        let parts = frame.encode();
        for cut in 0..parts[0].len() {
            let mut cut_parts = parts.clone();
            cut_parts[0].truncate(cut);
            assert!(wire::decode(&cut_parts).is_err(), "{frame:?} cut at {cut} was accepted");
        }
    }
}

#[test]
fn trailing_bytes_and_extra_or_missing_parts_are_refused() {
    for frame in samples() {
        let mut parts = frame.encode();
        parts[0].push(0);
        assert!(matches!(wire::decode(&parts), Err(FrameError::TrailingBytes { part: 0 })), "{frame:?}");
        parts[0].pop();
        parts.push(b"extra".to_vec());
        assert!(matches!(wire::decode(&parts), Err(FrameError::PartCount { .. })), "{frame:?}");
    }
    let data = samples().into_iter().find(|f| matches!(f, Frame::Data(_))).unwrap();
    let mut parts = data.encode();
    parts.pop();
    assert_eq!(wire::decode(&parts), Err(FrameError::PartCount { expected: 2, got: 1 }));
    let mut parts = data.encode();
    parts[1].push(0);
    assert_eq!(wire::decode(&parts), Err(FrameError::TrailingBytes { part: 1 }));
    let mut parts = data.encode();
    parts[1].truncate(9);
    assert_eq!(wire::decode(&parts), Err(FrameError::Truncated { part: 1 }));
}

#[test]
fn a_64_byte_record_costs_2_prefix_bytes_and_a_16_kib_one_5() {
    // Positions as a source ring lays them out: an 8-byte header, the payload padded to 8.
    let body = |size: usize| {
        let payload = vec![7u8; size];
        let mut body = DataBody::new(0, 0);
        body.push(0, 0, &payload).unwrap();
        let first = body.byte_len();
        for i in 1..101u64 {
            body.push(i * (8 + size as u64), 0, &payload).unwrap();
        }
        (body.byte_len() - first) / 100 - size
    };
    assert_eq!(body(64), 2, "step 8 (one byte with its type bit), length 64 (one byte)");
    assert_eq!(body(16 << 10), 5, "step 2048 (two bytes), length 16384 (three bytes)");
}

#[test]
fn wrong_version_unknown_kind_and_empty_messages_are_refused() {
    let mut parts = samples()[0].encode();
    parts[0][0] = 1;
    assert_eq!(wire::decode(&parts), Err(FrameError::UnsupportedVersion(1)), "version 1 had a part per record");
    parts[0][0] = 2;
    assert_eq!(wire::decode(&parts), Err(FrameError::UnsupportedVersion(2)), "version 2 had a 14-byte prefix");
    parts[0][0] = 4;
    assert_eq!(wire::decode(&parts), Err(FrameError::UnsupportedVersion(4)));
    parts[0][0] = VERSION;
    parts[0][1] = 99;
    assert_eq!(wire::decode(&parts), Err(FrameError::UnknownKind(99)));
    assert_eq!(wire::decode::<Vec<u8>>(&[]), Err(FrameError::Empty));
}

fn data_with(from: u64, positions: &[u64]) -> Vec<Vec<u8>> {
    let mut body = DataBody::new(from, 0);
    for &p in positions {
        body.push(p, 0, b"x").unwrap();
    }
    vec![wire::data_header("a", "s", 1, from, 0, positions.len()), body.into_bytes()]
}

/// A DATA message with the given body bytes, claiming `count` records after `from`.
fn data_body(from: u64, count: usize, body: &[u8]) -> Vec<Vec<u8>> {
    vec![wire::data_header("a", "s", 1, from, 0, count), body.to_vec()]
}

fn positions(parts: &[Vec<u8>]) -> Vec<u64> {
    match wire::decode(parts) {
        Ok(Frame::Data(d)) => d.records.iter().map(|r| r.position).collect(),
        other => panic!("expected DATA, got {other:?}"),
    }
}

#[test]
fn data_positions_are_steps_from_from_and_the_encoder_refuses_what_cannot_be_said() {
    assert_eq!(positions(&data_with(8, &[8, 16, 24])), [8, 16, 24]);
    assert_eq!(positions(&data_with(9, &[16, 4096, 1 << 50])), [16, 4096, 1 << 50]);
    // The encoder refuses positions a body cannot express.
    for (from, bad) in [(8, &[8u64, 8][..]), (8, &[16, 8]), (8, &[12]), (9, &[8]), (u64::MAX, &[0])] {
        let mut body = DataBody::new(from, 0);
        let refused = bad.iter().map(|&p| body.push(p, 0, b"x")).find_map(Result::err);
        assert!(matches!(refused, Some(FrameError::BadPosition(_))), "{from} {bad:?}");
    }
    assert_eq!(Records::encode(0, &[]), Err(FrameError::CountOutOfBounds(0)));
}

#[test]
fn malformed_v3_record_prefixes_are_refused_with_their_own_errors() {
    let t1 = Err(FrameError::Truncated { part: 1 });
    // Truncated prefixes: a step varint cut inside, a message type cut inside, no length.
    assert_eq!(wire::decode(&data_body(0, 1, &[0x80])), t1);
    assert_eq!(wire::decode(&data_body(0, 1, &[0x01, 0x05])), t1);
    assert_eq!(wire::decode(&data_body(0, 1, &[0x00])), t1);
    assert_eq!(wire::decode(&data_body(0, 1, &[0x00, 0x81])), t1);
    // A length past the part, small or huge.
    assert_eq!(wire::decode(&data_body(0, 1, &[0x00, 0x05, b'a', b'b'])), t1);
    let mut huge = vec![0x00];
    huge.extend_from_slice(&[0xFF; 9]);
    huge.push(0x01);
    assert_eq!(wire::decode(&data_body(0, 1, &huge)), t1, "a u64::MAX length");
    // Fewer records than the header counts, and bytes after the last.
    assert_eq!(wire::decode(&data_body(0, 2, &[0x00, 0x01, b'a'])), t1);
    assert_eq!(wire::decode(&data_body(0, 1, &[0x00, 0x01, b'a', 0x00])), Err(FrameError::TrailingBytes { part: 1 }));
    // Varints past 64 bits: a tenth byte above 1, or an eleventh byte.
    let mut over = vec![0xFF; 9];
    over.extend_from_slice(&[0x02, 0x00]);
    assert_eq!(wire::decode(&data_body(0, 1, &over)), Err(FrameError::VarintOverflow { part: 1 }));
    let mut long = vec![0x80; 10];
    long.push(0x00);
    assert_eq!(wire::decode(&data_body(0, 1, &long)), Err(FrameError::VarintOverflow { part: 1 }));
    // Overlong varints and a message type that does not change: one encoding per message.
    assert_eq!(wire::decode(&data_body(0, 1, &[0x80, 0x00, 0x00])), Err(FrameError::NonCanonical { part: 1 }));
    assert_eq!(wire::decode(&data_body(0, 1, &[0x00, 0x81, 0x00])), Err(FrameError::NonCanonical { part: 1 }));
    assert_eq!(wire::decode(&data_body(0, 1, &[0x01, 0x00, 0x00, 0x00])), Err(FrameError::NonCanonical { part: 1 }));
    let mut retyped = vec![0x01, 0x05, 0x00, 0x00];
    retyped.extend_from_slice(&[0x01, 0x05, 0x00, 0x00]);
    assert_eq!(wire::decode(&data_body(0, 2, &retyped)), Err(FrameError::NonCanonical { part: 1 }));
    assert!(wire::decode(&data_body(0, 1, &[0x01, 0x05, 0x00, 0x00])).is_ok(), "type 5 once is fine");
}

#[test]
fn steps_that_carry_a_position_past_u64_are_refused() {
    // Step 2^61 × 8 = 2^64: past the end from 0.
    let mut step = Vec::new();
    let mut v: u64 = 1 << 62;
    while v >= 0x80 {
        step.push(v as u8 | 0x80);
        v >>= 7;
    }
    step.push(v as u8);
    step.push(0x00);
    assert_eq!(wire::decode(&data_body(0, 1, &step)), Err(FrameError::PositionOverflow));
    // The largest position a record can have, then nothing may follow it.
    let last = u64::MAX - 7;
    let parts = data_with(last, &[last]);
    assert_eq!(positions(&parts), [last]);
    let mut body = parts[1].clone();
    body.extend_from_slice(&[0x00, 0x00]);
    assert_eq!(wire::decode(&data_body(last, 2, &body)), Err(FrameError::PositionOverflow));
    // A `from` past the last multiple of 8 leaves no room for any record.
    assert_eq!(wire::decode(&data_body(u64::MAX, 1, &[0x00, 0x00])), Err(FrameError::PositionOverflow));
}

#[test]
fn data_record_counts_outside_the_bounds_are_refused_before_allocating() {
    let mut parts = data_with(0, &[0]);
    parts[0] = wire::data_header("a", "s", 1, 0, 0, 0);
    assert_eq!(wire::decode(&parts[..1]), Err(FrameError::CountOutOfBounds(0)));
    parts[0] = wire::data_header("a", "s", 1, 0, 0, u32::MAX as usize);
    assert_eq!(wire::decode(&parts), Err(FrameError::CountOutOfBounds(u32::MAX as usize)));
    parts[0] = wire::data_header("a", "s", 1, 0, 0, wire::MAX_RECORDS + 1);
    assert_eq!(wire::decode(&parts), Err(FrameError::CountOutOfBounds(wire::MAX_RECORDS + 1)));
}

#[test]
fn names_must_be_short_printable_utf8() {
    let hello = |origin: &[u8]| {
        let mut b = vec![VERSION, wire::KIND_HELLO];
        b.extend_from_slice(&7u64.to_le_bytes());
        b.push(origin.len() as u8);
        b.extend_from_slice(origin);
        b.push(1);
        b.push(b's');
        vec![b]
    };
    assert!(wire::decode(&hello(b"ok")).is_ok());
    assert_eq!(wire::decode(&hello(b"")), Err(FrameError::BadName));
    assert_eq!(wire::decode(&hello(b"new\nline")), Err(FrameError::BadName));
    assert_eq!(wire::decode(&hello(&[0xC3, 0x28])), Err(FrameError::BadName));
    assert_eq!(wire::decode(&hello(&[b'x'; 65])), Err(FrameError::BadName));
    assert!(!wire::valid_name(&"x".repeat(65)) && wire::valid_name(&"x".repeat(64)));
}

#[test]
fn acks_refuse_rejects_at_or_past_next_unknown_reasons_and_flags() {
    let ack = |next: u64, flags: u8, rejects: &[(u64, u8)]| {
        let mut b = vec![VERSION, wire::KIND_ACK];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        b.push(flags);
        b.push(1);
        b.push(b's');
        b.extend_from_slice(&(rejects.len() as u16).to_le_bytes());
        for &(pos, code) in rejects {
            b.extend_from_slice(&pos.to_le_bytes());
            b.push(code);
        }
        vec![b]
    };
    assert!(wire::decode(&ack(9, 0, &[(8, 1)])).is_ok());
    assert_eq!(wire::decode(&ack(8, 0, &[(8, 1)])), Err(FrameError::BadPosition(8)));
    assert_eq!(wire::decode(&ack(9, 0, &[(8, 7)])), Err(FrameError::BadReason(7)));
    assert_eq!(wire::decode(&ack(9, 0x80, &[])), Err(FrameError::BadFlags(0x80)));
    let mut huge = ack(9, 0, &[]);
    let at = huge[0].len() - 2;
    huge[0][at..].copy_from_slice(&u16::MAX.to_le_bytes());
    assert_eq!(wire::decode(&huge), Err(FrameError::CountOutOfBounds(u16::MAX as usize)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn the_decoder_never_panics_on_random_parts(parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..6)) {
        let _ = wire::decode(&parts);
    }

    #[test]
    fn the_decoder_never_panics_on_random_bytes_behind_a_valid_version_and_kind(
        kind in 0u8..6,
        body in prop::collection::vec(any::<u8>(), 0..96),
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..4),
    ) {
        let mut head = vec![VERSION, kind];
        head.extend(body);
        let mut parts = vec![head];
        parts.extend(records);
        let _ = wire::decode(&parts);
    }

    #[test]
    fn mutated_valid_messages_never_panic_and_decode_only_to_what_they_encode(
        which in 0usize..6,
        part_pick in any::<prop::sample::Index>(),
        byte_pick in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let frame = samples().swap_remove(which);
        let mut parts = frame.encode();
        let part = part_pick.index(parts.len());
        if !parts[part].is_empty() {
            let at = byte_pick.index(parts[part].len());
            parts[part][at] = value;
        }
        if let Ok(decoded) = wire::decode(&parts) {
            // Whatever is accepted re-encodes to exactly the bytes received.
            prop_assert_eq!(decoded.encode(), parts.clone());
        }
    }

    #[test]
    fn truncated_valid_messages_are_refused(which in 0usize..6, cut in any::<prop::sample::Index>()) {
        let parts = samples().swap_remove(which).encode();
        let mut cut_parts = parts.clone();
        let at = cut.index(parts[0].len());
        cut_parts[0].truncate(at);
        prop_assert!(wire::decode(&cut_parts).is_err());
        if parts.len() > 1 {
            prop_assert!(wire::decode(&parts[..parts.len() - 1]).is_err());
            let mut short = parts.clone();
            short[1].truncate(cut.index(parts[1].len()));
            prop_assert!(wire::decode(&short).is_err());
        }
    }
}

#[test]
fn the_data_body_example_of_protocol_md_encodes_byte_for_byte() {
    let records = Records::encode(
        13,
        &[
            DataRecord { position: 16, message_type: 3, payload: b"first" },
            DataRecord { position: 48, message_type: 3, payload: b"" },
            DataRecord { position: 56, message_type: 0, payload: b"xy" },
        ],
    )
    .unwrap();
    let mut expected = vec![0x01, 0x03, 0x00, 0x05];
    expected.extend_from_slice(b"first");
    expected.extend_from_slice(&[0x06, 0x00, 0x01, 0x00, 0x00, 0x02]);
    expected.extend_from_slice(b"xy");
    assert_eq!(records.body(), &expected[..]);
}
