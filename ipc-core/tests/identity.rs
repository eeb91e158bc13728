//! Identity across PID namespaces and without `/proc`: two live processes never own one side.
//!
//! Parents here run this test binary again as a helper (`--exact helper_process_entry_point`),
//! in a new PID namespace (`unshare --pid --fork --mount-proc`, so it sees a pid space and a
//! `/proc` of its own while sharing `/dev/shm`) or with `/proc` hidden under an empty tmpfs (in
//! a mount namespace of its own). A helper reports through its exit status and the segment.
//! Tests are skipped, saying so, only where `unshare` itself cannot run.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipc_core::{AttachError, PeerState, RingBuilder, Segment, Side};

const ROLE_ENV: &str = "TADPOLE_ID_ROLE";
const SEGMENT_ENV: &str = "TADPOLE_ID_SEGMENT";
const TIMEOUT_ENV: &str = "TADPOLE_ID_TIMEOUT_MS";
const HOLD_ENV: &str = "TADPOLE_ID_HOLD_MS";
const ISOLATION_ENV: &str = "TADPOLE_ID_ISOLATION";
/// Longest any wait may take before the test calls it a hang.
const STALL: Duration = Duration::from_secs(20);

/// The helpers keep both cores busy enough; parents take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("id-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Unlinks a named segment when dropped, whatever happened.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

/// How a helper is isolated from the parent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isolation {
    /// A PID namespace (and a mount namespace with its own `/proc`) of its own.
    PidNamespace,
    /// The parent's PID namespace, but `/proc` hidden under an empty tmpfs.
    HiddenProc,
}

/// A helper process; killed (with its namespace) and reaped when dropped.
struct Helper {
    /// `unshare` for a namespaced helper, else the helper itself.
    child: Child,
    /// The helper's pid in the parent's namespace.
    pid: u32,
}

impl Helper {
    fn spawn(isolation: Isolation, role: &str, name: &str, timeout: Duration, hold: Duration) -> Helper {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = match isolation {
            Isolation::PidNamespace => {
                let mut cmd = Command::new("unshare");
                cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"]).arg(exe);
                cmd
            }
            Isolation::HiddenProc => {
                let mut cmd = Command::new(exe);
                // SAFETY: runs in the forked child before exec and makes only the unshare and
                // mount system calls (async-signal-safe), with static C strings; nothing is
                // allocated and no lock is touched.
                unsafe {
                    cmd.pre_exec(|| {
                        let fail =
                            |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                        fail(libc::unshare(libc::CLONE_NEWNS))?;
                        let none = c"none".as_ptr();
                        fail(libc::mount(
                            none,
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ))?;
                        fail(libc::mount(none, c"/proc".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()))
                    });
                }
                cmd
            }
        };
        cmd.args(["--exact", "helper_process_entry_point", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .env(SEGMENT_ENV, name)
            .env(TIMEOUT_ENV, timeout.as_millis().to_string())
            .env(HOLD_ENV, hold.as_millis().to_string())
            .env(ISOLATION_ENV, format!("{isolation:?}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn helper");
        let pid = match isolation {
            Isolation::HiddenProc => child.id(),
            Isolation::PidNamespace => forked_child_of(child.id()),
        };
        Helper { child, pid }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: sends a signal to a process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.pid as libc::pid_t, signal) }, 0, "signal {signal} to {}", self.pid);
    }

    /// `kill -9` the helper itself, then reap what we started.
    fn kill_9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.kill();
        self.child.wait().expect("reap helper");
    }

    fn assert_succeeded(&mut self) {
        let deadline = Instant::now() + STALL;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "helper failed: {status} (its panic message is on stderr above)");
                return;
            }
            assert!(Instant::now() < deadline, "helper {} did not exit", self.pid);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `signal`; the helper may be stopped, so it is killed directly.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pid (in our namespace) of the child `unshare --fork` made.
