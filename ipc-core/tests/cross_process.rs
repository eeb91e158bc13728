//! Cross-process behaviour of the ring: real processes sharing real memory.
//!
//! Every test here is a parent that re-executes this test binary as its child
//! (`--exact child_process_entry_point`), telling it through environment variables which role to
//! play and which segment to use. `child_process_entry_point` does nothing when run as an
//! ordinary test. Every wait is bounded, children are killed and segments unlinked when a parent
//! fails, and the parents run one at a time so two cross-process tests never share the two cores.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipc_core::{
    AttachError, Consumer, Lease, PayloadAlign, PeerState, Producer, RecvTimeoutError, RingBuilder, Segment,
    SendTimeoutError, Side, TryRecvError, TrySendError, WaitStrategy,
};

/// Small on purpose: wrap-around and a full ring happen all the time.
const RING: usize = 64 * 1024;
/// Messages of the mixed-traffic tests.
const TRAFFIC_MESSAGES: u64 = 10_000_000;
/// Longest a receive or send may wait before the test calls it a hang.
const STALL: Duration = Duration::from_secs(20);
/// A child gives up on its own after this long, in case its parent vanished.
const CHILD_LIFETIME: Duration = Duration::from_secs(180);
/// The fd number an anonymous segment is handed to a child under.
const INHERITED_FD: i32 = 77;

const ROLE_ENV: &str = "TADPOLE_XP_ROLE";
const SEGMENT_ENV: &str = "TADPOLE_XP_SEGMENT";
const START_ENV: &str = "TADPOLE_XP_START";
const COUNT_ENV: &str = "TADPOLE_XP_COUNT";

/// Cross-process parents take turns: each one already keeps both cores busy.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("xp-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------------
// The traffic: every message is a pure function of its sequence number, so the receiver can
// regenerate and compare it byte for byte.

/// splitmix64's finaliser: a good 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Mostly 0..=300 bytes, about 1% empty, and one in 2048 within 64 bytes of the maximum.
fn message_len(seq: u64, max: usize) -> usize {
    let h = mix(seq ^ 0x4C45_4E47_5448);
    match h % 2048 {
        0 => max - (h >> 32) as usize % 64,
        1..=20 => 0,
        _ => (h >> 20) as usize % 301,
    }
}

