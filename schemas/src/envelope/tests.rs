use super::catalogue::{CATALOGUE, payload_shapes};
use super::encoder::Finished;
use super::walk as verify;
use super::*;
use crate::fb;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use proptest::prelude::*;
use serde_json::Value;

fn heartbeat(enc: &mut EnvelopeEncoder, header: &EnvelopeHeader<'_>, sequence: u64) -> Vec<u8> {
    enc.encode(header, |fbb| {
        fb::Heartbeat::create(
            fbb,
            &fb::HeartbeatArgs { sequence, interval_ns: 1_000_000, status: fb::HealthStatus::Healthy },
        )
    })
    .to_vec()
}

fn order_filled(enc: &mut EnvelopeEncoder, header: &EnvelopeHeader<'_>) -> Vec<u8> {
    enc.encode(header, |fbb| {
        let symbol = fbb.create_string("ETH-USD");
        let account = fbb.create_string("acct-7");
        let venue_order_id = fbb.create_string("V-123");
        let fill_id = fbb.create_string("F-9");
        let ccy = fbb.create_string("USD");
        let order_id = MessageId::new_v4().to_wire();
        fb::ExecutionOrderFilled::create(
            fbb,
            &fb::ExecutionOrderFilledArgs {
                order_id: Some(&order_id),
                venue_order_id: Some(venue_order_id),
                fill_id: Some(fill_id),
                account_id: Some(account),
                symbol: Some(symbol),
                side: fb::Side::Sell,
                fill_quantity_e8: 150_000_000,
                fill_price_e8: 312_345_000_000,
                cumulative_quantity_e8: 150_000_000,
                remaining_quantity_e8: 0,
                commission_e8: -12_000_000,
                commission_currency: Some(ccy),
                liquidity: fb::Liquidity::Maker,
                filled_at_ns: 1_700_000_000_000_000_000,
            },
        )
    })
    .to_vec()
}

fn fields_of(block: &str) -> Vec<String> {
    block
        .lines()
        .map(|l| l.split("//").next().unwrap_or("").trim())
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_owned()))
        .collect()
}

/// The JSON/Event macro must list every union member and every table field,
/// in schema order, or JSON logs would silently drop data.
#[test]
fn catalogue_matches_fbs() {
    let events = include_str!("../../fbs/events.fbs");
    let envelope = include_str!("../../fbs/envelope.fbs");
    let union_block = envelope.split("union Payload {").nth(1).unwrap().split('}').next().unwrap();
    let members: Vec<&str> =
        union_block.split(',').map(|m| m.split("//").next().unwrap().trim()).filter(|m| !m.is_empty()).collect();
    let listed: Vec<&str> = CATALOGUE.iter().map(|(name, _)| *name).collect();
    assert_eq!(listed, members, "event_catalogue! must list the Payload union in order");

    for (name, fields) in CATALOGUE {
        let block = events
            .split(&format!("table {name} {{"))
            .nth(1)
            .unwrap_or_else(|| panic!("table {name} not in events.fbs"))
            .split('}')
            .next()
            .unwrap();
        assert_eq!(fields_of(block), *fields, "fields of {name}");
    }
}

