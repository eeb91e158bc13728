//! The pollable doorbell: a consumer sleeping in `poll(2)` on its descriptor is woken by a
//! producer in another process committing, or detaching; nothing rings it while it is not armed.
//!
//! Parents re-execute this test binary as the producer (`--exact child_producer`), which opens
//! the named ring, waits for the parent's signal byte on stdin, then sends and exits.

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::{RingBuilder, Segment, TryRecvError};

const ROLE_ENV: &str = "TADPOLE_BELL_ROLE";
const RING_ENV: &str = "TADPOLE_BELL_RING";

fn unique(tag: &str) -> String {
    format!("bell-{tag}-{}", std::process::id())
}

/// Waits up to `timeout` for `fd` to turn readable.
fn readable_within(fd: i32, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid, initialised pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as i32) };
    n == 1 && pollfd.revents & libc::POLLIN != 0
}

/// The producer process: attach, tell the parent (a line on stdout), wait for its go (a byte
/// on stdin: `s` sends "hello" then exits, `d` detaches without sending).
#[test]
fn child_producer() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    assert_eq!(role, "producer");
    let segment = Segment::open(&std::env::var(RING_ENV).unwrap()).unwrap();
    let mut producer = segment.producer().unwrap();
    std::io::stdout().write_all(b"\n@ready@\n").unwrap();
    std::io::stdout().flush().unwrap();
    let mut go = [0u8; 1];
    std::io::stdin().read_exact(&mut go).unwrap();
    if go[0] == b's' {
        producer.try_send(b"hello").unwrap();
        // Stay attached a moment: the wake must come from the commit, not the detach.
        std::thread::sleep(Duration::from_millis(300));
    }
}

struct Producer {
    child: Child,
    /// Kept open: the child's harness writes its result there as it exits.
    _stdout: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Producer {
    fn spawn(ring: &str) -> Producer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_producer", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, "producer")
            .env(RING_ENV, ring)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The test harness writes its own lines to stdout first.
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("@ready@") => break,
                Some(Ok(_)) => {}
                other => panic!("producer process did not start: {other:?}"),
            }
        }
        Producer { child, _stdout: lines }
    }

    fn go(&mut self, what: u8) {
        self.child.stdin.as_mut().unwrap().write_all(&[what]).unwrap();
        self.child.stdin.as_mut().unwrap().flush().unwrap();
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ring(tag: &str) -> (String, Segment) {
    let name = unique(tag);
    let _ = Segment::unlink(&name);
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    (name, segment)
}

#[test]
fn an_armed_consumer_asleep_in_poll_is_woken_by_a_commit_in_another_process() {
    let (name, segment) = ring("commit");
    let mut consumer = segment.consumer().unwrap();
    let fd = consumer.pollable_doorbell().unwrap();
    let mut producer = Producer::spawn(&name);
    assert!(consumer.arm_doorbell().unwrap(), "the ring is empty: arming must succeed");
    assert!(!readable_within(fd, Duration::from_millis(50)), "nothing committed yet");
    let sent = Instant::now();
    producer.go(b's');
    assert!(readable_within(fd, Duration::from_secs(10)), "the commit did not ring the doorbell");
    let woke_after = sent.elapsed();
    consumer.disarm_doorbell();
    assert_eq!(&consumer.try_recv().unwrap()[..], b"hello");
    assert!(!readable_within(fd, Duration::ZERO), "disarming must drain the descriptor");
    assert!(woke_after < Duration::from_secs(5), "woken only after {woke_after:?}");
    let _ = producer.child.wait();
    Segment::unlink(&name).unwrap();
}

#[test]
fn a_producer_detaching_rings_an_armed_consumer_which_then_sees_the_disconnect() {
    let (name, segment) = ring("detach");
    let mut consumer = segment.consumer().unwrap();
    let fd = consumer.pollable_doorbell().unwrap();
    let mut producer = Producer::spawn(&name);
    assert!(consumer.arm_doorbell().unwrap());
    producer.go(b'd');
    assert!(readable_within(fd, Duration::from_secs(10)), "the detach did not ring the doorbell");
    consumer.disarm_doorbell();
    assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Disconnected));
    Segment::unlink(&name).unwrap();
}

#[test]
fn arming_with_a_record_waiting_refuses_so_the_caller_receives_instead_of_sleeping() {
    let segment = RingBuilder::new(1 << 12).create_anonymous().unwrap();
    let mut producer = segment.producer().unwrap();
    let mut consumer = segment.consumer().unwrap();
    producer.try_send(b"waiting").unwrap();
    assert!(!consumer.arm_doorbell().unwrap());
    assert_eq!(&consumer.try_recv().unwrap()[..], b"waiting");
    assert!(consumer.arm_doorbell().unwrap());
    consumer.disarm_doorbell();
}

#[test]
fn commits_while_the_consumer_is_not_armed_leave_the_descriptor_quiet() {
    let segment = RingBuilder::new(1 << 12).create_anonymous().unwrap();
    let mut producer = segment.producer().unwrap();
    let mut consumer = segment.consumer().unwrap();
    let fd = consumer.pollable_doorbell().unwrap();
    for _ in 0..10 {
        producer.try_send(b"unarmed").unwrap();
        assert!(consumer.try_recv().is_ok());
    }
    assert!(!readable_within(fd, Duration::from_millis(20)));
    // Armed, then disarmed before the commit: still quiet, and the record is there.
    assert!(consumer.arm_doorbell().unwrap());
    consumer.disarm_doorbell();
    producer.try_send(b"after").unwrap();
    assert!(!readable_within(fd, Duration::from_millis(20)));
    assert_eq!(&consumer.try_recv().unwrap()[..], b"after");
    // Armed in this process: the same-process producer rings it too.
    assert!(consumer.arm_doorbell().unwrap());
    producer.try_send(b"armed").unwrap();
    assert!(readable_within(fd, Duration::from_secs(5)));
    consumer.disarm_doorbell();
    assert_eq!(&consumer.try_recv().unwrap()[..], b"armed");
}

#[test]
fn a_consumer_that_replaces_one_dropped_while_armed_is_rung_on_its_own_doorbell() {
    let segment = RingBuilder::new(1 << 12).create_anonymous().unwrap();
    let mut producer = segment.producer().unwrap();
    {
        let mut first = segment.consumer().unwrap();
        assert!(first.arm_doorbell().unwrap());
        // Dropped while armed: its socket is gone.
    }
    let mut second = segment.consumer().unwrap();
    producer.try_send(b"unarmed").unwrap();
    assert_eq!(&second.try_recv().unwrap()[..], b"unarmed");
    let fd = second.pollable_doorbell().unwrap();
    assert!(second.arm_doorbell().unwrap());
    producer.try_send(b"x").unwrap();
    assert!(readable_within(fd, Duration::from_secs(5)));
    second.disarm_doorbell();
    assert_eq!(&second.try_recv().unwrap()[..], b"x");
}
