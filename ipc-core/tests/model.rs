//! The ring against a model: random sequences of every producer and consumer operation, checked
//! step by step against a `VecDeque` of the messages committed and not yet received.
//!
//! Whether a send finds the ring full depends on padding the model does not track, so the model
//! does not predict `Full`; it checks what `Full` must never do (lose, reorder or publish data),
//! that `Empty` is returned exactly when nothing is committed and unreceived, and that a ring
//! with nothing held always accepts a message of the maximum length.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipc_core::{Consumer, Lease, LeaseRefused, PayloadAlign, Producer, RingBuilder, TryRecvError, TrySendError};
use proptest::prelude::*;

/// A payload length, resolved against the ring's maximum when the operation runs.
#[derive(Clone, Copy, Debug)]
enum Size {
    Small(u16),
    Any(u16),
    Max,
    NearMax(u16),
    Oversize(u16),
}

impl Size {
    fn resolve(self, max: usize) -> usize {
        match self {
            Size::Small(n) => usize::from(n % 33),
            Size::Any(n) => usize::from(n) % (max + 1),
            Size::Max => max,
            Size::NearMax(n) => max - usize::from(n % 80).min(max),
            Size::Oversize(n) => max + 1 + usize::from(n % 5000),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    TrySend(Size, u16),
    ReserveThenDrop(Size),
    ReserveThenCommit(Size, u16),
    Batch(Vec<Size>, bool),
    TryRecv,
    ReadBatch(usize),
    Lease,
    DropLease(usize),
    DrainEverything,
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        6 => any::<u16>().prop_map(Size::Small),
        6 => any::<u16>().prop_map(Size::Any),
        1 => Just(Size::Max),
        1 => any::<u16>().prop_map(Size::NearMax),
        1 => any::<u16>().prop_map(Size::Oversize),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (size(), any::<u16>()).prop_map(|(s, t)| Op::TrySend(s, t)),
        2 => size().prop_map(Op::ReserveThenDrop),
        4 => (size(), any::<u16>()).prop_map(|(s, t)| Op::ReserveThenCommit(s, t)),
        3 => (prop::collection::vec(size(), 0..12), prop::bool::weighted(0.8)).prop_map(|(v, c)| Op::Batch(v, c)),
        8 => Just(Op::TryRecv),
        3 => (1usize..=8).prop_map(Op::ReadBatch),
        3 => Just(Op::Lease),
        3 => any::<usize>().prop_map(Op::DropLease),
        1 => Just(Op::DrainEverything),
    ]
}

/// What one run did, to check the segment's counters against at the end.
#[derive(Default)]
struct Tally {
    committed: u64,
    committed_bytes: u64,
    commits: u64,
    oversize: u64,
    received: u64,
}

struct Harness {
    producer: Producer,
    consumer: Consumer,
    max: usize,
    align64: bool,
    /// Committed, not yet received: (type, payload).
    model: VecDeque<(u16, Vec<u8>)>,
    /// Leases held, with the payload each must keep showing.
    leases: Vec<(Lease, Vec<u8>)>,
    next_id: u64,
    tally: Tally,
}

impl Harness {
    /// A payload no other message of the run has.
    fn payload(&mut self, len: usize) -> Vec<u8> {
        self.next_id += 1;
        let id = self.next_id;
        (0..len).map(|i| (id.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 * 7) >> 3) as u8).collect()
    }

    /// Checks a received message against the model; `addr` is where its payload lay in the ring.
    fn expect_received(&mut self, ty: u16, payload: &[u8], addr: usize) {
        let (want_ty, want) = self.model.pop_front().expect("received a message that was never committed");
        assert_eq!(payload, &want[..], "payload differs from the oldest committed message");
        assert_eq!(ty, want_ty, "message type differs");
        if self.align64 {
            assert_eq!(addr % 64, 0, "payload not 64-byte aligned");
        }
        self.tally.received += 1;
    }