/// The payload of message `seq`: its sequence number in the first 8 bytes (when there is room),
/// then bytes from a generator seeded by it.
fn fill_payload(seq: u64, buf: &mut [u8]) {
    let mut state = mix(seq);
    for chunk in buf.chunks_mut(8) {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let word = (state ^ (state >> 29)).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    if buf.len() >= 8 {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Type carried by message `seq` when the send path can set one (`send` and `try_send` cannot).
fn message_type(seq: u64) -> u16 {
    seq as u16
}

fn total_bytes(start: u64, count: u64, max: usize) -> u64 {
    (start..start + count).map(|s| message_len(s, max) as u64).sum()
}

/// Sends messages `start..start + count` (or until `deadline`), mixing every way to send: plain
/// and typed `try_send`, waiting `send`, `try_reserve` and `reserve` then commit, batches of up to
/// 32 records. Now and then a reservation or a batch is written and dropped without a commit: it
/// must never be seen.
fn produce_traffic(producer: &mut Producer, start: u64, count: u64, deadline: Instant) -> u64 {
    let max = producer.max_message_len();
    let end = start.saturating_add(count);
    let mut buf = vec![0u8; max];
    let mut seq = start;
    let mut dropped_at = u64::MAX;
    while seq < end {
        assert!(Instant::now() < deadline, "producer ran out of time at seq {seq}");
        let r = mix(seq ^ 0x4D4F_4445);
        let len = message_len(seq, max);
        match r % 10 {
            0 | 1 => {
                fill_payload(seq, &mut buf[..len]);
                loop {
                    let sent = if r & 256 == 0 {
                        producer.try_send(&buf[..len])
                    } else {
                        producer.try_send_typed(message_type(seq), &buf[..len])
                    };
                    match sent {
                        Ok(()) => break,
                        Err(TrySendError::Full) => {
                            assert!(Instant::now() < deadline, "ring stayed full at seq {seq}");
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("try_send of seq {seq}: {e}"),
                    }
                }
                seq += 1;
            }
            2 => {
                fill_payload(seq, &mut buf[..len]);
                producer.send_timeout(&buf[..len], STALL).unwrap_or_else(|e| panic!("send of seq {seq}: {e}"));
                seq += 1;
            }
            3..=5 => {
                if dropped_at != seq && r & 0xF00 == 0 {
                    // Written in place, then abandoned: nothing may be published.
                    dropped_at = seq;
                    if let Ok(mut grant) = producer.try_reserve(len) {
                        grant.fill(0xEE);
                    }
                    continue;
                }
                let mut grant = if r & 256 == 0 {
                    loop {
                        match producer.try_reserve(len) {
                            Ok(_) => break,
                            Err(TrySendError::Full) => {
                                assert!(Instant::now() < deadline, "ring stayed full at seq {seq}");
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("try_reserve for seq {seq}: {e}"),
                        }
                    }
                    producer.try_reserve(len).unwrap()
                } else {
                    producer.reserve_timeout(len, STALL).unwrap_or_else(|e| panic!("reserve for seq {seq}: {e}"))
                };
                fill_payload(seq, &mut grant);
                grant.set_message_type(message_type(seq));
                grant.commit();
                seq += 1;
            }
            _ => {
                let wanted = (1 + (r >> 8) % 32).min(end - seq);
                let abandon = dropped_at != seq && (r >> 16) % 16 == 0;
                let mut batch = producer.batch();
                for s in seq..seq + wanted {
                    let len = message_len(s, max);
                    if s & 1 == 0 {
                        fill_payload(s, &mut buf[..len]);
                        match batch.try_push(&buf[..len]) {
                            Ok(()) => {}
                            Err(TrySendError::Full) => break,
                            Err(e) => panic!("batch push of seq {s}: {e}"),
                        }
                    } else {
                        match batch.try_reserve(len, message_type(s)) {
                            Ok(slot) => fill_payload(s, slot),
                            Err(TrySendError::Full) => break,
                            Err(e) => panic!("batch reserve for seq {s}: {e}"),
                        }
                    }
                }
                if abandon {
                    // Leaving the batch uncommitted publishes nothing.
                    dropped_at = seq;
                    continue;
                }
                let pushed = batch.len() as u64;
                assert_eq!(batch.commit() as u64, pushed);
                if pushed == 0 {
                    std::thread::yield_now();
                }
                seq += pushed;
            }
        }
    }
    seq
}

/// Receives and checks the traffic of [`produce_traffic`], mixing every way to receive: waiting
/// and non-waiting single receives, batches, and leases held across later receives.
struct Verifier {
    next: u64,
    max: usize,
    align64: bool,
    scratch: Vec<u8>,
    received: u64,
    bytes: u64,
    /// Leases still held, with the sequence number each must still show.
    leases: VecDeque<(u64, Lease)>,
}

impl Verifier {
    fn new(start: u64, max: usize, align: PayloadAlign) -> Verifier {
        Verifier {
            next: start,
            max,
            align64: align == PayloadAlign::SixtyFour,
            scratch: vec![0; max],
            received: 0,
            bytes: 0,
            leases: VecDeque::new(),
        }
    }

    fn check(&mut self, seq: u64, ty: u16, payload: &[u8]) {
        let len = message_len(seq, self.max);
        if payload.len() >= 8 && len >= 8 {
            let got = u64::from_le_bytes(payload[..8].try_into().unwrap());
            assert_eq!(got, seq, "expected message {seq}, received message {got} (lost, duplicated or reordered)");
        }
        assert_eq!(payload.len(), len, "message {seq}: wrong length");
        fill_payload(seq, &mut self.scratch[..len]);
        assert!(payload == &self.scratch[..len], "message {seq}: payload differs from what was sent (torn?)");
        assert!(ty == 0 || ty == message_type(seq), "message {seq}: type {ty}");
        if self.align64 {
            assert_eq!(payload.as_ptr() as usize % 64, 0, "message {seq}: payload not 64-byte aligned");
        }
    }

    fn accept(&mut self, ty: u16, payload: &[u8]) {
        self.check(self.next, ty, payload);
        self.next += 1;
        self.received += 1;
        self.bytes += payload.len() as u64;
    }

    fn drop_leases(&mut self) {
        while let Some((seq, lease)) = self.leases.pop_front() {
            // The bytes of a held lease must not change, however far the producer has gone.
            self.check(seq, lease.message_type(), &lease);
        }
    }

    /// One receive, by a method picked from the sequence number, or a waiting receive when `wait`
    /// (the caller saw the ring empty: only a waiting receive notices a dead producer). `Err` is
    /// what the receive returned; leases are dropped before any wait so that they never hold the
    /// producer up while we wait for it.
    fn step(&mut self, consumer: &mut Consumer, wait: bool) -> Result<(), TryRecvError> {
        let how = if wait { 0 } else { mix(self.next ^ 0x5245_4356) % 8 };
        match how {
            0..=2 => {
                self.drop_leases();
                let msg = consumer.recv_timeout(STALL).map_err(|e| match e {
                    RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                    other => panic!("receiving message {}: {other}", self.next),
                })?;
                self.accept(msg.message_type(), &msg);
            }
            3 => match consumer.try_recv() {
                Ok(msg) => self.accept(msg.message_type(), &msg),
                Err(e) => {
                    self.drop_leases();
                    return Err(e);
                }
            },
            4 | 5 => {
                let max = 1 + (mix(self.next) % 64) as usize;
                let batch = match consumer.read_batch(max) {
                    Ok(batch) => batch,
                    Err(e) => {
                        self.drop_leases();
                        return Err(e);
                    }
                };
                assert!(batch.len() <= max && !batch.is_empty());
                let mut n = 0;
                for record in batch.iter() {
                    self.accept(record.message_type, record.payload);
                    n += 1;
                }
                assert_eq!(n, batch.len(), "batch iterator and batch length disagree");
            }
            _ => match consumer.try_recv() {
                Ok(msg) => {
                    let seq = self.next;
                    self.accept(msg.message_type(), &msg);
                    let lease = msg.into_lease().expect("into_lease");
                    self.leases.push_back((seq, lease));
                    if self.leases.len() > 4 {
                        // Out of order: the second oldest goes first.
                        let (seq, lease) = self.leases.swap_remove_back(1).unwrap();
                        self.check(seq, lease.message_type(), &lease);
                    }
                }
                Err(e) => {
                    self.drop_leases();
                    return Err(e);
                }
            },
        }
        Ok(())
    }

    /// Receives until message `until` (exclusive) has been checked.
    fn receive_until(&mut self, consumer: &mut Consumer, until: u64, deadline: Instant) {
        let mut wait = false;
        while self.next < until {
            assert!(Instant::now() < deadline, "consumer ran out of time at message {}", self.next);
            match self.step(consumer, wait) {
                Ok(()) => wait = false,
                // Disconnected: the producer we expect has not attached yet, and the last one is
                // dead (reported to polling calls too).
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => wait = true,
                Err(e) => panic!("receiving message {}: {e}", self.next),
            }
        }
        self.drop_leases();
    }

    /// Receives everything left, until the ring reports the producer gone.
    fn drain_until_disconnected(&mut self, consumer: &mut Consumer, deadline: Instant) {
        let mut wait = false;
        loop {
            assert!(Instant::now() < deadline, "consumer ran out of time at message {}", self.next);
            match self.step(consumer, wait) {
                Ok(()) => wait = false,
                Err(TryRecvError::Empty) => wait = true,
                Err(TryRecvError::Disconnected) => break,
                Err(e) => panic!("receiving message {}: {e}", self.next),
            }
        }
        self.drop_leases();
    }
}

/// Whether `payload` is message `seq`.
fn is_message(seq: u64, max: usize, payload: &[u8]) -> bool {
    let mut expected = vec![0u8; message_len(seq, max)];
    fill_payload(seq, &mut expected);
    payload == &expected[..]
}

// ---------------------------------------------------------------------------------------------
// Children.

/// Kills and reaps its child when dropped, so a failing parent leaves no process behind.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then reap.
    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL the child");
        self.child.wait().expect("reap the child");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "child {} did not exit within {timeout:?}", self.pid());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_succeeded(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert!(status.success(), "child failed: {status} (its panic message is on stderr above)");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Unlinks a named segment when dropped, whatever happened.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

fn child_command(role: &str, segment: &str, start: u64, count: u64) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_process_entry_point", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(SEGMENT_ENV, segment)
        .env(START_ENV, start.to_string())
        .env(COUNT_ENV, count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

fn spawn_named(role: &str, name: &str, start: u64, count: u64) -> ChildGuard {
    let child = child_command(role, name, start, count).spawn().expect("spawn child");
    ChildGuard { child }
}

/// Spawns a child that inherits `segment`'s memfd as fd [`INHERITED_FD`].
fn spawn_with_fd(role: &str, segment: &Segment, start: u64, count: u64) -> ChildGuard {
    let raw = segment.as_fd().expect("a memfd segment has a file descriptor").as_raw_fd();
    let mut cmd = child_command(role, &format!("fd:{INHERITED_FD}"), start, count);
    // SAFETY: the closure runs in the forked child before exec and calls only dup2 and fcntl,
    // which are async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 gives the copy a clear FD_CLOEXEC; if the numbers already match, clear it.
            let rc =
                if raw == INHERITED_FD { libc::fcntl(raw, libc::F_SETFD, 0) } else { libc::dup2(raw, INHERITED_FD) };
            if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    ChildGuard { child: cmd.spawn().expect("spawn child") }
}

fn env_u64(key: &str) -> u64 {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set")).parse().expect("a number")
}

fn open_segment_from_env() -> Segment {
    let spec = std::env::var(SEGMENT_ENV).expect("segment");
    match spec.strip_prefix("fd:") {
        Some(fd) => {
            let fd: i32 = fd.parse().expect("fd number");
            // SAFETY: the parent dup2'ed the segment's memfd to this number for us before exec;
            // nothing else in this process owns or closes it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Segment::from_fd(fd).expect("map the inherited segment")
        }
        None => Segment::open(&spec).expect("open the named segment"),
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-parameter; CLOCK_MONOTONIC is system-wide, so two processes'
    // readings compare.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The child side of every test. Does nothing when run as an ordinary test.
#[test]
fn child_process_entry_point() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let deadline = Instant::now() + CHILD_LIFETIME;
    let segment = open_segment_from_env();
    let (start, count) = (env_u64(START_ENV), env_u64(COUNT_ENV));
    match role.as_str() {
        // Mixed traffic; count == u64::MAX means "until killed".
        "produce-traffic" => {
            let mut producer = segment.producer().expect("attach producer");
            produce_traffic(&mut producer, start, count, deadline);
        }
        // Consumes with single receives only, so at most one message is unreleased at any time.
        "consume-until-killed" => {
            let mut consumer = segment.consumer().expect("attach consumer");
            let mut verifier = Verifier::new(start, segment.max_message_len(), segment.payload_align());
            while Instant::now() < deadline {
                let msg = consumer.recv_timeout(STALL).expect("recv");
                verifier.accept(msg.message_type(), &msg);
            }
        }
        // `count` messages of [seq, send time], one every `start` milliseconds, so the consumer
        // is asleep on its doorbell when each arrives.
        "produce-paced" => {
            let mut producer = segment.producer().expect("attach producer");
            for seq in 0..count {
                std::thread::sleep(Duration::from_millis(start));
                let mut msg = [0u8; 16];
                msg[..8].copy_from_slice(&seq.to_le_bytes());
                msg[8..].copy_from_slice(&monotonic_ns().to_le_bytes());
                producer.send_timeout(&msg, STALL).expect("send");
            }
        }
        // `count` 1000-byte messages with a blocking wait strategy: mostly asleep on a full ring.
        "produce-blocking" => {
            let mut producer = segment.producer().expect("attach producer");
            producer.set_wait_strategy(WaitStrategy::Block);
            let mut msg = [0u8; 1000];
            for seq in start..start + count {
                msg[..8].copy_from_slice(&seq.to_le_bytes());
                producer.send_timeout(&msg, STALL).expect("send");
            }
        }
        "hold-producer" | "hold-consumer" => {
            let _producer = (role == "hold-producer").then(|| segment.producer().expect("attach producer"));
            let _consumer = (role == "hold-consumer").then(|| segment.consumer().expect("attach consumer"));
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting until {what}");
        // Poll closely at first: some callers measure how soon the condition became true.
        if started.elapsed() < Duration::from_millis(20) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mixed traffic.

/// The parent consumes `count` messages produced by a child and checks every byte and counter.
fn check_traffic(segment: &Segment, mut child: ChildGuard, count: u64) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut consumer = segment.consumer().expect("attach consumer");
    let mut verifier = Verifier::new(0, segment.max_message_len(), segment.payload_align());
    verifier.drain_until_disconnected(&mut consumer, deadline);
    let elapsed = started.elapsed();
    child.assert_succeeded(STALL);
    eprintln!(
        "{count} messages ({} MB, align {:?}) crossed a {} KiB ring in {elapsed:.2?}",
        verifier.bytes / 1_000_000,
        segment.payload_align(),
        RING / 1024
    );

    assert_eq!(verifier.next, count, "every message arrived, none twice");
    assert_eq!(consumer.producer_state(), PeerState::Closed);
    assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Disconnected));
    let bytes = total_bytes(0, count, segment.max_message_len());
    assert_eq!(verifier.bytes, bytes);
    // The consumer's tallies reach the segment periodically, and all of them when it detaches.
    drop(consumer);
    let st = segment.status();
    assert_eq!(st.produced.messages, count, "{st:?}");
    assert_eq!(st.consumed.messages, count, "{st:?}");
    assert_eq!(st.produced.bytes, bytes, "{st:?}");
    assert_eq!(st.consumed.bytes, bytes, "{st:?}");
    assert_eq!(st.head, st.tail, "everything released: {st:?}");
    assert_eq!(st.produced.oversize_rejects, 0);
    assert_eq!(st.consumed.corrupt_records, 0);
    assert!(st.produced.full_events > 0, "the small ring filled up: {st:?}");
    assert!(st.produced.padding_bytes > 0, "the ring wrapped: {st:?}");
    assert!(st.tail > 1000 * RING as u64, "the ring wrapped many times: {st:?}");
    assert!(st.produced.commits < count, "batches commit many messages at once: {st:?}");
}

#[test]
fn ten_million_mixed_messages_cross_a_named_segment_intact_in_order() {
    let _serial = serial();
    let name = unique("traffic-named");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).create_named(&name).unwrap();
    let child = spawn_named("produce-traffic", &name, 0, TRAFFIC_MESSAGES);
    check_traffic(&segment, child, TRAFFIC_MESSAGES);
}

#[test]
fn ten_million_mixed_messages_cross_an_inherited_memfd_segment_intact_in_order() {
    let _serial = serial();
    let segment = RingBuilder::new(RING).create_anonymous().unwrap();
    assert_eq!(segment.name(), None);
    let child = spawn_with_fd("produce-traffic", &segment, 0, TRAFFIC_MESSAGES);
    check_traffic(&segment, child, TRAFFIC_MESSAGES);
}

#[test]
fn ten_million_mixed_messages_arrive_64_byte_aligned_on_a_sixty_four_aligned_ring() {
    let _serial = serial();
    let name = unique("traffic-align64");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).payload_align(PayloadAlign::SixtyFour).create_named(&name).unwrap();
    let child = spawn_named("produce-traffic", &name, 0, TRAFFIC_MESSAGES);
    check_traffic(&segment, child, TRAFFIC_MESSAGES);
}

// ---------------------------------------------------------------------------------------------
// Crashes.

#[test]
fn consumer_drains_committed_messages_after_producer_killed_and_a_new_producer_continues() {
    let _serial = serial();
    let name = unique("producer-killed");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).create_named(&name).unwrap();
    let mut consumer = segment.consumer().unwrap();
    let mut verifier = Verifier::new(0, segment.max_message_len(), PayloadAlign::Eight);
    let deadline = Instant::now() + Duration::from_secs(120);

    // Several producers in turn, each killed mid-stream at a different point.
    for round in 0..6u64 {
        let start = verifier.next;
        let mut child = spawn_named("produce-traffic", &name, start, u64::MAX);
        let kill_at = start + 20_000 + round * 7_919;
        verifier.receive_until(&mut consumer, kill_at, deadline);
        let pid = child.pid();
        child.kill_9();

        // Everything it committed is still there, intact and in order, then the ring says so.
        verifier.drain_until_disconnected(&mut consumer, deadline);
        assert!(matches!(consumer.producer_state(), PeerState::Dead(id) if id.pid == pid));
        assert_eq!(consumer.recv_timeout(STALL).err(), Some(RecvTimeoutError::Disconnected));
        // Every committed record was delivered. The tail is stored after the records it covers,
        // so a producer killed between the two leaves it short of what it published (and the
        // consumer received); the next producer walks on from it (`hostile.rs` forges those
        // states), and the verifier proves nothing was lost or repeated.
        let st = segment.status();
        assert!(st.head >= st.tail, "round {round}: delivered short of the tail: {st:?}");
        // (Equal when the producer was descheduled with the ring drained at the kill.)
        assert!(verifier.next >= kill_at, "round {round}");
    }

    // A last producer takes over from the dead one and finishes cleanly; its messages follow.
    let start = verifier.next;
    let mut child = spawn_named("produce-traffic", &name, start, 50_000);
    verifier.drain_until_disconnected(&mut consumer, deadline);
    child.assert_succeeded(STALL);
    assert_eq!(verifier.next, start + 50_000);
    assert_eq!(consumer.producer_state(), PeerState::Closed);
    // The message count comes from the frontier slots: exact across the six kills.
    assert_eq!(segment.status().produced.messages, verifier.received);
    // The consumer's tallies reach the segment periodically, and all of them when it detaches.
    drop(consumer);
    let st = segment.status();
    assert_eq!(st.consumed.messages, verifier.received, "{st:?}");
    assert_eq!(st.consumed.corrupt_records, 0);
}

/// Writes `value` at `offset` of the named segment's file, as another process would.
fn poke_u64(name: &str, offset: usize, value: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap();
    file.write_all_at(&value.to_le_bytes(), offset as u64).unwrap();
}

/// The identity of a process that has exited and been reaped.
fn dead_process_owner_word() -> u64 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    u64::from(pid)
}

/// A producer killed after its commit (the header store) but before its tail store leaves
/// committed records past the published tail. The producer's attach walks such records, but
/// only if the consumer has not read them yet: once it has, head is past tail. The window is
/// nanoseconds wide, so the state is set up here exactly as such a kill leaves it.
#[test]
fn producer_killed_between_commit_and_tail_store_is_replaced_after_its_last_records_were_read() {
    use ipc_core::layout::offsets;
    let name = unique("tail-window");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).create_named(&name).unwrap();
    let mut consumer = segment.consumer().unwrap();
    let mut producer = segment.producer().unwrap();
    producer.try_send(b"first").unwrap();
    let tail_before_last_commit = segment.status().tail;
    producer.try_send(b"second").unwrap();
    // The kill: no detach, the tail store of the second commit never happened.
    std::mem::forget(producer);
    poke_u64(&name, offsets::PRODUCER_POSITION, tail_before_last_commit);
    poke_u64(&name, offsets::PRODUCER_ATTACH, dead_process_owner_word());
    assert!(matches!(consumer.producer_state(), PeerState::Dead(_)));

    // The consumer follows headers, not the tail: both committed messages arrive.
    assert_eq!(&*consumer.recv_timeout(STALL).unwrap(), b"first");
    assert_eq!(&*consumer.recv_timeout(STALL).unwrap(), b"second");
    assert_eq!(consumer.recv_timeout(STALL).err(), Some(RecvTimeoutError::Disconnected));

    // A monitoring tool can still open the ring, and a new producer can take over.
    let observer = Segment::open(&name).err();
    let replacement = segment.producer();
    assert!(
        observer.is_none() && replacement.is_ok(),
        "after a producer crash: Segment::open -> {observer:?}, producer() -> {:?}",
        replacement.as_ref().err()
    );
    let mut replacement = replacement.unwrap();
    replacement.try_send(b"third").unwrap();
    assert_eq!(&*consumer.recv_timeout(STALL).unwrap(), b"third");
}

#[test]
fn producer_gets_disconnected_after_consumer_killed_and_a_new_consumer_resumes_at_first_unreleased() {
    let _serial = serial();
    let name = unique("consumer-killed");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    let max = producer.max_message_len();
    let mut child = spawn_named("consume-until-killed", &name, 0, 0);
    wait_until(STALL, "the child consumer attached", || matches!(segment.status().consumer, PeerState::Attached(_)));

    let mut buf = vec![0u8; max];
    let mut seq = 0u64;
    let mut killed_at = None;
    let error = loop {
        let len = message_len(seq, max);
        fill_payload(seq, &mut buf[..len]);
        match producer.send_timeout(&buf[..len], STALL) {
            Ok(()) => seq += 1,
            Err(e) => break e,
        }
        if killed_at.is_none() && seq % 256 == 0 && segment.status().consumed.messages >= 30_000 {
            child.kill_9();
            killed_at = Some(Instant::now());
        }
    };
    let Some(killed_at) = killed_at else { panic!("send failed while the consumer was alive: {error}") };
    assert_eq!(error, SendTimeoutError::Disconnected, "a waiting send reports the dead consumer instead of hanging");
    assert!(killed_at.elapsed() < Duration::from_secs(5), "noticed quickly: {:?}", killed_at.elapsed());
    assert!(matches!(producer.consumer_state(), PeerState::Dead(_)));
    let tail = segment.status().tail;
    let len = message_len(seq, max);
    assert!(producer.try_send(&buf[..len]).is_err(), "the ring is still full");
    assert_eq!(segment.status().tail, tail, "nothing written while nobody reads");

    // The dead consumer had received at least `seen` messages (its count is published every 256
    // receives, so up to 255 more), and released all but at most the last one it received.
    let seen = segment.status().consumed.messages;
    let head = segment.status().head;
    let mut consumer = segment.consumer().expect("a new consumer takes over from the dead one");
    let mut verifier = Verifier::new(0, max, PayloadAlign::Eight);
    let first = {
        let msg = consumer.try_recv().expect("unreleased messages are still there");
        assert_eq!(msg.position(), head, "restarts at the first unreleased record");
        let first = (seen.saturating_sub(1)..seen + 256)
            .find(|&s| is_message(s, max, &msg))
            .unwrap_or_else(|| panic!("the first unreleased record is none of messages {seen}-1..{seen}+256"));
        verifier.next = first;
        verifier.accept(msg.message_type(), &msg);
        first
    };
    assert!(first + 1 >= seen, "restarts at the first unreleased: {first}, dead one saw {seen}");

    // The rest, then more from the same producer: no gap anywhere.
    let deadline = Instant::now() + Duration::from_secs(60);
    verifier.receive_until(&mut consumer, seq, deadline);
    for _ in 0..20_000 {
        let len = message_len(seq, max);
        fill_payload(seq, &mut buf[..len]);
        loop {
            match producer.try_send(&buf[..len]) {
                Ok(()) => break,
                Err(TrySendError::Full) => verifier.receive_until(&mut consumer, seq, deadline),
                Err(e) => panic!("send after the new consumer attached: {e}"),
            }
        }
        seq += 1;
    }
    verifier.receive_until(&mut consumer, seq, deadline);
    assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty));
    let st = segment.status();
    assert_eq!(st.head, st.tail, "{st:?}");
    assert_eq!(st.produced.messages, seq, "{st:?}");
}