#[test]
fn header_fields_and_metadata_round_trip() {
    let mut enc = EnvelopeEncoder::new();
    let meta = [("zone", "eu"), ("trace_id", "abc"), ("priority", "high")];
    let mut header = EnvelopeHeader::new("exec-1", "learning-1").with_metadata(&meta);
    header.timestamp_ns = 1_234;
    let bytes = order_filled(&mut enc, &header);

    let env = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
    let mut read = EnvelopeHeader::from_envelope(&env);
    read.metadata = &meta;
    assert_eq!(read, header);

    let md = env.metadata().unwrap();
    let keys: Vec<&str> = md.iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, ["priority", "trace_id", "zone"], "metadata is sorted by key");
    assert_eq!(md.lookup_by_key("trace_id", |kv, k| kv.key_compare_with_value(k)).unwrap().value(), Some("abc"));

    match Event::from_envelope(&env).unwrap() {
        Event::ExecutionOrderFilled(f) => {
            assert_eq!(f.symbol(), Some("ETH-USD"));
            assert_eq!(f.fill_price_e8(), 312_345_000_000);
            assert_eq!(f.side(), fb::Side::Sell);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn reply_carries_request_id_as_correlation_and_swaps_route() {
    let mut enc = EnvelopeEncoder::new();
    let request_header = EnvelopeHeader::new("risk-1", "exec-1");
    let request_bytes = heartbeat(&mut enc, &request_header, 1);
    let request = verify_envelope(&request_bytes, &VerifyOptions::default()).unwrap();

    let reply = EnvelopeHeader::reply_to(&request);
    assert_eq!(reply.correlation_id, request_header.message_id);
    assert_ne!(reply.message_id, request_header.message_id);
    assert_eq!((reply.source, reply.destination), ("exec-1", "risk-1"));

    let reply_bytes = heartbeat(&mut enc, &reply, 2);
    let back = EnvelopeHeader::from_envelope(&verify_envelope(&reply_bytes, &VerifyOptions::default()).unwrap());
    assert_eq!(back.correlation_id, request_header.message_id);
}

#[test]
fn write_into_copies_exactly_the_record_and_rejects_small_slots() {
    let mut enc = EnvelopeEncoder::new();
    assert_eq!(enc.write_into(&mut [0u8; 64]), Err(EncodeError::NothingEncoded));
    let bytes = heartbeat(&mut enc, &EnvelopeHeader::new("a", "b"), 3);
    assert_eq!(enc.encoded_len(), bytes.len());
    assert_eq!(bytes.len() % 4, 0);

    let mut small = vec![0u8; bytes.len() - 1];
    assert_eq!(
        enc.write_into(&mut small),
        Err(EncodeError::BufferTooSmall { needed: bytes.len(), available: bytes.len() - 1 })
    );
    let mut slot = vec![0xAAu8; bytes.len() + 16];
    let n = enc.write_into(&mut slot).unwrap();
    assert_eq!(&slot[..n], &bytes[..]);
    assert!(verify_envelope(&slot[..n], &VerifyOptions::default()).is_ok());
}

#[test]
fn size_prefix_must_match_record_length() {
    let mut enc = EnvelopeEncoder::new();
    let bytes = heartbeat(&mut enc, &EnvelopeHeader::new("a", "b"), 3);
    let opts = VerifyOptions::default();

    // The flatbuffers verifier alone accepts a prefix that overstates the length.
    let mut lying = bytes.clone();
    let prefix = u32::from_le_bytes(lying[..4].try_into().unwrap()) + 64;
    lying[..4].copy_from_slice(&prefix.to_le_bytes());
    assert!(flatbuffers::size_prefixed_root::<Envelope>(&lying).is_ok());
    assert_eq!(
        verify_envelope(&lying, &opts).unwrap_err(),
        EnvelopeError::SizePrefixMismatch { prefix, len: bytes.len() }
    );

    // Trailing bytes are rejected unless padding to 8 is allowed.
    let mut padded = bytes.clone();
    padded.resize(bytes.len().next_multiple_of(8) + if bytes.len() % 8 == 0 { 8 } else { 0 }, 0);
    assert!(matches!(verify_envelope(&padded, &opts), Err(EnvelopeError::SizePrefixMismatch { .. })));
    let mut to_8 = bytes.clone();
    to_8.resize(bytes.len().next_multiple_of(8), 0);
    let padding_ok = VerifyOptions { allow_padding_to_8: true, ..VerifyOptions::default() };
    assert!(verify_envelope(&to_8, &padding_ok).is_ok());
    let mut past_8 = to_8.clone();
    past_8.extend_from_slice(&[0; 8]);
    assert!(verify_envelope(&past_8, &padding_ok).is_err());

    assert_eq!(verify_envelope(&bytes[..11], &opts).unwrap_err(), EnvelopeError::Truncated { len: 11 });
    assert!(matches!(verify_envelope(&bytes[..bytes.len() - 4], &opts), Err(EnvelopeError::SizePrefixMismatch { .. })));
}

#[test]
fn foreign_identifier_is_rejected_before_the_verifier_runs() {
    let mut enc = EnvelopeEncoder::new();
    let mut bytes = heartbeat(&mut enc, &EnvelopeHeader::new("a", "b"), 3);
    bytes[8..12].copy_from_slice(b"ARRW");
    assert_eq!(
        verify_envelope(&bytes, &VerifyOptions::default()).unwrap_err(),
        EnvelopeError::WrongIdentifier { found: *b"ARRW" }
    );
}

#[test]
fn tight_limits_reject_oversized_metadata() {
    let mut enc = EnvelopeEncoder::new();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
    let meta: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
    let bytes = heartbeat(&mut enc, &EnvelopeHeader::new("a", "b").with_metadata(&meta), 1);
    assert!(verify_envelope(&bytes, &VerifyOptions::default()).is_ok());
    let tight = VerifyOptions { max_tables: 10, ..VerifyOptions::default() };
    assert!(matches!(
        verify_envelope(&bytes, &tight),
        Err(EnvelopeError::Invalid(flatbuffers::InvalidFlatbuffer::TooManyTables))
    ));
}

#[test]
fn unknown_union_member_is_a_typed_error_and_renders_as_unknown() {
    let mut enc = EnvelopeEncoder::new();
    let bytes = enc
        .encode(&EnvelopeHeader::new("future", "me"), |fbb| {
            let t = fb::Heartbeat::create(fbb, &fb::HeartbeatArgs::default());
            PayloadOffset::new(fb::Payload(200), t.as_union_value())
        })
        .to_vec();
    let env = verify_envelope(&bytes, &VerifyOptions::default()).expect("header of a newer message is readable");
    assert_eq!(Event::from_envelope(&env).unwrap_err(), EnvelopeError::UnknownPayload(200));
    let json = envelope_to_json(&env);
    assert_eq!(json["message_type"], "unknown(200)");
    assert_eq!(json["payload"], Value::Null);
    assert_eq!(json["source"], "future");
}

#[test]
fn unknown_enum_value_renders_as_number() {
    let mut enc = EnvelopeEncoder::new();
    let bytes = enc
        .encode(&EnvelopeHeader::new("a", "b"), |fbb| {
            fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { status: fb::HealthStatus(42), ..Default::default() })
        })
        .to_vec();
    let env = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
    assert_eq!(envelope_to_json(&env)["payload"]["status"], 42);
}

#[test]
fn json_has_every_header_field_and_payload_field() {
    let mut enc = EnvelopeEncoder::new();
    let header = EnvelopeHeader::new("exec-1", "learning-1").with_metadata(&[("k", "v")]);
    let bytes = order_filled(&mut enc, &header);
    let json = envelope_to_json(&verify_envelope(&bytes, &VerifyOptions::default()).unwrap());
    assert_eq!(json["message_id"], header.message_id.to_string());
    assert_eq!(json["correlation_id"], header.correlation_id.to_string());
    assert_eq!(json["timestamp_ns"], header.timestamp_ns);
    assert_eq!(json["source"], "exec-1");
    assert_eq!(json["destination"], "learning-1");
    assert_eq!(json["schema_version"], SchemaVersion::CURRENT.to_string());
    assert_eq!(json["message_type"], "ExecutionOrderFilled");
    assert_eq!(json["metadata"]["k"], "v");
    let p = &json["payload"];
    let (_, fields) = CATALOGUE.iter().find(|(n, _)| *n == "ExecutionOrderFilled").unwrap();
    assert_eq!(p.as_object().unwrap().len(), fields.len());
    assert_eq!(p["side"], "Sell");
    assert_eq!(p["liquidity"], "Maker");
    assert_eq!(p["commission_e8"], -12_000_000);
    assert_eq!(p["fill_price_e8"], 312_345_000_000_i64);
    assert!(p["order_id"].as_str().unwrap().len() == 36);
}

#[test]
fn unchecked_read_of_own_record_matches_verified_read() {
    let mut enc = EnvelopeEncoder::new();
    let bytes = heartbeat(&mut enc, &EnvelopeHeader::new("a", "b"), 9);
    // SAFETY: `bytes` was produced by `EnvelopeEncoder` just above.
    let env = unsafe { envelope_unchecked(&bytes) };
    assert_eq!(env.payload_as_heartbeat().unwrap().sequence(), 9);
}

#[test]
fn encoder_reuse_produces_independent_records() {
    let mut enc = EnvelopeEncoder::with_capacity(16);
    let a = order_filled(&mut enc, &EnvelopeHeader::new("a-long-source-name", "b"));
    let b = heartbeat(&mut enc, &EnvelopeHeader::new("c", "d"), 5);
    assert!(verify_envelope(&a, &VerifyOptions::default()).is_ok());
    let env = verify_envelope(&b, &VerifyOptions::default()).unwrap();
    assert_eq!(env.source(), Some("c"));
    assert_eq!(env.payload_as_heartbeat().unwrap().sequence(), 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any corruption of a valid record is either rejected or still renders;
    /// nothing panics.
    #[test]
    fn mutated_records_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        truncate in any::<prop::sample::Index>(),
        do_truncate in any::<bool>(),
    ) {
        let mut enc = EnvelopeEncoder::new();
        let mut bytes = order_filled(&mut enc, &EnvelopeHeader::new("src", "dst").with_metadata(&[("a", "b")]));
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if do_truncate {
            bytes.truncate(truncate.index(bytes.len()));
        }
        for padding in [false, true] {
            let opts = VerifyOptions { allow_padding_to_8: padding, ..VerifyOptions::default() };
            if let Ok(env) = verify_envelope(&bytes, &opts) {
                let _ = envelope_to_json(&env);
                let _ = format!("{env:?}");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = verify_envelope(&bytes, &VerifyOptions::default()).map(|e| envelope_to_json(&e));
    }
}

// ---------------------------------------------------------------------------
// The specialised verifier against FlatBuffers' verifier

/// Deterministic bits for the generic event builder (splitmix64).
struct Bits(u64);

impl Bits {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn text(&mut self) -> &'static str {
        const TEXTS: [&str; 6] =
            ["", "BTC-USD", "risk-agent-1", "é∂ü→日本", "x", "a-forty-byte-identifier-for-long-strings"];
        TEXTS[(self.next() % 6) as usize]
    }
}

/// An envelope whose payload is member `kind` with every field either absent
/// or set to a value from `seed`, built through the field shapes the
/// specialised verifier uses, plus `metadata_len` metadata entries.
fn any_event_record(kind: u8, seed: u64, metadata_len: usize) -> Vec<u8> {
    let mut bits = Bits(seed);
    let metadata: Vec<(&str, &str)> = (0..metadata_len).map(|_| (bits.text(), bits.text())).collect();
    let header = EnvelopeHeader::new(bits.text(), bits.text()).with_metadata(&metadata);
    let mut enc = EnvelopeEncoder::new();
    enc.encode(&header, |fbb| any_event(fbb, kind, &mut bits)).to_vec()
}

/// Builds a member-`kind` payload table generically (see [`any_event_record`]).
fn any_event(fbb: &mut FlatBufferBuilder<'static>, kind: u8, bits: &mut Bits) -> PayloadOffset {
    use verify::Shape;
    let shapes = payload_shapes(fb::Payload(kind));
    // Offsets first: strings and vectors cannot be built inside a table.
    let mut offsets = Vec::new();
    for (_, shape) in &shapes {
        offsets.push(match shape {
            Shape::String => Some(fbb.create_string(bits.text()).value()),
            Shape::StringVector => {
                let items: Vec<_> = (0..bits.next() % 4).map(|_| fbb.create_string(bits.text())).collect();
                Some(fbb.create_vector(&items).value())
            }
            Shape::Inline { .. } => None,
        });
    }
    let start = fbb.start_table();
    for ((slot, shape), offset) in shapes.iter().zip(offsets) {
        let slot = *slot;
        if bits.next() % 5 == 0 {
            continue; // absent
        }
        let v = bits.next();
        match (shape, offset) {
            (Shape::Inline { size: 1, .. }, _) => fbb.push_slot_always::<u8>(slot, v as u8),
            (Shape::Inline { size: 4, .. }, _) => fbb.push_slot_always::<u32>(slot, v as u32),
            (Shape::Inline { size: 8, .. }, _) => fbb.push_slot_always::<u64>(slot, v),
            (Shape::Inline { size: 16, .. }, _) => {
                fbb.push_slot_always::<&fb::Uuid>(slot, &fb::Uuid::new(v, !v));
            }
            (_, Some(offset)) => {
                fbb.push_slot_always::<WIPOffset<UnionWIPOffset>>(slot, WIPOffset::new(offset));
            }
            (shape, None) => panic!("no builder for {shape:?}"),
        }
    }
    let table = fbb.end_table(start);
    PayloadOffset::new(fb::Payload(kind), WIPOffset::new(table.value()))
}

#[test]
fn hand_layout_reads_like_the_builder_layout() {
    for kind in 1..=22u8 {
        for seed in 0..40u64 {
            let mut bits = Bits(seed);
            let (source, destination) = (bits.text(), bits.text());
            let metadata: Vec<(&str, &str)> = (0..seed % 5).map(|_| (bits.text(), bits.text())).collect();
            let mut header = EnvelopeHeader::new(source, destination).with_metadata(&metadata);
            header.timestamp_ns = if seed % 4 == 0 { 0 } else { bits.next() };
            let mut enc = EnvelopeEncoder::new();
            let hand = enc.encode(&header, |fbb| any_event(fbb, kind, &mut Bits(seed))).to_vec();
            assert_eq!(enc.finished, Finished::Record);
            enc.fbb.reset();
            let payload = any_event(&mut enc.fbb, kind, &mut Bits(seed));
            let reference = enc.finish_with_builder(&header, payload).to_vec();
            assert_eq!(hand.len() % 8, 0);
            // The apparent size depends on the layout (the hand vtable is never
            // trimmed, a zero timestamp is stored): only the other limits compare.
            for opts in limit_variants().iter().filter(|o| o.max_apparent_size == 1 << 20) {
                let (h, r) = (verify_envelope(&hand, opts), verify_envelope(&reference, opts));
                assert_eq!(h.is_ok(), r.is_ok(), "kind {kind} seed {seed} {opts:?}: {h:?} vs {r:?}");
            }
            let hand = verify_envelope(&hand, &VerifyOptions::default()).unwrap();
            let reference = verify_envelope(&reference, &VerifyOptions::default()).unwrap();
            assert_eq!(envelope_to_json(&hand), envelope_to_json(&reference), "kind {kind} seed {seed}");
            assert_eq!(hand.payload_type(), reference.payload_type());
            let entries = |env: &Envelope<'_>| -> Vec<(String, Option<String>)> {
                env.metadata()
                    .into_iter()
                    .flatten()
                    .map(|kv| (kv.key().to_owned(), kv.value().map(str::to_owned)))
                    .collect()
            };
            assert_eq!(hand.metadata().is_none(), reference.metadata().is_none());
            assert_eq!(entries(&hand), entries(&reference), "kind {kind} seed {seed}");
            // Sorted by key, so `lookup_by_key` works on it.
            if let (Some(list), Some((key, _))) = (hand.metadata(), metadata.first()) {
                assert!(list.lookup_by_key(*key, |kv, k| kv.key_compare_with_value(k)).is_some());
            }
        }
    }
}

/// Both verifiers on `bytes` (after framing) must agree, and an accepted
/// record must be fully readable.
fn assert_verifiers_agree(bytes: &[u8], opts: &VerifyOptions) {
    let Ok(record) = framed_record(bytes, opts.allow_padding_to_8) else {
        return;
    };
    let fast = verify::verify_fast(record, opts).is_ok();
    let fb_opts = flatbuffers::VerifierOptions {
        max_depth: opts.max_depth,
        max_tables: opts.max_tables,
        max_apparent_size: opts.max_apparent_size,
        ignore_missing_null_terminator: false,
    };
    let generic = flatbuffers::size_prefixed_root_with_opts::<Envelope<'_>>(&fb_opts, record);
    assert_eq!(fast, generic.is_ok(), "specialised {fast}, flatbuffers {generic:?}, opts {opts:?}, record {record:?}");
    let via_api = verify_envelope(bytes, opts);
    let via_flatbuffers =
        verify_envelope(bytes, &VerifyOptions { verifier: VerifierKind::FlatBuffers, ..opts.clone() });
    // The specialised walk's refusal reports FlatBuffers' own error.
    assert_eq!(via_api.as_ref().map(|_| ()), via_flatbuffers.as_ref().map(|_| ()));
    match &via_api {
        // Rules beyond FlatBuffers' verifier, checked once it accepted.
        Ok(_) | Err(EnvelopeError::MissingMessageId | EnvelopeError::UnknownPayloadNotATable(_)) => assert!(fast),
        Err(_) => assert!(!fast),
    }
    if let Ok(env) = via_api {
        // Every accessor: header, metadata (keys and values), payload fields.
        let _ = envelope_to_json(&env);
        let _ = format!("{env:?}");
        let _ = EnvelopeHeader::from_envelope(&env);
        if let Ok(event) = Event::from_envelope(&env) {
            let _ = event.to_json();
        }
    }
}

fn limit_variants() -> [VerifyOptions; 5] {
    let d = VerifyOptions::default;
    [
        d(),
        VerifyOptions { max_depth: 1, ..d() },
        VerifyOptions { max_tables: 2, ..d() },
        VerifyOptions { max_apparent_size: 200, ..d() },
        VerifyOptions { allow_padding_to_8: true, ..d() },
    ]
}

#[test]
fn specialised_verifier_accepts_every_event_type() {
    for kind in 1..=22u8 {
        for seed in 0..20 {
            let bytes = any_event_record(kind, seed, (seed % 3) as usize);
            let env = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
            assert!(verify::verify_fast(&bytes, &VerifyOptions::default()).is_ok(), "kind {kind} seed {seed}");
            if (1..=20).contains(&kind) {
                assert!(Event::from_envelope(&env).is_ok());
            }
        }
    }
}

#[test]
fn specialised_verifier_refusal_keeps_the_flatbuffers_error() {
    let mut bytes = any_event_record(13, 1, 1);
    let last = bytes.len() - 1;
    bytes[last] = 0xFF; // the last string's NUL terminator... or its last byte
    let fast = verify_envelope(&bytes, &VerifyOptions::default());
    let generic =
        verify_envelope(&bytes, &VerifyOptions { verifier: VerifierKind::FlatBuffers, ..VerifyOptions::default() });
    assert_eq!(fast.map(|_| ()), generic.map(|_| ()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20000))]

    /// Mutated records of every event type: the specialised verifier accepts
    /// exactly what FlatBuffers' verifier accepts, under several limits, and
    /// whatever it accepts renders without panicking.
    #[test]
    fn specialised_verifier_agrees_with_flatbuffers(
        kind in 0..=21u8,
        seed in any::<u64>(),
        metadata_len in 0..4usize,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
        fix_prefix in any::<bool>(),
    ) {
        let mut bytes = any_event_record(kind, seed, metadata_len);
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len()).max(MIN_ENVELOPE_LEN));
        }
        if fix_prefix {
            let prefix = u32::try_from(bytes.len() - SIZE_PREFIX_LEN).unwrap();
            bytes[..4].copy_from_slice(&prefix.to_le_bytes());
        }
        for opts in limit_variants() {
            assert_verifiers_agree(&bytes, &opts);
        }
    }

    /// Random bytes behind a valid prefix and identifier.
    #[test]
    fn specialised_verifier_agrees_on_random_records(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = Vec::with_capacity(body.len() + 12);
        bytes.extend_from_slice(&u32::try_from(body.len() + 8).unwrap().to_le_bytes());
        bytes.extend_from_slice(&body.get(..4).map_or([8, 0, 0, 0], |b| [b[0], b[1], b[2], b[3]]));
        bytes.extend_from_slice(&FILE_IDENTIFIER);
        bytes.extend_from_slice(body.get(4..).unwrap_or(&[]));
        let prefix = u32::try_from(bytes.len() - SIZE_PREFIX_LEN).unwrap();
        bytes[..4].copy_from_slice(&prefix.to_le_bytes());
        for opts in limit_variants() {
            assert_verifiers_agree(&bytes, &opts);
        }
    }
}

