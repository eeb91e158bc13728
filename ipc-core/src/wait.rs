//! How a side waits when the ring is empty (consumer) or full (producer), and the futex
//! doorbell that lets a sleeping side be woken without making a spinning peer pay a syscall.
//!
//! The doorbell is a Dekker handshake: the waiter stores `sleeping = 1`, issues a full fence and
//! re-checks the ring before `futex_wait`; the other side publishes, issues a full fence and
//! reads `sleeping`, making the wake syscall only when it is set. One of the two always sees the
//! other's store, so no wake-up is lost, and a peer that never sleeps costs one fence and one
//! load of a line it keeps in cache.

use std::time::{Duration, Instant};

use crate::sync::atomic::{AtomicU32, Ordering, fence};

/// What a waiting call does between polls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Poll continuously (no pause hint, no syscall): lowest latency, one core fully busy.
    BusySpin,
    /// Spin with exponential backoff, then yield the CPU between polls
    /// (`crossbeam_utils::Backoff`). Latency of a few microseconds once yielding.
    #[default]
    SpinThenYield,
    /// Spin briefly, then sleep on a futex until the peer rings the doorbell. Frees the core;
    /// waking costs a syscall on the peer and a scheduler wake-up (tens of microseconds on a VM).
    Block,
}

/// How often a waiting side looks at its peer's liveness (a `kill(pid, 0)` and a `/proc` read).
pub(crate) const LIVENESS_INTERVAL: Duration = Duration::from_millis(10);
/// Longest single futex sleep, so a peer that dies without ringing is noticed.
pub(crate) const MAX_SLEEP: Duration = Duration::from_millis(20);

/// A full (sequentially consistent) fence: the store-load barrier of the doorbell handshake.
#[inline]
pub(crate) fn full_fence() {
    fence(Ordering::SeqCst);
}

/// Sleeps while `*word == expected`, at most `timeout`. Spurious returns are fine: callers loop.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, 4-byte aligned atomic in a MAP_SHARED mapping (not PRIVATE, so
    // the wait keys on the physical page and works across processes); `ts` outlives the call.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes every sleeper on `word`.
#[cfg(not(loom))]
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE only reads the address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(loom)]
pub(crate) fn futex_wait(_word: &AtomicU32, _expected: u32, _timeout: Duration) {
    loom::thread::yield_now();
}

#[cfg(loom)]
pub(crate) fn futex_wake(_word: &AtomicU32) {}

/// What ringing a doorbell did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rang {
    /// The peer was not asleep.
    Nobody,
    /// The peer slept on the futex and was woken.
    Futex,
    /// The peer sleeps on its pollable doorbell of this id: the caller sends it a datagram
    /// (`pollable::BellRinger`).
    Pollable(u64),
}

impl Rang {
    /// Whether a sleeper was found.
    pub(crate) fn woke(self) -> bool {
        self != Rang::Nobody
    }
}

/// Rings the doorbell if the peer sleeps on it. Call after publishing (a commit or a release).
/// A peer that does not use the blocking strategy costs one relaxed load here: no fence.
#[inline]
pub(crate) fn ring_doorbell(bell: &crate::layout::DoorbellBlock) -> Rang {
    if bell.blocking.load(Ordering::Relaxed) == 0 {
        return Rang::Nobody;
    }
    ring_blocking_doorbell(bell)
}

/// The handshake itself, kept out of line: inlined into every commit and release it would
/// only take instruction-cache room from the spinning case.
#[cold]
fn ring_blocking_doorbell(bell: &crate::layout::DoorbellBlock) -> Rang {
    full_fence();
    if bell.sleeping.load(Ordering::Relaxed) == 0 {
        return Rang::Nobody;
    }
    // Acquire: an armed pollable sleeper stored its doorbell's id before arming (release).
    match bell.sleeping.swap(0, Ordering::Acquire) {
        0 => Rang::Nobody,
        crate::layout::SLEEPING_ON_FD => Rang::Pollable(bell.pollable_id.load(Ordering::Relaxed)),
        _ => {
            futex_wake(&bell.sleeping);
            Rang::Futex
        }
    }
}

/// Raises or lowers a side's blocking flag when its wait strategy changes.
pub(crate) fn set_blocking(bell: &crate::layout::DoorbellBlock, strategy: WaitStrategy) {
    bell.blocking.store(u32::from(strategy == WaitStrategy::Block), Ordering::Relaxed);
    full_fence();
}

/// First sleep of a waiting call: short, because a peer that published just before it saw our
/// blocking flag may not have rung (see `ring_doorbell`); later sleeps are `MAX_SLEEP`.
const FIRST_SLEEP: Duration = Duration::from_micros(200);

