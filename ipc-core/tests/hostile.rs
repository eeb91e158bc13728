//! Shared memory is hostile input. Segment files with every header field wrong, truncated or
//! random; positions that contradict; garbage in the data region where the consumer reads next.
//! Each must end in a typed error (`OpenError`, `AttachError`, `TrySendError::Corrupt`,
//! `TryRecvError::Corrupt`), never a panic, a hang or a read outside the segment.
//!
//! Files are written with `std::fs` into `/dev/shm/tadpole.<name>`, the way another process
//! (or a stray tool) would, and removed when each test ends, pass or fail.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use ipc_core::layout::{
    FLAG_COMMITTED, HEADER_LEN, LAYOUT_VERSION, MAGIC, MAX_CAPACITY, encode_header, max_message_len_for, offsets,
};
use ipc_core::{
    AttachError, CorruptReason, OpenError, PayloadAlign, RecvTimeoutError, RingBuilder, Segment, SegmentFault,
    TryRecvError, TrySendError,
};
use proptest::prelude::*;

/// Byte offsets of the descriptor's fields, as the crate names them.
use offsets::descriptor as field;

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("hostile-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A segment file in /dev/shm, written and read as plain bytes; removed on drop.
struct ShmFile {
    name: String,
    path: PathBuf,
}

impl ShmFile {
    fn new(tag: &str) -> ShmFile {
        let name = unique(tag);
        let path = PathBuf::from(format!("/dev/shm/tadpole.{name}"));
        ShmFile { name, path }
    }

    fn write_all(&self, bytes: &[u8]) {
        std::fs::write(&self.path, bytes).unwrap();
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) {
        let file = std::fs::OpenOptions::new().write(true).open(&self.path).unwrap();
        file.write_all_at(bytes, offset).unwrap();
    }

    fn write_u64(&self, offset: usize, value: u64) {
        self.write_at(offset as u64, &value.to_le_bytes());
    }

    /// Writes a record header word into the data region at ring position `pos`.
    fn write_record_word(&self, capacity: u64, pos: u64, word: u64) {
        self.write_at(HEADER_LEN as u64 + (pos & (capacity - 1)), &word.to_le_bytes());
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The bytes of a freshly created, valid segment (as its creator wrote them).
fn valid_image(capacity: usize, align: PayloadAlign) -> Vec<u8> {
    let file = ShmFile::new("image");
    let segment = RingBuilder::new(capacity).payload_align(align).create_named(&file.name).unwrap();
    let bytes = std::fs::read(&file.path).unwrap();
    drop(segment);
    assert_eq!(bytes.len(), HEADER_LEN + capacity);
    bytes
}

fn put_u32(image: &mut [u8], offset: usize, value: u32) {
    image[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(image: &mut [u8], offset: usize, value: u64) {
    image[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Opens the file as a segment and, if it is accepted, uses it as a ring: attach both sides,
/// drain, send, drain again. Returns what `open` said. Panics (failing the test) only if the
/// library panics or a call returns an error of a kind it must not.
fn open_and_exercise(file: &ShmFile) -> Result<(), OpenError> {
    let segment = Segment::open(&file.name)?;
    let _ = segment.status();
    exercise(&segment);
    Ok(())
}

fn exercise(segment: &Segment) {
    let mut consumer = match segment.consumer() {
        Ok(c) => c,
        // Busy: a scribbled owner word may name a live process.
        Err(AttachError::Corrupt(_) | AttachError::Busy { .. }) => return,
    };
    let drain = |consumer: &mut ipc_core::Consumer| {
        // Every record is at least 8 bytes, so a ring holds at most capacity / 8 of them.
        for _ in 0..segment.capacity() / 8 + 2 {
            match consumer.try_recv() {
                Ok(msg) => assert!(msg.len() <= segment.max_message_len()),
                Err(TryRecvError::Empty | TryRecvError::Disconnected | TryRecvError::Corrupt { .. }) => return,
                Err(e) => panic!("try_recv: {e}"),
            }
        }
        panic!("drained more records than the ring can hold");
    };
    drain(&mut consumer);
    let mut producer = match segment.producer() {
        Ok(p) => p,
        Err(AttachError::Corrupt(_) | AttachError::Busy { .. }) => return,
    };
    for len in [0, 1, 100, segment.max_message_len()] {
        match producer.try_send(&vec![0x5A; len]) {
            Ok(()) | Err(TrySendError::Full | TrySendError::TooLarge { .. } | TrySendError::Corrupt(_)) => {}
            Err(e) => panic!("try_send: {e}"),
        }
    }
    drain(&mut consumer);
}

// ---------------------------------------------------------------------------------------------
// Headers.

#[derive(Clone, Debug)]
enum Mutation {
    Magic(u64),
    Version(u32),
    HeaderLen(u32),
    Capacity(u64),
    SegmentLen(u64),
    MaxMessageLen(u32),
    PayloadAlign(u32),
    Positions {
        head: u64,
        tail: u64,
    },
    /// Random bytes over part of the header page (magic kept, so validation goes deeper).
    Scribble {
        offset: usize,
        bytes: Vec<u8>,
    },
    TruncateTo(usize),
    ExtendBy(usize),
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u32..64).prop_map(|b| 1u64 << b),
        (0u32..64, -8i64..8).prop_map(|(b, d)| (1u64 << b).wrapping_add(d as u64)),
        Just(0),
        Just(u64::MAX),
    ]
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), (0u32..32).prop_map(|b| 1u32 << b), Just(0), Just(u32::MAX), 0u32..100]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        interesting_u64().prop_map(Mutation::Magic),
        interesting_u32().prop_map(Mutation::Version),
        interesting_u32().prop_map(Mutation::HeaderLen),
        prop_oneof![interesting_u64(), Just(MAX_CAPACITY), Just(MAX_CAPACITY * 2), Just(4095), Just(6144)]
            .prop_map(Mutation::Capacity),
        interesting_u64().prop_map(Mutation::SegmentLen),
        interesting_u32().prop_map(Mutation::MaxMessageLen),
        prop_oneof![interesting_u32(), Just(8u32), Just(64u32), Just(16u32), Just(4096u32)]
            .prop_map(Mutation::PayloadAlign),
        // Positions below 2^62: what a ring can reach in practice (see the test near u64::MAX).
        (0u64..1 << 62, 0u64..1 << 62, any::<bool>(), 0u64..3 * 4096).prop_map(|(a, b, related, d)| {
            if related {
                Mutation::Positions { head: a, tail: a.wrapping_add(d) }
            } else {
                Mutation::Positions { head: a, tail: b }
            }
        }),
        (0usize..1152, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(offset, bytes)| Mutation::Scribble { offset: offset.max(8), bytes }),
        (0usize..2 * 4096 + 100).prop_map(Mutation::TruncateTo),
        (1usize..8192).prop_map(Mutation::ExtendBy),
    ]
}

/// Applies the mutation and says which fault `open` must report (`None`: any outcome is fine,
/// including success, as long as it is not a panic).
fn apply(image: &mut Vec<u8>, m: &Mutation) -> Option<SegmentFault> {
    let capacity = (image.len() - HEADER_LEN) as u64;
    let size = image.len() as u64;
    match *m {
        Mutation::Magic(v) => {
            put_u64(image, field::MAGIC, v);
            match v {
                0 => Some(SegmentFault::NotInitialized),
                MAGIC => None,
                v => Some(SegmentFault::BadMagic(v)),
            }
        }
        Mutation::Version(v) => {
            put_u32(image, field::LAYOUT_VERSION, v);
            (v != LAYOUT_VERSION).then_some(SegmentFault::UnsupportedVersion { found: v, supported: LAYOUT_VERSION })
        }
        Mutation::HeaderLen(v) => {
            put_u32(image, field::HEADER_LEN, v);
            (v as usize != HEADER_LEN).then_some(SegmentFault::BadField { field: "header_len", value: v.into() })
        }
        Mutation::Capacity(v) => {
            put_u64(image, field::CAPACITY, v);
            if !v.is_power_of_two() || !(4096..=MAX_CAPACITY).contains(&v) {
                Some(SegmentFault::BadField { field: "capacity", value: v })
            } else if v != capacity {
                Some(SegmentFault::BadField { field: "segment_len", value: size })
            } else {
                None
            }
        }
        Mutation::SegmentLen(v) => {
            put_u64(image, field::SEGMENT_LEN, v);
            (v != size).then_some(SegmentFault::BadField { field: "segment_len", value: v })
        }
        Mutation::MaxMessageLen(v) => {
            put_u32(image, field::MAX_MESSAGE_LEN, v);
            (u64::from(v) > max_message_len_for(capacity))
                .then_some(SegmentFault::BadField { field: "max_message_len", value: v.into() })
        }
        Mutation::PayloadAlign(v) => {
            put_u32(image, field::PAYLOAD_ALIGN, v);
            (v != 8 && v != 64).then_some(SegmentFault::BadField { field: "payload_align", value: v.into() })
        }
        Mutation::Positions { head, tail } => {
            put_u64(image, offsets::CONSUMER_POSITION, head);
            put_u64(image, offsets::PRODUCER_POSITION, tail);
            let bad = head > tail || tail - head > capacity || head % 8 != 0 || tail % 8 != 0;
            bad.then_some(SegmentFault::Positions { head, tail, capacity })
        }
        Mutation::Scribble { offset, ref bytes } => {
            let end = (offset + bytes.len()).min(1152);
            image[offset..end].copy_from_slice(&bytes[..end - offset]);
            None
        }
        Mutation::TruncateTo(len) => {
            let len = len.min(image.len() - 1);
            image.truncate(len);
            let expected = if len < HEADER_LEN { HEADER_LEN as u64 } else { size };
            Some(SegmentFault::SizeMismatch { expected, actual: len as u64 })
        }
        Mutation::ExtendBy(n) => {
            image.resize(image.len() + n, 0xAB);
            Some(SegmentFault::SizeMismatch { expected: size, actual: image.len() as u64 })
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn a_header_with_one_field_wrong_is_refused_with_that_fault(
        align in prop::sample::select(vec![PayloadAlign::Eight, PayloadAlign::SixtyFour]),
        m in mutation(),
    ) {
        let mut image = valid_image(4096, align);
        let expected = apply(&mut image, &m);
        let file = ShmFile::new("field");
        file.write_all(&image);
        let outcome = catch_unwind(AssertUnwindSafe(|| open_and_exercise(&file)));
        let outcome = outcome.map_err(|_| TestCaseError::fail("Segment::open or the ring panicked"))?;
        match (expected, outcome) {
            (None, _) => {}
            (Some(fault), Err(OpenError::Invalid(got))) => prop_assert_eq!(got, fault),
            (Some(fault), other) => prop_assert!(false, "expected {:?}, got {:?}", fault, other.err()),
        }
    }

    #[test]
    fn random_bytes_are_refused_with_a_typed_error(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..10_000),
            prop::collection::vec(any::<u8>(), 8192..=8192),
        ],
        keep_magic in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if keep_magic && bytes.len() >= 8 {
            put_u64(&mut bytes, field::MAGIC, MAGIC);
        }
        let file = ShmFile::new("random");
        file.write_all(&bytes);
        let outcome = catch_unwind(AssertUnwindSafe(|| open_and_exercise(&file)));
        match outcome {
            Ok(Err(OpenError::Invalid(_))) => {}
            Ok(other) => prop_assert!(false, "random bytes gave {:?}", other),
            Err(_) => prop_assert!(false, "Segment::open panicked"),
        }
    }
}

#[test]
fn empty_and_missing_files_are_refused_with_typed_errors() {
    let file = ShmFile::new("empty");
    file.write_all(&[]);
    assert!(matches!(
        Segment::open(&file.name),
        Err(OpenError::Invalid(SegmentFault::SizeMismatch { expected: 4096, actual: 0 }))
    ));
    drop(file);
    assert!(matches!(Segment::open(&unique("missing")), Err(OpenError::NotFound(_))));
}

/// A refused file is refused from its header: opening it must not commit memory for all of it.
#[test]
fn opening_a_large_hostile_file_does_not_populate_it() {
    let file = ShmFile::new("sparse");
    let f = std::fs::File::create(&file.path).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&0xDEAD_BEEFu64.to_le_bytes(), 0).unwrap();
    assert!(matches!(Segment::open(&file.name), Err(OpenError::Invalid(SegmentFault::BadMagic(0xDEAD_BEEF)))));
    let allocated = f.metadata().unwrap().blocks() * 512;
    assert!(allocated <= 1 << 20, "Segment::open allocated {allocated} bytes of shared memory for a file it refused");
}

// ---------------------------------------------------------------------------------------------
// Positions.

#[test]
fn contradicting_positions_are_refused_at_open_and_at_attach() {
    let capacity = 4096u64;
    // A head somewhat ahead of the stored tail is legal (a producer killed between publishing and
    // storing its tail); more than a ring apart is not.
    for (head, tail) in [(capacity + 16, 8), (0, capacity + 8), (4, 8), (8, 12), (1 << 40, 0)] {
        let file = ShmFile::new("positions");
        let segment = RingBuilder::new(capacity as usize).create_named(&file.name).unwrap();
        file.write_u64(offsets::CONSUMER_POSITION, head);
        file.write_u64(offsets::PRODUCER_POSITION, tail);
        let fault = SegmentFault::Positions { head, tail, capacity };
        assert!(matches!(Segment::open(&file.name), Err(OpenError::Invalid(ref f)) if *f == fault));
        assert_eq!(segment.producer().err(), Some(AttachError::Corrupt(fault.clone())));
        assert_eq!(segment.consumer().err(), Some(AttachError::Corrupt(fault)));
        // Refusing detached again: once the positions are repaired, both sides attach.
        file.write_u64(offsets::CONSUMER_POSITION, 0);
        file.write_u64(offsets::PRODUCER_POSITION, 0);
        assert!(segment.producer().is_ok() && segment.consumer().is_ok());
    }
}

#[test]
fn producer_refuses_a_consumer_position_moved_past_its_tail() {
    let file = ShmFile::new("head-jump");
    let segment = RingBuilder::new(4096).create_named(&file.name).unwrap();
    let (mut p, _c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    while p.try_send(&[1; 100]).is_ok() {}
    let tail = segment.status().tail;
    file.write_u64(offsets::CONSUMER_POSITION, tail + 4096);
    match p.try_send(&[1; 100]) {
        Err(TrySendError::Corrupt(SegmentFault::Positions { head, .. })) => assert_eq!(head, tail + 4096),
        other => panic!("expected TrySendError::Corrupt, got {other:?}"),
    }
    let st = segment.status();
    assert_eq!(st.tail, tail, "nothing written over unreleased data");
}

/// Positions near 2^64 cannot be reached by a real ring (that is 16 EiB of traffic), only
/// written by a hostile process. The ring must refuse them or work; here `try_send` panics on
/// arithmetic overflow (debug builds) or reports success for a message the consumer never
/// sees (release builds).
#[test]
fn positions_near_u64_max_are_refused_or_carry_messages_without_panic() {
    let file = ShmFile::new("u64-max");
    let creator = RingBuilder::new(4096).create_named(&file.name).unwrap();
    let far = u64::MAX - 7;
    file.write_u64(offsets::CONSUMER_POSITION, far);
    file.write_u64(offsets::PRODUCER_POSITION, far);
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<&'static str, String> {
        let segment = match Segment::open(&file.name) {
            Err(OpenError::Invalid(_)) => return Ok("refused at open"),
            Err(e) => return Err(format!("open: {e}")),
            Ok(s) => s,
        };
        let (mut p, mut c) = match (segment.producer(), segment.consumer()) {
            (Err(AttachError::Corrupt(_)), _) | (_, Err(AttachError::Corrupt(_))) => return Ok("refused at attach"),
            (Ok(p), Ok(c)) => (p, c),
            (p, c) => return Err(format!("attach: {:?} {:?}", p.err(), c.err())),
        };
        for i in 0..4u8 {
            match p.try_send(&[i; 100]) {
                Ok(()) => match c.try_recv() {
                    Ok(msg) => assert_eq!(&*msg, &[i; 100]),
                    Err(e) => return Err(format!("message {i} sent but not received: {e}")),
                },
                Err(TrySendError::Corrupt(_)) => return Ok("refused at send"),
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        Ok("carried messages")
    }));
    drop(creator);
    match outcome {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("positions near u64::MAX: {e}"),
        Err(_) => panic!("positions near u64::MAX: the ring panicked"),
    }
}

/// Both sides restore their counters from the segment when they attach and count on from
/// there; counters a hostile process set near 2^64 must not turn into an overflow panic.
/// (Found by the `open_segment` fuzz target.)
#[test]
fn counters_near_u64_max_in_a_hostile_segment_do_not_panic() {
    let file = ShmFile::new("counters");
    let creator = RingBuilder::new(4096).create_named(&file.name).unwrap();
    for i in 0..7 {
        file.write_u64(offsets::PRODUCER_COUNTERS + 8 * i, u64::MAX);
    }
    for i in 0..6 {
        file.write_u64(offsets::CONSUMER_COUNTERS + 8 * i, u64::MAX);
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let segment = Segment::open(&file.name).unwrap();
        let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
        assert_eq!(c.try_recv().err(), Some(TryRecvError::Empty));
        p.try_send(b"counted").unwrap();
        assert_eq!(&*c.try_recv().unwrap(), b"counted");
        assert!(p.try_send(&[0; 4096]).is_err());
    }));
    drop(creator);
    assert!(outcome.is_ok(), "the ring panicked on counters read from the segment");
}

