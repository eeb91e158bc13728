//! A named ring's file truncated under the processes that map it (`truncate -s 0`, or `ftruncate`
//! from any process that can open it) is survived: every process keeps running and reports the
//! truncation as an ordinary error; nobody dies of `SIGBUS`, and the consumer hands out nothing
//! read from the zeros that replace the mapping.
//!
//! Real processes on a real segment in /dev/shm: each test re-executes this binary as its
//! children (`--exact child_process_entry_point`), which play the role named in
//! [`ROLE_ENV`] and report on stdout (`EVENT <what> <count>`); the parent truncates the file.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_core::layout::HEADER_LEN;
use ipc_core::{
    CorruptReason, RecvTimeoutError, RingBuilder, Segment, SegmentFault, SendTimeoutError, TryRecvError, TrySendError,
};

const RING: usize = 64 * 1024;
const ROLE_ENV: &str = "TADPOLE_TRUNC_ROLE";
const SEGMENT_ENV: &str = "TADPOLE_TRUNC_SEGMENT";
/// A child gives up (and fails) after this long without meeting the truncation.
const CHILD_LIFETIME: Duration = Duration::from_secs(20);
/// How long after the truncation every process must have reported it.
const REPORT_WITHIN: Duration = Duration::from_secs(5);

/// The parents take turns: each keeps both cores busy.
static SERIAL: Mutex<()> = Mutex::new(());

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("trunc-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

fn truncate(name: &str, len: u64) {
    std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap().set_len(len).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Records: `[seq][filler...][check]`, the check a hash of everything before it, never zero for
// zeros: a record read (even partly) from zeros fails it.

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0x5555_AAAA_1234_5678u64, |h, &b| mix(h ^ u64::from(b)))
}

fn record(seq: u64) -> Vec<u8> {
    let len = 16 + (mix(seq) % 48) as usize * 8;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&seq.to_le_bytes());
    let mut x = seq;
    while out.len() < len - 8 {
        x = mix(x);
        out.push(x as u8);
    }
    let check = checksum(&out);
    out.extend_from_slice(&check.to_le_bytes());
    out
}

fn intact(payload: &[u8]) -> Option<u64> {
    let (body, check) = payload.split_at_checked(payload.len().checked_sub(8)?)?;
    (body.len() >= 8 && checksum(body) == u64::from_le_bytes(check.try_into().ok()?))
        .then(|| u64::from_le_bytes(body[..8].try_into().unwrap()))
}

// ---------------------------------------------------------------------------------------------
// The parent side.

struct Actor {
    child: Child,
    events: mpsc::Receiver<String>,
}