/// State of one waiting call: backoff, deadline, and when to look at the peer's liveness.
pub(crate) struct Waiter {
    strategy: WaitStrategy,
    deadline: Option<Instant>,
    backoff: crossbeam_utils::Backoff,
    polls: u32,
    next_liveness: Option<Instant>,
    slept: bool,
}

/// What the caller should do after a failed poll.
pub(crate) enum WaitStep {
    /// Poll again.
    Retry,
    /// The deadline passed.
    TimedOut,
    /// Time to check whether the peer is still alive, then poll again.
    CheckPeer,
}

impl Waiter {
    pub(crate) fn new(strategy: WaitStrategy, timeout: Option<Duration>) -> Waiter {
        Waiter {
            strategy,
            // A timeout too large to add to the clock is no deadline at all.
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            backoff: crossbeam_utils::Backoff::new(),
            polls: 0,
            next_liveness: None,
            slept: false,
        }
    }

    /// Waits a little after a failed poll. `sleeping`/`still_blocked` implement the doorbell for
    /// [`WaitStrategy::Block`]: the flag is raised, then the condition re-checked before sleeping.
    pub(crate) fn pause(&mut self, sleeping: &AtomicU32, still_blocked: impl FnOnce() -> bool) -> WaitStep {
        self.polls = self.polls.wrapping_add(1);
        // Reading the clock costs ~20 ns: only every 256 polls while spinning with backoff. A
        // busy-spinning consumer calls this once per burst of header loads, so every time.
        let sleepy = self.strategy == WaitStrategy::Block && self.backoff.is_completed();
        if sleepy || self.strategy == WaitStrategy::BusySpin || self.polls % 256 == 0 {
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                return WaitStep::TimedOut;
            }
            match self.next_liveness {
                None => self.next_liveness = Some(now + LIVENESS_INTERVAL),
                Some(t) if now >= t => {
                    self.next_liveness = Some(now + LIVENESS_INTERVAL);
                    return WaitStep::CheckPeer;
                }
                Some(_) => {}
            }
            if sleepy {
                let longest = if self.slept { MAX_SLEEP } else { FIRST_SLEEP };
                self.slept = true;
                let slice = self.deadline.map_or(longest, |d| d.saturating_duration_since(now).min(longest));
                sleeping.store(crate::layout::SLEEPING_ON_FUTEX, Ordering::Relaxed);
                full_fence();
                if still_blocked() {
                    futex_wait(sleeping, 1, slice);
                }
                sleeping.store(0, Ordering::Relaxed);
                return WaitStep::Retry;
            }
        }
        match self.strategy {
            // No pause instruction: it costs tens of cycles of reaction time on some cores.
            WaitStrategy::BusySpin => {}
            WaitStrategy::SpinThenYield | WaitStrategy::Block => self.backoff.snooze(),
        }
        WaitStep::Retry
    }
}

/// Polls between two looks at the coarse clock on a polling side's slow path.
const PEER_CHECK_POLLS: u32 = 64;
/// Least time between two liveness checks of the peer by a polling side.
const PEER_CHECK_INTERVAL_MS: u64 = 5;

/// Milliseconds of a coarse monotonic clock: `CLOCK_MONOTONIC_COARSE` is read from the vDSO
/// (no syscall, a few nanoseconds) and ticks every 1–10 ms, which is all a liveness schedule
/// needs.
#[cfg(not(any(loom, miri)))]
pub(crate) fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-parameter; the clock id is a constant Linux supports.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1000).wrapping_add(ts.tv_nsec as u64 / 1_000_000)
}

#[cfg(any(loom, miri))]
pub(crate) fn coarse_now_ms() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a side that polls (`try_` calls, short timeouts in a loop) looks at its peer's
/// liveness: every [`PEER_CHECK_POLLS`] fruitless polls it reads the coarse clock, and it checks
/// the peer when [`PEER_CHECK_INTERVAL_MS`] have passed since the last check. A death is thus
/// seen within about 64 polls plus 5 ms plus one coarse tick, and the syscalls of a check
/// (`kill`, a `/proc` read) happen at most 200 times a second however fast the caller polls.
#[derive(Default)]
pub(crate) struct PeerSchedule {
    polls: u32,
    next_ms: u64,
}

impl PeerSchedule {
    /// One more fruitless poll: whether the peer should be checked now.
    #[inline]
    pub(crate) fn due(&mut self) -> bool {
        self.polls = self.polls.wrapping_add(1);
        self.polls % PEER_CHECK_POLLS == 0 && self.due_by_clock()
    }

    /// Whether the interval has passed since the last check (the clock alone, for calls that
    /// poll rarely, such as a wait that just timed out).
    #[cold]
    pub(crate) fn due_by_clock(&mut self) -> bool {
        let now = coarse_now_ms();
        if now >= self.next_ms {
            self.next_ms = now + PEER_CHECK_INTERVAL_MS;
            return true;
        }
        false
    }
}