/// The consumer re-reads the shared head when a record looks too long for its own; a hostile
/// head there must give `Corrupt`, not an arithmetic panic.
#[test]
fn hostile_consumer_position_gives_corrupt_not_a_panic() {
    let file = ShmFile::new("head-hostile");
    let segment = RingBuilder::new(4096).create_named(&file.name).unwrap();
    let mut c = segment.consumer().unwrap();
    // A padding record filling the whole ring at position 0 ...
    file.write_record_word(4096, 0, encode_header(0, 4096 - 8, 0, true));
    // ... and a head far ahead of it.
    file.write_u64(offsets::CONSUMER_POSITION, 1 << 40);
    let outcome = catch_unwind(AssertUnwindSafe(|| c.try_recv().map(|m| m.len())));
    match outcome {
        Ok(Err(TryRecvError::Corrupt { .. })) => {}
        Ok(other) => panic!("expected Corrupt, got {other:?}"),
        Err(_) => panic!("try_recv panicked on a hostile head"),
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

const CAP: u64 = 4096;

/// A ring with good messages before the position under test. Returns the segment, its file,
/// the producer and consumer, the good payloads and the ring position the consumer reads right
/// after them (where the garbage goes).
struct Scene {
    file: ShmFile,
    segment: Segment,
    producer: ipc_core::Producer,
    consumer: ipc_core::Consumer,
    good: Vec<Vec<u8>>,
    /// Where the first good message starts (everything before it is released).
    start: u64,
    target: u64,
}

/// `advance_to`: first move the positions to this offset of the ring (with messages sent and
/// received) so records near the end of the data region can be tested.
fn scene(align: PayloadAlign, advance_to: u64, after: usize) -> Scene {
    let file = ShmFile::new("records");
    let segment = RingBuilder::new(CAP as usize).payload_align(align).create_named(&file.name).unwrap();
    let (mut producer, mut consumer) = (segment.producer().unwrap(), segment.consumer().unwrap());
    while segment.status().tail < advance_to {
        producer.try_send(&[0; 40]).unwrap();
        drop(consumer.try_recv().unwrap());
    }
    let start = segment.status().tail;
    let good: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 3 + usize::from(i)]).collect();
    for g in &good {
        producer.try_send(g).unwrap();
    }
    let target = segment.status().tail;
    // Messages behind the garbage: they must never be delivered.
    for _ in 0..after {
        producer.try_send(b"behind").unwrap();
    }
    Scene { file, segment, producer, consumer, good, start, target }
}