#[test]
fn only_one_producer_and_one_consumer_across_processes_until_the_holder_is_killed() {
    let _serial = serial();
    for side in [Side::Producer, Side::Consumer] {
        let name = unique("exclusive");
        let _unlink = Unlink(name.clone());
        let segment = RingBuilder::new(RING).create_named(&name).unwrap();
        let role = if side == Side::Producer { "hold-producer" } else { "hold-consumer" };
        let mut child = spawn_named(role, &name, 0, 0);
        let pid = child.pid();
        let state = |s: &Segment| if side == Side::Producer { s.status().producer } else { s.status().consumer };
        wait_until(STALL, "the child attached", || matches!(state(&segment), PeerState::Attached(id) if id.pid == pid));

        let attach = |s: &Segment| match side {
            Side::Producer => s.producer().map(drop),
            Side::Consumer => s.consumer().map(drop),
        };
        match attach(&segment) {
            Err(AttachError::Busy { side: busy, owner }) => {
                assert_eq!(busy, side);
                assert_eq!(owner.pid, pid);
            }
            other => panic!("{side:?} attached while the child holds it: {other:?}"),
        }
        // Another handle, even from another open of the name, is refused just the same.
        let reopened = Segment::open(&name).unwrap();
        assert!(matches!(attach(&reopened), Err(AttachError::Busy { .. })));

        child.kill_9();
        assert!(matches!(state(&segment), PeerState::Dead(id) if id.pid == pid));
        attach(&segment).unwrap_or_else(|e| panic!("{side:?} not taken over from the killed holder: {e}"));
        assert_eq!(state(&segment), PeerState::Closed);
    }
}

