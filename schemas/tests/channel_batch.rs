//! The Arrow channel through real rings: types, zero-copy into shared memory,
//! release order, big batches, hostile frames.

mod common;

use std::ops::Range;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, ListBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow_buffer::Buffer;
use arrow_data::ArrayData;
use arrow_ipc::MessageHeader;
use arrow_schema::{DataType, Field};
use ipc_core::{PayloadAlign, RingBuilder, Segment};
use schemas::arrow_frame::{ArrowFrameEncoder, FrameBuffers, FrameDecodeError};
use schemas::channel::{BatchChannelError, BatchReceiver, BatchRecvError, BatchSendError, BatchSender};

fn ring(capacity: usize) -> RingBuilder {
    RingBuilder::new(capacity).payload_align(PayloadAlign::SixtyFour)
}

fn channel(segment: &Segment) -> (BatchSender, BatchReceiver) {
    (BatchSender::new(segment.producer().unwrap()).unwrap(), BatchReceiver::new(segment.consumer().unwrap()).unwrap())
}

/// Nulls, strings, lists, structs and a dictionary column; `tag` varies the values.
fn mixed_batch(tag: i64) -> RecordBatch {
    let ints = Int64Array::from(vec![Some(tag), None, Some(3), Some(i64::MIN)]);
    let strings = StringArray::from(vec![Some("a"), Some("ünïcode"), None, Some("")]);
    let mut list = ListBuilder::new(Int32Builder::new());
    list.append_value([Some(1), None, Some(3)]);
    list.append_null();
    list.append_value([]);
    list.append_value([Some(4)]);
    let strukt = StructArray::from(vec![
        (
            Arc::new(Field::new("px_e8", DataType::Int64, true)),
            Arc::new(Int64Array::from(vec![Some(10), Some(20), None, Some(40)])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("ok", DataType::Boolean, true)),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false), Some(true)])) as ArrayRef,
        ),
    ]);
    let dict: DictionaryArray<Int32Type> = vec![Some("BTC"), Some("ETH"), None, Some("BTC")].into_iter().collect();
    RecordBatch::try_from_iter([
        ("ints", Arc::new(ints) as ArrayRef),
        ("strings", Arc::new(strings) as ArrayRef),
        ("list", Arc::new(list.finish()) as ArrayRef),
        ("struct", Arc::new(strukt) as ArrayRef),
        ("dict", Arc::new(dict) as ArrayRef),
    ])
    .unwrap()
}

fn int_batch(values: Vec<i64>) -> RecordBatch {
    RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(values)) as ArrayRef)]).unwrap()
}

/// Calls `f` on every non-empty buffer (values, offsets, nulls) of `data` and its children.
fn for_each_buffer(data: &ArrayData, f: &mut impl FnMut(&Buffer)) {
    data.buffers().iter().chain(data.nulls().map(|n| n.buffer())).filter(|b| !b.is_empty()).for_each(&mut *f);
    for child in data.child_data() {
        for_each_buffer(child, f);
    }
}

/// Asserts that every buffer of `batch` lies in `region`, except dictionary
/// values, which the receiver copies out of the ring by design (they must lie
/// outside). Returns how many buffers were checked.
fn assert_all_buffers_within(batch: &RecordBatch, region: &Range<usize>) -> usize {
    let mut checked = 0;
    for column in batch.columns() {
        let data = column.to_data();
        let mut check = |b: &Buffer, data_type: &DataType| {
            assert!(
                common::within(b.as_slice(), region),
                "a {data_type:?} buffer at {:p} (+{}) is outside the shm data region {region:x?}",
                b.as_ptr(),
                b.len()
            );
            assert_eq!(b.as_ptr() as usize % 8, 0, "buffer not 8-byte aligned");
            checked += 1;
        };
        if let DataType::Dictionary(..) = data.data_type() {
            // Keys (and their validity) in shm; values copied out.
            data.buffers().iter().chain(data.nulls().map(|n| n.buffer())).for_each(|b| check(b, data.data_type()));
            for_each_buffer(&data.child_data()[0], &mut |b| {
                assert!(!common::within(b.as_slice(), region), "dictionary values should be a copy");
            });
        } else {
            for_each_buffer(&data, &mut |b| check(b, data.data_type()));
        }
    }
    checked
}