impl Scene {
    fn receive_good(&mut self) {
        for g in &self.good {
            assert_eq!(&*self.consumer.try_recv().expect("messages before the garbage arrive"), &g[..]);
        }
    }

    fn corrupt_count(&self) -> u64 {
        self.segment.status().consumed.corrupt_records
    }
}

/// Writes `word` where the consumer reads next and checks it is refused with `reason`, after
/// the good messages, by every receive call, counted once, without touching what lies behind.
fn refused_with(align: PayloadAlign, advance_to: u64, word: impl Fn(u64) -> u64, reason: CorruptReason) {
    let mut s = scene(align, advance_to, 2);
    s.file.write_record_word(CAP, s.target, word(s.target));
    s.receive_good();
    let expected = TryRecvError::Corrupt { position: s.target, reason };
    assert_eq!(s.consumer.try_recv().err(), Some(expected.clone()));
    assert_eq!(s.corrupt_count(), 1);
    // The consumer stays stopped at the bad record, whichever way it is asked.
    assert_eq!(s.consumer.try_recv().err(), Some(expected.clone()));
    assert_eq!(
        s.consumer.recv_timeout(Duration::from_secs(5)).err(),
        Some(RecvTimeoutError::Corrupt { position: s.target, reason })
    );
    assert_eq!(s.consumer.read_batch(10).err(), Some(expected));
    assert_eq!(s.corrupt_count(), 1, "one corrupt record, counted once");
    let st = s.segment.status();
    assert!(st.head <= s.target, "nothing released past the corrupt record: {st:?}");
    drop(s.producer);
}

