//! Shared-memory single-producer/single-consumer rings for processes on one host.
//!
//! A [`Segment`] holds one ring: a page of header (positions, attachments, counters) and a
//! power-of-two data region of variable-length records. One [`Producer`] and one [`Consumer`],
//! in the same or different processes, exchange messages through it synchronised by acquire and
//! release atomics only: no locks, no syscalls, no allocation on the fast path. The memory
//! format is drawn in [`layout`].
//!
//! ```
//! use ipc_core::{RingBuilder, Segment};
//!
//! // Process A creates the ring and produces.
//! let created = RingBuilder::new(1 << 20).create_named(&format!("doc-example-{}", std::process::id()))?;
//! let mut producer = created.producer()?;
//!
//! // Process B (here the same one) opens it by name and consumes.
//! let opened = Segment::open(created.name().unwrap())?;
//! let mut consumer = opened.consumer()?;
//!
//! producer.send(b"order 42")?;
//! assert_eq!(&*consumer.recv()?, b"order 42");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate knows nothing of message formats or networks; `schemas` and `ipc-zmq` build on it.
//!
//! # Truncated named rings
//!
//! Any process that can open a named ring's file (`/dev/shm/tadpole.<name>`) can shrink it, and
//! touching a mapping past a file's end raises `SIGBUS`, which kills by default. This crate
//! installs a process-wide `SIGBUS` handler with its first mapping of a file: a fault inside one
//! of its mappings maps zero-filled memory over that whole ring, in this process, and the access
//! runs again on the zeros (what Wayland compositors do for `wl_shm` pools); any other `SIGBUS`
//! goes to the action installed before. The ring is then dead, and every handle says so at its
//! next liveness check: [`SegmentFault::Truncated`] (producer, attach),
//! [`CorruptReason::Truncated`] (consumer), [`ObserveError::Truncated`], and
//! [`Segment::was_truncated`]. A consumer never hands out zeros as a record; a payload being
//! read when it happens may read as zeros, which `was_truncated` after the copy tells. A program
//! that installs a `SIGBUS` handler of its own after this crate mapped a named ring must chain
//! to the one it replaces. Sealed rings ([`RingBuilder::create_anonymous`]) cannot shrink. The
//! mechanism and its limits are described in the source of the `sigbus` module.

// Under `--cfg loom` only the pieces with a loom model are built: the record format and the
// lease queue, over loom's atomics (see `loom_tests`).
#![cfg_attr(loom, allow(dead_code, unused_imports))]

pub mod layout;
mod lease;
#[cfg(all(loom, test))]
mod loom_tests;
mod sync;

#[cfg(not(loom))]
mod consumer;
#[cfg(not(loom))]
mod fdpass;
#[cfg(not(loom))]
mod heartbeat;
#[cfg(not(loom))]
mod liveness;
#[cfg(not(loom))]
mod observer;
#[cfg(not(loom))]
mod pollable;
#[cfg(not(loom))]
mod producer;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
mod shm;
#[cfg(not(loom))]
mod sigbus;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod wait;
#[cfg(not(loom))]
mod waitset;

#[cfg(not(loom))]
pub use api::*;

/// The public API over shared memory (everything but the loom model).
#[cfg(not(loom))]
mod api {
    pub use crate::consumer::{
        Consumer, DeadLetterReason, LeaseError, LeaseRefused, LeasesOutstanding, ReadBatch, ReadGuard, Record,
        RecvError, RecvTimeoutError, ReleaseError, ReleaseMode, SpanIter, TryRecvError,
    };
    pub use crate::fdpass::{ReceiveError, SegmentServer, ShareError};
    pub use crate::layout::CorruptReason;
    pub use crate::lease::{BatchLease, Lease};
    pub use crate::liveness::{ProcessId, process_start_time};
    pub use crate::observer::{ObserveError, Observed, Observer};
    pub use crate::producer::{
        Frontier, OwnedWriteGrant, Producer, ReserveOwnedError, SendError, SendTimeoutError, TrySendError, WriteBatch,
        WriteGrant,
    };
    pub use crate::segment::{CreateError, OpenError, PayloadAlign, RingBuilder, Segment, SegmentFault};
    pub use crate::shm::{MAX_NAME_LEN, NAME_PREFIX};
    pub use crate::stats::{ConsumerCounters, ProducerCounters, RingStatus, StatusReadError};
    pub use crate::wait::WaitStrategy;
    pub use crate::waitset::{RingKey, WaitSet};

    use crate::heartbeat::{self, Beat};
    use crate::layout::{AttachBlock, OWNER_DETACHED, SegmentHeader};
    use crate::liveness::{self, Identity, Verdict, judge, judge_unrecorded, now_ns};
    use crate::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
    use crate::sync::atomic::fence;