// ---------------------------------------------------------------------------------------------
// Blocking waits.

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn blocked_consumer_is_woken_by_a_producer_in_another_process() {
    let _serial = serial();
    let name = unique("block-consumer");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).create_named(&name).unwrap();
    let mut consumer = segment.consumer().unwrap();
    consumer.set_wait_strategy(WaitStrategy::Block);
    let messages = 60;
    // One message every 25 ms: longer than the longest futex sleep slice (20 ms), so without a
    // working doorbell the median delay would be about 10 ms.
    let mut child = spawn_named("produce-paced", &name, 25, messages);
    let mut delays = Vec::new();
    for seq in 0..messages {
        let msg = consumer.recv_timeout(STALL).expect("recv");
        let now = monotonic_ns();
        assert_eq!(u64::from_le_bytes(msg[..8].try_into().unwrap()), seq);
        let sent = u64::from_le_bytes(msg[8..16].try_into().unwrap());
        delays.push(Duration::from_nanos(now.saturating_sub(sent)));
    }
    assert_eq!(consumer.recv_timeout(STALL).err(), Some(RecvTimeoutError::Disconnected));
    child.assert_succeeded(STALL);
    let st = segment.status();
    let median = median(delays);
    eprintln!("blocked consumer woken by another process: median delay {median:?}, {} wakes", st.produced.wakes);
    assert!(st.produced.wakes >= messages / 2, "the producer rang a sleeping consumer's doorbell: {st:?}");
    assert!(median < Duration::from_millis(5), "woken by the doorbell, not by a timed poll: median {median:?}");
}

