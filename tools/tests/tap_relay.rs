//! `tadpole tap` on the dead-letter ring a real relay wrote: two `tadpole relay` processes on
//! loopback, envelopes sent on a route the far relay does not know, and tap decoding each
//! refusal (reason, route, origin, message id, the envelope itself) without consuming it.

mod ops_support;
#[path = "support/relay.rs"]
mod relay_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::RingBuilder;
use ops_support::{Unlink, stderr, stdout, tadpole, unique};
use relay_support::{free_port, keygen};
use schemas::channel::EnvelopeSender;
use schemas::envelope::EnvelopeHeader;
use schemas::fb;
use serde_json::Value;

/// A relay process, killed when dropped.
struct Relay(Child);

impl Relay {
    fn spawn(config: &std::path::Path) -> Relay {
        let child = Command::new(env!("CARGO_BIN_EXE_tadpole"))
            .args(["relay", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const BIG: u64 = (1 << 60) + 7;

#[test]
fn tap_decodes_the_dead_letters_a_real_relay_wrote_and_leaves_them_for_the_consumer() {
    let (out, dead, inn) = (unique("relay-out"), unique("relay-dead"), unique("relay-in"));
    let _unlink = [Unlink(out.clone()), Unlink(dead.clone()), Unlink(inn.clone())];
    let rings = [
        RingBuilder::new(1 << 16).create_named(&out).unwrap(),
        RingBuilder::new(1 << 16).create_named(&dead).unwrap(),
        RingBuilder::new(1 << 16).create_named(&inn).unwrap(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (a_pub, b_pub) = (keygen(dir.path(), "a"), keygen(dir.path(), "b"));
    let port = free_port();
    let a = dir.path().join("a.toml");
    std::fs::write(
        &a,
        format!(
            "name = \"a\"\nkey_file = \"a.key\"\n\n[[route_out]]\nring = \"{out}\"\nconnect = \"tcp://127.0.0.1:{port}\"\n\
             server_key = \"{b_pub}\"\nstream = \"nowhere\"\ndead_letters = \"{dead}\"\n"
        ),
    )
    .unwrap();
    let b = dir.path().join("b.toml");
    std::fs::write(
        &b,
        format!(
            "name = \"b\"\nkey_file = \"b.key\"\nlisten = \"tcp://127.0.0.1:{port}\"\nallow = [\"{a_pub}\"]\n\n\
             [[route_in]]\nstream = \"elsewhere\"\nring = \"{inn}\"\n"
        ),
    )
    .unwrap();
    let _b = Relay::spawn(&b);
    let _a = Relay::spawn(&a);

    let mut tx = EnvelopeSender::new(rings[0].producer().unwrap());
    let mut sent = Vec::new();
    for i in 0..3 {
        let header = EnvelopeHeader::new("market-analysis", "risk");
        tx.try_send(&header, |fbb| {
            fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence: BIG + i, ..Default::default() })
        })
        .unwrap();
        sent.push(header.message_id.to_string());
    }
    // Wait for the three dead letters, as an operator would: with `stat`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tadpole(&["stat", &dead, "--json", "--sample-ms", "0"]);
        let doc: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        if doc["rings"][0]["produced"]["messages"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the relay wrote no dead letters: {doc}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = tadpole(&["tap", &dead]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["kind"], "dead_letter", "{line}");
        assert_eq!(line["message_type"], u16::from(fb::Payload::Heartbeat.0), "{line}");
        let d = &line["dead_letter"];
        assert_eq!(d["reason"], "unknown_route", "{line}");
        assert_eq!(d["route"], "nowhere", "{line}");
        assert_eq!(d["origin"], "market-analysis", "{line}");
        assert_eq!(d["message_id"], sent[i].as_str(), "{line}");
        assert_eq!(d["correlation_id"], sent[i].as_str(), "{line}");
        // A string beyond 2^53 (nearly every random epoch), a number below.
        let epoch = d["source_epoch"].as_str().map_or_else(|| d["source_epoch"].to_string(), str::to_owned);
        assert_eq!(epoch, rings[0].epoch().to_string(), "{line}");
        assert_eq!(d["payload"]["envelope"]["payload"]["sequence"], (BIG + i as u64).to_string(), "{line}");
    }

    // Tap consumed nothing: the dead-letter ring's consumer gets all three.
    let mut consumer = rings[1].consumer().unwrap();
    for _ in 0..3 {
        assert!(consumer.recv_timeout(Duration::from_secs(5)).is_ok());
    }
}
