//! The API the relay and the bindings build on: positions and epochs, explicit (cumulative)
//! release and rewind, leases that never drop what they refuse, panics that do not count as done,
//! owned handles, the exact frontier, and waiting batches.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use ipc_core::{
    BatchLease, Lease, LeaseRefused, OwnedWriteGrant, ReleaseError, ReleaseMode, RingBuilder, Segment,
    SendTimeoutError, TryRecvError, TrySendError,
};

fn ring(capacity: usize) -> Segment {
    RingBuilder::new(capacity).create_private().unwrap()
}

fn assert_send_sync_static<T: Send + Sync + 'static>() {}

#[test]
fn positions_increase_strictly_and_name_the_same_record_when_it_is_delivered_again() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    c.set_release_mode(ReleaseMode::Explicit).unwrap();
    let mut first_pass = Vec::new();
    // Several laps of a small ring: positions keep growing past the capacity.
    for round in 0..200u32 {
        for i in 0..5u32 {
            p.try_send(&(round * 5 + i).to_le_bytes()).unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..5 {
            let msg = c.try_recv().unwrap();
            seen.push((msg.position(), msg.to_vec()));
        }
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "strictly increasing: {seen:?}");
        if let Some(&(last, _)) = first_pass.last() {
            assert!(seen[0].0 > last);
        }
        c.rewind();
        let again: Vec<_> = (0..5)
            .map(|_| {
                let msg = c.try_recv().unwrap();
                (msg.position(), msg.to_vec())
            })
            .collect();
        assert_eq!(again, seen, "redelivered with the same positions and bytes");
        c.release_through(seen[4].0).unwrap();
        first_pass.extend(seen);
    }
    assert!(first_pass.last().unwrap().0 > 4096 * 3, "wrapped several times");
}

#[test]
fn every_ring_has_its_own_non_zero_epoch_seen_by_every_handle() {
    let (a, b) = (ring(4096), ring(4096));
    assert_ne!(a.epoch(), 0);
    assert_ne!(a.epoch(), b.epoch());
    let (mut p, mut c) = (a.producer().unwrap(), a.consumer().unwrap());
    p.try_send(b"x").unwrap();
    let msg = c.try_recv().unwrap();
    assert_eq!(msg.epoch(), a.epoch());
    let lease = msg.into_lease().unwrap();
    assert_eq!(lease.epoch(), a.epoch());
    assert_eq!(c.epoch(), a.epoch());
}

#[test]
fn explicit_release_keeps_space_until_release_through_acknowledges_it() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    c.set_release_mode(ReleaseMode::Explicit).unwrap();
    let mut positions = Vec::new();
    loop {
        match p.try_send(&[7; 56]) {
            Ok(()) => {}
            Err(TrySendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        positions.push(c.try_recv().unwrap().position());
    }
    // Every record was received and dropped, yet none was released: the producer is full.
    assert_eq!(c.release_position(), 0);
    assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
    // Acknowledging half gives exactly that space back.
    let half = positions[positions.len() / 2];
    c.release_through(half).unwrap();
    assert_eq!(c.release_position(), half + 64);
    assert!(p.try_send(&[7; 56]).is_ok());
    // Repeating an old acknowledgement is harmless.
    c.release_through(positions[0]).unwrap();
    assert_eq!(c.release_position(), half + 64);
}

#[test]
fn release_through_refuses_what_was_not_delivered_or_is_not_a_record() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    for _ in 0..3 {
        p.try_send(&[1; 16]).unwrap();
    }
    // On-drop mode holds nothing: anything not yet released is refused.
    assert_eq!(c.release_through(0), Err(ReleaseError::NotHeld { position: 0 }));
    c.set_release_mode(ReleaseMode::Explicit).unwrap();
    let first = c.try_recv().unwrap().position();
    // Delivered: fine. Not delivered yet, inside a record, or unaligned: refused.
    assert_eq!(c.release_through(24), Err(ReleaseError::NotHeld { position: 24 }), "not delivered yet");
    assert_eq!(c.release_through(8), Err(ReleaseError::NotHeld { position: 8 }), "inside a record");
    assert_eq!(c.release_through(3), Err(ReleaseError::NotHeld { position: 3 }), "unaligned");
    c.release_through(first).unwrap();
    assert_eq!(c.release_position(), 24);
}

