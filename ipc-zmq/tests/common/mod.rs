//! Shared by the engine tests: records that carry a sequence number and a checksum, and a
//! direct (socket-free) exchange between a sender and a receiver.
#![allow(dead_code)]

use std::time::Instant;

use ipc_core::{Consumer, Producer, TryRecvError, TrySendError};
use ipc_zmq::engine::{Receiver, Sender};

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Record `seq`: its number, some filler of a varying length, a checksum of both.
pub fn record(seq: u64) -> Vec<u8> {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend((0..seq % 37).map(|i| (seq as u8).wrapping_add(i as u8)));
    let sum = fnv(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

/// The message type record `seq` is sent with.
pub fn message_type(seq: u64) -> u16 {
    (seq % 11) as u16
}

/// The sequence number of a record, checking its checksum and message type.
pub fn check(payload: &[u8], message_type_seen: u16) -> u64 {
    assert!(payload.len() >= 16, "short record");
    let (body, sum) = payload.split_at(payload.len() - 8);
    assert_eq!(fnv(body).to_le_bytes(), sum, "checksum mismatch");
    let seq = u64::from_le_bytes(body[..8].try_into().unwrap());
    assert_eq!(message_type_seen, message_type(seq), "message type not preserved");
    seq
}

/// Sends records `*next..total` until the ring is full; returns whether it was ever full.
pub fn fill(producer: &mut Producer, next: &mut u64, total: u64) -> bool {
    while *next < total {
        match producer.try_send_typed(message_type(*next), &record(*next)) {
            Ok(()) => *next += 1,
            Err(TrySendError::Full) => return true,
            Err(e) => panic!("send: {e}"),
        }
    }
    false
}

/// Receives everything available, checking each record; appends the sequence numbers.
pub fn drain(consumer: &mut Consumer, seen: &mut Vec<u64>) {
    loop {
        match consumer.try_recv() {
            Ok(guard) => seen.push(check(&guard, guard.message_type())),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Moves messages directly between `sender` and `receiver` until the sender has nothing more to
/// send at `now`; returns how many DATA/HELLO messages went.
pub fn exchange(sender: &mut Sender, receiver: &mut Receiver, now: Instant) -> usize {
    let mut sent = 0;
    while let Some(message) = sender.poll(now) {
        sent += 1;
        if let Some(reply) = receiver.handle(&message, now) {
            sender.handle(&reply, now);
        }
        assert!(sent < 1_000_000, "exchange does not settle");
    }
    sent
}