/// A `MeshFormed` whose `member_agent_ids` are `count` offsets to one string
/// of `string_len` bytes: tiny on the wire, `count * string_len` bytes for a
/// verifier that checks every element it is pointed at.
fn mesh_with_shared_member_string(count: usize, string_len: usize) -> Vec<u8> {
    let mut enc = EnvelopeEncoder::with_capacity(count * 4 + string_len + 1024);
    let text = "m".repeat(string_len);
    enc.encode(&EnvelopeHeader::new("a", "b"), |fbb| {
        let member = fbb.create_string(&text);
        let members = fbb.create_vector(&vec![member; count]);
        fb::MeshFormed::create(fbb, &fb::MeshFormedArgs { member_agent_ids: Some(members), ..Default::default() })
    })
    .to_vec()
}

/// The 256 KiB record of issue 11 (32 K offsets to one 128 KiB string): the
/// walk stops once the apparent size passes the limit, after visiting at most
/// the limit plus one string, instead of 32 K x 128 KiB = 4 GiB.
#[test]
fn walk_stops_at_the_apparent_size_limit_for_offsets_sharing_one_string() {
    for (count, string_len) in [(32 * 1024, 128 * 1024), (64 * 1024, 256 * 1024)] {
        let bytes = mesh_with_shared_member_string(count, string_len);
        let opts = VerifyOptions::default();
        let (accepted, visited, _) = verify::walk_counts(&bytes, &opts);
        assert!(!accepted);
        assert!(visited <= opts.max_apparent_size + string_len + 4, "visited {visited} bytes");
        for verifier in [VerifierKind::Specialised, VerifierKind::FlatBuffers] {
            let err = verify_envelope(&bytes, &VerifyOptions { verifier, ..opts.clone() }).unwrap_err();
            assert_eq!(err, EnvelopeError::Invalid(flatbuffers::InvalidFlatbuffer::ApparentSizeTooLarge));
        }
        // With a limit that admits it, the same record is valid: the refusal
        // was the bound, not a malformed record.
        let roomy = VerifyOptions { max_apparent_size: usize::MAX, ..opts.clone() };
        if count * string_len <= 8 << 30 && count == 32 * 1024 {
            assert!(verify::walk_counts(&bytes, &roomy).0);
        }
    }
}