#[test]
fn rewind_delivers_every_unacknowledged_record_again_in_order_batches_included() {
    let segment = ring(1 << 16);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    c.set_release_mode(ReleaseMode::Explicit).unwrap();
    for i in 0..100u32 {
        p.try_send(&i.to_le_bytes()).unwrap();
    }
    let read = |c: &mut ipc_core::Consumer| -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while let Ok(batch) = c.read_batch(7) {
            out.extend(batch.iter().map(|r| (r.position, u32::from_le_bytes(r.payload.try_into().unwrap()))));
        }
        out
    };
    let all = read(&mut c);
    assert_eq!(all.iter().map(|r| r.1).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
    c.release_through(all[39].0).unwrap();
    assert_eq!(c.rewind(), all[40].0);
    assert_eq!(read(&mut c), all[40..].to_vec());
}

#[test]
fn holding_thousands_of_records_and_acknowledging_them_in_one_store_works_across_laps() {
    // A relay's in-flight window: 4000 records held, acknowledged in order by one call.
    let segment = ring(1 << 20);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    c.set_release_mode(ReleaseMode::Explicit).unwrap();
    let mut next = 0u64;
    for _ in 0..100 {
        let mut last = 0;
        for _ in 0..4000 {
            p.try_send(&next.to_le_bytes()).unwrap();
            let msg = c.try_recv().unwrap();
            assert_eq!(u64::from_le_bytes(msg[..].try_into().unwrap()), next);
            last = msg.position();
            next += 1;
        }
        c.release_through(last).unwrap();
        assert_eq!(segment.status().head, segment.status().tail);
    }
}

#[test]
fn leases_are_refused_in_explicit_mode_and_explicit_mode_is_refused_while_leases_are_held() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    p.try_send(b"a").unwrap();
    p.try_send(b"b").unwrap();
    let lease = c.try_recv().unwrap().into_lease().unwrap();
    assert!(c.set_release_mode(ReleaseMode::Explicit).is_err());
    drop(lease);
    c.set_release_mode(ReleaseMode::Explicit).unwrap();
    let refused = c.try_recv().unwrap().into_lease().unwrap_err();
    assert_eq!(refused.reason, LeaseRefused::ExplicitRelease);
    assert_eq!(&*refused.into_inner(), b"b", "the guard comes back intact");
}

#[test]
fn a_refused_lease_gives_the_guard_back_and_the_record_is_not_lost() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    c.set_max_leases(2);
    assert_eq!(segment.status().consumed.lease_capacity, 2);
    for i in 0..4u8 {
        p.try_send(&[i]).unwrap();
    }
    // One lease and one ordinary release queued behind it fill the two entries; a further
    // receive can still be handed out (its release extends the last entry) but not leased.
    let first = c.try_recv().unwrap().into_lease().unwrap();
    assert_eq!(segment.status().consumed.leases_held, 1);
    drop(c.try_recv().unwrap());
    let refused = c.try_recv().unwrap().into_lease().unwrap_err();
    assert_eq!(refused.reason, LeaseRefused::Exhausted { capacity: 2 });
    let guard = refused.into_inner();
    assert_eq!(&*guard, &[2], "the record is still in hand");
    drop(guard);
    drop(first);
    assert_eq!(&*c.try_recv().unwrap(), &[3]);
    assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
    assert_eq!(segment.status().head, segment.status().tail, "everything released, nothing lost");
}

