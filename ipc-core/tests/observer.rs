//! The observer (`tadpole tap`): it never livelocks, reports a lap only when the producer may
//! have overwritten what it copied, always makes progress when it lags, and never returns torn
//! data. Rings are real shared memory; the producer-kill test kills a real child process.
//!
//! Every message is a pure function of its sequence number (first 8 bytes), so a copy is checked
//! byte for byte: a torn copy cannot pass.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc_core::layout::offsets;
use ipc_core::{ObserveError, Observer, RingBuilder, Segment, TrySendError};
use proptest::prelude::*;

const ROLE_ENV: &str = "TADPOLE_OBSERVER_ROLE";
const SEGMENT_ENV: &str = "TADPOLE_OBSERVER_SEGMENT";
/// Offset of `AttachBlock::write_limit` in the producer's attach block.
const WRITE_LIMIT: usize = offsets::PRODUCER_ATTACH + 8;

/// The threaded and cross-process tests take turns on the two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    format!("observer-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Unlinks a named segment when dropped, whatever happened.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

fn file(name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().read(true).write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap()
}

fn peek_u64(name: &str, offset: usize) -> u64 {
    let mut b = [0u8; 8];
    file(name).read_exact_at(&mut b, offset as u64).unwrap();
    u64::from_le_bytes(b)
}

fn poke_u64(name: &str, offset: usize, value: u64) {
    file(name).write_all_at(&value.to_le_bytes(), offset as u64).unwrap();
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Message `seq` of `len` bytes (at least 8): the sequence number, then bytes derived from it.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(8)];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    let mut x = mix(seq);
    for chunk in m[8..].chunks_mut(8) {
        x = mix(x);
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    m
}

/// The sequence number of a copy, if it is exactly a message of its length.
fn intact(copy: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(copy.get(..8)?.try_into().ok()?);
    (message(seq, copy.len()) == copy).then_some(seq)
}

/// Observes until `Empty`; returns the sequence numbers seen. Fails on any lag or error.
fn observe_all(tap: &mut Observer) -> Vec<u64> {
    let mut copy = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        match tap.try_observe(&mut copy) {
            Ok(_) => seen.push(intact(&copy).expect("an intact copy")),
            Err(ObserveError::Empty) => return seen,
            Err(e) => panic!("after {} records: {e:?}", seen.len()),
        }
    }
    panic!("observer never reached the end of the ring");
}

#[test]
fn a_full_ring_whose_head_is_off_a_quarter_boundary_is_observed_without_lagging() {
    let name = unique("full");
    let _unlink = Unlink(name.clone());
    let seg = RingBuilder::new(4096).create_named(&name).unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    for seq in 0..3 {
        p.try_send(&message(seq, 40)).unwrap();
        drop(c.try_recv().unwrap());
    }
    let head = seg.status().head;
    assert_ne!(head % 1024, 0, "the scenario needs a head off a quarter boundary");
    let mut sent = 3;
    while p.try_send(&message(sent, 100)).is_ok() {
        sent += 1;
    }
    // The scenario that used to livelock: the producer's limit is legitimately past
    // head + capacity, and the observer reads at head.
    assert!(peek_u64(&name, WRITE_LIMIT) > head + 4096);
    let mut tap = seg.observer();
    assert_eq!(observe_all(&mut tap), (3..sent).collect::<Vec<_>>());
    for _ in 0..3 {
        assert_eq!(tap.try_observe(&mut Vec::new()), Err(ObserveError::Empty));
    }
}

#[test]
fn a_lap_is_reported_with_a_nonzero_skip_and_observation_resumes_at_the_consumer() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let mut tap = seg.observer();
    for seq in 0..200 {
        p.try_send(&message(seq, 100)).unwrap();
        drop(c.try_recv().unwrap());
    }
    match tap.try_observe(&mut Vec::new()) {
        Err(ObserveError::Lagged { skipped }) => assert_eq!(skipped, seg.status().head),
        other => panic!("expected a lap, got {other:?}"),
    }
    p.try_send(&message(200, 100)).unwrap();
    assert_eq!(observe_all(&mut tap), [200]);
}

