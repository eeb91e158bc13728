//! `MessageId::new_v4` across threads, forks and processes: receivers deduplicate on the id, so
//! no two envelopes may share one, whichever process or thread made them.

use std::collections::HashSet;
use std::process::Command;

use schemas::envelope::MessageId;

const PER_STREAM: usize = 20_000;

fn ids(n: usize) -> Vec<[u8; 16]> {
    (0..n).map(|_| MessageId::new_v4().as_uuid().into_bytes()).collect()
}

fn assert_all_distinct(ids: &[[u8; 16]]) {
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{} repeated ids", ids.len() - distinct.len());
}

#[test]
fn ids_from_many_threads_are_distinct_and_v4() {
    let threads: Vec<_> = (0..8).map(|_| std::thread::spawn(|| ids(PER_STREAM))).collect();
    let all: Vec<[u8; 16]> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_all_distinct(&all);
    for id in &all {
        let uuid = uuid::Uuid::from_bytes(*id);
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
    }
}

/// A forked child inherits its parent's id stream; it must draw its own instead of giving out
/// the ids its parent gives out next.
#[test]
fn forked_child_does_not_repeat_its_parents_ids() {
    let before = ids(100); // the stream exists before the fork
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two c_ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [read_fd, write_fd] = fds;
    // SAFETY: the child only makes ids (atomic loads, the already-initialised thread-local
    // CSPRNG reseeding itself through getrandom(2): no allocation, no locks), writes them to
    // the pipe and calls `_exit`, so no state of the parent's other threads is touched.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let child: Vec<u8> = (0..PER_STREAM).flat_map(|_| MessageId::new_v4().as_uuid().into_bytes()).collect();
        let mut written = 0;
        while written < child.len() {
            // SAFETY: writing initialised bytes of `child` from `written` to its end.
            let n = unsafe { libc::write(write_fd, child[written..].as_ptr().cast(), child.len() - written) };
            if n <= 0 {
                // SAFETY: `_exit` ends the child without running the parent's destructors.
                unsafe { libc::_exit(1) };
            }
            written += n as usize;
        }
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the parent closes its copy of the write end it does not use.
    unsafe { libc::close(write_fd) };
    let parent_after = ids(PER_STREAM);
    let mut child = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into `buf`, which is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(read_fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 0, "read from the child failed");
        if n == 0 {
            break;
        }
        child.extend_from_slice(&buf[..n as usize]);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    // SAFETY: closing the read end we opened.
    unsafe { libc::close(read_fd) };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child failed: {status}");
    assert_eq!(child.len(), 16 * PER_STREAM);
    let mut all = before;
    all.extend(parent_after);
    all.extend(child.chunks_exact(16).map(|c| <[u8; 16]>::try_from(c).unwrap()));
    assert_all_distinct(&all);
}

/// Separate processes (a restart is one) each draw their own stream.
#[test]
fn ids_from_separate_processes_are_distinct() {
    if std::env::var_os("TADPOLE_ID_PRINTER").is_some() {
        for id in ids(PER_STREAM) {
            println!("{}", uuid::Uuid::from_bytes(id).simple());
        }
        return;
    }
    let mut all = Vec::new();
    for _ in 0..3 {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "ids_from_separate_processes_are_distinct", "--nocapture", "--test-threads=1"])
            .env("TADPOLE_ID_PRINTER", "1")
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let printed: Vec<[u8; 16]> =
            // The harness prints "test <name> ... " in front of the first id.
            text.split_whitespace().filter_map(|w| uuid::Uuid::try_parse(w).ok()).map(|u| u.into_bytes()).collect();
        assert_eq!(printed.len(), PER_STREAM, "{text}");
        all.extend(printed);
    }
    assert_all_distinct(&all);
}