    fn expect_empty(&self, what: &str, result: TryRecvError) {
        assert_eq!(result, TryRecvError::Empty, "{what}");
        assert!(self.model.is_empty(), "{what} said Empty with {} committed messages unreceived", self.model.len());
    }

    fn committed(&mut self, ty: u16, payload: Vec<u8>) {
        self.tally.committed += 1;
        self.tally.committed_bytes += payload.len() as u64;
        self.model.push_back((ty, payload));
    }

    /// The ring holds nothing: every message received, every lease dropped.
    fn drained(&self) -> bool {
        self.model.is_empty() && self.leases.is_empty()
    }

    fn check_send(&mut self, len: usize, result: &Result<(), TrySendError>) {
        match result {
            Ok(()) => {}
            Err(TrySendError::TooLarge { len: l, max }) => {
                assert!(len > self.max && *l == len && *max == self.max, "{result:?}");
                self.tally.oversize += 1;
            }
            Err(TrySendError::Full) => {
                assert!(len <= self.max);
                assert!(!self.drained(), "a drained ring refused {len} bytes (max {})", self.max);
            }
            Err(e) => panic!("unexpected {e}"),
        }
        if len > self.max {
            assert!(result.is_err(), "oversize message of {len} accepted");
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::TrySend(size, ty) => {
                let len = size.resolve(self.max);
                let payload = self.payload(len);
                let result = self.producer.try_send_typed(*ty, &payload);
                self.check_send(len, &result);
                if result.is_ok() {
                    self.tally.commits += 1;
                    self.committed(*ty, payload);
                }
            }
            Op::ReserveThenDrop(size) => {
                let len = size.resolve(self.max);
                let result = self.producer.try_reserve(len).map(|mut grant| grant.fill(0xA5));
                self.check_send(len, &result);
            }
            Op::ReserveThenCommit(size, ty) => {
                let len = size.resolve(self.max);
                let payload = self.payload(len);
                let result = self.producer.try_reserve(len).map(|mut grant| {
                    assert_eq!(grant.len(), len);
                    grant.copy_from_slice(&payload);
                    grant.set_message_type(*ty);
                    grant.commit();
                });
                self.check_send(len, &result);
                if result.is_ok() {
                    self.tally.commits += 1;
                    self.committed(*ty, payload);
                }
            }
            Op::Batch(sizes, commit) => {
                let mut pushed = Vec::new();
                let mut oversize = 0;
                let mut batch = self.producer.batch();
                for (i, size) in sizes.iter().enumerate() {
                    let len = size.resolve(self.max);
                    self.next_id += 1;
                    let id = self.next_id;
                    let payload: Vec<u8> = (0..len).map(|j| (id as usize * 31 + j) as u8).collect();
                    let ty = i as u16;
                    match batch.try_reserve(len, ty) {
                        Ok(slot) => {
                            slot.copy_from_slice(&payload);
                            pushed.push((ty, payload));
                        }
                        Err(TrySendError::TooLarge { .. }) => {
                            assert!(len > self.max);
                            oversize += 1;
                        }
                        Err(TrySendError::Full) => break,
                        Err(e) => panic!("unexpected {e}"),
                    }
                    assert_eq!(batch.len(), pushed.len());
                }
                self.tally.oversize += oversize;
                if *commit {
                    assert_eq!(batch.commit(), pushed.len(), "commit reports the batch's messages");
                    if !pushed.is_empty() {
                        self.tally.commits += 1;
                    }
                    for (ty, payload) in pushed {
                        self.committed(ty, payload);
                    }
                }
                // Otherwise the batch goes out of scope uncommitted: nothing is published.
            }
            Op::TryRecv => match self.consumer.try_recv().map(copy_out) {
                Ok((ty, payload, addr)) => self.expect_received(ty, &payload, addr),
                Err(e) => self.expect_empty("try_recv", e),
            },
            Op::ReadBatch(max) => match self.consumer.read_batch(*max).map(|batch| {
                let records: Vec<(u16, Vec<u8>, usize)> =
                    batch.iter().map(|r| (r.message_type, r.payload.to_vec(), r.payload.as_ptr() as usize)).collect();
                assert_eq!(records.len(), batch.len(), "batch iterator and batch length disagree");
                records
            }) {
                Ok(records) => {
                    assert!(!records.is_empty() && records.len() <= *max, "batch of {} for max {max}", records.len());
                    for (ty, payload, addr) in records {
                        self.expect_received(ty, &payload, addr);
                    }
                }
                Err(e) => self.expect_empty("read_batch", e),
            },
            Op::Lease => match self.consumer.try_recv().map(|msg| msg.into_lease().expect("into_lease")) {
                Ok(lease) => {
                    let payload = lease.to_vec();
                    self.expect_received(lease.message_type(), &lease, lease.as_ptr() as usize);
                    self.leases.push((lease, payload));
                }
                Err(e) => self.expect_empty("try_recv for a lease", e),
            },
            Op::DropLease(i) => {
                if !self.leases.is_empty() {
                    let (lease, payload) = self.leases.swap_remove(i % self.leases.len());
                    assert_eq!(&*lease, &payload[..], "a held lease's bytes changed");
                }
            }
            Op::DrainEverything => self.drain_and_check_max_fits(),
        }
        for (lease, payload) in &self.leases {
            assert_eq!(&**lease, &payload[..], "a held lease's bytes changed");
        }
    }

