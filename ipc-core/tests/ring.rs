//! Single-process behaviour of the ring: the API contract each method documents.

use std::time::{Duration, Instant};

use ipc_core::{
    AttachError, CreateError, ObserveError, OpenError, PayloadAlign, PeerState, RecvTimeoutError, RingBuilder, Segment,
    SendTimeoutError, TryRecvError, TrySendError, WaitStrategy,
};

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8).collect()
}

#[test]
fn messages_arrive_in_order_and_intact_across_many_wraps() {
    for align in [PayloadAlign::Eight, PayloadAlign::SixtyFour] {
        let seg = RingBuilder::new(4096).payload_align(align).create_anonymous().unwrap();
        let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
        let max = seg.max_message_len();
        let mut sent = 0u64;
        let mut received = 0u64;
        let mut rng = 0x2545F4914F6CDD1Du64;
        while received < 20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = if rng % 50 == 0 { max } else { (rng % 300) as usize };
            match p.try_send_typed(sent as u16, &payload(sent, len)) {
                Ok(()) => sent += 1,
                Err(TrySendError::Full) => {
                    while let Ok(msg) = c.try_recv() {
                        assert_eq!(msg.message_type(), received as u16);
                        assert_eq!(&*msg, &payload(received, msg.len())[..]);
                        if align == PayloadAlign::SixtyFour {
                            assert_eq!(msg.as_ptr() as usize % 64, 0);
                        }
                        received += 1;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        // The message count is exact at every commit; the consumer's tallies reach the segment
        // periodically and when it detaches.
        assert_eq!(seg.status().produced.messages, sent);
        drop((p, c));
        let st = seg.status();
        assert_eq!(st.consumed.messages, received);
        assert!(st.produced.padding_bytes > 0, "wrap-around padding was exercised");
    }
}

#[test]
fn oversize_message_is_refused_and_the_ring_goes_on() {
    let seg = RingBuilder::new(8192).max_message_len(100).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    assert_eq!(p.try_send(&[1; 101]), Err(TrySendError::TooLarge { len: 101, max: 100 }));
    p.try_send(&[2; 100]).unwrap();
    assert_eq!(&*c.try_recv().unwrap(), &[2; 100]);
    assert_eq!(seg.status().produced.oversize_rejects, 1);
}

#[test]
fn full_ring_refuses_without_overwriting_unread_data() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let mut n = 0u64;
    while p.try_send(&n.to_le_bytes()).is_ok() {
        n += 1;
    }
    assert!(n > 200, "a 4 KiB ring holds {n} 16-byte records");
    assert_eq!(p.try_send(b"x"), Err(TrySendError::Full));
    for i in 0..n {
        assert_eq!(&*c.try_recv().unwrap(), &i.to_le_bytes());
    }
    assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
    assert!(seg.status().produced.full_events >= 1);
}

#[test]
fn dropped_grant_and_dropped_batch_publish_nothing() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    {
        let mut g = p.try_reserve(10).unwrap();
        g.copy_from_slice(b"abandoned!");
    }
    {
        let mut b = p.batch();
        b.try_push(b"one").unwrap();
        b.try_push(b"two").unwrap();
    }
    assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
    p.try_send(b"kept").unwrap();
    assert_eq!(&*c.try_recv().unwrap(), b"kept");
    assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
}

#[test]
fn batch_is_invisible_until_its_single_commit() {
    let seg = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let mut b = p.batch();
    for i in 0..100u32 {
        b.try_reserve(4, i as u16).unwrap().copy_from_slice(&i.to_le_bytes());
    }
    assert_eq!(b.len(), 100);
    assert_eq!(b.commit(), 100);
    let batch = c.read_batch(1000).unwrap();
    assert_eq!(batch.len(), 100);
    for (i, rec) in batch.iter().enumerate() {
        assert_eq!(rec.message_type, i as u16);
        assert_eq!(rec.payload, &(i as u32).to_le_bytes());
    }
    drop(batch);
    drop((p, c));
    let st = seg.status();
    assert_eq!((st.produced.commits, st.consumed.releases), (1, 1));
    assert_eq!(st.head, st.tail);
}

#[test]
fn read_batch_stops_at_max_and_leaves_the_rest() {
    let seg = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    for i in 0..10u8 {
        p.try_send(&[i]).unwrap();
    }
    assert_eq!(c.read_batch(4).unwrap().iter().map(|r| r.payload[0]).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(c.read_batch(100).unwrap().len(), 6);
    assert_eq!(c.read_batch(100).err(), Some(TryRecvError::Empty));
}

#[test]
fn one_producer_and_one_consumer_per_ring() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let p = seg.producer().unwrap();
    assert!(matches!(seg.producer(), Err(AttachError::Busy { .. })));
    let c = seg.consumer().unwrap();
    assert!(matches!(seg.consumer(), Err(AttachError::Busy { .. })));
    drop(p);
    drop(c);
    assert!(seg.producer().is_ok());
    assert!(seg.consumer().is_ok());
}

#[test]
fn consumer_drains_then_reports_disconnected_after_producer_drops() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    assert_eq!(c.producer_state(), PeerState::Attached(ipc_core::ProcessId::current()));
    p.try_send(b"last words").unwrap();
    drop(p);
    assert_eq!(c.producer_state(), PeerState::Closed);
    assert_eq!(&*c.try_recv().unwrap(), b"last words");
    assert_eq!(c.try_recv().err(), Some(TryRecvError::Disconnected));
    assert_eq!(c.recv_timeout(Duration::from_secs(5)).err(), Some(RecvTimeoutError::Disconnected));
}