/// A metadata vector of 200 000 offsets to one `KeyValue` table: the walk
/// stops at table `max_tables + 1`.
#[test]
fn walk_stops_at_the_table_limit_for_a_vector_of_one_repeated_table() {
    let mut fbb = FlatBufferBuilder::new();
    let key = fbb.create_string("k");
    let kv = fb::KeyValue::create(&mut fbb, &fb::KeyValueArgs { key: Some(key), value: None });
    let metadata = fbb.create_vector(&vec![kv; 200_000]);
    let id = MessageId::new_v4().to_wire();
    let root = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs { message_id: Some(&id), metadata: Some(metadata), ..Default::default() },
    );
    fbb.finish_size_prefixed(root, Some("TDPL"));
    let bytes = fbb.finished_data();
    let opts = VerifyOptions { max_apparent_size: usize::MAX, ..VerifyOptions::default() };
    let (accepted, _, tables) = verify::walk_counts(bytes, &opts);
    assert!(!accepted);
    assert_eq!(tables, opts.max_tables + 1);
    assert_eq!(
        verify_envelope(bytes, &opts).unwrap_err(),
        EnvelopeError::Invalid(flatbuffers::InvalidFlatbuffer::TooManyTables)
    );
    // The default apparent-size limit stops it even earlier.
    let (_, visited, _) = verify::walk_counts(bytes, &VerifyOptions::default());
    assert!(visited <= VerifyOptions::default().max_apparent_size + 8);
}

