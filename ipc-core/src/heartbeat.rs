//! Heartbeats: how a process in another PID namespace, which cannot look up our pid, tells that
//! we still run. One background thread per process, started on the first attach or creation,
//! stores `CLOCK_BOOTTIME` into the heartbeat of every side this process holds (and of every
//! segment it created and still maps) at a quarter of the shortest timeout. The ring's fast
//! path never sees it: the heartbeat lives in a cache line only this thread writes.
//!
//! Caveat: a process that is stopped (SIGSTOP, a debugger, a frozen cgroup) stops its heartbeat
//! too. A peer that can check its pid (same PID namespace, `/proc` readable) still sees it alive;
//! a peer in a namespace it cannot see judges it dead once the timeout passes, and may take over.

use std::ptr::NonNull;
use std::sync::atomic::AtomicPtr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::Side;
use crate::layout::{AttachBlock, SegmentHeader};
use crate::liveness::{Identity, now_ns};
use crate::segment::Segment;
use crate::shm::Mapping;
use crate::sync::atomic::{Ordering::*, fence};

/// Timeout when the builder sets none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest timeout accepted: the heartbeat thread must run every quarter of it, even on a
/// loaded machine.
pub(crate) const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest timeout accepted.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The timeout a segment's descriptor field stands for: 0 means the default, and anything out
/// of range (a hostile value) is clamped into it.
pub(crate) fn timeout_from_ms(ms: u32) -> Duration {
    if ms == 0 {
        return DEFAULT_TIMEOUT;
    }
    Duration::from_millis(ms.into()).clamp(MIN_TIMEOUT, MAX_TIMEOUT)
}

/// What one registration refreshes.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// A side held with this owner word, by this identity.
    Side(Side, u64, Identity),
    /// The descriptor of a segment this process created.
    Creator,
}

struct Entry {
    id: u64,
    header: NonNull<SegmentHeader>,
    /// The mapping `header` lies in, for its truncation state (kept alive like `header`; not an
    /// `Arc`: a forked child never removes its parent's entries, and must still unmap on drop).
    map: NonNull<Mapping>,
    target: Target,
    period: Duration,
}

// SAFETY: `header` points into (and `map` at) a mapping that the entry's `Beat` keeps alive (it holds an
// `Arc<Mapping>`) and that outlives the entry: `Beat::drop` removes the entry under the registry
// lock before the `Arc` drops. The header holds only atomics.
unsafe impl Send for Entry {}

struct Registry {
    entries: Vec<Entry>,
    next_id: u64,
    running: bool,
}

/// The registry of one process. A child made by `fork` inherits a copy of its parent's, but not
/// the thread serving it, and maybe a lock held by that thread at the fork: it starts a registry
/// (and thread) of its own, told apart by the pid that made it.
struct Heartbeats {
    pid: u32,
    registry: Mutex<Registry>,
    wake: Condvar,
}

impl Heartbeats {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Nothing that holds the lock panics; if something did, the list is still consistent.
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

static CURRENT: AtomicPtr<Heartbeats> = AtomicPtr::new(std::ptr::null_mut());

/// This process's heartbeats, made on first use and again in a forked child.
fn heartbeats() -> &'static Heartbeats {
    let pid = std::process::id();
    loop {
        let current = CURRENT.load(Acquire);
        // SAFETY: `CURRENT` only ever holds null or a leaked, never freed `Heartbeats`.
        if let Some(found) = unsafe { current.as_ref() } {
            if found.pid == pid {
                return found;
            }
        }
        let fresh = Box::into_raw(Box::new(Heartbeats {
            pid,
            registry: Mutex::new(Registry { entries: Vec::new(), next_id: 0, running: false }),
            wake: Condvar::new(),
        }));
        if CURRENT.compare_exchange(current, fresh, AcqRel, Acquire).is_ok() {
            // SAFETY: just leaked above; it is never freed (a parent's copy in a child is kept
            // too: handles inherited by the fork still point at it).
            return unsafe { &*fresh };
        }
        // SAFETY: `fresh` was never published; this thread owns it alone.
        drop(unsafe { Box::from_raw(fresh) });
    }
}