#[test]
fn a_guard_dropped_by_a_panic_is_not_released_and_is_delivered_again() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    p.try_send(b"order 1").unwrap();
    p.try_send(b"order 2").unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let msg = c.try_recv().unwrap();
        assert_eq!(&*msg, b"order 1");
        panic!("the handler failed");
    }));
    assert!(outcome.is_err());
    assert_eq!(segment.status().head, 0, "not released");
    assert_eq!(&*c.try_recv().unwrap(), b"order 1", "delivered again");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let batch = c.read_batch(10).unwrap();
        assert_eq!(batch.len(), 1);
        panic!("the batch handler failed");
    }));
    assert!(outcome.is_err());
    assert_eq!(&*c.try_recv().unwrap(), b"order 2");
}

#[test]
fn a_lease_dropped_by_a_panic_is_not_released_so_the_next_consumer_gets_it() {
    let segment = ring(4096);
    let mut p = segment.producer().unwrap();
    p.try_send(b"leased").unwrap();
    {
        let mut c = segment.consumer().unwrap();
        let lease = c.try_recv().unwrap().into_lease().unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(move || {
            let _held = lease;
            panic!("the worker holding the lease failed");
        }));
        assert!(outcome.is_err());
        assert_eq!(segment.status().head, 0);
    }
    let mut next = segment.consumer().unwrap();
    assert_eq!(&*next.try_recv().unwrap(), b"leased");
}

#[test]
fn owned_handles_are_send_sync_static_and_a_batch_lease_iterates_on_another_thread() {
    assert_send_sync_static::<Lease>();
    assert_send_sync_static::<BatchLease>();
    assert_send_sync_static::<OwnedWriteGrant>();
    let segment = ring(1 << 16);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    for i in 0..10u8 {
        p.try_send_typed(u16::from(i), &[i; 3]).unwrap();
    }
    let batch = c.read_batch(100).unwrap().into_lease().unwrap();
    assert_eq!(batch.len(), 10);
    // The lease pins its space until dropped, on whichever thread.
    let seen =
        std::thread::spawn(move || batch.iter().map(|r| (r.message_type, r.payload.to_vec())).collect::<Vec<_>>())
            .join()
            .unwrap();
    assert_eq!(seen, (0..10u8).map(|i| (u16::from(i), vec![i; 3])).collect::<Vec<_>>());
    assert_eq!(segment.status().head, segment.status().tail);
}

#[test]
fn an_owned_write_grant_publishes_on_commit_and_nothing_on_abandon() {
    let segment = ring(4096);
    let (p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    let mut grant = p.try_reserve_owned(5).map_err(|e| e.error).unwrap();
    let grant_position = grant.position();
    // Written through the raw pointer, as another language would.
    // SAFETY: the grant reserves 5 writable bytes at this address while it lives.
    unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), grant.as_mut_ptr(), 5) };
    grant.set_message_type(9);
    let p = grant.commit();
    let mut abandoned = p.try_reserve_owned(3).map_err(|e| e.error).unwrap();
    abandoned.copy_from_slice(b"xyz");
    let mut p = abandoned.abandon();
    p.try_send(b"next").unwrap();
    let msg = c.try_recv().unwrap();
    assert_eq!((msg.message_type(), &*msg, msg.position()), (9, &b"hello"[..], grant_position));
    drop(msg);
    assert_eq!(&*c.try_recv().unwrap(), b"next", "the abandoned grant published nothing");
    let mut refused = p.try_reserve_owned(1 << 20).unwrap_err();
    assert!(matches!(refused.error, TrySendError::TooLarge { .. }));
    refused.producer.try_send(b"still the producer").unwrap();
}

#[test]
fn a_waiting_batch_publishes_what_it_holds_then_waits_for_space() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < 500 {
            match c.recv_timeout(Duration::from_secs(10)) {
                Ok(msg) => got.push(u32::from_le_bytes(msg[..4].try_into().unwrap())),
                Err(e) => panic!("{e}"),
            }
        }
        got
    });
    // 500 records of 64 bytes are eight times the ring: the batch must flush and wait.
    let mut batch = p.batch();
    for i in 0..500u32 {
        let mut payload = [0u8; 56];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        batch.push_timeout(&payload, Duration::from_secs(10)).unwrap();
    }
    assert_eq!(batch.commit(), 500);
    assert_eq!(reader.join().unwrap(), (0..500).collect::<Vec<_>>());
    // The reader is gone: a waiting batch says so within one check interval of claims.
    let mut batch = p.batch();
    let refused = (0..200).find_map(|_| batch.push_timeout(&[0; 8], Duration::from_millis(20)).err());
    assert_eq!(refused, Some(SendTimeoutError::Disconnected));
}