#[test]
fn record_longer_than_the_maximum_is_corrupt() {
    let max = max_message_len_for(CAP) as u32;
    refused_with(PayloadAlign::Eight, 0, |pos| encode_header(pos, max + 1, 0, false), CorruptReason::TooLong(max + 1));
    refused_with(
        PayloadAlign::Eight,
        0,
        |pos| encode_header(pos, u32::MAX, 9, false),
        CorruptReason::TooLong(u32::MAX),
    );
}

#[test]
fn record_running_past_the_end_of_the_data_region_is_corrupt() {
    let max = max_message_len_for(CAP) as u32;
    // The read position is beyond capacity - max, so a maximum-length record cannot fit.
    refused_with(PayloadAlign::Eight, 2400, |pos| encode_header(pos, max, 0, false), CorruptReason::OutOfBounds);
}

#[test]
fn padding_running_past_the_end_of_the_data_region_is_corrupt() {
    refused_with(PayloadAlign::Eight, 0, |pos| encode_header(pos, CAP as u32, 0, true), CorruptReason::OutOfBounds);
    refused_with(
        PayloadAlign::SixtyFour,
        1000,
        |pos| encode_header(pos, u32::MAX, 0, true),
        CorruptReason::OutOfBounds,
    );
}

#[test]
fn record_written_for_another_position_is_corrupt() {
    refused_with(PayloadAlign::Eight, 0, |pos| encode_header(pos + 8, 3, 0, false), CorruptReason::WrongPosition);
    // A header written for a position 1 KiB further on.
    refused_with(PayloadAlign::Eight, 0, |pos| encode_header(pos + 1024, 3, 0, false), CorruptReason::WrongPosition);
}