impl Actor {
    fn spawn(role: &str, segment: &str) -> Actor {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_process_entry_point", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .env(SEGMENT_ENV, segment)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The harness's "test child_process_entry_point ... " may open the line.
                if let Some(at) = line.find("EVENT ") {
                    let _ = tx.send(line[at + 6..].to_owned());
                }
            }
        });
        Actor { child, events }
    }

    /// The next event, which must start with `what`, within `timeout`.
    fn expect(&self, what: &str, timeout: Duration) -> String {
        match self.events.recv_timeout(timeout) {
            Ok(event) if event.starts_with(what) => event,
            Ok(event) => panic!("expected {what:?}, the child said {event:?}"),
            Err(_) => panic!("no {what:?} from the child within {timeout:?}"),
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "child did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assert_survived(status: ExitStatus, who: &str) {
    assert_eq!(status.signal(), None, "the {who} was killed by signal {:?} (7 is SIGBUS)", status.signal());
    assert_eq!(status.code(), Some(0), "the {who} failed");
}

/// A producer and a consumer stream through a named ring, each in its own process; the file is
/// cut to `len` bytes under them.
fn stream_then_truncate(len: impl Fn(u64) -> u64) {
    stream_then_truncate_with("consume", Duration::ZERO, len);
}

/// [`stream_then_truncate`] with the consumer role `consumer_role`, `after` more streaming
/// before the cut.
fn stream_then_truncate_with(consumer_role: &str, after: Duration, len: impl Fn(u64) -> u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let name = unique("stream");
    let _unlink = Unlink(name.clone());
    // Made here and left to the children: this process maps nothing it truncates.
    let created = RingBuilder::new(RING).create_named(&name).unwrap();
    created.keep();
    let full_len = (HEADER_LEN + created.capacity()) as u64;
    drop(created);

    let mut consumer = Actor::spawn(consumer_role, &name);
    consumer.expect("attached", Duration::from_secs(10));
    let mut producer = Actor::spawn("produce", &name);
    // Streaming: the consumer has verified records the producer sent, a ring's worth at least.
    consumer.expect("streaming", Duration::from_secs(10));
    producer.expect("streaming", Duration::from_secs(10));
    std::thread::sleep(after);

    let cut_at = Instant::now();
    truncate(&name, len(full_len));

    let produced = producer.expect("truncated", REPORT_WITHIN);
    let consumed = consumer.expect("truncated", REPORT_WITHIN);
    let took = cut_at.elapsed();
    assert_survived(producer.wait_exit(Duration::from_secs(5)), "producer");
    assert_survived(consumer.wait_exit(Duration::from_secs(5)), "consumer");
    eprintln!("file cut to {} bytes: producer {produced}, consumer {consumed}, both within {took:?}", len(full_len));
}

#[test]
fn producer_and_consumer_processes_survive_their_ring_file_truncated_to_nothing() {
    stream_then_truncate(|_| 0);
}

#[test]
fn producer_and_consumer_processes_survive_their_ring_file_truncated_to_half() {
    stream_then_truncate(|full| full / 2);
}

/// The cut at other moments of the stream (so inside other copies, commits and waits), with a
/// consumer reading batches too.
#[test]
fn streaming_processes_survive_truncations_at_any_moment_with_single_and_batch_receives() {
    for i in 0..8u64 {
        let role = if i % 2 == 0 { "consume" } else { "consume-batches" };
        let after = Duration::from_micros(mix(i) % 40_000);
        stream_then_truncate_with(
            role,
            after,
            move |full| if i % 4 < 2 { 0 } else { full / 2 + i * 4096 % (full / 2) },
        );
    }
}

#[test]
fn a_creator_process_survives_its_ring_file_truncated_under_its_heartbeat() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let name = unique("creator");
    let _unlink = Unlink(name.clone());
    let mut creator = Actor::spawn("create", &name);
    creator.expect("created", Duration::from_secs(10));
    truncate(&name, 0);
    // Found by the heartbeat thread's next write (a quarter of the 2 s default timeout).
    creator.expect("truncated", REPORT_WITHIN);
    assert_survived(creator.wait_exit(Duration::from_secs(5)), "creator");
}

/// A reader opening a ring whose file was truncated before it opened is refused, not faulted; one
/// whose file is cut after it opened gets `SegmentFault::Truncated` when it attaches.
#[test]
fn opening_or_attaching_to_a_truncated_ring_is_refused_with_an_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let name = unique("attach");
    let _unlink = Unlink(name.clone());
    let mut creator = Actor::spawn("create-and-wait", &name);
    creator.expect("created", Duration::from_secs(10));
    let opened = Segment::open(&name).unwrap();
    truncate(&name, 0);
    assert!(matches!(Segment::open(&name), Err(ipc_core::OpenError::Invalid(SegmentFault::SizeMismatch { .. }))));
    match opened.consumer() {
        Err(ipc_core::AttachError::Corrupt(SegmentFault::Truncated)) => {}
        other => panic!("expected a refusal for truncation, got {:?}", other.map(|_| ())),
    }
    assert!(opened.was_truncated());
    assert!(opened.is_truncated().unwrap());
    let mut tap = opened.observer();
    assert_eq!(tap.try_observe(&mut Vec::new()), Err(ipc_core::ObserveError::Truncated));
    drop(opened);
    assert_survived(creator.wait_exit(Duration::from_secs(10)), "creator");
}

/// A `SIGBUS` that is not a ring's (a fault in a file mapping ipc-core did not make) goes to the
/// action installed before ipc-core's: Rust's runtime handler, which restores the default, so the
/// process dies of it exactly as without ipc-core.
#[test]
fn a_fault_outside_every_ring_still_kills_by_sigbus() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let name = unique("foreign");
    let _unlink = Unlink(name.clone());
    let mut child = Actor::spawn("foreign-fault", &name);
    child.expect("faulting", Duration::from_secs(10));
    let status = child.wait_exit(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
}

