//! The blocking floor: two processes, pinned like the ring's, bouncing one 32-bit word of named
//! shared memory and sleeping on it with raw `futex` calls between turns. The parent stores an
//! odd number and wakes the word; the peer, asleep in `FUTEX_WAIT`, wakes, stores the next even
//! one and wakes the parent, asleep in `FUTEX_WAIT` too. Neither spins first, so every turn is a
//! store, a `FUTEX_WAKE` and a wake-up from `FUTEX_WAIT`: the least a blocking transport can pay
//! to hand one message to a sleeping process and get one back (`tadpole-waitset-block` is
//! measured against it).
//!
//! Like that row, each round trip starts after the parent has been idle for
//! [`IDLE_BEFORE_PING`](super::measure::IDLE_BEFORE_PING), and is timed on its own.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::peer::{Peer, signal_ready};
use crate::shared_page::SharedPage;
use crate::{BenchResult, unique_name};

/// Written by the parent to stop the peer (odd, so the peer looks at it).
const STOP: u32 = u32::MAX;
/// Offset of the word: the start of the page.
const WORD: usize = 0;
/// Longest one wait may sleep before it looks again (a peer that died is noticed by the parent).
const SLICE: Duration = Duration::from_millis(100);
/// Longest a round trip may take before the parent gives up on the peer.
const PATIENCE: Duration = Duration::from_secs(5);

/// Sleeps while `word` holds `expected` (up to `slice`). Returns at once if it does not.
fn futex_wait(word: &AtomicU32, expected: u32, slice: Duration) {
    let ts = libc::timespec { tv_sec: slice.as_secs() as libc::time_t, tv_nsec: slice.subsec_nanos() as libc::c_long };
    // SAFETY: `word` is a live, 4-aligned u32 in a shared mapping that outlives the call (not
    // FUTEX_PRIVATE: the two processes share it); the kernel only reads it and the timespec.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes a process sleeping on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE uses the address only as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

/// The parent's end of a running futex floor peer.
pub struct FutexFloor {
    page: SharedPage,
    peer: Option<Peer>,
    /// Next odd value to send.
    next: u32,
}

impl FutexFloor {
    /// Creates the page, starts the peer on the other CPU and unlinks the page's name.
    pub fn start() -> BenchResult<FutexFloor> {
        let name = unique_name("floor-futex");
        let mut page = SharedPage::create(&name)?;
        let peer = Peer::spawn("suite-floor-futex", &[name]);
        page.unlink();
        Ok(FutexFloor { page, peer: Some(peer?), next: 1 })
    }

    fn round_trip(&mut self) -> BenchResult<()> {
        let word = self.page.word32(WORD);
        let v = self.next;
        word.store(v, Release);
        futex_wake(word);
        let began = Instant::now();
        loop {
            let now = word.load(Acquire);
            if now == v + 1 {
                break;
            }
            if began.elapsed() > PATIENCE {
                return Err(format!("floor-futex: no answer to round trip {} within {PATIENCE:?}", v / 2 + 1).into());
            }
            futex_wait(word, now, SLICE);
        }
        self.next = v + 2;
        Ok(())
    }

    /// Records round trips into `rtt` for `duration` (and at least
    /// [`MIN_IDLE_SAMPLES`](super::measure::MIN_IDLE_SAMPLES)), each started after `idle`
    /// without traffic and timed on its own (two clock reads).
    pub fn record_for(&mut self, duration: Duration, idle: Duration, rtt: &mut Histogram<u64>) -> BenchResult<()> {
        let start = Instant::now();
        loop {
            super::measure::idle_for(idle);
            let t0 = Instant::now();
            self.round_trip()?;
            rtt.saturating_record(t0.elapsed().as_nanos() as u64);
            if start.elapsed() >= duration && rtt.len() >= super::measure::MIN_IDLE_SAMPLES {
                return Ok(());
            }
        }
    }

    /// Stops the peer and checks it answered every round trip.
    pub fn stop(mut self) -> BenchResult<()> {
        let word = self.page.word32(WORD);
        word.store(STOP, Release);
        futex_wake(word);
        let answered = self.peer.take().ok_or("floor-futex peer already stopped")?.finish()?;
        let sent = u64::from(self.next / 2);
        if answered != sent {
            return Err(format!("floor-futex peer answered {answered} round trips, {sent} sent").into());
        }
        Ok(())
    }
}

impl Drop for FutexFloor {
    fn drop(&mut self) {
        // Lets a peer still waiting exit normally; `Peer::drop` kills it otherwise.
        let word = self.page.word32(WORD);
        word.store(STOP, Release);
        futex_wake(word);
    }
}

/// The peer's side: sleep until the word is the next odd value, answer with the next even one
/// and wake the parent, until [`STOP`].
pub(crate) fn peer_main(args: &[String]) -> BenchResult<u64> {
    let name = args.first().ok_or("floor-futex peer: missing page name")?;
    let page = SharedPage::open(name)?;
    let word = page.word32(WORD);
    signal_ready()?;
    let mut expect = 1u32;
    loop {
        let v = word.load(Acquire);
        if v == STOP {
            return Ok(u64::from(expect / 2));
        }
        if v == expect {
            word.store(v + 1, Release);
            futex_wake(word);
            expect += 2;
        } else {
            futex_wait(word, v, SLICE);
        }
    }
}
