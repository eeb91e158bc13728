//! `tadpole stat` and `tadpole tap` read rings other processes own, and survive one of them
//! truncating the file: they stop with a message and exit status 3, never die by SIGBUS.
//! Real `tadpole` processes, real segments in /dev/shm, truncated from this test.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ipc_core::layout::HEADER_LEN;
use ipc_core::{RingBuilder, Segment};

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("truncated-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Unlinks a named segment when dropped, whatever happened.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

fn truncate(name: &str, len: u64) {
    std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap().set_len(len).unwrap();
}

/// A ring with one record, left in /dev/shm and no longer mapped here: this process must not
/// touch a mapping of a file it is about to truncate.
fn make_ring(name: &str) {
    let seg = RingBuilder::new(1 << 16).create_named(name).unwrap();
    seg.producer().unwrap().try_send(b"before the truncation").unwrap();
    seg.keep();
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tadpole did not stop within {timeout:?} of the truncation");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `tadpole tap` on a ring with records in it, waits until it has printed one (so it has
/// the ring mapped and is reading it), truncates the file to `len`, and returns how tap ended and
/// what it said on stderr.
fn tap_then_truncate(len: u64, skip_size_check: bool) -> (ExitStatus, String) {
    let name = unique("tap");
    let _unlink = Unlink(name.clone());
    make_ring(&name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tadpole"));
    cmd.args(["tap", &name, "--follow", "--format", "hex"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    if skip_size_check {
        cmd.env("TADPOLE_SKIP_SIZE_CHECK", "1");
    }
    let mut tap = cmd.spawn().unwrap();
    let mut lines = BufReader::new(tap.stdout.take().unwrap()).lines();
    let first = lines.next().expect("tap printed a record").unwrap();
    assert!(first.starts_with("pos"), "{first}");
    truncate(&name, len);
    let status = wait_exit(&mut tap, Duration::from_secs(10));
    let mut stderr = String::new();
    tap.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn tap_stops_with_an_error_when_its_ring_is_truncated_underneath_it() {
    for len in [0, HEADER_LEN as u64] {
        let (status, stderr) = tap_then_truncate(len, false);
        assert_eq!(status.signal(), None, "tap was killed by a signal: {stderr}");
        assert_eq!(status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("truncated by another process while being read (found shrunk"), "{stderr}");
    }
}

/// The same with the size check skipped, so the read itself faults: ipc-core's SIGBUS handler
/// maps zeros over the ring, the observer reports the truncation, and tap stops with a message
/// and exit status 3.
#[test]
fn tap_survives_the_sigbus_of_a_read_past_the_truncated_end() {
    for len in [0, HEADER_LEN as u64] {
        let (status, stderr) = tap_then_truncate(len, true);
        assert_eq!(status.signal(), None, "tap was killed by a signal: {stderr}");
        assert_eq!(status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("truncated by another process while being read (SIGBUS caught)"), "{stderr}");
    }
}

#[test]
fn stat_reports_a_truncated_ring_with_an_error_and_a_status() {
    let name = unique("stat");
    let _unlink = Unlink(name.clone());
    make_ring(&name);
    for len in [HEADER_LEN as u64 + 4096, 0] {
        truncate(&name, len);
        let out = Command::new(env!("CARGO_BIN_EXE_tadpole")).args(["stat", &name]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), None, "stat was killed by a signal: {stderr}");
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("unreadable") && stderr.contains("bytes, expected"), "{stderr}");
    }
    // Listing every ring reports this one as unreadable and carries on.
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole")).arg("stat").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = stdout.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("no row for {name}: {stdout}"));
    assert!(row.contains("unreadable: segment refused: segment is 0 bytes"), "{row}");
}
