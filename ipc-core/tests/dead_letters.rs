//! Dead letters counted in the segment: what a consumer counts is read by every other mapping of
//! the ring (other processes, `tadpole stat`) at the offsets `layout` names, survives the
//! consumer that counted it, and a hostile count is only a number.

use std::os::unix::fs::FileExt;

use ipc_core::layout::offsets::consumer_counters as field;
use ipc_core::{DeadLetterReason, RingBuilder, Segment};

fn unique(tag: &str) -> String {
    format!("dead-letters-{tag}-{}", std::process::id())
}

/// Removes the named segment when the test ends, pass or fail.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

fn file_u64(name: &str, offset: usize) -> u64 {
    let file = std::fs::File::open(format!("/dev/shm/tadpole.{name}")).unwrap();
    let mut bytes = [0; 8];
    file.read_exact_at(&mut bytes, offset as u64).unwrap();
    u64::from_le_bytes(bytes)
}

#[test]
fn dead_letters_counted_by_the_consumer_are_read_by_another_mapping_and_at_their_offsets() {
    let name = unique("offsets");
    let _unlink = Unlink(name.clone());
    let created = RingBuilder::new(4096).create_named(&name).unwrap();
    let other = Segment::open(&name).unwrap();
    assert_eq!(other.status().consumed.dead_letters(), 0, "a new ring has none");
    let consumer = created.consumer().unwrap();
    consumer.count_dead_letter(DeadLetterReason::Malformed);
    consumer.count_dead_letter(DeadLetterReason::Malformed);
    consumer.count_dead_letter(DeadLetterReason::Undeliverable);
    let seen = other.status().consumed;
    assert_eq!((seen.dead_letters_malformed, seen.dead_letters_undeliverable, seen.dead_letters()), (2, 1, 3));
    assert_eq!(file_u64(&name, field::DEAD_LETTERS_MALFORMED), 2);
    assert_eq!(file_u64(&name, field::DEAD_LETTERS_UNDELIVERABLE), 1);
    // Their own cache line: none of the counters the receive path writes shares it.
    const { assert!(field::DEAD_LETTERS_MALFORMED % 64 == 0 && field::LEASE_CAPACITY < field::DEAD_LETTERS_MALFORMED) };
}

#[test]
fn a_ring_s_dead_letters_outlive_the_consumer_that_counted_them() {
    let segment = RingBuilder::new(4096).create_anonymous().unwrap();
    segment.consumer().unwrap().count_dead_letter(DeadLetterReason::Undeliverable);
    let next = segment.consumer().unwrap();
    assert_eq!(segment.status().consumed.dead_letters_undeliverable, 1, "a new consumer starts from the ring's count");
    next.count_dead_letter(DeadLetterReason::Undeliverable);
    assert_eq!(segment.status().consumed.dead_letters(), 2);
}

#[test]
fn a_guard_counts_its_record_as_a_dead_letter_while_in_hand() {
    let segment = RingBuilder::new(4096).create_anonymous().unwrap();
    let (mut producer, mut consumer) = (segment.producer().unwrap(), segment.consumer().unwrap());
    producer.try_send(b"garbage").unwrap();
    let guard = consumer.try_recv().unwrap();
    guard.count_dead_letter(DeadLetterReason::Malformed);
    drop(guard);
    assert_eq!(segment.status().consumed.dead_letters_malformed, 1);
    assert_eq!(segment.status().head, segment.status().tail, "counting does not keep the record");
}

#[test]
fn hostile_dead_letter_counts_are_read_and_added_to_without_a_panic() {
    let name = unique("hostile");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(4096).create_named(&name).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap();
    for offset in [field::DEAD_LETTERS_MALFORMED, field::DEAD_LETTERS_UNDELIVERABLE] {
        file.write_all_at(&u64::MAX.to_le_bytes(), offset as u64).unwrap();
    }
    let counters = segment.status().consumed;
    assert_eq!(counters.dead_letters(), u64::MAX - 1, "the sum wraps like the counters do");
    segment.consumer().unwrap().count_dead_letter(DeadLetterReason::Malformed);
    assert_eq!(segment.status().consumed.dead_letters_malformed, 0, "the count wraps");
}