/// Nesting is fixed by the schema (envelope → payload or `KeyValue`), so the
/// depth limit is checked where a table is entered.
#[test]
fn depth_limit_refuses_the_payload_table_below_the_envelope() {
    let bytes = heartbeat(&mut EnvelopeEncoder::new(), &EnvelopeHeader::new("a", "b"), 1);
    let shallow = VerifyOptions { max_depth: 1, ..VerifyOptions::default() };
    assert!(!verify::walk_counts(&bytes, &shallow).0);
    assert_eq!(
        verify_envelope(&bytes, &shallow).unwrap_err(),
        EnvelopeError::Invalid(flatbuffers::InvalidFlatbuffer::DepthLimitReached)
    );
    assert!(verify::walk_counts(&bytes, &VerifyOptions { max_depth: 2, ..VerifyOptions::default() }).0);
}

#[allow(clippy::all, clippy::pedantic, clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]
#[allow(mismatched_lifetime_syntaxes, non_camel_case_types, non_snake_case, unused_imports, dead_code)]
#[allow(deprecated, missing_docs)]
#[rustfmt::skip]
#[path = "../../testdata/vtable_ids/generated/mod.rs"]
mod vtable_ids_fixture;

/// The fixture declares `name` first but gives it `(id: 1)`: its slot is 6,
/// not the 4 a walk computing `4 + 2 * index` would read (where `count`, a
/// ulong, lives). The walk the event tables use must follow the generated
/// constants.
#[test]
fn walk_follows_explicit_field_ids() {
    use vtable_ids_fixture::fixture::{Reordered, ReorderedArgs};
    assert_eq!((Reordered::VT_COUNT, Reordered::VT_NAME, Reordered::VT_TAGS), (4, 6, 8));

    let build = |count: u64| {
        let mut fbb = FlatBufferBuilder::new();
        let name = fbb.create_string("fixture-name");
        let tag = fbb.create_string("t");
        let tags = fbb.create_vector(&[tag]);
        let root = Reordered::create(&mut fbb, &ReorderedArgs { name: Some(name), count, tags: Some(tags) });
        fbb.finish(root, None);
        fbb.finished_data().to_vec()
    };
    let walk_reordered = |bytes: &[u8]| -> bool {
        let mut walk = verify::Walk::new(bytes, &VerifyOptions::default());
        let run = |walk: &mut verify::Walk<'_>| -> verify::Step {
            let root = walk.forward(0)?;
            verify::walk_table!(walk, root, 1, Reordered { name = VT_NAME, count = VT_COUNT, tags = VT_TAGS })
        };
        run(&mut walk).is_ok()
    };
    // A count whose low 32 bits, read as an offset from slot 4, point
    // outside the buffer: a walk reading `name` at slot 4 would refuse it.
    let bytes = build(0xFFFF_FF00);
    assert!(flatbuffers::root::<Reordered<'_>>(&bytes).is_ok());
    assert!(walk_reordered(&bytes), "the walk reads name at VT_NAME");

    // Break only the string at slot 6 (its NUL terminator): the walk must see it.
    let mut broken = bytes.clone();
    let at = broken.windows(12).position(|w| w == b"fixture-name").unwrap() + 12;
    broken[at] = b'x';
    assert!(flatbuffers::root::<Reordered<'_>>(&broken).is_err());
    assert!(!walk_reordered(&broken), "the walk checked the string in slot 6");
}

/// Position of the envelope table and its field offsets in a record the
/// hand layout wrote without metadata (see `header_layout`).
const T: usize = super::header_layout::TABLE_AT_SHORT;

/// A union member this build does not know is not verified by either
/// verifier; `payload()` (a safe accessor) still follows its offset, so an
/// offset off the record is refused, never followed.
#[test]
fn unknown_payload_with_a_hostile_value_slot_is_refused_not_read() {
    let mut enc = EnvelopeEncoder::new();
    let good = enc
        .encode(&EnvelopeHeader::new("future", "me"), |fbb| {
            let t = fb::Heartbeat::create(fbb, &fb::HeartbeatArgs::default());
            PayloadOffset::new(fb::Payload(200), t.as_union_value())
        })
        .to_vec();
    let payload_slot = T + super::header_layout::PAYLOAD;
    for (kind, offset) in [(200u8, 0x7FFF_FFF0u32), (200, 2), (0, 0x7FFF_FFF0), (250, u32::MAX - 3)] {
        let mut bytes = good.clone();
        bytes[T + super::header_layout::PAYLOAD_TYPE] = kind;
        bytes[payload_slot..][..4].copy_from_slice(&offset.to_le_bytes());
        for verifier in [VerifierKind::Specialised, VerifierKind::FlatBuffers] {
            let opts = VerifyOptions { verifier, ..VerifyOptions::default() };
            assert_eq!(
                verify_envelope(&bytes, &opts).unwrap_err(),
                EnvelopeError::UnknownPayloadNotATable(kind),
                "kind {kind} offset {offset:#x} {verifier:?}"
            );
        }
    }
    // The honest unknown payload stays readable, as a table.
    let env = verify_envelope(&good, &VerifyOptions::default()).unwrap();
    let table = env.payload().expect("the unknown member's table");
    assert!(table.vtable().num_bytes() >= 4);
}

#[test]
fn missing_or_nil_message_id_is_refused() {
    let mut enc = EnvelopeEncoder::new();
    let mut header = EnvelopeHeader::new("a", "b");
    header.message_id = MessageId::NIL;
    let nil = heartbeat(&mut enc, &header, 1);
    assert_eq!(verify_envelope(&nil, &VerifyOptions::default()).unwrap_err(), EnvelopeError::MissingMessageId);

    let mut fbb = FlatBufferBuilder::new();
    let source = fbb.create_string("a");
    let root = fb::Envelope::create(&mut fbb, &fb::EnvelopeArgs { source: Some(source), ..Default::default() });
    fbb.finish_size_prefixed(root, Some("TDPL"));
    for verifier in [VerifierKind::Specialised, VerifierKind::FlatBuffers] {
        let opts = VerifyOptions { verifier, ..VerifyOptions::default() };
        assert_eq!(verify_envelope(fbb.finished_data(), &opts).unwrap_err(), EnvelopeError::MissingMessageId);
    }
}

#[test]
fn envelope_without_payload_is_built_and_verified() {
    let mut enc = EnvelopeEncoder::new();
    for metadata in [&[][..], &[("k", "v")][..]] {
        let header = EnvelopeHeader::new("probe", "peer").with_metadata(metadata);
        let bytes = enc.encode(&header, |_| PayloadOffset::none()).to_vec();
        let env = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
        assert_eq!(env.payload_type(), fb::Payload::NONE);
        assert!(env.payload().is_none());
        assert_eq!(EnvelopeHeader::from_envelope(&env).message_id, header.message_id);
        assert_eq!(Event::from_envelope(&env).unwrap_err(), EnvelopeError::MissingPayload);
        assert_eq!(envelope_to_json(&env)["message_type"], "NONE");
    }
}

// ---------------------------------------------------------------------------
// Message ids

/// `x ^= x >> shift` undone on 122-bit values.
fn unshift(y: u128, shift: u32) -> u128 {
    let mut x = y;
    let mut s = shift;
    while s < 122 {
        x = y ^ (x >> shift);
        s += shift;
    }
    x
}

/// The inverse of an odd multiplier modulo 2^122 (Newton's iteration doubles
/// the correct low bits each step: 1, 2, 4, ..., 128).
fn inverse_mod_2_122(m: u128) -> u128 {
    let mut inv = m; // m * m == 1 mod 8: three bits right
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u128.wrapping_sub(m.wrapping_mul(inv)));
    }
    inv & ((1 << 122) - 1)
}