/// A producer that reserved far ahead (a dropped grant) and was replaced: the new one must not
/// publish a lower limit, or an observer would accept bytes the old one wrote as intact.
#[test]
fn the_write_limit_never_moves_back_when_a_producer_takes_over() {
    let name = unique("takeover");
    let _unlink = Unlink(name.clone());
    let seg = RingBuilder::new(4096).create_named(&name).unwrap();
    let mut p = seg.producer().unwrap();
    p.try_send(&message(0, 16)).unwrap();
    // Written, never committed.
    p.try_reserve(seg.max_message_len()).unwrap().fill(0xEE);
    let before = peek_u64(&name, WRITE_LIMIT);
    drop(p);
    let mut p = seg.producer().unwrap();
    assert!(peek_u64(&name, WRITE_LIMIT) >= before);
    p.try_send(&message(1, 16)).unwrap();
    assert!(peek_u64(&name, WRITE_LIMIT) >= before);
    assert_eq!(observe_all(&mut seg.observer()), [0, 1]);
}

#[test]
fn hostile_write_limits_give_a_typed_error_never_a_livelock_and_a_new_producer_repairs_them() {
    let name = unique("hostile");
    let _unlink = Unlink(name.clone());
    let seg = RingBuilder::new(4096).create_named(&name).unwrap();
    let mut p = seg.producer().unwrap();
    for seq in 0..5 {
        p.try_send(&message(seq, 100)).unwrap();
    }
    drop(p);
    let honest = peek_u64(&name, WRITE_LIMIT);
    // Far ahead, near u64::MAX, beyond any position, unaligned, and behind the records it covers.
    for hostile in [10 * 4096, u64::MAX, u64::MAX - 1023, 1 << 62, honest + 8, honest - 1, 0] {
        poke_u64(&name, WRITE_LIMIT, hostile);
        let mut tap = seg.observer();
        for _ in 0..3 {
            assert_eq!(
                tap.try_observe(&mut Vec::new()),
                Err(ObserveError::ImpossibleBounds { write_limit: hostile, head: 0 }),
                "write limit {hostile}"
            );
        }
        // Attaching a producer replaces the impossible limit with one that is safe.
        drop(seg.producer().unwrap());
        assert_eq!(observe_all(&mut tap), [0, 1, 2, 3, 4], "after repairing write limit {hostile}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Single-threaded, so everything is known: the observer sees every message in order until
    /// it lags, lags only once the consumer released what it was about to read, skips forward
    /// every time, and reports `Empty` only when it has seen everything sent.
    #[test]
    fn the_observer_misses_nothing_lags_only_when_overtaken_and_always_progresses(
        ops in proptest::collection::vec((0u8..3, 8usize..700), 1..400),
    ) {
        let seg = RingBuilder::new(4096).create_anonymous().unwrap();
        let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
        let mut tap = seg.observer();
        let (mut sent, mut received, mut next) = (0u64, 0u64, 0u64);
        let mut lagged = false;
        let mut copy = Vec::new();
        for (op, len) in ops {
            match op {
                0 => match p.try_send(&message(sent, len)) {
                    Ok(()) => sent += 1,
                    Err(TrySendError::Full) => {}
                    Err(e) => panic!("{e}"),
                },
                1 => {
                    if let Ok(m) = c.try_recv() {
                        prop_assert_eq!(intact(&m), Some(received));
                        received += 1;
                    }
                }
                _ => match tap.try_observe(&mut copy) {
                    Ok(_) => {
                        let seq = intact(&copy).expect("an intact copy");
                        prop_assert!(if lagged { seq >= next } else { seq == next }, "saw {} expecting {}", seq, next);
                        next = seq + 1;
                        lagged = false;
                    }
                    Err(ObserveError::Empty) => prop_assert!(lagged || next == sent, "empty at {} of {}", next, sent),
                    Err(ObserveError::Lagged { skipped }) => {
                        prop_assert!(skipped > 0);
                        prop_assert!(next < received, "lagged at {} with only {} released", next, received);
                        lagged = true;
                    }
                    Err(e) => panic!("{e:?}"),
                },
            }
        }
    }
}

/// A producer (with its consumer) laps an observer on another thread as fast as it can: every
/// copy the observer returns is a whole message, never a torn one. Runs until the observer has
/// copied 2000 records and been lapped 20 times (bounded at 60 s: the two cores are shared).
#[test]
fn a_producer_lapping_an_observer_never_yields_torn_data() {
    let _serial = serial();
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let writer = std::thread::spawn(move || {
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..64 {
                p.try_send(&message(seq, 8 + (mix(seq) % 1500) as usize)).unwrap();
                drop(c.try_recv().unwrap());
                seq += 1;
            }
        }
        seq
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tap = seg.observer();
    let (mut copies, mut laps, mut last) = (0u64, 0u64, None);
    let mut copy = Vec::new();
    while (copies < 2000 || laps < 20) && Instant::now() < deadline {
        match tap.try_observe(&mut copy) {
            Ok(_) => {
                let seq = intact(&copy).unwrap_or_else(|| panic!("torn copy of {} bytes", copy.len()));
                assert!(last.is_none_or(|l| seq > l), "{seq} after {last:?}");
                last = Some(seq);
                copies += 1;
            }
            Err(ObserveError::Lagged { skipped }) => {
                assert!(skipped > 0);
                laps += 1;
            }
            Err(ObserveError::Empty) => std::hint::spin_loop(),
            Err(e) => panic!("{e:?}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    let sent = writer.join().unwrap();
    eprintln!("{sent} messages sent, {copies} copied intact, {laps} laps");
    assert!(
        copies >= 2000 && laps >= 20,
        "within 60 s the observer copied {copies} records and was lapped {laps} times"
    );
}

/// The child: attaches as producer of the named ring, fills it, says how many it sent, waits.
#[test]
fn child_fills_the_ring_and_waits_to_be_killed() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    assert_eq!(role, "fill");
    let seg = Segment::open(&std::env::var(SEGMENT_ENV).unwrap()).unwrap();
    let mut p = seg.producer().unwrap();
    let mut seq = 3;
    while p.try_send(&message(seq, 100)).is_ok() {
        seq += 1;
    }
    println!("sent up to {seq}");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_observer_makes_progress_on_a_full_ring_after_its_producer_is_killed() {
    let _serial = serial();
    let name = unique("killed");
    let _unlink = Unlink(name.clone());
    let seg = RingBuilder::new(4096).create_named(&name).unwrap();
    let mut c = seg.consumer().unwrap();
    let mut p = seg.producer().unwrap();
    for seq in 0..3 {
        p.try_send(&message(seq, 40)).unwrap();
        drop(c.try_recv().unwrap());
    }
    drop(p);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_fills_the_ring_and_waits_to_be_killed", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "fill")
        .env(SEGMENT_ENV, &name)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    for l in BufReader::new(child.stdout.take().unwrap()).lines() {
        // The harness prints the test's name without a newline before the test's own output.
        line = l.unwrap();
        if let Some(at) = line.find("sent up to ") {
            line.drain(..at + "sent up to ".len());
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let sent: u64 = line.trim().parse().unwrap_or_else(|_| panic!("child said {line:?}"));
    let limit = peek_u64(&name, WRITE_LIMIT);
    assert!(limit > seg.status().head + 4096, "the killed producer left a limit past head + capacity");

    let mut tap = seg.observer();
    assert_eq!(observe_all(&mut tap), (3..sent).collect::<Vec<_>>());
    // A new producer takes over from the dead one without lowering the limit; the consumer
    // makes room and the observer follows the new traffic without a false lap.
    let mut p = seg.producer().unwrap();
    assert!(peek_u64(&name, WRITE_LIMIT) >= limit);
    for _ in 3..sent {
        drop(c.try_recv().unwrap());
    }
    for seq in sent..sent + 20 {
        p.try_send(&message(seq, 100)).unwrap();
    }
    assert_eq!(observe_all(&mut tap), (sent..sent + 20).collect::<Vec<_>>());
}
