//! Liveness and naming edge cases found in review: a live process whose main thread has exited,
//! and a creator's last handle meeting a name that now belongs to a newer segment. Real
//! processes (made with `fork`), real `/dev/shm`.

use std::time::{Duration, Instant};

use ipc_core::{AttachError, RingBuilder, Segment};

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("review-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Unlinks a named segment when dropped, whatever happened.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

/// State letter and `Threads:` count of `pid`.
fn state_and_threads(pid: i32) -> (char, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap();
    (state, threads)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_process_whose_main_thread_exited_keeps_its_side_until_its_last_thread_dies() {
    let name = unique("leader");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(4096).create_named(&name).unwrap();
    let mut pipe = [0; 2];
    // SAFETY: `pipe` is a valid array of two descriptors to fill.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child only opens the ring, spawns one thread and ends its main thread with
    // `SYS_exit`; glibc's allocator and thread creation are fork-safe, and no destructor runs.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let writer = pipe[1];
        let name = name.clone();
        let spawned = std::thread::Builder::new().spawn(move || {
            let attached = Segment::open(&name).map(|s| (s.producer().ok(), s));
            let report: &[u8] = if matches!(attached, Ok((Some(_), _))) { b"P" } else { b"E" };
            // SAFETY: writes one byte from a valid buffer to the pipe this process holds.
            unsafe { libc::write(writer, report.as_ptr().cast(), 1) };
            // Holds the producer until the parent kills this process.
            std::thread::sleep(Duration::from_secs(60));
            drop(attached);
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        });
        if spawned.is_err() {
            // SAFETY: as above.
            unsafe { libc::_exit(1) };
        }
        // SAFETY: ends only the main thread (the thread-group leader); the process lives on in
        // the spawned thread, its leader shown as a zombie.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
    }
    assert!(pid > 0, "fork failed");
    // SAFETY: our copy of the write end, closed so that the read below ends if the child dies.
    unsafe { libc::close(pipe[1]) };
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a valid buffer from the pipe's read end, which we own.
    let n = unsafe { libc::read(pipe[0], byte.as_mut_ptr().cast(), 1) };
    // SAFETY: closes the read end, which we own.
    unsafe { libc::close(pipe[0]) };
    assert_eq!((n, &byte), (1, b"P"), "the child's thread could not attach the producer");
    wait_for("the child's leader to show as a zombie", || matches!(state_and_threads(pid), ('Z', 2..)));

    match segment.producer() {
        Err(AttachError::Busy { owner, .. }) => assert_eq!(owner.pid, pid as u32),
        other => panic!("the side of a live process whose leader exited was handed out: {:?}", other.map(|_| ())),
    }

    // SAFETY: our own child, not reaped yet, so the pid is still its own.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Now a real zombie (not reaped yet, no thread left): its side is free.
    wait_for("the child to be a zombie with no thread running", || state_and_threads(pid) == ('Z', 1));
    let taken = segment.producer();
    let mut status = 0;
    // SAFETY: reaps our own child; `status` is a valid out-parameter.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(taken.is_ok(), "a zombie with no threads kept its side: {:?}", taken.err());
}

#[test]
fn a_creators_last_handle_leaves_a_newer_segment_under_its_name_alone() {
    let name = unique("renamed");
    let _unlink = Unlink(name.clone());
    let old = RingBuilder::new(4096).create_named(&name).unwrap();
    // Someone (an operator, a restarted service) removes the name and makes a new ring under it.
    Segment::unlink(&name).unwrap();
    let new = RingBuilder::new(4096).create_named(&name).unwrap();
    new.keep();
    drop(old);
    let reopened = Segment::open(&name).expect("the newer segment keeps its name");
    let mut producer = new.producer().unwrap();
    producer.try_send(b"same ring").unwrap();
    assert_eq!(&*reopened.consumer().unwrap().try_recv().unwrap(), b"same ring");
    drop((producer, reopened, new));
    // The creator's own name still goes with its last handle.
    let own = unique("own");
    drop(RingBuilder::new(4096).create_named(&own).unwrap());
    assert!(Segment::open(&own).is_err(), "a creator's own name is unlinked on drop");
}