#[test]
fn blocked_producer_is_woken_when_a_consumer_in_another_process_releases() {
    let _serial = serial();
    let name = unique("block-producer");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).create_named(&name).unwrap();
    let mut consumer = segment.consumer().unwrap();
    let count = 20_000;
    let mut child = spawn_named("produce-blocking", &name, 0, count);
    let mut next = 0u64;
    let mut delays = Vec::new();
    for _ in 0..30 {
        // Let the producer fill the ring and fall asleep on its doorbell.
        std::thread::sleep(Duration::from_millis(30));
        let committed = segment.status().produced.messages;
        let released_at = Instant::now();
        while let Ok(msg) = consumer.try_recv() {
            assert_eq!(u64::from_le_bytes(msg[..8].try_into().unwrap()), next);
            next += 1;
        }
        wait_until(STALL, "the producer committed again", || segment.status().produced.messages > committed);
        delays.push(released_at.elapsed());
    }
    let deadline = Instant::now() + STALL;
    loop {
        assert!(Instant::now() < deadline, "draining timed out at {next}");
        match consumer.recv_timeout(STALL) {
            Ok(msg) => {
                assert_eq!(u64::from_le_bytes(msg[..8].try_into().unwrap()), next);
                next += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    child.assert_succeeded(STALL);
    assert_eq!(next, count);
    let st = segment.status();
    let median = median(delays);
    eprintln!("blocked producer woken by another process: median delay {median:?}, {} wakes", st.consumed.wakes);
    assert!(st.consumed.wakes >= 15, "the consumer rang a sleeping producer's doorbell: {st:?}");
    assert!(median < Duration::from_millis(5), "woken by the doorbell, not by a timed poll: median {median:?}");
}

// ---------------------------------------------------------------------------------------------
// Dead peers seen by polling calls, and the exact frontier after kills.

/// How soon a polling caller must learn of a dead peer in these tests: the documented bound is
/// about 20 ms; the margin absorbs a loaded CI machine.
const DEATH_NOTICED_WITHIN: Duration = Duration::from_millis(1000);

#[test]
fn a_polling_consumer_gets_disconnected_soon_after_its_producer_is_killed() {
    let _serial = serial();
    let name = unique("poll-dead-producer");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).create_named(&name).unwrap();
    let mut consumer = segment.consumer().unwrap();
    for way in ["poll", "short timeouts", "block"] {
        let mut child = spawn_named("hold-producer", &name, 0, 0);
        wait_until(STALL, "the producer attached", || matches!(consumer.producer_state(), PeerState::Attached(_)));
        assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty));
        if way == "block" {
            // Asleep on the futex when the producer dies: the sleep is bounded, the death seen.
            consumer.set_wait_strategy(WaitStrategy::Block);
            let sleeper = std::thread::spawn(move || {
                let started = Instant::now();
                let outcome = consumer.recv_timeout(STALL).err();
                (outcome, started.elapsed(), consumer)
            });
            std::thread::sleep(Duration::from_millis(50));
            child.kill_9();
            let killed = Instant::now();
            let (outcome, _, back) = sleeper.join().unwrap();
            assert_eq!(outcome, Some(RecvTimeoutError::Disconnected));
            assert!(killed.elapsed() < DEATH_NOTICED_WITHIN, "blocked wait saw the death after {:?}", killed.elapsed());
            consumer = back;
            // A later short wait says so at once rather than sleeping out its deadline.
            let started = Instant::now();
            assert_eq!(consumer.recv_timeout(Duration::from_millis(30)).err(), Some(RecvTimeoutError::Disconnected));
            assert!(started.elapsed() < Duration::from_millis(500));
            continue;
        }
        child.kill_9();
        let killed = Instant::now();
        loop {
            let disconnected = if way == "short timeouts" {
                // A caller of its own event loop with a 1 ms timeout per turn.
                match consumer.recv_timeout(Duration::from_millis(1)) {
                    Err(RecvTimeoutError::Timeout) => false,
                    Err(RecvTimeoutError::Disconnected) => true,
                    other => panic!("{:?}", other.map(|m| m.to_vec())),
                }
            } else {
                match consumer.try_recv() {
                    Err(TryRecvError::Empty) => false,
                    Err(TryRecvError::Disconnected) => true,
                    other => panic!("{:?}", other.map(|m| m.to_vec())),
                }
            };
            if disconnected {
                break;
            }
            assert!(killed.elapsed() < DEATH_NOTICED_WITHIN, "still not disconnected after {:?}", killed.elapsed());
        }
    }
}