#[test]
fn record_with_unknown_or_missing_flags_is_corrupt() {
    refused_with(PayloadAlign::Eight, 0, |pos| encode_header(pos, 3, 0, false) | 1 << 50, CorruptReason::BadFlags);
    refused_with(PayloadAlign::Eight, 0, |pos| encode_header(pos, 3, 0, false) | 1 << 55, CorruptReason::BadFlags);
    refused_with(
        PayloadAlign::Eight,
        0,
        |pos| encode_header(pos, 3, 0, false) & !FLAG_COMMITTED,
        CorruptReason::BadFlags,
    );
    refused_with(PayloadAlign::Eight, 0, |_| 5, CorruptReason::BadFlags);
}

#[test]
fn misaligned_payload_on_a_sixty_four_aligned_ring_is_corrupt() {
    let s = scene(PayloadAlign::SixtyFour, 0, 0);
    assert_ne!((s.target + 8) % 64, 0, "the test needs a read position where no payload may start");
    drop(s);
    refused_with(PayloadAlign::SixtyFour, 0, |pos| encode_header(pos, 3, 0, false), CorruptReason::Misaligned);
    // Padding that leads to a misaligned record: reported at the record.
    let mut s = scene(PayloadAlign::SixtyFour, 0, 0);
    let pos = s.target;
    s.file.write_record_word(CAP, pos + 8, encode_header(pos + 8, 3, 0, false));
    s.file.write_record_word(CAP, pos, encode_header(pos, 0, 0, true));
    s.receive_good();
    let err = s.consumer.try_recv().err();
    assert_eq!(err, Some(TryRecvError::Corrupt { position: pos + 8, reason: CorruptReason::Misaligned }));
}