fn unpermute_id_bits(y: u128) -> u128 {
    let mask = (1u128 << 122) - 1;
    let [m0, m1] = super::ids::ID_MULTIPLIERS;
    let mut x = unshift(y, 61);
    x = x.wrapping_mul(inverse_mod_2_122(m1)) & mask;
    x = unshift(x, 59);
    x = x.wrapping_mul(inverse_mod_2_122(m0)) & mask;
    unshift(x, 61)
}

/// Distinct counters give distinct ids because each step of the id
/// permutation can be undone: here it is.
#[test]
fn id_permutation_is_a_bijection() {
    let mask = (1u128 << 122) - 1;
    let mut bits = Bits(7);
    let mut samples: Vec<u128> = vec![0, 1, 2, mask, mask - 1, 1 << 61, 1 << 121];
    samples.extend((0..100_000).map(|_| ((u128::from(bits.next()) << 64) | u128::from(bits.next())) & mask));
    for x in samples {
        let y = super::ids::permute_id_bits(x);
        assert!(y <= mask, "{x:#x} left the 122 bits");
        assert_eq!(unpermute_id_bits(y), x, "{x:#x}");
    }
}

/// The layout keeps all 122 bits and sets the v4 version and RFC 4122 variant.
#[test]
fn id_layout_is_v4_and_keeps_every_bit() {
    let mask = (1u128 << 122) - 1;
    let mut bits = Bits(11);
    for _ in 0..10_000 {
        let x = ((u128::from(bits.next()) << 64) | u128::from(bits.next())) & mask;
        let u = super::ids::IdStream::v4_layout(x);
        let uuid = uuid::Uuid::from_u128(u);
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        let back = ((u >> 80) << 74) | (((u >> 64) & 0xFFF) << 62) | (u & ((1 << 62) - 1));
        assert_eq!(back, x);
    }
}