#[test]
fn producer_gets_disconnected_when_the_consumer_left_and_the_ring_is_full() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    drop(c);
    let err = loop {
        if let Err(e) = p.try_send(&[0; 64]) {
            break e;
        }
    };
    assert_eq!(err, TrySendError::Disconnected);
    assert_eq!(p.send_timeout(&[0; 64], Duration::from_secs(5)), Err(SendTimeoutError::Disconnected));
}

#[test]
fn waits_time_out_with_every_strategy() {
    for wait in [WaitStrategy::BusySpin, WaitStrategy::SpinThenYield, WaitStrategy::Block] {
        let seg = RingBuilder::new(4096).create_anonymous().unwrap();
        let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
        c.set_wait_strategy(wait);
        p.set_wait_strategy(wait);
        let t = Instant::now();
        assert_eq!(c.recv_timeout(Duration::from_millis(30)).err(), Some(RecvTimeoutError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(30));
        while p.try_send(&[0; 100]).is_ok() {}
        assert_eq!(p.send_timeout(&[0; 100], Duration::from_millis(30)), Err(SendTimeoutError::Timeout));
    }
}

#[test]
fn blocked_consumer_and_producer_are_woken_by_the_doorbell() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    p.set_wait_strategy(WaitStrategy::Block);
    c.set_wait_strategy(WaitStrategy::Block);
    let n = 20_000u64;
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            let msg = c.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(&*msg, &i.to_le_bytes());
            if i % 700 == 0 {
                // Let the producer fill the ring and go to sleep.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        c
    });
    for i in 0..n {
        p.send_timeout(&i.to_le_bytes(), Duration::from_secs(10)).unwrap();
        if i % 500 == 0 {
            // Let the consumer drain the ring and go to sleep.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    reader.join().unwrap();
    let st = seg.status();
    assert!(st.produced.wakes > 0 && st.consumed.wakes > 0, "both doorbells rang: {st:?}");
}

#[test]
fn leases_outlive_receives_and_release_in_ring_order() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    p.try_send(b"first").unwrap();
    p.try_send(b"second").unwrap();
    p.try_send(b"third").unwrap();
    let first = c.try_recv().unwrap().into_lease().unwrap();
    let second = c.try_recv().unwrap().into_lease().unwrap();
    assert_eq!(&*c.try_recv().unwrap(), b"third"); // an ordinary guard behind two leases
    let head_before = seg.status().head;
    assert_eq!(head_before, 0, "nothing released while the first lease is held");
    drop(second);
    assert_eq!(seg.status().head, 0, "releasing out of order waits for the first");
    let moved = std::thread::spawn(move || first.to_vec()).join().unwrap();
    assert_eq!(moved, b"first");
    let st = seg.status();
    assert_eq!(st.head, st.tail, "all three released once the first lease dropped");
    // The fast path resumes.
    p.try_send(b"fourth").unwrap();
    assert_eq!(&*c.try_recv().unwrap(), b"fourth");
    let st = seg.status();
    assert_eq!(st.head, st.tail);
}

