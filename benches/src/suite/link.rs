//! What every compared transport provides, and the two peer loops that run on top of it.
//!
//! A [`Link`] is one process's end of a two-way message channel carrying fixed-size messages
//! whose first 8 bytes are a sequence number. The measuring side and its peer each hold one end;
//! the peer runs [`echo_loop`] (latency: send every message back) or [`sink_loop`] (throughput:
//! check every message, answer each end-of-run marker with the count received). The loops are
//! the same for every transport, so the rows differ only in the transport.
//!
//! Control messages are ordinary messages with a reserved sequence number ([`END_OF_RUN`],
//! [`QUIT`]), so no transport needs a side channel and a peer never depends on how its
//! transport reports a closed peer.

use std::thread::JoinHandle;

use crate::BenchResult;
use crate::peer::Peer;

/// Sequence number of the message ending a throughput run; the sink answers with its count.
pub const END_OF_RUN: u64 = u64::MAX;
/// Sequence number of the message that stops a peer (not echoed, not counted).
pub const QUIT: u64 = u64::MAX - 1;

/// What a message too short to hold a sequence number reads as: no run reaches it, so the
/// check of the expected number fails.
const NO_SEQ: u64 = u64::MAX - 2;

/// A received message, as the transport hands it out.
pub enum Msg<'a> {
    /// The message's bytes as sent (sequence number first).
    Bytes(&'a [u8]),
    /// A typed message: its sequence number field and the body that carries the rest.
    Parts { seq: u64, rest: &'a [u8] },
}

impl Msg<'_> {
    /// Reads only the sequence number.
    #[inline]
    pub fn seq(&self) -> u64 {
        match self {
            Msg::Bytes(b) => b.get(..8).map_or(NO_SEQ, |h| u64::from_le_bytes(h.try_into().unwrap_or([0; 8]))),
            Msg::Parts { seq, .. } => *seq,
        }
    }

    /// Length of the message as sent.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Msg::Bytes(b) => b.len(),
            Msg::Parts { rest, .. } => 8 + rest.len(),
        }
    }

    /// Copies the whole message into `out`; false when the lengths differ.
    #[inline]
    pub fn copy_to(&self, out: &mut [u8]) -> bool {
        if self.len() != out.len() {
            return false;
        }
        match self {
            Msg::Bytes(b) => out.copy_from_slice(b),
            Msg::Parts { seq, rest } => {
                out[..8].copy_from_slice(&seq.to_le_bytes());
                out[8..].copy_from_slice(rest);
            }
        }
        true
    }
}

/// One process's end of a two-way channel of fixed-size messages.
pub trait Link {
    /// Sends `msg` (at least 8 bytes, sequence number first), waiting while the channel is full.
    fn send(&mut self, msg: &[u8]) -> BenchResult<()>;

    /// Waits for the next message and hands it to `f`.
    fn recv<R>(&mut self, f: impl FnOnce(Msg<'_>) -> R) -> BenchResult<R>;

    /// Sends messages numbered `first..end`, each `payload` stamped with its number. Transports
    /// with a batch API override this to publish many messages at once.
    fn send_run(&mut self, payload: &mut [u8], first: u64, end: u64) -> BenchResult<()> {
        for seq in first..end {
            stamp(payload, seq);
            self.send(payload)?;
        }
        Ok(())
    }

    /// Waits for at least one message and hands each message available to `f` (at least one,
    /// in order). Transports with a batch API override this to take many at once.
    fn recv_burst(&mut self, f: impl FnMut(Msg<'_>)) -> BenchResult<()> {
        self.recv(f)
    }

    /// Receives one message and, unless it is [`QUIT`], sends it back; returns its sequence
    /// number. Transports that can answer from the received message without copying it out
    /// first (a ring guard, an owned buffer) override this, as their users would.
    fn echo(&mut self, buf: &mut [u8]) -> BenchResult<u64> {
        let (seq, fits) = self.recv(|m| (m.seq(), m.copy_to(buf)))?;
        if !fits {
            return Err(format!("echo: message {seq} has the wrong length").into());
        }
        if seq != QUIT {
            self.send(buf)?;
        }
        Ok(seq)
    }
}

/// Fills `buf` as message `seq`: the number, then whatever was there.
#[inline]
pub fn stamp(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
}

/// A message of `size` bytes with a recognisable pattern after the sequence number.
pub fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

/// The peer's side of a latency row: echoes until [`QUIT`]; returns how many it echoed.
pub fn echo_loop<L: Link>(link: &mut L, size: usize) -> BenchResult<u64> {
    let mut buf = vec![0u8; size];
    let mut echoed = 0;
    loop {
        if link.echo(&mut buf)? == QUIT {
            return Ok(echoed);
        }
        echoed += 1;
    }
}

/// The peer's side of a throughput row. Every message's sequence number must be the next one;
/// with `copy` the whole message is first copied into a private buffer and the number read
/// from the copy, otherwise only the number is read in place. [`END_OF_RUN`] is answered with
/// a message carrying the count received since the previous one. Returns the total count.
pub fn sink_loop<L: Link>(link: &mut L, size: usize, copy: bool) -> BenchResult<u64> {
    let mut sink = vec![0u8; size];
    let mut reply = pattern(size);
    let (mut expected, mut in_run, mut total) = (None::<u64>, 0u64, 0u64);
    loop {
        let (mut quit, mut reply_due, mut fault) = (false, false, None);
        link.recv_burst(|m| {
            let seq = if copy {
                if !m.copy_to(&mut sink) {
                    fault.get_or_insert_with(|| format!("sink: a message of {} bytes, {size} expected", m.len()));
                    return;
                }
                u64::from_le_bytes(std::hint::black_box(&sink)[..8].try_into().unwrap_or([0; 8]))
            } else {
                m.seq()
            };
            match seq {
                QUIT => quit = true,
                END_OF_RUN => reply_due = true,
                _ => {
                    // The measuring side may start anywhere (it numbers messages across runs).
                    let due = *expected.get_or_insert(seq);
                    if seq != due {
                        fault.get_or_insert_with(|| format!("sink: message {seq} arrived where {due} was due"));
                    }
                    expected = Some(seq + 1);
                    in_run += 1;
                    total += 1;
                }
            }
        })?;
        if let Some(fault) = fault {
            return Err(fault.into());
        }
        // The measuring side waits for the answer before sending more, so a marker is always
        // the last message of its burst.
        if reply_due {
            stamp(&mut reply, in_run);
            link.send(&reply)?;
            in_run = 0;
        }
        if quit {
            return Ok(total);
        }
    }
}

/// The other side of a row: a re-executed process, or (for in-process references) a thread.
pub enum PeerHandle {
    Process(Peer),
    Thread(JoinHandle<BenchResult<u64>>),
}

impl PeerHandle {
    /// Waits for the peer to stop; returns the count its loop returned.
    pub fn finish(self) -> BenchResult<u64> {
        match self {
            PeerHandle::Process(p) => p.finish(),
            PeerHandle::Thread(t) => t.join().map_err(|_| "peer thread panicked")?,
        }
    }
}
