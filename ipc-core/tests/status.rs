//! `Segment::status_from_file`: the same status as `Segment::status`, read from the file instead
//! of the mapping, so a file truncated under a reader is an error instead of a SIGBUS.

use ipc_core::{DeadLetterReason, RingBuilder, Segment, StatusReadError};

struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

#[test]
fn status_from_file_reads_what_status_reads_of_a_live_ring() {
    let name = format!("status-file-live-{}", std::process::id());
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 14).create_named(&name).unwrap();
    let (mut producer, mut consumer) = (segment.producer().unwrap(), segment.consumer().unwrap());
    for _ in 0..3 {
        producer.try_send(&[1; 24]).unwrap();
    }
    let _lease = consumer.try_recv().unwrap().into_lease().unwrap();
    consumer.count_dead_letter(DeadLetterReason::Undeliverable);
    let reader = Segment::open(&name).unwrap();
    let from_file = reader.status_from_file().unwrap();
    assert_eq!(from_file, reader.status());
    assert_eq!(from_file.produced.messages, 3);
    assert_eq!(from_file.consumed.leases_held, 1);
    assert_eq!(from_file.consumed.dead_letters_undeliverable, 1);
    assert!(matches!(from_file.producer, ipc_core::PeerState::Attached(_)));
    assert!(from_file.creator_alive);
}

#[test]
fn status_from_file_of_a_ring_truncated_under_its_reader_is_an_error_not_a_sigbus() {
    let name = format!("status-file-truncated-{}", std::process::id());
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 14).create_named(&name).unwrap();
    let reader = Segment::open(&name).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap();
    // The creator stays: its heartbeat thread meets the truncation (a SIGBUS, caught by the
    // library, see `Segment::was_truncated`) and stops refreshing.
    file.set_len(100).unwrap();
    // `reader.status()` would now fault: its header page lies past the end of the file.
    match reader.status_from_file() {
        Err(StatusReadError::Truncated { len: 100 }) => {}
        other => panic!("expected Truncated {{ len: 100 }}, got {other:?}"),
    }
    file.set_len(0).unwrap();
    assert!(matches!(reader.status_from_file(), Err(StatusReadError::Truncated { len: 0 })));
    assert!(segment.was_truncated() && reader.was_truncated());
    drop(segment);
}

#[test]
fn status_from_file_of_a_private_ring_reads_its_mapping() {
    let segment = RingBuilder::new(4096).create_private().unwrap();
    segment.producer().unwrap().try_send(b"p").unwrap();
    assert_eq!(segment.status_from_file().unwrap().produced.messages, 1);
}
