//! `tadpole tap` on a full ring: it prints every record and never a false "lagged" line (it used
//! to print them without end when the ring's head was off a quarter boundary).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::{RingBuilder, Segment};

/// Unlinks a named segment when dropped, whatever happened.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

#[test]
fn tap_prints_every_record_of_a_full_ring_without_a_false_lag() {
    let name = format!("tap-full-{}", std::process::id());
    let _unlink = Unlink(name.clone());
    let seg = RingBuilder::new(4096).create_named(&name).unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    for _ in 0..3 {
        p.try_send(&[1; 40]).unwrap();
        drop(c.try_recv().unwrap());
    }
    let mut records = 0;
    while p.try_send(&[2; 100]).is_ok() {
        records += 1;
    }
    let mut tap = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["tap", &name, "--from-oldest", "--count", &records.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tap.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = tap.kill();
            let out = tap.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            panic!("tap did not finish its {records} records: {}", text.lines().last().unwrap_or(""));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = tap.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("pos")).count(), records, "{text}");
    assert!(!text.contains("lagged"), "{text}");
}
