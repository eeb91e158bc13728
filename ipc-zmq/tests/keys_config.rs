//! `relay.toml`: the shipped example loads, defaults apply, and every invalid config is refused
//! with `<file>: <field>: <reason>`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipc_zmq::config::{ConfigError, Limits, RelayConfig, RouteIn};
use ipc_zmq::keys::KeyPair;

struct Dir {
    dir: tempfile::TempDir,
    keys: KeyPair,
    peer: KeyPair,
}

fn dir() -> Dir {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyPair::generate().unwrap();
    keys.write_new(&dir.path().join("host-a")).unwrap();
    Dir { dir, keys, peer: KeyPair::generate().unwrap() }
}

impl Dir {
    fn write(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("relay.toml");
        std::fs::write(&path, text.replace("PEER", &self.peer.public().to_z85())).unwrap();
        path
    }

    fn refuse(&self, text: &str) -> ConfigError {
        let path = self.write(text);
        let err = RelayConfig::load(&path).expect_err(text);
        assert_eq!(err.file, path, "{err}");
        err
    }
}

const MINIMAL: &str = "name = \"host-a\"\nkey_file = \"host-a.key\"\n";

#[test]
fn the_example_config_loads_with_defaults() {
    let d = dir();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/relay.toml");
    let path = d.dir.path().join("relay.toml");
    std::fs::copy(&example, &path).unwrap();
    let config = RelayConfig::load(&path).unwrap();
    assert_eq!(config.name, "host-a");
    assert_eq!(config.keys.public(), d.keys.public());
    assert_eq!(config.listen.as_deref(), Some("tcp://*:7400"));
    assert_eq!(config.allowlist.len(), 1);
    assert_eq!(config.routes_out.len(), 1);
    assert_eq!(config.routes_out[0].stream, "orders", "the stream defaults to the ring's name");
    assert_eq!(
        config.routes_in,
        vec![RouteIn {
            stream: "fills".into(),
            ring: "fills".into(),
            envelopes: false,
            dedup_window_secs: 86_400,
            dedup_max_ids: 1_000_000
        }]
    );
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.limits.handshake_timeout_ms, 1000);
    assert_eq!(config.limits.request_timeout_ms, 5000);
    assert_eq!(config.limits.idle_timeout_ms, 30_000);
}

#[test]
fn a_send_only_relay_needs_no_listener_and_allow_file_adds_keys() {
    let d = dir();
    let extra = KeyPair::generate().unwrap();
    std::fs::write(d.dir.path().join("allowed.keys"), format!("# peers\n\n{}\n", extra.public())).unwrap();
    let c = RelayConfig::load(&d.write(MINIMAL)).unwrap();
    assert!(c.listen.is_none() && c.allowlist.is_empty());
    let c = RelayConfig::load(&d.write(&format!(
        "{MINIMAL}listen = \"tcp://127.0.0.1:7400\"\nallow = [\"PEER\"]\nallow_file = \"allowed.keys\"\n"
    )))
    .unwrap();
    assert!(c.allowlist.contains(d.peer.public()) && c.allowlist.contains(extra.public()));
}

#[test]
fn a_bad_server_key_is_refused_naming_the_route_and_the_character() {
    let d = dir();
    let good = d.peer.public().to_z85();
    let bad = format!("{}~{}", &good[..6], &good[7..]);
    let text = format!(
        "{MINIMAL}[[route_out]]\nring = \"a\"\nconnect = \"tcp://b:1\"\nserver_key = \"{good}\"\n\
         [[route_out]]\nring = \"b\"\nconnect = \"tcp://b:1\"\nserver_key = \"{bad}\"\n"
    );
    let err = d.refuse(&text);
    assert_eq!(err.field, "route_out[1].server_key");
    assert_eq!(
        err.to_string(),
        format!("{}: route_out[1].server_key: not a Z85 key (character 7 is '~')", err.file.display())
    );
}

#[test]
fn invalid_configs_are_refused_with_field_and_reason() {
    let d = dir();
    let cases: &[(&str, &str, &str)] = &[
        ("name = \"a\"\n", "key_file", "missing field `key_file`"),
        (&format!("{MINIMAL}colour = \"blue\"\n"), "colour", "unknown field `colour`"),
        (
            &format!("{MINIMAL}[limits]\nhandshake_timeout = 5\n"),
            "limits.handshake_timeout",
            "unknown field `handshake_timeout`",
        ),
        (&format!("{MINIMAL}listen = \"tcp://*:7400\"\n"), "allow", "admit no one"),
        (&format!("{MINIMAL}listen = \"ipc:///tmp/x\"\nallow = [\"PEER\"]\n"), "listen", "not a tcp:// endpoint"),
        (&format!("{MINIMAL}listen = \"tcp://*:0\"\nallow = [\"PEER\"]\n"), "listen", "no valid port"),
        (&format!("{MINIMAL}allow = [\"PEER\", \"short\"]\n"), "allow[1]", "not a Z85 key (5 characters"),
        (&format!("{MINIMAL}[[route_in]]\nstream = \"s\"\n"), "listen", "route_in needs a listener"),
        (
            &format!("{MINIMAL}[[route_out]]\nring = \"r\"\nconnect = \"tcp://*:7400\"\nserver_key = \"PEER\"\n"),
            "route_out[0].connect",
            "no host",
        ),
        (
            &format!("{MINIMAL}[[route_out]]\nring = \"r\"\nconnect = \"tcp://b:1\"\n"),
            "route_out[0].server_key",
            "missing field `server_key`",
        ),
        (&format!("{MINIMAL}health = \"localhost\"\n"), "health", "expected host:port"),
        (&format!("{MINIMAL}[limits]\nmax_frame_bytes = 0\n"), "limits.max_frame_bytes", "between 1"),
        (&format!("{MINIMAL}[limits]\nidle_timeout_ms = 500\n"), "limits.idle_timeout_ms", "exceed heartbeat"),
        ("name = \"a\"\nkey_file = \"missing.key\"\n", "key_file", "No such file"),
        ("name = [\n", "line 2", "invalid array; expected `]`"),
    ];
    for (text, field, reason) in cases {
        let err = d.refuse(text);
        assert_eq!(&err.field, field, "{text:?} -> {err}");
        assert!(err.reason.contains(reason), "{text:?} -> {err}");
    }
}

#[test]
fn an_open_key_file_or_bad_allow_file_line_is_refused_at_load() {
    let d = dir();
    let key = d.dir.path().join("host-a.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = d.refuse(MINIMAL);
    assert_eq!(err.field, "key_file");
    assert!(err.reason.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let allow_file = d.dir.path().join("allowed.keys");
    std::fs::write(&allow_file, format!("{}\nnot-a-key\n", d.peer.public())).unwrap();
    let err = RelayConfig::load(&d.write(&format!("{MINIMAL}allow_file = \"allowed.keys\"\n"))).unwrap_err();
    assert_eq!((err.file.as_path(), err.field.as_str()), (allow_file.as_path(), "line 2"), "{err}");
}