#[test]
fn every_buffer_of_a_received_batch_lies_in_the_shared_memory_data_region() {
    let name = common::unique_name("batch-in-shm");
    let segment = ring(1 << 20).create_named(&name).unwrap();
    let (mut tx, mut rx) = channel(&segment);
    let data = common::data_region(&common::shm_mapping(&name));

    let sent = mixed_batch(1);
    assert_eq!(tx.try_send(&sent).unwrap(), 3, "schema, dictionary, batch frames");
    let got = rx.try_recv().unwrap();
    assert_eq!(got, sent);
    let checked = assert_all_buffers_within(&got, &data);
    assert!(checked >= 12, "only {checked} buffers checked");
    // Primitive columns land 64-byte aligned (frames at 64-aligned payloads).
    let ints = got.column(0).to_data();
    assert_eq!(ints.buffers()[0].as_ptr() as usize % 64, 0);
}

#[test]
fn nulls_strings_lists_structs_and_dictionaries_round_trip_across_laps() {
    let segment = ring(1 << 16).create_anonymous().unwrap();
    let (mut tx, mut rx) = channel(&segment);
    for tag in 0..200 {
        let sent = mixed_batch(tag);
        tx.try_send(&sent).unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(got, sent);
        assert_eq!(got.column(0).null_count(), 1);
        assert_eq!(got.column(1).as_any().downcast_ref::<StringArray>().unwrap().value(1), "ünïcode");
    }
    assert!(segment.status().tail > 4 * (1 << 16), "wrapped several times");
    assert_eq!(rx.dead_letters(), 0);
    assert!(matches!(rx.try_recv(), Err(BatchRecvError::Empty)));
}

#[test]
fn held_batches_stay_intact_while_later_ones_arrive_and_release_on_drop() {
    let segment = ring(1 << 16).create_anonymous().unwrap();
    let (mut tx, mut rx) = channel(&segment);
    tx.try_send(&int_batch(vec![0; 16])).unwrap();
    let first = rx.try_recv().unwrap(); // schema frame released, batch frame held
    let held_at = segment.status().head;

    // More batches pass through, received and dropped at once, some kept as
    // slices; but no space after `first` goes back to the producer, so the
    // ring fills up: backpressure, not overwriting.
    let mut kept = Vec::new();
    let mut n = 0i64;
    loop {
        n += 1;
        assert!(n < 10_000, "the ring never filled up");
        match tx.try_send(&int_batch(vec![n; 16])) {
            Ok(_) => {}
            Err(BatchSendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        let got = rx.try_recv().unwrap();
        if n % 5 == 0 {
            kept.push((n, got.column(0).slice(3, 4))); // a slice keeps the record too
        }
    }
    assert!(n > 20);
    assert_eq!(segment.status().head, held_at, "the first batch holds back every release after it");
    assert_eq!(first, int_batch(vec![0; 16]), "held batch intact");
    for (n, slice) in &kept {
        assert_eq!(slice.as_any().downcast_ref::<Int64Array>().unwrap().values(), &[*n; 4]);
    }

    let clone = first.clone();
    drop(first);
    assert_eq!(segment.status().head, held_at, "a clone still holds it");
    drop(clone);
    let after_first = segment.status().head;
    assert!(after_first > held_at, "released up to the first kept slice");
    assert!(after_first < segment.status().tail);
    kept.clear();
    assert_eq!(segment.status().head, segment.status().tail, "everything released");

    // After a failed send the stream restarts with a schema frame.
    let again = int_batch(vec![7; 100]);
    assert_eq!(tx.try_send(&again).unwrap(), 2);
    assert_eq!(rx.try_recv().unwrap(), again);
}

#[test]
fn a_dictionary_sent_once_does_not_pin_the_ring() {
    let segment = ring(1 << 16).create_anonymous().unwrap();
    let (mut tx, mut rx) = channel(&segment);
    // One dictionary array reused by every batch: sent once, kept by the
    // decoder for the whole stream.
    let dict: Arc<DictionaryArray<Int32Type>> = Arc::new(vec!["BTC", "ETH", "SOL"].into_iter().collect());
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        Field::new("sym", dict.data_type().clone(), false),
        Field::new("n", DataType::Int64, false),
    ]));
    let mut frames = 0;
    for n in 0..2_000i64 {
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::clone(&dict) as ArrayRef, Arc::new(Int64Array::from(vec![n; 3])) as ArrayRef],
        )
        .unwrap();
        frames += tx.try_send(&batch).unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(got, batch);
        drop(got);
        assert_eq!(segment.status().head, segment.status().tail, "nothing held after batch {n}");
    }
    assert_eq!(frames, 2_000 + 2, "schema and dictionary once");
    assert!(segment.status().tail > 8 * (1 << 16), "many laps past the dictionary's record");
}

