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
        .args(["tap", &name, "--format", "hex", "--count", &records.to_string()])
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

/// A sealed ring has no file in /dev/shm: the tools reach it through the socket that serves it.
#[test]
fn stat_and_tap_read_a_sealed_ring_through_its_socket() {
    let ring = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let path = std::env::temp_dir().join(format!("tadpole-tap-{}.sock", std::process::id()));
    let server = ipc_core::SegmentServer::bind(&ring, &path).unwrap();
    let serving = std::thread::spawn(move || {
        for _ in 0..2 {
            server.accept().unwrap();
        }
        server
    });
    let mut p = ring.producer().unwrap();
    for i in 0..3u8 {
        p.try_send_typed(u16::from(i), &[i; 24]).unwrap();
    }
    let socket = path.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole")).args(["stat", "--socket", socket]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("3 messages"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["tap", "--socket", socket, "--format", "hex", "--count", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("pos")).count(), 3, "{text}");
    assert!(text.contains("type     2") && text.contains("24 B"), "{text}");
    drop(serving.join().unwrap());
}