    fn drain_and_check_max_fits(&mut self) {
        for (lease, payload) in self.leases.drain(..) {
            assert_eq!(&*lease, &payload[..], "a held lease's bytes changed");
        }
        while !self.model.is_empty() {
            let msg = self.consumer.try_recv().map(copy_out);
            let (ty, payload, addr) = msg.expect("committed messages are receivable");
            self.expect_received(ty, &payload, addr);
        }
        assert_eq!(self.consumer.try_recv().err(), Some(TryRecvError::Empty));
        let st = self.producer.segment().status();
        assert_eq!(st.head, st.tail, "drained ring still holds bytes: {st:?}");
        // Wherever the positions are, a drained ring takes a message of the maximum length.
        let payload = self.payload(self.max);
        self.producer.try_send_typed(7, &payload).expect("a drained ring accepts a maximum-length message");
        self.tally.commits += 1;
        self.committed(7, payload);
        let (ty, got, addr) = self.consumer.try_recv().map(copy_out).unwrap();
        self.expect_received(ty, &got, addr);
    }
}

/// Type, payload and payload address of a received message, so the guard can go.
fn copy_out(msg: ipc_core::ReadGuard<'_>) -> (u16, Vec<u8>, usize) {
    (msg.message_type(), msg.to_vec(), msg.as_ptr() as usize)
}

fn run_model(capacity: usize, align: PayloadAlign, ops: &[Op]) {
    let segment = RingBuilder::new(capacity).payload_align(align).create_anonymous().unwrap();
    let mut h = Harness {
        producer: segment.producer().unwrap(),
        consumer: segment.consumer().unwrap(),
        max: segment.max_message_len(),
        align64: align == PayloadAlign::SixtyFour,
        model: VecDeque::new(),
        leases: Vec::new(),
        next_id: 0,
        tally: Tally::default(),
    };
    for op in ops {
        h.run(op);
    }
    h.drain_and_check_max_fits();

    // Counters reach the segment periodically and when a handle detaches: exact after both.
    let tally = std::mem::take(&mut h.tally);
    drop(h);
    let st = segment.status();
    let t = &tally;
    assert_eq!(st.produced.messages, t.committed, "{st:?}");
    assert_eq!(st.produced.bytes, t.committed_bytes, "{st:?}");
    assert_eq!(st.produced.commits, t.commits, "{st:?}");
    assert_eq!(st.produced.oversize_rejects, t.oversize, "{st:?}");
    assert_eq!(st.consumed.messages, t.received, "{st:?}");
    assert_eq!(st.consumed.bytes, t.committed_bytes, "{st:?}");
    assert_eq!(st.consumed.corrupt_records, 0, "{st:?}");
    assert_eq!(t.received, t.committed);
    assert_eq!(st.head, st.tail);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_a_fifo_model(
        capacity in prop::sample::select(vec![4096usize, 8192]),
        align in prop::sample::select(vec![PayloadAlign::Eight, PayloadAlign::SixtyFour]),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        run_model(capacity, align, &ops);
    }
}