/// One thread's ids: consecutive counters, distinct ids, none nil, and no
/// visible order (the low and high halves both change).
#[test]
fn ids_of_one_thread_are_distinct_and_unordered() {
    let ids: Vec<MessageId> = (0..200_000).map(|_| MessageId::new_v4()).collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    assert!(!distinct.contains(&MessageId::NIL));
    let (a, b) = (ids[0].as_uuid().as_u64_pair(), ids[1].as_uuid().as_u64_pair());
    assert!(a.0 != b.0 && a.1 != b.1, "{:?} then {:?}", ids[0], ids[1]);
}

// ---------------------------------------------------------------------------
// The own-layout fast path of the specialised verifier

/// An envelope in the encoder's own layout without metadata, payload member
/// `kind` (1..=22: 21 and 22 are unknown to this build) built from `seed`.
fn own_layout_record(kind: u8, seed: u64) -> Vec<u8> {
    let record = any_event_record(kind, seed, 0);
    assert!(verify::own_layout_walk_counts(&record, &VerifyOptions::default()).is_some(), "kind {kind}");
    record
}

/// Whatever the own-layout walk accepts, the generic walk accepts with the
/// same apparent size, table count and findings, and FlatBuffers' verifier
/// accepts too; on the encoder's own records it accepts (so the fast path
/// is the one that runs).
fn assert_own_layout_walk_agrees(record: &[u8], opts: &VerifyOptions, expect_accept: bool) {
    let Some((own, own_size, own_tables, walked)) = verify::own_layout_walk_counts(record, opts) else {
        return;
    };
    let (generic, size, tables) = verify::walk_counts(record, opts);
    let fb_opts = flatbuffers::VerifierOptions {
        max_depth: opts.max_depth,
        max_tables: opts.max_tables,
        max_apparent_size: opts.max_apparent_size,
        ignore_missing_null_terminator: false,
    };
    let flatbuffers = flatbuffers::size_prefixed_root_with_opts::<Envelope<'_>>(&fb_opts, record).is_ok();
    if own {
        assert!(
            generic && flatbuffers,
            "own layout accepted what the generic walk {generic} / FlatBuffers {flatbuffers} refused: {record:?} {opts:?}"
        );
        assert_eq!((own_size, own_tables), (size, tables), "{record:?}");
        assert_eq!(walked, verify::generic_walk(record, opts));
    }
    if expect_accept && generic {
        assert!(own, "own layout refused an encoder record the generic walk accepts: {record:?} {opts:?}");
    }
}