/// A program's own `SIGBUS` handler, installed before its first ring, still gets every fault that
/// is not a ring's; a ring's truncation never reaches it.
#[test]
fn a_handler_installed_before_the_first_ring_gets_the_faults_that_are_not_a_rings() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let name = unique("chained");
    let _unlink = Unlink(name.clone());
    let mut child = Actor::spawn("foreign-fault-own-handler", &name);
    child.expect("ring truncated, caught", Duration::from_secs(10));
    child.expect("faulting", Duration::from_secs(10));
    let status = child.wait_exit(Duration::from_secs(10));
    assert_eq!(status.signal(), None, "{status:?}");
    assert_eq!(status.code(), Some(OWN_HANDLER_EXIT), "the program's own handler did not run");
}

/// The exit status of the program's own handler in the test above.
const OWN_HANDLER_EXIT: i32 = 42;

extern "C" fn own_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel's siginfo for an SA_SIGINFO handler; `_exit` is async-signal-safe.
    unsafe {
        let code = if (*info).si_code == libc::BUS_ADRERR { OWN_HANDLER_EXIT } else { 43 };
        libc::_exit(code);
    }
}

/// Maps a fresh file of `/dev/shm` that no ring owns, cuts it to nothing and reads it: a fault
/// that is not ipc-core's.
fn fault_outside_every_ring(tag: &str) -> ! {
    let path = format!("/dev/shm/trunc-not-a-ring-{tag}");
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    file.set_len(8192).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of a file we hold, at an address the kernel picks.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    assert_ne!(ptr, libc::MAP_FAILED);
    file.set_len(0).unwrap();
    event("faulting");
    // SAFETY: in bounds of the mapping; past the file's end, which is the point: SIGBUS.
    let byte = unsafe { std::ptr::read_volatile(ptr.cast::<u8>()) };
    panic!("read {byte} past the end of a truncated file without a fault");
}

// ---------------------------------------------------------------------------------------------
// The children.

fn event(what: &str) {
    println!("EVENT {what}");
}

/// The child side of every test. Does nothing when run as an ordinary test.
#[test]
fn child_process_entry_point() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let name = std::env::var(SEGMENT_ENV).unwrap();
    let deadline = Instant::now() + CHILD_LIFETIME;
    match role.as_str() {
        "produce" => produce(&Segment::open(&name).unwrap(), deadline),
        "consume" => consume(&Segment::open(&name).unwrap(), deadline),
        "consume-batches" => consume_batches(&Segment::open(&name).unwrap(), deadline),
        "create" | "create-and-wait" => {
            let segment = RingBuilder::new(RING).create_named(&name).unwrap();
            event("created");
            if role == "create" {
                // Touches nothing itself: the heartbeat thread's writes into the header page, every
                // 500 ms, are what meet the truncation. Two of them at least, then a look.
                std::thread::sleep(Duration::from_millis(1200));
                assert!(segment.was_truncated(), "the heartbeat thread never met the truncation");
                event("truncated");
            } else {
                // Alive (heartbeat and all) while the parent opens, truncates and attaches.
                while !segment.was_truncated() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        "foreign-fault" => {
            // A ring first, so ipc-core's handler is installed.
            let segment = RingBuilder::new(RING).create_named(&name).unwrap();
            assert!(!segment.was_truncated());
            // Dying of SIGBUS is the expected outcome: no core file for it.
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: a valid rlimit, for this process only.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
            fault_outside_every_ring(&name);
        }
        "foreign-fault-own-handler" => {
            // SAFETY: all-zero is a valid sigaction; the handler is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = own_handler as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO;
                assert_eq!(libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()), 0);
            }
            let segment = RingBuilder::new(RING).create_named(&name).unwrap();
            truncate(&name, 0);
            // The probe faults in the ring: ipc-core's, not the program's handler.
            assert!(segment.was_truncated());
            event("ring truncated, caught");
            fault_outside_every_ring(&name);
        }
        other => panic!("unknown role {other}"),
    }
}