/// The same model over long runs, where positions go round the ring hundreds of times.
#[test]
fn long_random_runs_match_a_fifo_model() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 8, ..ProptestConfig::default() });
    let strategy =
        (prop::sample::select(vec![PayloadAlign::Eight, PayloadAlign::SixtyFour]), prop::collection::vec(op(), 20_000));
    runner
        .run(&strategy, |(align, ops)| {
            run_model(4096, align, &ops);
            Ok(())
        })
        .unwrap();
}

#[test]
fn read_batch_never_hands_out_more_than_max_messages() {
    let segment = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    p.try_send(b"one").unwrap();
    p.try_send(b"two").unwrap();
    match c.read_batch(0) {
        Ok(batch) => assert_eq!(batch.len(), 0, "read_batch(0) handed out (and released) messages"),
        Err(e) => assert_eq!(e, TryRecvError::Empty),
    }
    assert_eq!(&*c.try_recv().unwrap(), b"one", "read_batch(0) consumed a message");
}

/// Runs `work` on another thread; fails the test if it does not finish within `timeout`. On a
/// timeout `unstick` runs first (here: drops leases from this thread) so the worker can end.
fn finishes_within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
    unstick: impl FnOnce(),
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    match rx.recv_timeout(timeout) {
        Ok(value) => {
            worker.join().unwrap();
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            worker.join().unwrap();
            unreachable!("the worker panicked")
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            unstick();
            let _ = rx.recv_timeout(timeout);
            panic!("{what}: still running after {timeout:?} (hung)");
        }
    }
}

/// Fills a ring with `messages` zero-length messages and holds `leases` of them as leases.
fn hold_leases(messages: usize, leases: usize) -> (Consumer, Producer, Arc<Mutex<Vec<Lease>>>) {
    let segment = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    for i in 0..messages {
        p.try_send_typed(i as u16, b"").unwrap();
    }
    let held = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..leases {
        let lease = c.try_recv().unwrap().into_lease().unwrap();
        held.lock().unwrap().push(lease);
    }
    (c, p, held)
}

const LEASE_LIMIT: usize = 4096;

#[test]
fn into_lease_past_the_lease_limit_reports_leases_exhausted_instead_of_hanging() {
    let (mut c, p, held) = hold_leases(LEASE_LIMIT + 1, LEASE_LIMIT);
    let unstick = held.clone();
    let result = finishes_within(
        Duration::from_secs(5),
        "into_lease with the lease limit reached",
        move || {
            // Reported either when receiving (no room to give the record back) or when leasing.
            let result = c
                .try_recv()
                .and_then(|msg| {
                    msg.into_lease().map_err(|refused| match refused.reason {
                        LeaseRefused::Exhausted { capacity } => TryRecvError::LeasesExhausted { capacity },
                        other => panic!("{other}"),
                    })
                })
                .map(drop);
            (result, c, p)
        },
        move || unstick.lock().unwrap().clear(),
    );
    assert_eq!(result.0, Err(TryRecvError::LeasesExhausted { capacity: LEASE_LIMIT }));
}

#[test]
fn plain_receives_behind_the_lease_limit_do_not_hang() {
    // One short of the limit, then two ordinary guards: the second finds no slot to queue its
    // release behind the held leases.
    let (mut c, p, held) = hold_leases(LEASE_LIMIT + 1, LEASE_LIMIT - 1);
    let unstick = held.clone();
    finishes_within(
        Duration::from_secs(5),
        "dropping a ReadGuard with the lease limit reached",
        move || {
            for _ in 0..2 {
                let msg = c.try_recv().unwrap();
                assert!(msg.is_empty());
            }
            (c, p)
        },
        move || unstick.lock().unwrap().clear(),
    );
    drop(held);
}
