//! `tadpole chaos`: a short run injects every kind of fault into real agent and relay processes,
//! finds each in the metrics and no violation; and the checks are shown to bite: a record the
//! producer drops behind their back makes the run fail.

use std::process::{Command, Output};

const FAULTS: [&str; 6] =
    ["kill -9 agent", "kill -9 relay", "stalled consumer", "producer flood", "corrupt records", "partition"];

fn chaos(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole")).arg("chaos").args(args).output().expect("run tadpole chaos");
    let text =
        format!("{}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// The `injected detected violations` numbers of a summary row (`-` reads as 0).
fn row(text: &str, label: &str) -> Option<[u64; 3]> {
    let line = text.lines().map(str::trim_start).find(|l| l.starts_with(label))?;
    let fields: Vec<u64> = line[label.len()..].split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    fields.try_into().ok()
}

#[test]
fn a_short_chaos_run_injects_every_fault_sees_each_in_the_metrics_and_finds_no_violation() {
    let (out, text) = chaos(&["--seconds", "40", "--seed", "7"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("seed 7"), "the seed is printed:\n{text}");
    for label in FAULTS {
        let [injected, detected, violations] = row(&text, label).unwrap_or_else(|| panic!("no {label:?} row:\n{text}"));
        assert!(injected >= 1, "{label} never injected:\n{text}");
        assert_eq!(detected, injected, "{label}: not every one seen in the metrics:\n{text}");
        assert_eq!(violations, 0, "{label}:\n{text}");
    }
    for check in ["delivery", "repeats", "checksums", "memory", "process exits"] {
        assert_eq!(row(&text, check).map(|r| r[2]), Some(0), "{check}:\n{text}");
    }
    assert!(text.contains("no violations"), "{text}");
}

#[test]
fn a_record_dropped_behind_the_checks_back_is_reported_lost_and_fails_the_run() {
    let (out, text) = chaos(&["--seconds", "3", "--faults", "none", "--inject-loss"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("VIOLATION: local: 1 records lost"), "{text}");
    assert_eq!(row(&text, "delivery").map(|r| r[2]), Some(1), "{text}");
    assert!(text.contains("chaos: 1 violation(s)"), "{text}");
}