/// A registration: the heartbeat is refreshed until this drops.
pub(crate) struct Beat {
    id: u64,
    owner: &'static Heartbeats,
    _map: Arc<Mapping>,
}

impl Drop for Beat {
    fn drop(&mut self) {
        // A handle inherited through `fork` was registered with the parent's registry, which
        // no thread of this process serves (and whose lock may be held forever): nothing to do.
        if self.owner.pid == std::process::id() {
            self.owner.lock().entries.retain(|e| e.id != self.id);
        }
    }
}

/// Starts refreshing `target` of `segment` (whose heartbeat the caller has just written).
pub(crate) fn register(segment: &Segment, target: Target) -> Beat {
    let period = (segment.heartbeat_timeout() / 4).max(Duration::from_millis(10));
    let owner = heartbeats();
    let mut reg = owner.lock();
    let id = reg.next_id;
    reg.next_id += 1;
    reg.entries.push(Entry {
        id,
        header: NonNull::from(segment.header()),
        map: NonNull::from(&*segment.map),
        target,
        period,
    });
    // Under Miri (threads of one process, judged without heartbeats) no thread is started: Miri
    // requires every thread to end before the test does.
    if !reg.running && !cfg!(miri) {
        // If the thread cannot be started now (out of threads), the next registration tries
        // again; meanwhile only peers in other namespaces, after the timeout, misjudge us.
        reg.running = std::thread::Builder::new().name("tadpole-heartbeat".into()).spawn(move || run(owner)).is_ok();
    }
    drop(reg);
    owner.wake.notify_one();
    Beat { id, owner, _map: segment.map.clone() }
}

fn run(owner: &'static Heartbeats) {
    let mut reg = owner.lock();
    loop {
        if reg.entries.is_empty() {
            reg = owner.wake.wait(reg).unwrap_or_else(|poisoned| poisoned.into_inner());
            continue;
        }
        let now = now_ns();
        for entry in &reg.entries {
            // A ring whose file another process truncated is zeros in this process now (see
            // `sigbus`): nobody can read a heartbeat there. The probe touches the mapping's end,
            // so a truncation this process has not met yet is found here, within a period.
            // SAFETY: see `Entry`: the mapping stays alive while the entry is registered.
            if unsafe { entry.map.as_ref() }.probe_truncated() {
                continue;
            }
            // SAFETY: see `Entry`: the mapping stays alive while the entry is registered.
            let header = unsafe { entry.header.as_ref() };
            refresh(header, entry.target, now);
        }
        let period = reg.entries.iter().map(|e| e.period).min().unwrap_or(DEFAULT_TIMEOUT);
        reg = owner.wake.wait_timeout(reg, period).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
    }
}

fn refresh(header: &SegmentHeader, target: Target, now: u64) {
    match target {
        Target::Creator => header.descriptor.creator_heartbeat_ns.store(now, Relaxed),
        Target::Side(side, word, identity) => {
            let block = match side {
                Side::Producer => &header.producer_attach,
                Side::Consumer => &header.consumer_attach,
            };
            // A side we no longer hold (detached, or taken over after we looked dead) is none of
            // our business: its identity and heartbeat belong to its new owner.
            if block.owner.load(Acquire) != word {
                return;
            }
            if block.identity_owner.load(Relaxed) == word {
                block.heartbeat_ns.store(now, Relaxed);
            } else {
                // Our record was overwritten (by a claim that stalled past its takeover, or a
                // hostile write): write it again.
                publish_identity(block, word, &identity, now);
            }
        }
    }
}