#[test]
fn corrupt_record_met_inside_a_read_batch_is_delivered_after_the_good_ones_and_counted_once() {
    let mut s = scene(PayloadAlign::Eight, 0, 2);
    s.file.write_record_word(CAP, s.target, encode_header(s.target, 3, 0, false) | 1 << 51);
    {
        let batch = s.consumer.read_batch(100).expect("the good messages come first");
        let got: Vec<Vec<u8>> = batch.iter().map(|r| r.payload.to_vec()).collect();
        assert_eq!(got, s.good);
    }
    let expected = TryRecvError::Corrupt { position: s.target, reason: CorruptReason::BadFlags };
    assert_eq!(s.consumer.read_batch(100).err(), Some(expected.clone()));
    assert_eq!(s.consumer.try_recv().err(), Some(expected));
    assert_eq!(s.corrupt_count(), 1, "one corrupt record, counted once");
}

/// The check byte is the low byte of `position / 8`, which repeats every 2048 bytes, and every
/// capacity is a multiple of 2048: a header left from an earlier lap always passes the check.
/// One bad padding word that lands the consumer on such a header makes it deliver old
/// messages again, lap after lap, its head running past the producer's tail unnoticed.
#[test]
fn records_of_an_earlier_lap_are_not_delivered_again() {
    let file = ShmFile::new("stale-lap");
    let segment = RingBuilder::new(CAP as usize).create_named(&file.name).unwrap();
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    // 100 distinct 40-byte messages (48-byte records): a lap and a bit, all received.
    for i in 0..100u8 {
        p.try_send(&[i; 40]).unwrap();
        assert_eq!(&*c.try_recv().unwrap(), &[i; 40]);
    }
    p.try_send(b"good").unwrap();
    let target = segment.status().tail;
    assert!(target > CAP && target - CAP < 2000, "one lap and a bit: {target}");
    // A padding record over the zeroed slot, ending where a record of lap 0 (at a multiple of
    // 48 from the start of the region) still lies.
    let offset = target & (CAP - 1);
    let stale = target - offset + (offset / 48 + 1) * 48;
    file.write_record_word(CAP, target, encode_header(target, (stale - target - 8) as u32, 0, true));
    assert_eq!(&*c.try_recv().unwrap(), b"good");
    let next = c.try_recv().map(|m| m.to_vec());
    let st = segment.status();
    assert!(
        !matches!(next, Ok(ref m) if m.len() == 40),
        "the consumer delivered message {:?} of an earlier lap again (head {} now past tail {})",
        next.as_ref().map(|m| m[0]),
        st.head,
        st.tail
    );
}