fn produce(segment: &Segment, deadline: Instant) {
    let mut producer = segment.producer().unwrap();
    let mut seq = 0u64;
    let mut said_streaming = false;
    loop {
        assert!(Instant::now() < deadline, "the producer never met the truncation ({seq} sent)");
        let payload = record(seq);
        match producer.send_timeout(&payload, Duration::from_millis(50)) {
            Ok(()) => seq += 1,
            Err(SendTimeoutError::Timeout) => {}
            Err(SendTimeoutError::Corrupt(SegmentFault::Truncated)) => break,
            Err(e) => panic!("the producer failed otherwise: {e} ({seq} sent)"),
        }
        if !said_streaming && seq > (4 * RING / 64) as u64 {
            said_streaming = true;
            event("streaming");
        }
        // The truncation error is permanent: every later call says so too.
    }
    assert!(matches!(producer.try_send(b"after"), Err(TrySendError::Corrupt(SegmentFault::Truncated))));
    assert!(segment.was_truncated());
    event(&format!("truncated after {seq} sent"));
}

fn consume(segment: &Segment, deadline: Instant) {
    let mut consumer = segment.consumer().unwrap();
    event("attached");
    let (mut delivered, mut discarded) = (0u64, 0u64);
    let mut said_streaming = false;
    loop {
        assert!(Instant::now() < deadline, "the consumer never met the truncation ({delivered} delivered)");
        match consumer.recv_timeout(Duration::from_millis(50)) {
            Ok(guard) => {
                let copy = guard.to_vec();
                drop(guard);
                // Bytes read before a `false` here came from the file, not from the zeros.
                if segment.was_truncated() {
                    discarded += 1;
                    continue;
                }
                let seq = intact(&copy).unwrap_or_else(|| panic!("record {delivered} fails its checksum: {copy:02x?}"));
                assert_eq!(seq, delivered, "records out of order or lost");
                delivered += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Corrupt { reason: CorruptReason::Truncated, .. }) => break,
            Err(e) => panic!("the consumer failed otherwise: {e} ({delivered} delivered)"),
        }
        if !said_streaming && delivered > (4 * RING / 64) as u64 {
            said_streaming = true;
            event("streaming");
        }
    }
    assert!(matches!(consumer.try_recv(), Err(TryRecvError::Corrupt { reason: CorruptReason::Truncated, .. })));
    event(&format!(
        "truncated after {delivered} delivered intact, {discarded} discarded as read during the truncation"
    ));
}

/// [`consume`] with `read_batch_timeout`: every record of a batch is copied, then the batch is
/// judged intact or not as a whole.
fn consume_batches(segment: &Segment, deadline: Instant) {
    let mut consumer = segment.consumer().unwrap();
    event("attached");
    let (mut delivered, mut discarded) = (0u64, 0u64);
    let mut said_streaming = false;
    loop {
        assert!(Instant::now() < deadline, "the consumer never met the truncation ({delivered} delivered)");
        match consumer.read_batch_timeout(64, Duration::from_millis(50)) {
            Ok(batch) => {
                let copies: Vec<Vec<u8>> = batch.iter().map(|r| r.payload.to_vec()).collect();
                drop(batch);
                if segment.was_truncated() {
                    discarded += copies.len() as u64;
                    continue;
                }
                for copy in copies {
                    let seq =
                        intact(&copy).unwrap_or_else(|| panic!("record {delivered} fails its checksum: {copy:02x?}"));
                    assert_eq!(seq, delivered, "records out of order or lost");
                    delivered += 1;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Corrupt { reason: CorruptReason::Truncated, .. }) => break,
            Err(e) => panic!("the consumer failed otherwise: {e} ({delivered} delivered)"),
        }
        if !said_streaming && delivered > (4 * RING / 64) as u64 {
            said_streaming = true;
            event("streaming");
        }
    }
    assert!(matches!(consumer.read_batch(8), Err(TryRecvError::Corrupt { reason: CorruptReason::Truncated, .. })));
    event(&format!(
        "truncated after {delivered} delivered intact, {discarded} discarded as read during the truncation"
    ));
}