#[test]
fn the_frontier_counts_every_message_across_producer_handovers() {
    let segment = ring(4096);
    let mut c = segment.consumer().unwrap();
    let mut sent = 0u64;
    for round in 0..5u64 {
        let mut p = segment.producer().unwrap();
        let f = p.frontier();
        assert_eq!(f.messages, sent, "round {round}");
        assert_eq!(f.position, segment.status().tail);
        for _ in 0..(37 + round * 11) {
            p.try_send(&[1; 20]).unwrap();
            sent += 1;
            drop(c.try_recv().unwrap());
        }
        let mut batch = p.batch();
        batch.try_push(b"a").unwrap();
        batch.try_push(b"b").unwrap();
        batch.commit();
        sent += 2;
        while c.try_recv().is_ok() {}
        assert_eq!(p.frontier().messages, sent);
    }
}

#[test]
fn a_producer_reports_a_consumer_that_left_even_when_the_ring_has_room() {
    let segment = ring(1 << 16);
    let mut p = segment.producer().unwrap();
    p.try_send(b"before any consumer").unwrap();
    let c = segment.consumer().unwrap();
    p.try_send(b"while attached").unwrap();
    drop(c);
    let sent_after = (0..1000).take_while(|_| p.try_send(b"x").is_ok()).count();
    assert!(sent_after < 64, "noticed within one check interval of claims, sent {sent_after}");
    assert_eq!(p.try_send(b"x"), Err(TrySendError::Disconnected));
    // A new consumer makes sending possible again, and it resumes at the first unreleased record.
    let mut c = segment.consumer().unwrap();
    p.try_send(b"new consumer").unwrap();
    assert_eq!(&*c.try_recv().unwrap(), b"before any consumer");
}

#[test]
fn switching_to_explicit_release_after_leases_never_redelivers_or_moves_the_head_back() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    p.try_send(b"a").unwrap();
    p.try_send(b"b").unwrap();
    let lease = c.try_recv().unwrap().into_lease().unwrap();
    drop(c.try_recv().unwrap());
    drop(lease); // the fold publishes the head past both
    let released = segment.status().head;
    assert_eq!(released, 32);
    c.set_release_mode(ReleaseMode::Explicit).unwrap();
    assert_eq!(c.rewind(), released, "nothing released comes back");
    assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
    p.try_send(b"c").unwrap();
    let position = c.try_recv().unwrap().position();
    c.release_through(position).unwrap();
    assert_eq!(segment.status().head, released + 16);
}

#[test]
fn a_new_lease_maximum_takes_effect_once_the_held_leases_are_dropped() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    for i in 0..4u8 {
        p.try_send(&[i]).unwrap();
    }
    let held = c.try_recv().unwrap().into_lease().unwrap();
    c.set_max_leases(1);
    drop(held);
    let first = c.try_recv().unwrap().into_lease().unwrap();
    // One lease fills the queue: not even a plain receive can be given back behind it now.
    assert_eq!(c.try_recv().err(), Some(TryRecvError::LeasesExhausted { capacity: 1 }));
    drop(first);
    assert_eq!(&*c.try_recv().unwrap(), &[2]);
}

#[test]
fn a_lease_limit_beyond_what_the_ring_can_hold_is_capped_instead_of_allocated() {
    let segment = ring(4096);
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    // An 8-byte record is the smallest: a 4 KiB ring holds at most 512 of them.
    c.set_max_leases(usize::MAX);
    assert_eq!(segment.status().consumed.lease_capacity, 4096 / 8);
    p.try_send(b"x").unwrap();
    let lease = c.try_recv().unwrap().into_lease().unwrap();
    assert_eq!(&*lease, b"x");
}