#[test]
fn own_layout_walk_counts_what_the_generic_walk_counts() {
    for kind in 1..=22u8 {
        for seed in 0..40 {
            let record = own_layout_record(kind, seed);
            for opts in limit_variants() {
                assert_own_layout_walk_agrees(&record, &opts, true);
            }
            // The fast path is what `verify_envelope` runs: it accepts the record.
            assert!(verify::own_layout_walk_counts(&record, &VerifyOptions::default()).unwrap().0);
        }
    }
}

/// Limits just below and at what a record needs: the own-layout walk draws
/// the line where the generic walk does.
#[test]
fn own_layout_walk_respects_every_limit() {
    let record = own_layout_record(18, 3);
    let (_, size, tables) = verify::walk_counts(&record, &VerifyOptions::default());
    let d = VerifyOptions::default;
    for opts in [
        VerifyOptions { max_apparent_size: size, ..d() },
        VerifyOptions { max_apparent_size: size - 1, ..d() },
        VerifyOptions { max_tables: tables, ..d() },
        VerifyOptions { max_tables: tables - 1, ..d() },
        VerifyOptions { max_depth: 1, ..d() },
        VerifyOptions { max_depth: 0, ..d() },
        VerifyOptions { max_tables: 0, ..d() },
    ] {
        assert_own_layout_walk_agrees(&record, &opts, true);
        let fast = verify_envelope(&record, &opts).map(|_| ());
        let generic = verify_envelope(&record, &VerifyOptions { verifier: VerifierKind::FlatBuffers, ..opts.clone() });
        assert_eq!(fast, generic.map(|_| ()), "{opts:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20000))]

    /// Byte flips (mostly in the header and strings, where the fast path
    /// skips lookups) and truncations of own-layout records: the fast path
    /// never accepts what the generic walk or FlatBuffers refuses, nothing
    /// panics, and `verify_envelope` reports FlatBuffers' own error.
    #[test]
    fn own_layout_fast_path_never_accepts_what_flatbuffers_refuses(
        kind in 1..=22u8,
        seed in any::<u64>(),
        flips in proptest::collection::vec((0..160usize, any::<u8>()), 0..4),
        far_flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
        fix_prefix in any::<bool>(),
    ) {
        let mut bytes = own_layout_record(kind, seed);
        for (i, v) in flips {
            if let Some(b) = bytes.get_mut(i) {
                *b = v;
            }
        }
        for (i, v) in far_flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len()).max(MIN_ENVELOPE_LEN));
        }
        if fix_prefix {
            let prefix = u32::try_from(bytes.len() - SIZE_PREFIX_LEN).unwrap();
            bytes[..4].copy_from_slice(&prefix.to_le_bytes());
        }
        for opts in limit_variants() {
            if let Ok(record) = framed_record(&bytes, opts.allow_padding_to_8) {
                assert_own_layout_walk_agrees(record, &opts, false);
            }
            assert_verifiers_agree(&bytes, &opts);
        }
    }
}

/// The stamp is `CLOCK_REALTIME` in Unix nanoseconds, as `SystemTime` reads it.
#[test]
fn stamp_reads_the_wall_clock() {
    let unix_ns = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let before = unix_ns();
    let stamp = now_unix_ns();
    let after = unix_ns();
    // A second either side, in case the clock is stepped between the reads.
    assert!(before - 1_000_000_000 <= stamp && stamp <= after + 1_000_000_000, "{before} {stamp} {after}");
}

proptest! {
    /// The walk's ASCII check is `<[u8]>::is_ascii`, at every length and
    /// wherever a high byte sits.
    #[test]
    fn walk_ascii_check_is_std_is_ascii(
        mut text in proptest::collection::vec(0..0x80u8, 0..2100),
        high in proptest::option::of((any::<prop::sample::Index>(), 0x80..=0xFFu8)),
    ) {
        if let (Some((at, byte)), false) = (high, text.is_empty()) {
            let at = at.index(text.len());
            text[at] = byte;
        }
        prop_assert_eq!(verify::is_ascii(&text), text.is_ascii());
    }
}