/// `ReadBatch::iter` reads the record headers again from shared memory. A hostile process that
/// rewrites a header after `read_batch` validated it must not make the iterator hand out a
/// payload longer than the validated record (in the limit: beyond the mapping).
#[test]
fn read_batch_iterator_does_not_trust_headers_rewritten_after_validation() {
    let file = ShmFile::new("toctou");
    let segment = RingBuilder::new(CAP as usize).create_named(&file.name).unwrap();
    let (mut p, mut c) = (segment.producer().unwrap(), segment.consumer().unwrap());
    p.try_send(&[1; 16]).unwrap();
    p.try_send(&[2; 16]).unwrap();
    let batch = c.read_batch(10).unwrap();
    assert_eq!(batch.len(), 2);
    // Rewritten in place: committed, right check byte, a length the ring would refuse. (Kept
    // inside the mapping, so the test itself reads nothing out of bounds.)
    file.write_record_word(CAP, 0, encode_header(0, 3000, 0, false));
    let lens: Vec<usize> = batch.iter().map(|r| r.payload.len()).collect();
    assert!(
        lens.iter().all(|&len| len <= 16) && lens.len() <= 2,
        "the iterator must hand out no more than read_batch validated: {lens:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Any word where the consumer reads next: delivered as a message if it happens to be a
    /// valid header, otherwise `Corrupt` (or `Empty` for zero); never a panic.
    #[test]
    fn any_header_word_at_the_read_position_is_a_message_or_corrupt(
        word in prop_oneof![
            any::<u64>(),
            // Plausible: small length, committed and padding flags in any combination.
            (any::<u32>(), any::<u16>(), 0u64..4).prop_map(|(len, ty, flags)| {
                u64::from(len % 4096) | u64::from(ty) << 32 | flags << 48
            }),
        ],
        fix_check_byte in any::<bool>(),
        align in prop::sample::select(vec![PayloadAlign::Eight, PayloadAlign::SixtyFour]),
        advance_to in 0u64..8192,
    ) {
        let mut s = scene(align, advance_to, 2);
        let word = if fix_check_byte { (word & !(0xFF << 56)) | ((s.target >> 3) & 0xFF) << 56 } else { word };
        s.file.write_record_word(CAP, s.target, word);
        s.receive_good();
        let before = s.corrupt_count();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut results = Vec::new();
            for _ in 0..CAP / 8 + 2 {
                match s.consumer.try_recv() {
                    Ok(msg) => {
                        assert!(msg.len() <= s.segment.max_message_len());
                        results.push(Ok(msg.len()));
                    }
                    Err(e) => {
                        results.push(Err(e));
                        break;
                    }
                }
            }
            results
        }));
        let results = outcome.map_err(|_| TestCaseError::fail("try_recv panicked"))?;
        // A valid-looking padding word may lead the consumer into records of an earlier lap, which
        // it then delivers without end (see `records_of_an_earlier_lap_are_not_delivered_again`):
        // here only "no panic, typed errors, counted" is asserted.
        match results.last() {
            Some(Err(TryRecvError::Corrupt { .. })) => prop_assert_eq!(s.corrupt_count(), before + 1),
            Some(Err(TryRecvError::Empty)) | Some(Ok(_)) => prop_assert_eq!(s.corrupt_count(), before),
            other => prop_assert!(false, "consumer ended with {:?}", other),
        }
    }

    /// Garbage over a whole stretch of the data region from the read position on.
    #[test]
    fn garbage_over_the_data_region_never_panics_the_consumer(
        garbage in prop::collection::vec(any::<u8>(), 8..4096),
        align in prop::sample::select(vec![PayloadAlign::Eight, PayloadAlign::SixtyFour]),
        advance_to in 0u64..8192,
        batch in any::<bool>(),
    ) {
        let mut s = scene(align, advance_to, 4);
        // From the read position to the end of the data region, but not over the unread good
        // messages a lap behind.
        let offset = s.target & (CAP - 1);
        let len = garbage.len().min((CAP - offset) as usize).min((CAP - (s.target - s.start)) as usize);
        s.file.write_at(HEADER_LEN as u64 + offset, &garbage[..len]);
        s.receive_good();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            for _ in 0..CAP / 8 + 2 {
                let result = if batch {
                    s.consumer.read_batch(7).map(|b| b.iter().map(|r| r.payload.len()).max().unwrap_or(0))
                } else {
                    s.consumer.try_recv().map(|m| m.len())
                };
                match result {
                    Ok(len) => assert!(len <= s.segment.max_message_len()),
                    Err(TryRecvError::Empty | TryRecvError::Corrupt { .. }) => return,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }));
        prop_assert!(outcome.is_ok(), "the consumer panicked on garbage");
    }
}

