//! Loom models (`RUSTFLAGS="--cfg loom" cargo test -p tadpole-ipc-core --lib --release loom`).
//!
//! 1. The lease queue, with the crate's own code: releases from several threads, in any order,
//!    must fold into the head exactly once each, never past a held lease, never lost.
//! 2. The record publish/consume protocol, on a ring of loom atomics that follows the producer
//!    and consumer step for step with the crate's own header encoding and the same memory
//!    orderings: payload words written relaxed, the next header slot zeroed, the header
//!    published with release; the consumer acquires the header, reads the payload, releases
//!    the head; the producer acquires the head before reusing space. If any of those orderings
//!    were weaker, loom finds an execution where the consumer reads a stale payload.

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use loom::thread;

use crate::layout::{SLACK, decode_header, encode_header, record_len};
use crate::lease::{HeadSink, LeaseQueue};

struct ModelHead {
    head: AtomicU64,
    publishing: AtomicBool,
}

impl HeadSink for Arc<ModelHead> {
    fn publish_head(&self, head: u64) {
        assert!(!self.publishing.swap(true, SeqCst), "two threads published the head at once");
        let old = self.head.load(Relaxed);
        assert!(head > old, "head moved backwards: {old} -> {head}");
        self.head.store(head, Release);
        self.publishing.store(false, SeqCst);
    }
}

#[test]
fn loom_lease_releases_from_any_thread_fold_into_the_head_exactly_once() {
    loom::model(|| {
        let sink = Arc::new(ModelHead { head: AtomicU64::new(0), publishing: AtomicBool::new(false) });
        let queue = Arc::new(LeaseQueue::new(sink.clone(), 4));
        // The consumer hands out two leases and releases a plain record behind them.
        let first = queue.push_held().unwrap();
        let second = queue.push_held().unwrap();
        let q1 = queue.clone();
        let t1 = thread::spawn(move || q1.release(first, 8));
        let q2 = queue.clone();
        let t2 = thread::spawn(move || q2.release(second, 16));
        queue.push_released(24).unwrap();
        // While the first lease may still be held, the head never passes it.
        let seen = sink.head.load(Acquire);
        assert!(seen == 0 || seen >= 8);
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(sink.head.load(Acquire), 24, "a release was lost");
        assert!(queue.is_idle());
    });
}

#[test]
fn loom_plain_releases_extend_the_newest_entry_without_losing_any() {
    loom::model(|| {
        let sink = Arc::new(ModelHead { head: AtomicU64::new(0), publishing: AtomicBool::new(false) });
        let queue = Arc::new(LeaseQueue::new(sink.clone(), 2));
        let lease = queue.push_held().unwrap();
        queue.push_released(16).unwrap();
        let q = queue.clone();
        let t = thread::spawn(move || q.release(lease, 8));
        // Races with the fold the other thread may be doing.
        queue.push_released(24).unwrap();
        queue.push_released(32).unwrap();
        t.join().unwrap();
        assert_eq!(sink.head.load(Acquire), 32);
    });
}

/// A ring of 4 words (32 bytes) in loom atomics: two 16-byte records fill it.
struct ModelRing {
    words: Vec<AtomicU64>,
    head: AtomicU64,
}

const CAP: u64 = 32;

impl ModelRing {
    fn word(&self, pos: u64) -> &AtomicU64 {
        &self.words[((pos & (CAP - 1)) / 8) as usize]
    }
}

#[test]
fn loom_consumer_sees_complete_payloads_in_order_across_wrap_around() {
    loom::model(|| {
        let ring =
            Arc::new(ModelRing { words: (0..CAP / 8).map(|_| AtomicU64::new(0)).collect(), head: AtomicU64::new(0) });
        // Three one-word messages (16-byte records): zeroing the slot after the second, and
        // writing the third, reuse the first's space, so the producer must see its release.
        let messages = [0x1111_u64, 0x2222, 0x3333];
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let r = producer_ring;
            let mut tail = 0u64;
            let mut cached_head = 0u64;
            for (i, value) in messages.into_iter().enumerate() {
                let end = tail + record_len(8);
                while end + SLACK > cached_head + CAP {
                    cached_head = r.head.load(Acquire);
                    thread::yield_now();
                }
                r.word(tail + 8).store(value, Relaxed);
                r.word(end).store(0, Relaxed);
                r.word(tail).store(encode_header(tail, 8, i as u16, false), Release);
                tail = end;
            }
        });
        let mut head = 0u64;
        for (i, value) in messages.into_iter().enumerate() {
            let rec = loop {
                match decode_header(head, ring.word(head).load(Acquire)) {
                    Ok(Some(rec)) => break rec,
                    Ok(None) => thread::yield_now(),
                    Err(fault) => panic!("corrupt header at {head}: {fault:?}"),
                }
            };
            assert_eq!((rec.payload_len, rec.message_type, rec.padding), (8, i as u16, false));
            assert_eq!(ring.word(head + 8).load(Relaxed), value, "stale payload");
            head += record_len(8);
            ring.head.store(head, Release);
        }
        producer.join().unwrap();
    });
}