fn forked_child_of(unshare: u32) -> u32 {
    let path = format!("/proc/{unshare}/task/{unshare}/children");
    let deadline = Instant::now() + STALL;
    loop {
        if let Some(pid) = std::fs::read_to_string(&path).ok().and_then(|s| s.split_whitespace().next()?.parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "unshare {unshare} made no child");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `unshare` can make a PID namespace here (root, or user namespaces allowed).
fn namespaces_available() -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: `unshare --pid --fork --mount-proc` fails here (needs root or user namespaces)");
    }
    ok
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STALL;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn attached(segment: &Segment, side: Side) -> bool {
    let st = segment.status();
    matches!(if side == Side::Producer { st.producer } else { st.consumer }, PeerState::Attached(_))
}

fn env_ms(key: &str) -> Duration {
    Duration::from_millis(std::env::var(key).unwrap_or_else(|_| panic!("{key} not set")).parse().expect("ms"))
}

/// The helper side of every test. Does nothing when run as an ordinary test.
#[test]
fn helper_process_entry_point() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let name = std::env::var(SEGMENT_ENV).expect("segment name");
    let (timeout, hold) = (env_ms(TIMEOUT_ENV), env_ms(HOLD_ENV));
    // The isolation is real, or the test proves nothing.
    match std::env::var(ISOLATION_ENV).as_deref() {
        Ok("PidNamespace") => assert_eq!(std::process::id(), 1, "first process of a new PID namespace"),
        Ok("HiddenProc") => assert!(std::fs::read_dir("/proc").unwrap().next().is_none(), "/proc is empty"),
        other => panic!("isolation {other:?}"),
    }
    match role.as_str() {
        // Creates the ring and holds its producer side for `hold`, idle.
        "create-and-hold-producer" => {
            let segment = RingBuilder::new(4096).heartbeat_timeout(timeout).create_named(&name).expect("create");
            let _producer = segment.producer().expect("attach producer");
            std::thread::sleep(hold);
        }
        // Holds the producer side of an existing ring for `hold`, then lets go.
        "hold-producer" => {
            let segment = Segment::open(&name).expect("open");
            let producer = segment.producer().expect("attach producer");
            let since = Instant::now();
            while since.elapsed() < hold {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(producer);
        }
        // The producer side must be refused as held, and the ring must not be reclaimable.
        "expect-producer-busy" => {
            let segment = Segment::open(&name).expect("open");
            match segment.producer() {
                Err(AttachError::Busy { side: Side::Producer, .. }) => {}
                other => panic!("a live producer in a namespace we cannot see was taken over: {:?}", other.err()),
            }
            assert!(matches!(segment.status().producer, PeerState::Attached(_)), "{:?}", segment.status());
            assert!(!Segment::reclaim_if_stale(&name).expect("reclaim"), "a live ring was unlinked");
            assert!(Segment::open(&name).is_ok());
        }
        other => panic!("unknown helper role {other}"),
    }
}

/// An idle producer in another PID namespace stays its ring's producer past several heartbeat
/// timeouts: an attach from the parent namespace is refused, and the ring is not reclaimed
/// (its creator runs there too), nor from a sibling namespace.
#[test]
fn producer_in_another_pid_namespace_is_busy_to_the_parent_and_a_sibling_and_never_reclaimed() {
    if !namespaces_available() {
        return;
    }
    let _serial = serial();
    let name = unique("foreign-owner");
    let _unlink = Unlink(name.clone());
    let timeout = Duration::from_millis(400);
    let _owner = Helper::spawn(Isolation::PidNamespace, "create-and-hold-producer", &name, timeout, STALL);
    wait_until("the namespaced helper created the ring and attached", || {
        Segment::open(&name).is_ok_and(|s| attached(&s, Side::Producer))
    });
    let segment = Segment::open(&name).unwrap();
    // Long enough that only a refreshed heartbeat still speaks for the idle owner.
    std::thread::sleep(timeout * 3);
    match segment.producer() {
        Err(AttachError::Busy { side: Side::Producer, owner }) => {
            assert_eq!(owner.pid, 1, "pid as its namespace sees it")
        }
        other => panic!("producer taken over from a live process in another PID namespace: {:?}", other.err()),
    }
    assert!(attached(&segment, Side::Producer), "{:?}", segment.status());
    assert!(segment.status().creator_alive, "{:?}", segment.status());
    assert!(!Segment::reclaim_if_stale(&name).unwrap(), "a live ring in another namespace was reclaimed");
    assert!(Segment::open(&name).is_ok());

    let mut sibling = Helper::spawn(Isolation::PidNamespace, "expect-producer-busy", &name, timeout, Duration::ZERO);
    sibling.assert_succeeded();
    assert!(attached(&segment, Side::Producer));
}

/// A process that cannot read `/proc` cannot check any pid; it must judge the owner by its
/// heartbeat, not take the side. And an owner whose `/proc` is hidden is judged the same way.
#[test]
fn without_proc_a_live_owner_is_not_taken_over() {
    if !namespaces_available() {
        return;
    }
    let _serial = serial();
    let timeout = Duration::from_millis(400);

    // The prober cannot read /proc; the owner is this process.
    let name = unique("hidden-proc-prober");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(4096).heartbeat_timeout(timeout).create_named(&name).unwrap();
    let _producer = segment.producer().unwrap();
    std::thread::sleep(timeout * 2);
    let mut prober = Helper::spawn(Isolation::HiddenProc, "expect-producer-busy", &name, timeout, Duration::ZERO);
    prober.assert_succeeded();
    drop(_producer);
    drop(segment);

    // The owner cannot read /proc (it records no start time, no namespace); we probe it.
    let name = unique("hidden-proc-owner");
    let _unlink = Unlink(name.clone());
    let _owner = Helper::spawn(Isolation::HiddenProc, "create-and-hold-producer", &name, timeout, STALL);
    wait_until("the helper created the ring and attached", || {
        Segment::open(&name).is_ok_and(|s| attached(&s, Side::Producer))
    });
    let segment = Segment::open(&name).unwrap();
    std::thread::sleep(timeout * 2);
    assert!(matches!(segment.producer(), Err(AttachError::Busy { .. })), "{:?}", segment.status());
    assert!(!Segment::reclaim_if_stale(&name).unwrap());
}

/// Once the owner in another namespace is killed, its heartbeat stops: the side is refused
/// until the heartbeat is older than the timeout, then taken over.
#[test]
fn killed_owner_in_another_pid_namespace_is_replaced_after_the_heartbeat_timeout_and_not_before() {
    if !namespaces_available() {
        return;
    }
    let _serial = serial();
    let name = unique("foreign-killed");
    let _unlink = Unlink(name.clone());
    let timeout = Duration::from_millis(300);
    let segment = RingBuilder::new(4096).heartbeat_timeout(timeout).create_named(&name).unwrap();
    let mut owner = Helper::spawn(Isolation::PidNamespace, "hold-producer", &name, timeout, STALL);
    wait_until("the namespaced helper attached", || attached(&segment, Side::Producer));

    owner.kill_9();
    let killed = Instant::now();
    let busy_right_after = segment.producer().err();
    let mut producer = loop {
        match segment.producer() {
            Ok(p) => break p,
            Err(AttachError::Busy { .. }) => {}
            Err(e) => panic!("attach: {e}"),
        }
        assert!(killed.elapsed() < STALL, "never taken over from the killed owner");
        std::thread::sleep(Duration::from_millis(5));
    };
    let replaced_after = killed.elapsed();
    assert!(
        matches!(busy_right_after, Some(AttachError::Busy { .. })),
        "taken over before the heartbeat was stale: {busy_right_after:?}"
    );
    // The last beat came at most a refresh period (timeout / 4) before the kill.
    assert!(replaced_after >= timeout - timeout / 4 - Duration::from_millis(20), "replaced after {replaced_after:?}");
    assert!(replaced_after < Duration::from_secs(5), "replaced after {replaced_after:?}");
    producer.try_send(b"new owner").unwrap();
    let mut consumer = segment.consumer().unwrap();
    assert_eq!(&*consumer.try_recv().unwrap(), b"new owner");
}

/// A producer in another namespace is stopped (SIGSTOP) past the timeout and loses its side;
/// when it resumes and drops its handle, the new owner stays attached: detach only clears the
/// side if it still holds the very claim it made.
#[test]
fn stopped_owner_that_lost_its_side_does_not_detach_the_new_owner_when_it_drops() {
    if !namespaces_available() {
        return;
    }
    let _serial = serial();
    let name = unique("stopped-owner");
    let _unlink = Unlink(name.clone());
    let timeout = Duration::from_millis(300);
    let segment = RingBuilder::new(4096).heartbeat_timeout(timeout).create_named(&name).unwrap();
    let mut old = Helper::spawn(Isolation::PidNamespace, "hold-producer", &name, timeout, Duration::from_millis(1500));
    wait_until("the namespaced helper attached", || attached(&segment, Side::Producer));
    old.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let producer = loop {
        if let Ok(p) = segment.producer() {
            break p;
        }
        assert!(stopped.elapsed() < STALL, "never taken over from the stopped owner");
        std::thread::sleep(Duration::from_millis(5));
    };
    let me = ipc_core::ProcessId::current();
    old.signal(libc::SIGCONT);
    // It wakes, holds on until its time is up (its heartbeat thread must leave our side alone),
    // then drops its stale handle and exits.
    old.assert_succeeded();
    let consumer = segment.consumer().unwrap();
    assert_eq!(consumer.producer_state(), PeerState::Attached(me), "the new owner was marked detached");
    std::thread::sleep(timeout * 2);
    assert_eq!(consumer.producer_state(), PeerState::Attached(me));
    drop(producer);
    assert_eq!(consumer.producer_state(), PeerState::Closed);
}

/// A segment caught between its creator's `shm_open` and `ftruncate` (size 0), or sized but
/// with no header yet (magic 0), belongs to a creator at work: not reclaimed while its file is
/// young, reclaimed once it is old garbage.
#[test]
fn a_segment_being_created_is_not_reclaimed_until_it_is_old() {
    for len in [0usize, 4096 + 4096] {
        let name = unique("being-created");
        let _unlink = Unlink(name.clone());
        let path = format!("/dev/shm/tadpole.{name}");
        std::fs::write(&path, vec![0u8; len]).unwrap();
        assert!(!Segment::is_reclaimable(&name).unwrap());
        assert!(!Segment::reclaim_if_stale(&name).unwrap(), "a segment being created was unlinked");
        assert!(std::path::Path::new(&path).exists());
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        assert!(Segment::is_reclaimable(&name).unwrap());
        assert!(Segment::reclaim_if_stale(&name).unwrap(), "old garbage stays");
        assert!(!std::path::Path::new(&path).exists());
    }
}
