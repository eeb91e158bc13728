//! The hardware floor: two processes, pinned like the ring's, bouncing one cache line of named
//! shared memory. The parent stores an odd number, the peer answers with the next even one;
//! each round trip moves the line to the peer and back. Both sides poll with plain loads and no
//! pause hint, so this is the fastest the two CPUs can talk, not a model of the ring.

use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::peer::{Peer, signal_ready};
use crate::shared_page::SharedPage;
use crate::stats::{OneWay, rtt_histogram};
use crate::{BenchResult, unique_name};

/// Written by the parent to stop the peer (odd, so the peer looks at it).
const STOP: u64 = u64::MAX;
/// Offset of the bounced word: the start of the page, one cache line.
const WORD: usize = 0;

/// The parent's end of a running floor peer.
pub struct FloorPeer {
    page: SharedPage,
    peer: Option<Peer>,
    /// Next odd value to send.
    next: u64,
}

impl FloorPeer {
    /// Creates the page, starts the peer on the other CPU and unlinks the page's name.
    pub fn start() -> BenchResult<FloorPeer> {
        let name = unique_name("floor");
        let mut page = SharedPage::create(&name)?;
        let peer = Peer::spawn("floor", &[name])?;
        page.unlink();
        Ok(FloorPeer { page, peer: Some(peer), next: 1 })
    }

    #[inline]
    fn round_trip(&mut self) {
        let word = self.page.word(WORD);
        let v = self.next;
        word.store(v, Release);
        while word.load(Acquire) != v + 1 {}
        self.next = v + 2;
    }

    /// Total time of `n` round trips, one clock read at each end.
    pub fn time_round_trips(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.round_trip();
        }
        start.elapsed()
    }

    /// Records round trips into `rtt` for `duration`, one clock read per round trip (each
    /// interval holds exactly one round trip and one clock read).
    pub fn record_for(&mut self, duration: Duration, rtt: &mut Histogram<u64>) {
        let start = Instant::now();
        let mut prev = start;
        loop {
            self.round_trip();
            let now = Instant::now();
            rtt.saturating_record((now - prev).as_nanos() as u64);
            prev = now;
            if now - start >= duration {
                break;
            }
        }
    }

    /// Stops the peer and checks it answered every round trip.
    pub fn stop(mut self) -> BenchResult<u64> {
        self.page.word(WORD).store(STOP, Release);
        let answered = self.peer.take().ok_or("floor peer already stopped")?.finish()?;
        let sent = self.next / 2;
        if answered != sent {
            return Err(format!("floor peer answered {answered} round trips, {sent} sent").into());
        }
        Ok(answered)
    }
}

impl Drop for FloorPeer {
    fn drop(&mut self) {
        // Lets a peer still spinning exit normally; `Peer::drop` kills it otherwise.
        self.page.word(WORD).store(STOP, Release);
    }
}

/// A floor probe: starts a peer, warms up for 1 ms, records for `duration`, stops the peer.
pub fn probe(duration: Duration) -> BenchResult<OneWay> {
    let mut floor = FloorPeer::start()?;
    let mut rtt = rtt_histogram();
    floor.record_for(Duration::from_millis(1), &mut rtt);
    rtt.reset();
    floor.record_for(duration, &mut rtt);
    floor.stop()?;
    Ok(OneWay::from_rtt(&rtt))
}

/// The peer's side: answer every odd value with the next even one until [`STOP`].
pub(crate) fn peer_main(args: &[String]) -> BenchResult<u64> {
    let name = args.first().ok_or("floor peer: missing page name")?;
    let page = SharedPage::open(name)?;
    let word = page.word(WORD);
    signal_ready()?;
    let mut expect = 1u64;
    loop {
        let v = word.load(Acquire);
        if v == STOP {
            return Ok(expect / 2);
        }
        if v == expect {
            word.store(v + 1, Release);
            expect += 2;
        }
    }
}