#[test]
fn a_polling_producer_gets_disconnected_soon_after_its_consumer_is_killed_with_room_left() {
    let _serial = serial();
    let name = unique("poll-dead-consumer");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 20).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    let mut child = spawn_named("hold-consumer", &name, 0, 0);
    wait_until(STALL, "the consumer attached", || matches!(producer.consumer_state(), PeerState::Attached(_)));
    child.kill_9();
    let killed = Instant::now();
    let mut sent = 0u64;
    loop {
        match producer.try_send(&sent.to_le_bytes()) {
            Ok(()) => sent += 1,
            Err(TrySendError::Disconnected) => break,
            Err(e) => panic!("after {sent} messages: {e}"),
        }
        assert!(killed.elapsed() < DEATH_NOTICED_WITHIN, "still not disconnected after {:?}", killed.elapsed());
        std::thread::sleep(Duration::from_micros(100));
    }
    assert!(segment.status().used_bytes() < (1 << 19), "noticed long before the ring filled");
}

#[test]
fn the_frontier_counts_exactly_what_killed_producers_committed() {
    let _serial = serial();
    let name = unique("frontier-kills");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(RING).create_named(&name).unwrap();
    let mut consumer = segment.consumer().unwrap();
    let mut verifier = Verifier::new(0, segment.max_message_len(), PayloadAlign::Eight);
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0..8u64 {
        let start = verifier.next;
        let mut child = spawn_named("produce-traffic", &name, start, u64::MAX);
        verifier.receive_until(&mut consumer, start + 5_000 + round * 3_331, deadline);
        child.kill_9();
        verifier.drain_until_disconnected(&mut consumer, deadline);
        // A replacement producer learns exactly how many messages the ring carried and where
        // the next one goes, however the last one died (mid-batch, mid-commit, between commits).
        let producer = segment.producer().unwrap();
        let frontier = producer.frontier();
        assert_eq!(frontier.messages, verifier.received, "round {round}");
        assert_eq!(frontier.position, segment.status().head, "round {round}");
    }
}