#[test]
fn held_leases_apply_backpressure_never_overwrite() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    p.try_send(&[7; 100]).unwrap();
    let held = c.try_recv().unwrap().into_lease().unwrap();
    let mut more = 0;
    loop {
        match p.try_send(&[9; 100]) {
            Ok(()) => more += 1,
            Err(TrySendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        while let Ok(m) = c.try_recv() {
            assert_eq!(&*m, &[9; 100]);
        }
    }
    assert!(more > 10);
    assert_eq!(&*held, &[7; 100], "the leased bytes were not overwritten");
    drop(held);
    p.try_send(&[1; 100]).unwrap();
}

#[test]
fn named_segment_reports_its_owner_and_is_unlinked_by_its_creator() {
    let name = unique("named");
    let seg = RingBuilder::new(4096).create_named(&name).unwrap();
    match RingBuilder::new(4096).create_named(&name) {
        Err(CreateError::AlreadyExists { creator: Some(c), creator_alive: true, .. }) => {
            assert_eq!(c.pid, std::process::id())
        }
        other => panic!("{other:?}"),
    }
    let opened = Segment::open(&name).unwrap();
    assert_eq!(opened.capacity(), 4096);
    assert!(Segment::list().unwrap().contains(&name));
    assert!(!Segment::reclaim_if_stale(&name).unwrap(), "creator alive: not stale");
    drop(seg);
    drop(opened);
    assert!(matches!(Segment::open(&name), Err(OpenError::NotFound(_))));
}

#[test]
fn kept_segment_survives_its_creator_handle() {
    let name = unique("kept");
    let seg = RingBuilder::new(4096).create_named(&name).unwrap();
    seg.keep();
    drop(seg);
    assert!(Segment::open(&name).is_ok());
    Segment::unlink(&name).unwrap();
    assert!(matches!(Segment::open(&name), Err(OpenError::NotFound(_))));
}

#[test]
fn bad_names_are_refused() {
    assert!(matches!(RingBuilder::new(4096).create_named("../etc"), Err(CreateError::InvalidName(_))));
    assert!(matches!(Segment::open(""), Err(OpenError::InvalidName(_))));
}

#[test]
fn zero_length_messages_are_messages() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    p.try_send(b"").unwrap();
    p.try_send_typed(0, b"").unwrap();
    assert_eq!(c.try_recv().unwrap().len(), 0);
    assert_eq!(c.try_recv().unwrap().len(), 0);
    assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
}

#[test]
fn producer_taking_over_keeps_committed_records() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let mut p = seg.producer().unwrap();
    p.try_send(b"a").unwrap();
    p.try_send(b"b").unwrap();
    drop(p);
    let mut p2 = seg.producer().unwrap();
    p2.try_send(b"c").unwrap();
    let mut c = seg.consumer().unwrap();
    for want in [b"a", b"b", b"c"] {
        assert_eq!(&*c.try_recv().unwrap(), want);
    }
}

#[test]
fn observer_sees_every_record_without_consuming_and_reports_when_lapped() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let mut tap = seg.observer();
    let mut copy = Vec::new();
    for i in 0..10u64 {
        p.try_send_typed(i as u16, &payload(i, 100)).unwrap();
    }
    for i in 0..10u64 {
        let seen = tap.try_observe(&mut copy).unwrap();
        assert_eq!((seen.message_type, &copy[..]), (i as u16, &payload(i, 100)[..]));
    }
    assert_eq!(tap.try_observe(&mut copy), Err(ObserveError::Empty));
    // The consumer still gets everything: observing consumed nothing.
    for i in 0..10u64 {
        assert_eq!(&*c.try_recv().unwrap(), &payload(i, 100)[..]);
    }
    // Lap the observer: many rings' worth of traffic while it looks away.
    for i in 0..1000u64 {
        p.try_send(&payload(i, 100)).unwrap();
        drop(c.try_recv().unwrap());
    }
    match tap.try_observe(&mut copy) {
        Err(ObserveError::Lagged { skipped }) => assert!(skipped > 4096),
        other => panic!("expected Lagged, got {other:?}"),
    }
    p.try_send(b"after the lap").unwrap();
    assert!(tap.try_observe(&mut copy).is_ok());
    assert_eq!(copy, b"after the lap");
}

#[test]
fn a_lease_outliving_its_consumer_holds_the_side_until_it_drops() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    p.try_send(b"kept").unwrap();
    p.try_send(b"released behind it").unwrap();
    let lease = c.try_recv().unwrap().into_lease().unwrap();
    drop(c.try_recv().unwrap());
    drop(c);
    // A new consumer now would restart at the lease and its fold would later move the head
    // under it: the side stays held while the lease lives.
    assert!(matches!(seg.consumer(), Err(AttachError::Busy { .. })));
    assert_eq!(seg.status().head, 0);
    drop(lease);
    let st = seg.status();
    assert_eq!(st.head, st.tail);
    let mut c2 = seg.consumer().unwrap();
    assert_eq!(c2.try_recv().err(), Some(TryRecvError::Empty));
}

#[test]
fn a_timeout_too_large_for_the_clock_means_no_deadline() {
    let seg = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        p.try_send(b"late").unwrap();
        p
    });
    assert_eq!(&*c.recv_timeout(Duration::MAX).unwrap(), b"late");
    let mut p = sender.join().unwrap();
    while p.try_send(&[0; 100]).is_ok() {}
    drop(c);
    assert_eq!(p.send_timeout(&[0; 100], Duration::MAX), Err(SendTimeoutError::Disconnected));
}
