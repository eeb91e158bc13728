//! `[nats]` and `[[jetstream]]` in `relay.toml`: the shipped example loads with its defaults, a
//! relay with only JetStream routes needs no key file, and invalid routes are refused with the
//! field and the reason.

use std::path::{Path, PathBuf};

use ipc_zmq::config::{ConfigError, JetStreamDirection, RelayConfig};

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn refuse(text: &str) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    RelayConfig::load(&write(dir.path(), text)).expect_err(text)
}

const ONE: &str = "[[jetstream]]\npublish = \"r\"\nstream = \"S\"\n";
const NATS: &str = "name = \"host-a\"\n[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n";

#[test]
fn the_jetstream_example_loads_without_a_key_file_and_with_its_defaults() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/relay-jetstream.toml");
    let config = RelayConfig::load(&example).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.listen.is_none() && config.routes_out.is_empty());
    let nats = config.nats.expect("[nats]");
    assert_eq!(nats.servers.len(), 3);
    assert_eq!((nats.reconnect_min_ms, nats.reconnect_max_ms, nats.request_timeout_ms), (100, 5000, 5000));
    let [publish, feed] = &config.jetstream[..] else { panic!("two routes: {:?}", config.jetstream) };
    assert_eq!(
        (publish.direction, publish.ring.as_str(), publish.stream.as_str()),
        (JetStreamDirection::Publish, "orders", "ORDERS")
    );
    assert_eq!(
        (publish.replicas, publish.duplicate_window_secs, publish.max_in_flight, publish.ordered),
        (3, 120, 1024, true)
    );
    assert_eq!((publish.pack_max_records, publish.pack_max_bytes), (128, 65536));
    assert_eq!((feed.direction, feed.ring.as_str()), (JetStreamDirection::Feed, "orders-copy"));
    assert_eq!((feed.durable.as_str(), feed.batch, feed.ack_wait_ms), ("host-a-orders-copy", 256, 30_000));
}

#[test]
fn invalid_jetstream_routes_are_refused_with_field_and_reason() {
    let route = |body: &str| format!("{NATS}[[jetstream]]\n{body}\n");
    let cases = [
        ("name = \"a\"\n[[jetstream]]\npublish = \"r\"\nstream = \"S\"\n", "nats", "missing"),
        (&route("stream = \"S\""), "jetstream[0].publish", "exactly one"),
        (&route("publish = \"r\"\nfeed = \"q\"\nstream = \"S\""), "jetstream[0].publish", "exactly one"),
        (&route("publish = \"r\"\nstream = \"a.b\""), "jetstream[0].stream", "not a JetStream name"),
        (&route("publish = \"r\"\nstream = \"S\"\nsubject = \"a.*\""), "jetstream[0].subject", "without wildcards"),
        (&route("publish = \"r\"\nstream = \"S\"\nreplicas = 7"), "jetstream[0].replicas", "between 1 and 5"),
        (&route("publish = \"r\"\nstream = \"S\"\nbatch = 10"), "jetstream[0].batch", "only applies to feed"),
        (&route("feed = \"r\"\nstream = \"S\"\nreplicas = 3"), "jetstream[0].replicas", "only applies to publish"),
        (&route("feed = \"r\"\nstream = \"S\"\nack_wait_ms = 5"), "jetstream[0].ack_wait_ms", "at least 100"),
        (&route("publish = \"r\"\nstream = \"S\"\npack_max_records = 0"), "jetstream[0].pack_max_records", "between 1"),
        (
            &route("publish = \"r\"\nstream = \"S\"\npack_max_bytes = 2000000"),
            "jetstream[0].pack_max_bytes",
            "max_payload",
        ),
        (
            &route("feed = \"r\"\nstream = \"S\"\npack_max_records = 8"),
            "jetstream[0].pack_max_records",
            "only applies to publish",
        ),
        (
            &route("publish = \"r\"\nstream = \"S\"\n[[jetstream]]\nfeed = \"r\"\nstream = \"T\""),
            "jetstream[1].feed",
            "already",
        ),
        (&format!("name = \"a\"\n[nats]\nservers = []\n{ONE}"), "nats.servers", "at least one"),
        (&format!("name = \"a\"\n[nats]\nservers = [\"localhost\"]\n{ONE}"), "nats.servers", "not a NATS server"),
        ("name = \"a\"\nlisten = \"tcp://*:7400\"\n", "key_file", "missing"),
        (
            &format!("listen = \"tcp://*:7400\"\n{NATS}[[jetstream]]\npublish = \"r\"\nstream = \"S\"\n"),
            "key_file",
            "missing",
        ),
    ];
    for (text, field, reason) in cases {
        let err = refuse(text);
        assert_eq!(err.field, field, "{text}: {err}");
        assert!(err.reason.contains(reason), "{text}: {err}");
    }
}
