//! Schema evolution: the frozen v1 schema (testdata/evolution/v1, generated
//! by scripts/regen-schemas) and the current one must read each other's
//! messages. v1 lacks the trading events and Heartbeat, `Envelope.metadata`,
//! `AgentSpawned.capabilities`, `MeshFormed.purpose` and two
//! `TerminationReason` members.

#[rustfmt::skip]
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    mismatched_lifetime_syntaxes,
    non_camel_case_types,
    unused_imports,
    dead_code,
    deprecated,
    missing_docs
)]
#[path = "../testdata/evolution/v1/generated/mod.rs"]
mod v1_generated;

use schemas::envelope::{
    EnvelopeEncoder, EnvelopeError, EnvelopeHeader, Event, MessageId, SchemaVersion, VerifyOptions, envelope_to_json,
    verify_envelope,
};
use schemas::fb;
use v1_generated::tadpole as v1;

fn new_agent_spawned(enc: &mut EnvelopeEncoder, header: &EnvelopeHeader<'_>) -> Vec<u8> {
    enc.encode(header, |fbb| {
        let agent_id = fbb.create_string("risk-1");
        let agent_type = fbb.create_string("risk");
        let caps = [fbb.create_string("var"), fbb.create_string("stress")];
        let capabilities = fbb.create_vector(&caps);
        fb::AgentSpawned::create(
            fbb,
            &fb::AgentSpawnedArgs {
                agent_id: Some(agent_id),
                agent_type: Some(agent_type),
                pid: 4242,
                capabilities: Some(capabilities),
                ..Default::default()
            },
        )
    })
    .to_vec()
}

#[test]
fn old_reader_reads_new_message_and_ignores_added_fields() {
    let mut enc = EnvelopeEncoder::new();
    let header = EnvelopeHeader::new("supervisor", "mesh").with_metadata(&[("trace", "t-1")]);
    let bytes = new_agent_spawned(&mut enc, &header);

    assert!(v1::envelope_size_prefixed_buffer_has_identifier(&bytes));
    let env = v1::size_prefixed_root_as_envelope(&bytes).expect("v1 verifier accepts a v1.1 message");
    assert_eq!(env.source(), Some("supervisor"));
    assert_eq!(
        MessageId::from_uuid(uuid::Uuid::from_u64_pair(env.message_id().unwrap().hi(), env.message_id().unwrap().lo())),
        header.message_id
    );
    assert_eq!(env.schema_version().unwrap().minor(), SchemaVersion::CURRENT.minor);
    assert_eq!(env.payload_type(), v1::Payload::AgentSpawned);
    let spawned = env.payload_as_agent_spawned().unwrap();
    assert_eq!(spawned.agent_id(), Some("risk-1"));
    assert_eq!(spawned.pid(), 4242);
}

#[test]
fn old_reader_sees_added_union_member_as_unknown_without_panicking() {
    let mut enc = EnvelopeEncoder::new();
    let bytes = enc
        .encode(&EnvelopeHeader::new("exec-1", "risk-1"), |fbb| {
            let symbol = fbb.create_string("BTC-USD");
            fb::ExecutionOrderPlaced::create(
                fbb,
                &fb::ExecutionOrderPlacedArgs { symbol: Some(symbol), quantity_e8: 1, ..Default::default() },
            )
        })
        .to_vec();

    let env = v1::size_prefixed_root_as_envelope(&bytes).expect("unknown union members pass verification");
    let kind = env.payload_type();
    assert_eq!(kind.0, fb::Payload::ExecutionOrderPlaced.0);
    assert_eq!(kind.variant_name(), None, "v1 does not know this member");
    assert!(env.payload_as_agent_spawned().is_none());
    assert!(env.payload().is_some(), "the raw table is still there to forward");
    assert_eq!(env.source(), Some("exec-1"));
    let _ = format!("{env:?}"); // generated Debug must not panic either
}

#[test]
fn old_reader_sees_added_enum_member_as_unknown_value() {
    let mut enc = EnvelopeEncoder::new();
    let bytes = enc
        .encode(&EnvelopeHeader::new("supervisor", ""), |fbb| {
            fb::AgentTerminated::create(
                fbb,
                &fb::AgentTerminatedArgs { reason: fb::TerminationReason::Evicted, ..Default::default() },
            )
        })
        .to_vec();
    let env = v1::size_prefixed_root_as_envelope(&bytes).unwrap();
    let reason = env.payload_as_agent_terminated().unwrap().reason();
    assert_eq!(reason.0, fb::TerminationReason::Evicted.0);
    assert_eq!(reason.variant_name(), None);
}

fn old_message(payload: &str) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let source = fbb.create_string("old-agent");
    let id = v1::Uuid::new(1, 2);
    let version = v1::SchemaVersion::new(1, 0, 0);
    let (kind, table) = match payload {
        "spawned" => {
            let agent_id = fbb.create_string("legacy-1");
            let t = v1::AgentSpawned::create(
                &mut fbb,
                &v1::AgentSpawnedArgs { agent_id: Some(agent_id), pid: 7, ..Default::default() },
            );
            (v1::Payload::AgentSpawned, t.as_union_value())
        }
        _ => {
            let mesh_id = fbb.create_string("mesh-A");
            let t = v1::MeshFormed::create(
                &mut fbb,
                &v1::MeshFormedArgs { mesh_id: Some(mesh_id), topology: v1::MeshTopology::Ring, ..Default::default() },
            );
            (v1::Payload::MeshFormed, t.as_union_value())
        }
    };
    let root = v1::Envelope::create(
        &mut fbb,
        &v1::EnvelopeArgs {
            message_id: Some(&id),
            correlation_id: Some(&id),
            timestamp_ns: 99,
            source: Some(source),
            destination: None,
            schema_version: Some(&version),
            payload_type: kind,
            payload: Some(table),
        },
    );
    v1::finish_size_prefixed_envelope_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

#[test]
fn new_reader_reads_old_message_with_missing_fields_defaulted() {
    let bytes = old_message("spawned");
    let env = verify_envelope(&bytes, &VerifyOptions::default()).expect("current reader accepts v1 messages");
    let header = EnvelopeHeader::from_envelope(&env);
    assert_eq!(header.schema_version, SchemaVersion { major: 1, minor: 0, patch: 0 });
    assert_eq!(header.source, "old-agent");
    assert_eq!(header.destination, "", "absent string reads as empty");
    assert!(env.metadata().is_none(), "v1 has no metadata field");

    let Event::AgentSpawned(spawned) = Event::from_envelope(&env).unwrap() else { panic!("wrong event") };
    assert_eq!(spawned.agent_id(), Some("legacy-1"));
    assert_eq!(spawned.pid(), 7);
    assert!(spawned.capabilities().is_none(), "field added after v1 is absent");

    let json = envelope_to_json(&env);
    assert_eq!(json["payload"]["capabilities"], serde_json::Value::Null);
    assert_eq!(json["metadata"], serde_json::json!({}));
    assert_eq!(json["schema_version"], "1.0.0");
}

#[test]
fn new_reader_defaults_field_appended_to_old_table() {
    let bytes = old_message("mesh");
    let env = verify_envelope(&bytes, &VerifyOptions::default()).unwrap();
    let Ok(Event::MeshFormed(mesh)) = Event::from_envelope(&env) else { panic!("wrong event") };
    assert_eq!(mesh.mesh_id(), Some("mesh-A"));
    assert_eq!(mesh.topology(), fb::MeshTopology::Ring);
    assert_eq!(mesh.purpose(), None);
    assert!(!matches!(Event::from_envelope(&env), Err(EnvelopeError::UnknownPayload(_))));
}
