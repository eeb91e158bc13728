//! Every example runs to completion as a newcomer would run it, and shows what it promises.

use std::process::Command;

fn run(exe: &str) -> String {
    let out = Command::new(exe).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{exe} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn hello_ring_delivers_five_messages_in_order() {
    let out = run(env!("CARGO_BIN_EXE_hello_ring"));
    let got: Vec<&str> = out.lines().collect();
    let want: Vec<String> = (0..5).map(|i| format!("consumer got type {i} : hello #{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn typed_events_prints_the_verified_envelope_as_json() {
    let out = run(env!("CARGO_BIN_EXE_typed_events"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["message_type"], "TradingSignalGenerated");
    assert_eq!(json["payload"]["symbol"], "BTC-USD");
    assert_eq!(json["metadata"]["desk"], "crypto");
}

#[test]
fn arrow_batches_are_read_in_place() {
    let out = run(env!("CARGO_BIN_EXE_arrow_batches"));
    assert_eq!(out.lines().filter(|l| l.starts_with("received 3 rows")).count(), 3, "{out}");
}
