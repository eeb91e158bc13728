//! The `tadpole` command as a user runs it: real processes, real shared memory.

use std::process::Command;

use ipc_core::{RingBuilder, Segment};

fn tadpole(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole")).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn demo_runs_the_agent_processes_and_reports_end_to_end_latency() {
    let (ok, out) = tadpole(&["demo", "--signals", "3000"]);
    assert!(ok, "{out}");
    for want in ["market-analysis -> risk -> personality -> execution", "p50", "p99.9", "0 dead letters"] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Every 16th signal is over the risk limit: both outcomes travel the whole pipeline.
    let line = out.lines().find(|l| l.contains("signals:")).unwrap();
    assert!(line.contains("3000 timed") && line.contains("188 refused"), "{line}");
    let (ok, out) = tadpole(&["demo", "--signals", "300", "--wait", "block"]);
    assert!(ok, "{out}");
}

#[test]
fn pingpong_runs_two_processes_and_prints_percentiles() {
    let (ok, out) = tadpole(&["pingpong", "--round-trips", "20000", "--size", "64"]);
    assert!(ok, "{out}");
    for label in ["p50", "p99", "p99.9", "max", "round trips: 20000"] {
        assert!(out.contains(label), "missing {label:?} in:\n{out}");
    }
    let (ok, out) = tadpole(&["pingpong", "--round-trips", "2000", "--wait", "block"]);
    assert!(ok, "{out}");
}

#[test]
fn demo_refuses_bad_arguments_with_a_clear_error() {
    let (ok, out) = tadpole(&["pingpong", "--size", "0"]);
    assert!(!ok);
    assert!(out.contains("--size"), "{out}");
    let (ok, out) = tadpole(&["demo", "--signals", "lots"]);
    assert!(!ok);
    assert!(out.contains("invalid value"), "{out}");
}

#[test]
fn stat_and_tap_show_a_live_ring_without_consuming_it() {
    let name = format!("cli-stat-{}", std::process::id());
    let seg = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let mut producer = seg.producer().unwrap();
    for i in 0..5u8 {
        producer.try_send_typed(u16::from(i), &[i; 40]).unwrap();
    }
    let (ok, out) = tadpole(&["stat", &name]);
    assert!(ok, "{out}");
    assert!(out.contains("5 messages"), "{out}");
    assert!(out.contains(&format!("pid {} (running)", std::process::id())), "{out}");
    let (ok, out) = tadpole(&["tap", &name, "--format", "hex", "--count", "5"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("pos")).count(), 5, "{out}");
    assert!(out.contains("type     4") && out.contains("40 B"), "{out}");
    // Nothing was consumed.
    let mut consumer = seg.consumer().unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), &[0; 40]);
    // Leases held, and how many the consumer may hold, are shown.
    consumer.set_max_leases(100);
    let _held =
        [consumer.try_recv().unwrap().into_lease().unwrap(), consumer.try_recv().unwrap().into_lease().unwrap()];
    let (ok, out) = tadpole(&["stat", &name]);
    assert!(ok, "{out}");
    assert!(out.contains("leases 2/100"), "{out}");
}

#[test]
fn clean_removes_rings_left_by_dead_processes_only() {
    let prefix = format!("cli-clean-{}-", std::process::id());
    let live = format!("{prefix}live");
    let _live = RingBuilder::new(4096).create_named(&live).unwrap();
    let dead = format!("{prefix}dead");
    // A child creates a ring, keeps it, and exits.
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_creates_and_keeps_a_ring", "--nocapture"])
        .env("TADPOLE_CLI_CHILD_RING", &dead)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(Segment::open(&dead).is_ok());
    let me = std::process::id();
    let (ok, out) = tadpole(&["clean", "--dry-run", "--prefix", &prefix]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("would remove {dead}: every process is gone (creator pid ")), "{out}");
    assert!(out.contains(&format!("kept {live}: in use: creator pid {me} running")), "{out}");
    assert!(Segment::open(&dead).is_ok(), "a dry run removed the ring");
    let (ok, out) = tadpole(&["clean", "--prefix", &prefix]);
    assert!(ok && out.contains(&format!("removed {dead}: every process is gone")), "{out}");
    assert!(out.contains(&format!("kept {live}: in use: creator pid {me} running")), "{out}");
    assert!(Segment::open(&dead).is_err());
    assert!(Segment::open(&live).is_ok());
}

#[test]
fn child_creates_and_keeps_a_ring() {
    if let Ok(name) = std::env::var("TADPOLE_CLI_CHILD_RING") {
        RingBuilder::new(4096).create_named(&name).unwrap().keep();
    }
}
