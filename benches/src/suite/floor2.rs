//! The floor of a two-line message: the sender writes a 64-byte payload line, then a flag in a
//! second line; the receiver waits for the flag, reads the payload line, and answers the same
//! way on two lines of its own. The smallest a message that does not share its line with its
//! "published" flag can cost, to compare a ring's 64-byte message with (its header is the flag).
//!
//! ```text
//! line 0: ping payload (8 words, the first is the sequence number)   line 1: ping flag
//! line 2: pong payload                                               line 3: pong flag
//! ```

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::peer::{Peer, signal_ready};
use crate::shared_page::SharedPage;
use crate::{BenchResult, unique_name};

const LINE: usize = 64;
const WORDS: usize = LINE / 8;
const PING: usize = 0;
const PING_FLAG: usize = LINE;
const PONG: usize = 2 * LINE;
const PONG_FLAG: usize = 3 * LINE;
/// Written to the ping flag to stop the peer.
const STOP: u64 = u64::MAX;

/// The measuring side of a running two-line floor peer.
pub struct Floor2 {
    page: SharedPage,
    peer: Option<Peer>,
    seq: u64,
}

impl Floor2 {
    /// Creates the page, starts the peer on the other CPU and unlinks the page's name.
    pub fn start() -> BenchResult<Floor2> {
        let name = unique_name("floor2");
        let mut page = SharedPage::create(&name)?;
        let peer = Peer::spawn("suite-floor2", &[name]);
        page.unlink();
        Ok(Floor2 { page, peer: Some(peer?), seq: 0 })
    }

    #[inline]
    fn round_trip(&mut self) -> BenchResult<()> {
        self.seq += 1;
        let seq = self.seq;
        for w in 0..WORDS {
            self.page.word(PING + 8 * w).store(seq + w as u64, Relaxed);
        }
        self.page.word(PING_FLAG).store(seq, Release);
        while self.page.word(PONG_FLAG).load(Acquire) != seq {}
        let mut sum = 0u64;
        for w in 0..WORDS {
            sum = sum.wrapping_add(self.page.word(PONG + 8 * w).load(Relaxed));
        }
        let expected = (0..WORDS as u64).fold(0u64, |a, w| a.wrapping_add(seq + w));
        if sum != expected {
            return Err(format!("floor-2line: round trip {seq} read a torn payload").into());
        }
        Ok(())
    }

    /// Records round trips into `rtt` for `duration`, one clock read per round trip.
    pub fn record_for(&mut self, duration: Duration, rtt: &mut Histogram<u64>) -> BenchResult<()> {
        let start = Instant::now();
        let mut prev = start;
        loop {
            self.round_trip()?;
            let now = Instant::now();
            rtt.saturating_record((now - prev).as_nanos() as u64);
            prev = now;
            if now - start >= duration {
                return Ok(());
            }
        }
    }

    /// Stops the peer and checks it answered every round trip.
    pub fn stop(mut self) -> BenchResult<()> {
        self.page.word(PING_FLAG).store(STOP, Release);
        let answered = self.peer.take().ok_or("floor-2line peer already stopped")?.finish()?;
        if answered != self.seq {
            return Err(format!("floor-2line peer answered {answered} round trips, {} sent", self.seq).into());
        }
        Ok(())
    }
}

impl Drop for Floor2 {
    fn drop(&mut self) {
        self.page.word(PING_FLAG).store(STOP, Release);
    }
}

/// The peer's side: copy each ping payload line to the pong line, then raise the pong flag.
pub(crate) fn peer_main(args: &[String]) -> BenchResult<u64> {
    let name = args.first().ok_or("floor-2line peer: missing page name")?;
    let page = SharedPage::open(name)?;
    signal_ready()?;
    let mut expect = 1u64;
    loop {
        let flag = page.word(PING_FLAG).load(Acquire);
        if flag == STOP {
            return Ok(expect - 1);
        }
        if flag == expect {
            for w in 0..WORDS {
                page.word(PONG + 8 * w).store(page.word(PING + 8 * w).load(Relaxed), Relaxed);
            }
            page.word(PONG_FLAG).store(flag, Release);
            expect += 1;
        }
    }
}