    /// Which end of a ring.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Side {
        /// The writer.
        Producer,
        /// The reader.
        Consumer,
    }

    /// Why a producer or consumer handle could not be had.
    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum AttachError {
        /// Another live process (or another handle in this process) holds this side, or one
        /// that cannot be proven dead: a process in a PID namespace this one cannot see whose
        /// heartbeat is fresh (see [`RingBuilder::heartbeat_timeout`]).
        #[error("{side:?} side is held by live process {owner:?}")]
        Busy {
            /// The side asked for.
            side: Side,
            /// Who holds it.
            owner: ProcessId,
        },
        /// The ring's positions are impossible.
        #[error("ring corrupt: {0}")]
        Corrupt(SegmentFault),
    }

    /// What one side knows of the other.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PeerState {
        /// Nobody has attached to that side yet.
        NeverAttached,
        /// Attached and running.
        Attached(ProcessId),
        /// Detached cleanly (dropped its handle).
        Closed,
        /// Its process is gone without detaching (crashed or killed): `kill` finds no such
        /// process, or a reused pid, in our PID namespace; or, for a process we cannot check
        /// (another PID namespace, no readable `/proc`), its heartbeat is older than the ring's
        /// heartbeat timeout.
        Dead(ProcessId),
    }

    fn attach_block(segment: &Segment, side: Side) -> &AttachBlock {
        let h = segment.header();
        match side {
            Side::Producer => &h.producer_attach,
            Side::Consumer => &h.consumer_attach,
        }
    }

    /// A side held by this process: the exact owner word its claim stored (so detaching cannot
    /// touch a later owner's claim), and the heartbeat registration that keeps it looking alive
    /// to processes in other namespaces.
    pub(crate) struct SideClaim {
        side: Side,
        word: u64,
        _beat: Beat,
    }

    /// Claims `side` for `me`: free if never attached, detached, or held by a process judged
    /// dead (see `liveness`). Records `me`'s identity and starts its heartbeat.
    pub(crate) fn attach_side(segment: &Segment, side: Side, me: ProcessId) -> Result<SideClaim, AttachError> {
        // A truncated ring reads as zeros here, which would look free: refuse it.
        if segment.probe_truncated() {
            return Err(AttachError::Corrupt(SegmentFault::Truncated));
        }
        let block = attach_block(segment, side);
        let identity = Identity::of(me);
        let word = liveness::claim_word(&identity);
        let timeout = segment.heartbeat_timeout();
        loop {
            let current = block.owner.load(Acquire);
            if current != 0 && current & OWNER_DETACHED == 0 {
                if let Verdict::Alive(owner) = judge_owner(block, current, timeout) {
                    if read_identity(block, current).is_none() && liveness::is_claim_word(current) {
                        // An owner with no record and no announcement cannot be dated: date it
                        // now, so it is alive for a timeout from here and judged by its pid after.
                        let _ = block.claim_started_ns.compare_exchange(0, now_ns().max(1), Relaxed, Relaxed);
                    }
                    return Err(AttachError::Busy { side, owner });
                }
            }
            // Announced before the claim (whose release publishes it): until the identity record
            // is written, a reader takes the claim for one in progress, not for a dead owner.
            let started = now_ns().max(1);
            block.claim_started_ns.store(started, Relaxed);
            if block.owner.compare_exchange(current, word, AcqRel, Acquire).is_ok() {
                heartbeat::publish_identity(block, word, &identity, now_ns());
                block.generation.fetch_add(1, AcqRel);
                // Only the winner clears, once its record is out, and only if no later claim
                // announced itself meanwhile. A loser leaves the announcement alone: it may be the
                // winner's, still between its claim and its record.
                let _ = block.claim_started_ns.compare_exchange(started, 0, Relaxed, Relaxed);
                let beat = heartbeat::register(segment, heartbeat::Target::Side(side, word, identity));
                return Ok(SideClaim { side, word, _beat: beat });
            }
        }
    }

    /// Marks the side `claim` holds detached, if it still holds it; a later attach may take it.
    /// A handle that was judged dead and taken over (stopped past the heartbeat timeout in a
    /// namespace its peers cannot see) leaves the new owner alone.
    pub(crate) fn detach_side(segment: &Segment, claim: &SideClaim) {
        let block = attach_block(segment, claim.side);
        let _ = block.owner.compare_exchange(claim.word, claim.word | OWNER_DETACHED, AcqRel, Relaxed);
    }

    /// The identity recorded for owner word `word`, and its heartbeat; `None` while the record
    /// describes another word (an earlier owner's, or not written yet).
    fn read_identity(block: &AttachBlock, word: u64) -> Option<(Identity, u64)> {
        if block.identity_owner.load(Acquire) != word {
            return None;
        }
        let id = Identity {
            pid: word as u32,
            start_time: block.start_time.load(Relaxed),
            pid_ns: block.pid_ns.load(Relaxed),
            time_ns: block.time_ns.load(Relaxed),
            boot_id: block.boot_id.load(Relaxed),
        };
        let heartbeat = block.heartbeat_ns.load(Relaxed);
        // Pairs with the fence in `publish_identity`: if a later claim wrote any field read above,
        // the owner word read below is that claim's.
        fence(Acquire);
        (block.owner.load(Relaxed) == word && block.identity_owner.load(Relaxed) == word).then_some((id, heartbeat))
    }

    /// Judges the owner `word` of `block`. Never dead when unsure: a claim whose identity is
    /// not recorded yet is alive while its announcement is younger than the timeout, and so is
    /// a claim with no announcement at all (a record overwritten by a claim that stalled past
    /// its takeover, until the owner's heartbeat thread writes it again): its pid may be of
    /// another PID namespace, where `kill` says nothing. Only a claim announced longer than a
    /// timeout ago and still unrecorded, or a bare pid, is left to `kill`.
    fn judge_owner(block: &AttachBlock, word: u64, timeout: std::time::Duration) -> Verdict {
        if let Some((id, heartbeat)) = read_identity(block, word) {
            return judge(&id, heartbeat, timeout);
        }
        let started = block.claim_started_ns.load(Relaxed);
        let undated_claim = started == 0 && liveness::is_claim_word(word);
        if undated_claim || (started != 0 && liveness::heartbeat_fresh(0, started, timeout)) {
            return Verdict::Alive(ProcessId::unpack(word));
        }
        judge_unrecorded(word)
    }

    /// What is known of `side`'s owner: at most a `kill` and one read of `/proc`.
    pub(crate) fn peer_state(segment: &Segment, side: Side) -> PeerState {
        peer_state_in(segment.header(), side, segment.heartbeat_timeout())
    }

    /// [`peer_state`] read from `h`: the segment's header, or a copy of it.
    pub(crate) fn peer_state_in(h: &SegmentHeader, side: Side, timeout: std::time::Duration) -> PeerState {
        let block = match side {
            Side::Producer => &h.producer_attach,
            Side::Consumer => &h.consumer_attach,
        };
        let word = block.owner.load(Acquire);
        if word == 0 {
            PeerState::NeverAttached
        } else if word & OWNER_DETACHED != 0 {
            PeerState::Closed
        } else {
            match judge_owner(block, word, timeout) {
                Verdict::Alive(id) => PeerState::Attached(id),
                Verdict::Dead(id) => PeerState::Dead(id),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_stale_handle_dropping_after_a_takeover_leaves_the_new_owner_attached() {
            let segment = RingBuilder::new(4096).create_private().unwrap();
            let old = segment.producer().unwrap();
            // Another process took the side over while this handle was judged dead: its claim
            // replaced the owner word (and its identity record, with the tag).
            let block = &segment.header().producer_attach;
            let new_owner = liveness::claim_word(&Identity::of(ProcessId::current()));
            block.owner.store(new_owner, Relaxed);
            block.identity_owner.store(new_owner, Relaxed);
            drop(old);
            assert_eq!(block.owner.load(Relaxed), new_owner, "the new owner is not marked detached");
            assert!(matches!(peer_state(&segment, Side::Producer), PeerState::Attached(_)));
            assert!(matches!(segment.producer(), Err(AttachError::Busy { .. })));
        }

        #[test]
        fn an_unrecorded_claim_whose_announcement_was_cleared_is_busy_until_a_timeout_after_it_is_seen() {
            let segment = RingBuilder::new(4096).heartbeat_timeout(heartbeat::MIN_TIMEOUT).create_private().unwrap();
            let block = &segment.header().producer_attach;
            // A winner between its claim and its record, whose announcement a losing claim
            // cleared; its pid (one of another PID namespace) names no process here.
            let word = 0x7FFF_FFF1u64 | 9 << 32;
            block.owner.store(word, Relaxed);
            block.claim_started_ns.store(0, Relaxed);
            assert_ne!(block.identity_owner.load(Relaxed), word);
            assert!(matches!(peer_state(&segment, Side::Producer), PeerState::Attached(_)));
            assert!(matches!(segment.producer(), Err(AttachError::Busy { .. })));
            assert!(matches!(segment.producer(), Err(AttachError::Busy { .. })), "still busy");
            // Dated by the attach that found it: abandoned once a timeout passes unrecorded.
            std::thread::sleep(heartbeat::MIN_TIMEOUT * 2);
            assert!(matches!(peer_state(&segment, Side::Producer), PeerState::Dead(_)));
            drop(segment.producer().expect("an abandoned claim is taken over"));
        }

        #[test]
        fn a_claim_in_progress_is_busy_and_an_abandoned_one_is_judged_by_its_pid() {
            let segment = RingBuilder::new(4096).heartbeat_timeout(heartbeat::MIN_TIMEOUT).create_private().unwrap();
            let block = &segment.header().consumer_attach;
            // pid 0x7FFF_FFF0 does not exist; no identity record names this word.
            let word = 0x7FFF_FFF0u64 | 7 << 32;
            block.owner.store(word, Relaxed);
            block.claim_started_ns.store(now_ns(), Relaxed);
            assert!(matches!(peer_state(&segment, Side::Consumer), PeerState::Attached(_)));
            assert!(matches!(segment.consumer(), Err(AttachError::Busy { .. })));
            std::thread::sleep(heartbeat::MIN_TIMEOUT * 2);
            assert!(matches!(peer_state(&segment, Side::Consumer), PeerState::Dead(_)));
            let consumer = segment.consumer().expect("an abandoned claim is taken over");
            drop(consumer);
            assert_eq!(peer_state(&segment, Side::Consumer), PeerState::Closed);
        }
    }
}