#[test]
fn a_million_row_batch_round_trips_through_a_64_mib_ring() {
    let segment = ring(64 << 20).max_message_len(24 << 20).create_anonymous().unwrap();
    let (mut tx, mut rx) = channel(&segment);
    let rows = 1_000_000usize;
    let ids = Int64Array::from_iter_values(0..rows as i64);
    let px = Float64Array::from_iter((0..rows).map(|i| (i % 7 != 0).then_some(i as f64 * 0.5)));
    let sym = StringArray::from_iter_values((0..rows).map(|i| ["BTC", "ETH", "SOL"][i % 3]));
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as ArrayRef),
        ("px", Arc::new(px) as ArrayRef),
        ("sym", Arc::new(sym) as ArrayRef),
    ])
    .unwrap();
    for _ in 0..3 {
        tx.try_send(&batch).unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(got.num_rows(), rows);
        assert_eq!(got, batch);
    }
}

#[test]
fn oversized_frames_are_too_large_and_misaligned_rings_are_refused() {
    let segment = ring(1 << 16).max_message_len(4096).create_anonymous().unwrap();
    let (mut tx, mut rx) = channel(&segment);
    assert_eq!(tx.max_frame_len(), 4096);
    match tx.try_send(&int_batch(vec![1; 1000])) {
        Err(BatchSendError::TooLarge { len, max: 4096 }) => assert!(len > 8000),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The schema frame went out; the next send repeats it and is received.
    tx.try_send(&int_batch(vec![1; 10])).unwrap();
    assert_eq!(rx.try_recv().unwrap(), int_batch(vec![1; 10]));

    let eight = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    assert_eq!(
        BatchSender::new(eight.producer().unwrap()).err(),
        Some(BatchChannelError::NotSixtyFourAligned(PayloadAlign::Eight))
    );
    assert!(BatchReceiver::new(eight.consumer().unwrap()).is_err());
}

#[test]
fn trusted_receiver_decodes_the_same_batches() {
    let segment = ring(1 << 20).create_anonymous().unwrap();
    let mut tx = BatchSender::new(segment.producer().unwrap()).unwrap();
    // SAFETY: the only peer is the BatchSender above, which writes valid Arrow data.
    let mut rx = unsafe { BatchReceiver::new(segment.consumer().unwrap()).unwrap().trust_peer() };
    for tag in 0..10 {
        tx.try_send(&mixed_batch(tag)).unwrap();
        assert_eq!(rx.try_recv().unwrap(), mixed_batch(tag));
    }
}

/// The frames of `batch` as a fresh stream: schema, (dictionaries,) batch.
fn frames_of(batch: &RecordBatch) -> Vec<Vec<u8>> {
    let mut sink = FrameBuffers::default();
    ArrowFrameEncoder::new().encode(batch, &mut sink).unwrap();
    sink.frames.iter().map(|f| f.as_slice().to_vec()).collect()
}

/// `frame` (a record batch frame) with its first non-empty buffer claiming a
/// length far beyond the body.
fn with_huge_buffer_length(frame: &[u8]) -> Vec<u8> {
    let meta_len = i32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
    let message = arrow_ipc::root_as_message(&frame[8..8 + meta_len]).unwrap();
    let target = message.header_as_record_batch().unwrap().buffers().unwrap().iter().find(|b| b.length() > 0).unwrap();
    let needle = [target.offset().to_le_bytes(), target.length().to_le_bytes()].concat();
    let pos = frame[8..8 + meta_len].windows(16).position(|w| w == needle.as_slice()).unwrap();
    let mut evil = frame.to_vec();
    evil[8 + pos + 8..8 + pos + 16].copy_from_slice(&(i64::MAX / 2).to_le_bytes());
    evil
}

#[test]
fn hostile_frames_are_rejected_counted_and_the_next_batch_arrives() {
    let segment = ring(1 << 20).create_anonymous().unwrap();
    let (mut tx, mut rx) = channel(&segment);
    let good = int_batch(vec![1, 2, 3]);
    tx.try_send(&good).unwrap();
    assert_eq!(rx.try_recv().unwrap(), good);

    // A misbehaving peer takes the producer side for a moment.
    let mut raw = tx.into_producer();
    let frames = frames_of(&good);
    raw.try_send(&with_huge_buffer_length(&frames[1])).unwrap();
    let mut huge_meta = frames[1].clone();
    huge_meta[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    raw.try_send(&huge_meta).unwrap();
    raw.try_send(&[0xA5; 100]).unwrap();
    // Valid framing, invalid data: string offsets running past the values.
    let strings =
        RecordBatch::try_from_iter([("s", Arc::new(StringArray::from(vec!["ab", "cd"])) as ArrayRef)]).unwrap();
    let string_frames = frames_of(&strings);
    raw.try_send(&string_frames[0]).unwrap(); // a new schema: accepted
    let mut bad_offsets = string_frames[1].clone();
    let meta_len = i32::from_le_bytes(bad_offsets[4..8].try_into().unwrap()) as usize;
    let body = 8 + meta_len; // offsets buffer first (no validity buffer: no nulls)
    bad_offsets[body + 8..body + 12].copy_from_slice(&1000i32.to_le_bytes());
    raw.try_send(&bad_offsets).unwrap();

    let mut tx = BatchSender::new(raw).unwrap();
    let next = int_batch(vec![4, 5, 6]);
    tx.try_send(&next).unwrap();

    let mut rejected = Vec::new();
    let got = loop {
        match rx.try_recv() {
            Ok(batch) => break batch,
            Err(BatchRecvError::Rejected { reason, .. }) => rejected.push(reason),
            Err(other) => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(got, next, "the stream goes on after hostile frames");
    drop(got);
    assert_eq!(rx.dead_letters(), 4);
    assert!(matches!(&rejected[0], FrameDecodeError::OutOfBounds(msg) if msg.contains("outside")), "{rejected:?}");
    assert!(matches!(rejected[1], FrameDecodeError::MetadataLength { claimed: i32::MAX, .. }));
    assert!(matches!(rejected[2], FrameDecodeError::MissingContinuation { .. }));
    assert!(
        matches!(rejected[3], FrameDecodeError::Arrow(_) | FrameDecodeError::ArrowPanicked(_)),
        "{:?}",
        rejected[3]
    );
    assert_eq!(segment.status().head, segment.status().tail, "rejected frames were released");
}

#[test]
fn ring_records_are_tagged_with_their_ipc_message_type() {
    let segment = ring(1 << 20).create_anonymous().unwrap();
    let mut tx = BatchSender::new(segment.producer().unwrap()).unwrap();
    let mut raw = segment.consumer().unwrap();
    let batch = mixed_batch(1);
    tx.try_send(&batch).unwrap();
    tx.try_send(&batch).unwrap(); // same dictionary: not sent again
    tx.finish().unwrap();
    let mut types = Vec::new();
    while let Ok(record) = raw.try_recv() {
        types.push(record.message_type());
    }
    let [schema, dictionary, batch] =
        [MessageHeader::Schema, MessageHeader::DictionaryBatch, MessageHeader::RecordBatch].map(|h| u16::from(h.0));
    assert_eq!(types, [schema, dictionary, batch, batch, 0]);
}

/// A writer in another language may tag ring records however it likes: the
/// receiver must copy a dictionary because the frame *is* one, not because
/// the record says so. Tagged 0, 1 or 3, a leased dictionary would pin the
/// ring and stall the producer after one lap.
#[test]
fn dictionary_frames_with_any_record_type_do_not_pin_the_ring() {
    let dict: Arc<DictionaryArray<Int32Type>> = Arc::new(vec!["BTC", "ETH", "SOL"].into_iter().collect());
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        Field::new("sym", dict.data_type().clone(), false),
        Field::new("n", DataType::Int64, false),
    ]));
    for dictionary_tag in [0u16, 1, 3] {
        let segment = ring(1 << 16).create_anonymous().unwrap();
        let mut raw = segment.producer().unwrap();
        let mut rx = BatchReceiver::new(segment.consumer().unwrap()).unwrap();
        let mut enc = ArrowFrameEncoder::new();
        for n in 0..2_000i64 {
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::clone(&dict) as ArrayRef, Arc::new(Int64Array::from(vec![n; 3])) as ArrayRef],
            )
            .unwrap();
            let mut sink = FrameBuffers::default();
            enc.encode(&batch, &mut sink).unwrap();
            for frame in &sink.frames {
                let meta_len = i32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
                let kind = arrow_ipc::root_as_message(&frame[8..8 + meta_len]).unwrap().header_type();
                let tag = if kind == MessageHeader::DictionaryBatch { dictionary_tag } else { u16::from(kind.0) };
                raw.try_send_typed(tag, frame).unwrap_or_else(|e| panic!("tag {dictionary_tag}, batch {n}: {e}"));
            }
            let got = rx.try_recv().unwrap();
            assert_eq!(got, batch);
            drop(got);
            assert_eq!(segment.status().head, segment.status().tail, "tag {dictionary_tag}: held after batch {n}");
        }
        assert!(segment.status().tail > 8 * (1 << 16), "many laps past the dictionary's record");
    }
}

