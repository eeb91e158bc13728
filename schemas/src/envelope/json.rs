//! JSON rendering of verified envelopes, for logs.

use flatbuffers::{ForwardsUOffset, Vector};
use serde_json::{Map, Value};

use super::{Envelope, EnvelopeHeader, Event, MessageId};
use crate::fb;

/// Converts a field read from a verified buffer into JSON. Implemented for
/// every field type the event catalogue uses, so one macro line per event
/// renders all of its fields.
pub(super) trait ToJson {
    fn to_json(&self) -> Value;
}

macro_rules! json_number {
    ($($t:ty),*) => {$(
        impl ToJson for $t {
            fn to_json(&self) -> Value {
                Value::from(*self)
            }
        }
    )*};
}
json_number!(bool, u8, u16, u32, u64, i8, i16, i32, i64);

impl ToJson for &str {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_json)
    }
}

impl ToJson for &fb::Uuid {
    fn to_json(&self) -> Value {
        Value::from(MessageId::from_wire(self).to_string())
    }
}

impl ToJson for Vector<'_, ForwardsUOffset<&str>> {
    fn to_json(&self) -> Value {
        Value::Array(self.iter().map(Value::from).collect())
    }
}

/// Enums render as their name; a value from a newer schema renders as its
/// number instead of panicking.
macro_rules! json_enum {
    ($($t:ident),*) => {$(
        impl ToJson for fb::$t {
            fn to_json(&self) -> Value {
                self.variant_name().map_or_else(|| Value::from(self.0), Value::from)
            }
        }
    )*};
}
json_enum!(Side, OrderType, TimeInForce, Liquidity, Severity, MeshTopology, TerminationReason, HealthStatus);

/// Renders a verified envelope for logs: every header field, the metadata as
/// an object, `message_type` (a name, or `"unknown(N)"` for a newer schema's
/// member) and every field of the payload (`null` if unknown or absent).
///
/// ```
/// use schemas::envelope::{envelope_to_json, verify_envelope, EnvelopeEncoder, EnvelopeHeader, VerifyOptions};
/// use schemas::fb;
/// let mut enc = EnvelopeEncoder::new();
/// let h = EnvelopeHeader::new("a", "b").with_metadata(&[("trace", "t-1")]);
/// let bytes = enc.encode(&h, |fbb| fb::Heartbeat::create(fbb, &fb::HeartbeatArgs {
///     sequence: 7, status: fb::HealthStatus::Healthy, ..Default::default()
/// }));
/// let json = envelope_to_json(&verify_envelope(bytes, &VerifyOptions::default()).unwrap());
/// assert_eq!(json["message_type"], "Heartbeat");
/// assert_eq!(json["payload"]["sequence"], 7);
/// assert_eq!(json["payload"]["status"], "Healthy");
/// assert_eq!(json["metadata"]["trace"], "t-1");
/// ```
pub fn envelope_to_json(envelope: &Envelope<'_>) -> Value {
    let header = EnvelopeHeader::from_envelope(envelope);
    let kind = envelope.payload_type();
    let message_type = kind.variant_name().map_or_else(|| format!("unknown({})", kind.0), str::to_owned);
    let payload = Event::from_envelope(envelope).map_or(Value::Null, |e| e.to_json());
    let metadata: Map<String, Value> =
        envelope.metadata().into_iter().flatten().map(|kv| (kv.key().to_owned(), kv.value().to_json())).collect();

    let mut json = Map::new();
    json.insert("message_id".into(), header.message_id.to_string().into());
    json.insert("correlation_id".into(), header.correlation_id.to_string().into());
    json.insert("timestamp_ns".into(), header.timestamp_ns.into());
    json.insert("source".into(), envelope.source().to_json());
    json.insert("destination".into(), envelope.destination().to_json());
    json.insert("schema_version".into(), header.schema_version.to_string().into());
    json.insert("message_type".into(), message_type.into());
    json.insert("payload".into(), payload);
    json.insert("metadata".into(), Value::Object(metadata));
    Value::Object(json)
}
