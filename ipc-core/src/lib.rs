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
mod liveness;
#[cfg(not(loom))]
mod observer;
#[cfg(not(loom))]
mod producer;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
mod shm;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod wait;

#[cfg(not(loom))]
pub use api::*;

/// The public API over shared memory (everything but the loom model).
#[cfg(not(loom))]
mod api {
    pub use crate::consumer::{Consumer, CorruptReason, ReadBatch, ReadGuard, Record, RecvError};
    pub use crate::fdpass::{ReceiveError, SegmentServer, ShareError};
    pub use crate::lease::Lease;
    pub use crate::liveness::{ProcessId, process_start_time};
    pub use crate::observer::{ObserveError, Observed, Observer};
    pub use crate::producer::{Producer, SendError, WriteBatch, WriteGrant};
    pub use crate::segment::{CreateError, OpenError, PayloadAlign, RingBuilder, Segment, SegmentFault};
    pub use crate::shm::{MAX_NAME_LEN, NAME_PREFIX};
    pub use crate::stats::{ConsumerCounters, ProducerCounters, RingStatus};
    pub use crate::wait::WaitStrategy;

    use crate::layout::{AttachBlock, OWNER_DETACHED};
    use crate::sync::atomic::Ordering::{AcqRel, Acquire};

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
        /// Another live process (or another handle in this process) holds this side.
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
        /// Its process is gone without detaching (crashed or killed).
        Dead(ProcessId),
    }

    fn attach_block(segment: &Segment, side: Side) -> &AttachBlock {
        let h = segment.header();
        match side {
            Side::Producer => &h.producer_attach,
            Side::Consumer => &h.consumer_attach,
        }
    }

    /// Claims `side` for `me`: free if never attached, detached, or held by a dead process.
    pub(crate) fn attach_side(segment: &Segment, side: Side, me: ProcessId) -> Result<(), AttachError> {
        let block = attach_block(segment, side);
        loop {
            let current = block.owner.load(Acquire);
            if current != 0 && current & OWNER_DETACHED == 0 {
                let owner = ProcessId::unpack(current);
                if owner.is_alive() {
                    return Err(AttachError::Busy { side, owner });
                }
            }
            if block.owner.compare_exchange(current, me.pack(), AcqRel, Acquire).is_ok() {
                block.generation.fetch_add(1, AcqRel);
                return Ok(());
            }
        }
    }

    /// Marks `side` detached; a later attach may take it.
    pub(crate) fn detach_side(segment: &Segment, side: Side) {
        attach_block(segment, side).owner.fetch_or(OWNER_DETACHED, AcqRel);
    }

    pub(crate) fn peer_state(segment: &Segment, side: Side) -> PeerState {
        let word = attach_block(segment, side).owner.load(Acquire);
        if word == 0 {
            PeerState::NeverAttached
        } else if word & OWNER_DETACHED != 0 {
            PeerState::Closed
        } else {
            let id = ProcessId::unpack(word);
            id.resolve().map_or(PeerState::Dead(id), PeerState::Attached)
        }
    }
}