// ---------------------------------------------------------------------------------------------
// Crash states forged in the header: a producer killed at each point of a commit. The next
// producer must find the exact frontier (position and message count) from what is in memory.

/// Offsets of frontier slot `i`'s words: (end, messages).
fn frontier_slot(i: usize) -> (usize, usize) {
    let base = offsets::producer_position::FRONTIER + i * offsets::producer_position::FRONTIER_SLOT_LEN;
    (base, base + 8)
}

fn read_u64(file: &ShmFile, offset: usize) -> u64 {
    let f = std::fs::File::open(&file.path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset as u64).unwrap();
    u64::from_le_bytes(b)
}

/// Ten one-message commits of 24-byte records, received or not; returns the file, the segment,
/// and the start of the last record.
fn ten_commits(receive: bool) -> (ShmFile, Segment, u64) {
    let file = ShmFile::new("frontier");
    let segment = RingBuilder::new(4096).create_named(&file.name).unwrap();
    let mut consumer = segment.consumer().unwrap();
    let mut producer = segment.producer().unwrap();
    let mut last = 0;
    for i in 0..10u64 {
        let mut grant = producer.try_reserve(16).unwrap();
        last = grant.position();
        grant.copy_from_slice(&[i as u8; 16]);
        grant.commit();
        if receive {
            drop(consumer.try_recv().unwrap());
        }
    }
    assert_eq!(producer.frontier().messages, 10);
    drop(producer);
    drop(consumer);
    (file, segment, last)
}

/// The slot holding the newest frontier (the higher end).
fn newest_slot(file: &ShmFile) -> usize {
    if read_u64(file, frontier_slot(1).0) > read_u64(file, frontier_slot(0).0) { 1 } else { 0 }
}

#[test]
fn killed_before_or_while_recording_the_frontier_nothing_is_miscounted() {
    for receive in [false, true] {
        // Killed after publishing the last record, with the newest slot half written: its end
        // stored, its count not.
        let (file, segment, last) = ten_commits(receive);
        file.write_u64(frontier_slot(newest_slot(&file)).1, 123_456);
        file.write_u64(offsets::producer_position::POSITION, last);
        let producer = segment.producer().unwrap();
        assert_eq!(producer.frontier().messages, 10, "torn slot, received: {receive}");
        assert_eq!(producer.frontier().position, last + 24);
        drop(producer);
        drop(segment);
        // Killed before touching the slot: it still holds the commit before the previous one.
        let (file, segment, last) = ten_commits(receive);
        let newest = newest_slot(&file);
        file.write_u64(frontier_slot(newest).0, last - 24);
        file.write_u64(frontier_slot(newest).1, 8);
        file.write_u64(offsets::producer_position::POSITION, last);
        let producer = segment.producer().unwrap();
        assert_eq!(producer.frontier().messages, 10, "unwritten slot, received: {receive}");
        assert_eq!(producer.frontier().position, last + 24);
    }
}

#[test]
fn killed_after_the_frontier_but_before_the_tail_store_nothing_is_counted_twice() {
    for receive in [false, true] {
        let (file, segment, last) = ten_commits(receive);
        file.write_u64(offsets::producer_position::POSITION, last);
        let producer = segment.producer().unwrap();
        assert_eq!(producer.frontier().messages, 10, "received: {receive}");
        assert_eq!(producer.frontier().position, last + 24);
    }
}

#[test]
fn a_hostile_frontier_slot_never_breaks_attach_or_the_position() {
    let (file, segment, last) = ten_commits(true);
    for slot in 0..2 {
        let (end, messages) = frontier_slot(slot);
        file.write_u64(end, u64::MAX - 7);
        file.write_u64(messages, u64::MAX);
    }
    let mut producer = segment.producer().unwrap();
    assert_eq!(producer.frontier().position, last + 24, "the position comes from the records");
    // The count is whatever the hostile slot claimed (wrapping, never trapping); sending works.
    producer.try_send(b"after").unwrap();
}

#[test]
fn an_epoch_of_zero_is_refused() {
    let file = ShmFile::new("epoch");
    file.write_all(&valid_image(4096, PayloadAlign::Eight));
    file.write_u64(field::EPOCH, 0);
    assert!(matches!(
        Segment::open(&file.name),
        Err(OpenError::Invalid(SegmentFault::BadField { field: "epoch", value: 0 }))
    ));
}