/// Writes the identity record of the owner word `word` (already claimed) and tags it, last,
/// with that word. Readers take the fields only if the tag and the owner word both still read
/// `word` after them (see `crate::read_identity`).
pub(crate) fn publish_identity(block: &AttachBlock, word: u64, id: &Identity, now: u64) {
    // Orders the claim before the field stores: a reader that sees any of them sees the claim
    // too, and so refuses a record read half from an earlier owner.
    fence(Release);
    block.start_time.store(id.start_time, Relaxed);
    block.pid_ns.store(id.pid_ns, Relaxed);
    block.time_ns.store(id.time_ns, Relaxed);
    block.boot_id.store(id.boot_id, Relaxed);
    block.heartbeat_ns.store(now, Relaxed);
    block.identity_owner.store(word, Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreateError, RingBuilder};

    #[test]
    fn hostile_timeouts_are_clamped_and_the_builder_refuses_them() {
        assert_eq!(timeout_from_ms(0), DEFAULT_TIMEOUT);
        assert_eq!(timeout_from_ms(1), MIN_TIMEOUT);
        assert_eq!(timeout_from_ms(u32::MAX), MAX_TIMEOUT);
        assert_eq!(timeout_from_ms(300), Duration::from_millis(300));
        for bad in [Duration::ZERO, MIN_TIMEOUT / 2, MAX_TIMEOUT * 2] {
            let built = RingBuilder::new(4096).heartbeat_timeout(bad).create_private();
            assert!(matches!(built, Err(CreateError::InvalidOptions(_))), "{bad:?}");
        }
        let segment = RingBuilder::new(4096).heartbeat_timeout(Duration::from_millis(300)).create_private().unwrap();
        assert_eq!(segment.heartbeat_timeout(), Duration::from_millis(300));
    }

    #[test]
    fn an_idle_holder_keeps_its_heartbeat_fresh_and_a_dropped_one_stops() {
        let segment = RingBuilder::new(4096).heartbeat_timeout(MIN_TIMEOUT).create_private().unwrap();
        let producer = segment.producer().unwrap();
        let beat = || segment.header().producer_attach.heartbeat_ns.load(Relaxed);
        let first = beat();
        std::thread::sleep(MIN_TIMEOUT);
        let second = beat();
        assert!(second > first, "refreshed without any call on the producer");
        assert!(now_ns() - second < MIN_TIMEOUT.as_nanos() as u64);
        drop(producer);
        let last = beat();
        std::thread::sleep(MIN_TIMEOUT);
        assert_eq!(beat(), last, "no heartbeat for a side no longer held");
    }

    /// Attaches a producer in a fresh ring and reports (as an exit code) whether its heartbeat
    /// advances with no call on it: 0 yes, 1 no.
    fn heartbeat_advances_here() -> i32 {
        let Ok(segment) = RingBuilder::new(4096).heartbeat_timeout(MIN_TIMEOUT).create_private() else { return 2 };
        let Ok(_producer) = segment.producer() else { return 3 };
        let beat = || segment.header().producer_attach.heartbeat_ns.load(Relaxed);
        let first = beat();
        std::thread::sleep(MIN_TIMEOUT * 3);
        if beat() > first { 0 } else { 1 }
    }

    #[test]
    fn a_forked_child_gets_its_own_heartbeat_thread_even_if_forked_under_the_registry_lock() {
        // This process's heartbeat thread runs (as in a parent that attached before forking)...
        let segment = RingBuilder::new(4096).heartbeat_timeout(MIN_TIMEOUT).create_private().unwrap();
        let _producer = segment.producer().unwrap();
        // ...and the fork happens while the registry lock is held, as when it forks in the middle
        // of a refresh: the child inherits a lock nobody will ever release.
        let held = heartbeats().lock();
        // SAFETY: the child runs only this crate's attach path (glibc's allocator and thread
        // creation are fork-safe) and leaves with `_exit`, running no destructor or atexit hook.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = heartbeat_advances_here();
            // SAFETY: ends the forked child at once, as above.
            unsafe { libc::_exit(code) };
        }
        drop(held);
        assert!(pid > 0, "fork failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; `status` is a valid out-parameter.
            let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if done == pid {
                break;
            }
            if std::time::Instant::now() > deadline {
                // SAFETY: our own child, still unreaped, so the pid cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SAFETY: as above.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                panic!("the forked child hung attaching (deadlocked on the inherited registry lock)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child's heartbeat did not advance (1) or it could not attach");
    }
}
