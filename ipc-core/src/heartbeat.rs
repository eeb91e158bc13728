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
    target: Target,
    period: Duration,
}

// SAFETY: `header` points into a mapping that the entry's `Beat` keeps alive (it holds an
// `Arc<Mapping>`) and that outlives the entry: `Beat::drop` removes the entry under the registry
// lock before the `Arc` drops. The header holds only atomics.
unsafe impl Send for Entry {}

struct Registry {
    entries: Vec<Entry>,
    next_id: u64,
    running: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { entries: Vec::new(), next_id: 0, running: false });
static WAKE: Condvar = Condvar::new();

fn registry() -> MutexGuard<'static, Registry> {
    // Nothing that holds the lock panics; if something did, the list is still consistent.
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A registration: the heartbeat is refreshed until this drops.
pub(crate) struct Beat {
    id: u64,
    _map: Arc<Mapping>,
}

impl Drop for Beat {
    fn drop(&mut self) {
        registry().entries.retain(|e| e.id != self.id);
    }
}

/// Starts refreshing `target` of `segment` (whose heartbeat the caller has just written).
pub(crate) fn register(segment: &Segment, target: Target) -> Beat {
    let period = (segment.heartbeat_timeout() / 4).max(Duration::from_millis(10));
    let mut reg = registry();
    let id = reg.next_id;
    reg.next_id += 1;
    reg.entries.push(Entry { id, header: NonNull::from(segment.header()), target, period });
    if !reg.running {
        // If the thread cannot be started now (out of threads), the next registration tries
        // again; meanwhile only peers in other namespaces, after the timeout, misjudge us.
        reg.running = std::thread::Builder::new().name("tadpole-heartbeat".into()).spawn(run).is_ok();
    }
    drop(reg);
    WAKE.notify_one();
    Beat { id, _map: segment.map.clone() }
}

fn run() {
    let mut reg = registry();
    loop {
        if reg.entries.is_empty() {
            reg = WAKE.wait(reg).unwrap_or_else(|poisoned| poisoned.into_inner());
            continue;
        }
        let now = now_ns();
        for entry in &reg.entries {
            // SAFETY: see `Entry`: the mapping stays alive while the entry is registered.
            let header = unsafe { entry.header.as_ref() };
            refresh(header, entry.target, now);
        }
        let period = reg.entries.iter().map(|e| e.period).min().unwrap_or(DEFAULT_TIMEOUT);
        reg = WAKE.wait_timeout(reg, period).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
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
}
