//! Every command exits quietly with status 0 when its stdout is closed early (`tadpole stat |
//! head`): no panic, no backtrace.

mod ops_support;

use std::io::Read;
use std::process::{Command, Stdio};

use ipc_core::RingBuilder;
use ops_support::{Unlink, unique};

/// Runs `tadpole args` with a stdout pipe whose reading end is closed before it writes, and
/// returns its exit code and stderr.
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
fn every_command_exits_zero_without_a_panic_when_its_stdout_is_closed() {
    let name = unique("pipe");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    for i in 0..200u32 {
        producer.try_send_typed(1, &i.to_le_bytes()).unwrap();
    }
    for args in [
        &["stat", "--sample-ms", "20"][..],
        &["stat", "--json", "--sample-ms", "20"],
        &["stat", &name, "--sample-ms", "20"],
        &["stat", "--watch", "--interval-ms", "50"],
        &["tap", &name],
        &["tap", &name, "--follow", "--format", "hex"],
        &["clean", "--dry-run"],
        &["pingpong", "--round-trips", "2000"],
    ] {
        let (code, err) = with_closed_stdout(args);
        assert_eq!(code, Some(0), "tadpole {args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "tadpole {args:?}: {err}");
    }
}

/// An idle `tap --follow` has nothing to write, so no write can fail: it notices the closed
/// pipe by itself.
#[test]
fn an_idle_tap_follow_stops_with_status_zero_when_its_reader_goes_away() {
    let name = unique("idle");
    let _unlink = Unlink(name.clone());
    let _segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let started = std::time::Instant::now();
    let (code, err) = with_closed_stdout(&["tap", &name, "--follow"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn stat_watch_piped_into_head_ends_with_status_zero() {
    let script = format!(
        "set -o pipefail; {} stat --watch --interval-ms 50 | head -n 3 >/dev/null",
        env!("CARGO_BIN_EXE_tadpole")
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