/// `frame` (a record batch frame) with the buffer of length `from` claiming
/// `to` bytes instead (still inside the body).
fn with_buffer_length(frame: &[u8], from: i64, to: i64) -> Vec<u8> {
    let meta_len = i32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
    let message = arrow_ipc::root_as_message(&frame[8..8 + meta_len]).unwrap();
    let target = message.header_as_record_batch().unwrap().buffers().unwrap().iter().find(|b| b.length() == from);
    let target = target.unwrap_or_else(|| panic!("no buffer of {from} bytes"));
    let needle = [target.offset().to_le_bytes(), target.length().to_le_bytes()].concat();
    let pos = frame[8..8 + meta_len].windows(16).position(|w| w == needle.as_slice()).unwrap();
    let mut evil = frame.to_vec();
    evil[8 + pos + 8..8 + pos + 16].copy_from_slice(&to.to_le_bytes());
    evil
}

/// Under `trust_peer` arrow skips validation, including (arrow-ipc 60.1)
/// whether a fixed-width buffer holds as many values as the field node says;
/// the receiver still checks it, so a short buffer is a rejected frame.
#[test]
fn trusted_receiver_still_refuses_fixed_width_buffers_shorter_than_their_node() {
    let segment = ring(1 << 20).create_anonymous().unwrap();
    let mut raw = segment.producer().unwrap();
    // SAFETY: the test's frames are valid Arrow data apart from buffer
    // lengths, which the receiver checks even when trusting its peer.
    let mut rx = unsafe { BatchReceiver::new(segment.consumer().unwrap()).unwrap().trust_peer() };
    let fixed = arrow_array::FixedSizeBinaryArray::try_from_iter([b"abcd", b"efgh", b"ijkl"].into_iter()).unwrap();
    let ints = Int64Array::from(vec![1, 2, 3]);
    let cases: [(ArrayRef, i64); 2] = [(Arc::new(fixed), 12), (Arc::new(ints), 24)];
    for (column, values_len) in cases {
        let batch = RecordBatch::try_from_iter([("c", column)]).unwrap();
        let frames = frames_of(&batch);
        raw.try_send(&frames[0]).unwrap();
        raw.try_send(&with_buffer_length(&frames[1], values_len, 8)).unwrap();
        raw.try_send(&frames[1]).unwrap();
        match rx.try_recv() {
            // Refused by the receiver's own check, before arrow slices (and
            // arrow-ipc 60.1 would panic on) the short buffer.
            Err(BatchRecvError::Rejected { reason: FrameDecodeError::OutOfBounds(msg), .. }) => {
                assert!(msg.contains("has 8 bytes, needs"), "{msg}");
            }
            other => panic!("expected an out-of-bounds rejection, got {other:?}"),
        }
        assert_eq!(rx.try_recv().unwrap(), batch, "the intact frame after it decodes");
    }
    assert_eq!(rx.dead_letters(), 2);
}
