use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::builder::{Int32Builder, ListBuilder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray, StructArray,
};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field};
use proptest::prelude::*;

use super::*;

fn mixed_batch() -> RecordBatch {
    let ints = Int64Array::from(vec![Some(1), None, Some(3), Some(i64::MIN)]);
    let strings = StringArray::from(vec![Some("a"), Some("ünïcode"), None, Some("")]);
    let mut list = ListBuilder::new(Int32Builder::new());
    list.append_value([Some(1), None, Some(3)]);
    list.append_null();
    list.append_value([]);
    list.append_value([Some(4)]);
    let list = list.finish();
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
        ("list", Arc::new(list) as ArrayRef),
        ("struct", Arc::new(strukt) as ArrayRef),
        ("dict", Arc::new(dict) as ArrayRef),
    ])
    .unwrap()
}

fn encode_all(batches: &[&RecordBatch]) -> Vec<Buffer> {
    let mut enc = ArrowFrameEncoder::new();
    let mut sink = FrameBuffers::default();
    for b in batches {
        enc.encode(b, &mut sink).unwrap();
    }
    enc.finish(&mut sink).unwrap();
    sink.frames
}

fn decode_all(dec: &mut ArrowFrameDecoder, frames: &[Buffer]) -> Vec<DecodedFrame> {
    frames.iter().map(|f| dec.decode(f).unwrap()).collect()
}

fn batches(decoded: Vec<DecodedFrame>) -> Vec<RecordBatch> {
    decoded
        .into_iter()
        .filter_map(|d| match d {
            DecodedFrame::RecordBatch(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn range_of(b: &Buffer) -> Range<usize> {
    let start = b.as_ptr() as usize;
    start..start + b.len()
}

/// Every non-empty buffer of `data` (and its children) lies inside one of
/// `ranges` — except dictionary values, which the decoder keeps for the
/// stream and so copies out of their frame: those lie outside.
fn assert_points_into(data: &ArrayData, ranges: &[Range<usize>]) {
    let inside = |b: &Buffer| {
        b.is_empty()
            || ranges.iter().any(|r| r.contains(&(b.as_ptr() as usize)) && b.as_ptr() as usize + b.len() <= r.end)
    };
    for b in data.buffers() {
        assert!(inside(b), "buffer of {:?} at {:p} is outside the frames", data.data_type(), b.as_ptr());
    }
    if let Some(nulls) = data.nulls() {
        assert!(inside(nulls.buffer()), "null buffer of {:?} outside the frames", data.data_type());
    }
    if let DataType::Dictionary(..) = data.data_type() {
        for values in data.child_data() {
            assert!(values.buffers().iter().all(|b| !inside(b) || b.is_empty()), "dictionary values not copied");
        }
        return;
    }
    for child in data.child_data() {
        assert_points_into(child, ranges);
    }
}

#[test]
fn mixed_types_round_trip_and_point_into_the_frames() {
    let batch = mixed_batch();
    let frames = encode_all(&[&batch]);
    // schema, dictionary, record batch, end of stream
    assert_eq!(frames.len(), 4);
    for f in &frames {
        assert_eq!(f.len() % 8, 0);
    }
    let mut dec = ArrowFrameDecoder::new();
    let decoded = decode_all(&mut dec, &frames);
    assert!(matches!(decoded[0], DecodedFrame::Schema(_)));
    assert!(matches!(decoded[1], DecodedFrame::Dictionary { id: _, is_delta: false }));
    assert!(matches!(decoded[3], DecodedFrame::EndOfStream));
    let got = batches(decoded);
    assert_eq!(got, vec![batch]);

    let ranges: Vec<_> = frames.iter().map(range_of).collect();
    for col in got[0].columns() {
        assert_points_into(&col.to_data(), &ranges);
    }
}

#[test]
fn body_buffers_are_64_byte_aligned_in_a_64_byte_aligned_frame() {
    let batch = RecordBatch::try_from_iter([
        ("a", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        ("b", Arc::new(Float64Array::from(vec![Some(1.5), None, Some(2.5)])) as ArrayRef),
    ])
    .unwrap();
    let frames = encode_all(&[&batch]);
    assert_eq!(frames[1].as_ptr() as usize % FRAME_ALIGNMENT, 0, "FrameBuffers allocates aligned frames");
    let mut dec = ArrowFrameDecoder::new();
    let got = batches(decode_all(&mut dec, &frames));
    for col in got[0].columns() {
        let data = col.to_data();
        for b in data.buffers() {
            assert_eq!(b.as_ptr() as usize % FRAME_ALIGNMENT, 0);
        }
        assert_eq!(data.nulls().map_or(0, |n| n.buffer().as_ptr() as usize % FRAME_ALIGNMENT), 0);
    }
}

#[test]
fn dictionaries_persist_across_frames_and_replacements_are_resent() {
    let schema = Arc::new(arrow_schema::Schema::new(vec![Field::new(
        "sym",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        true,
    )]));
    let mut builder = StringDictionaryBuilder::<Int32Type>::new();
    builder.append_value("BTC");
    builder.append_value("ETH");
    let first = Arc::new(builder.finish()) as ArrayRef;
    let b1 = RecordBatch::try_new(schema.clone(), vec![first.clone()]).unwrap();
    // Same dictionary values, different keys: no dictionary frame needed.
    let keys = Int32Array::from(vec![1, 1, 0]);
    let dict = first.as_any().downcast_ref::<DictionaryArray<Int32Type>>().unwrap();
    let same_values = DictionaryArray::try_new(keys, dict.values().clone()).unwrap();
    let b2 = RecordBatch::try_new(schema.clone(), vec![Arc::new(same_values) as ArrayRef]).unwrap();
    // New values: a replacement dictionary frame.
    let replaced: DictionaryArray<Int32Type> = vec!["SOL"].into_iter().collect();
    let b3 = RecordBatch::try_new(schema.clone(), vec![Arc::new(replaced) as ArrayRef]).unwrap();

    let mut enc = ArrowFrameEncoder::new();
    let mut sink = FrameBuffers::default();
    assert_eq!(enc.encode(&b1, &mut sink).unwrap(), 3, "schema + dictionary + batch");
    assert_eq!(enc.encode(&b2, &mut sink).unwrap(), 1, "dictionary already sent");
    assert_eq!(enc.encode(&b3, &mut sink).unwrap(), 2, "replacement dictionary + batch");

    let mut dec = ArrowFrameDecoder::new();
    let got = batches(decode_all(&mut dec, &sink.frames));
    assert_eq!(got, vec![b1, b2, b3]);
}

#[test]
fn schema_change_sends_a_new_schema_frame_and_resets_the_decoder() {
    let a = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]).unwrap();
    let b = RecordBatch::try_from_iter([("y", Arc::new(StringArray::from(vec!["s"])) as ArrayRef)]).unwrap();
    let mut enc = ArrowFrameEncoder::new();
    let mut sink = FrameBuffers::default();
    assert_eq!(enc.encode(&a, &mut sink).unwrap(), 2);
    assert_eq!(enc.encode(&a, &mut sink).unwrap(), 1);
    assert_eq!(enc.encode(&b, &mut sink).unwrap(), 2);
    let mut dec = ArrowFrameDecoder::new();
    let got = batches(decode_all(&mut dec, &sink.frames));
    assert_eq!(got, vec![a.clone(), a, b.clone()]);
    assert_eq!(dec.schema().unwrap(), b.schema_ref());
}

#[test]
fn one_million_rows_round_trip() {
    let n = 1_000_000;
    let ids = Int64Array::from_iter_values(0..n as i64);
    let px = Float64Array::from_iter((0..n).map(|i| (i % 7 != 0).then_some(i as f64 * 0.5)));
    let sym = StringArray::from_iter_values((0..n).map(|i| ["BTC-USD", "ETH-USD", "SOL-USD"][i % 3]));
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as ArrayRef),
        ("px", Arc::new(px) as ArrayRef),
        ("sym", Arc::new(sym) as ArrayRef),
    ])
    .unwrap();
    let frames = encode_all(&[&batch]);
    let mut dec = ArrowFrameDecoder::new();
    let got = batches(decode_all(&mut dec, &frames));
    assert_eq!(got[0].num_rows(), n);
    assert_eq!(got[0], batch);
    let ranges: Vec<_> = frames.iter().map(range_of).collect();
    for col in got[0].columns() {
        assert_points_into(&col.to_data(), &ranges);
    }
}

#[test]
fn skip_validation_decodes_the_same_batches() {
    let batch = mixed_batch();
    let frames = encode_all(&[&batch, &batch]);
    // SAFETY: the frames were produced by `ArrowFrameEncoder` in this test.
    let mut dec = unsafe { ArrowFrameDecoder::new().with_skip_validation(true) };
    assert_eq!(batches(decode_all(&mut dec, &frames)), vec![batch.clone(), batch]);
}

#[test]
fn concatenated_frames_are_a_standard_ipc_stream() {
    let batch = mixed_batch();
    let mut enc = ArrowFrameEncoder::new();
    let mut stream: Vec<u8> = Vec::new();
    enc.encode(&batch, &mut stream).unwrap();
    enc.encode(&batch, &mut stream).unwrap();
    enc.finish(&mut stream).unwrap();
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(stream), None).unwrap();
    let got: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(got, vec![batch.clone(), batch]);
}

struct CountedOwner {
    memory: Vec<u64>, // u64 elements: 8-byte aligned allocation
    drops: Arc<AtomicUsize>,
}

impl Drop for CountedOwner {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Stands in for a ring slot: the frame is copied once into memory owned by
/// `CountedOwner`, decoded zero-copy, and released only when the last array
/// referencing it is dropped.
#[test]
fn buffer_from_owner_keeps_the_owner_alive_until_the_last_array_drops() {
    let batch = mixed_batch();
    let frames = encode_all(&[&batch]);
    let mut dec = ArrowFrameDecoder::new();
    dec.decode(&frames[0]).unwrap();
    dec.decode(&frames[1]).unwrap();

    let drops = Arc::new(AtomicUsize::new(0));
    let frame = &frames[2];
    let mut memory = vec![0u64; frame.len().div_ceil(8)];
    // SAFETY: `memory` is a live Vec<u64> of at least `frame.len()` bytes;
    // viewing its storage as bytes is valid for any bit pattern.
    let bytes = unsafe { std::slice::from_raw_parts_mut(memory.as_mut_ptr().cast::<u8>(), frame.len()) };
    bytes.copy_from_slice(frame.as_slice());
    let owner = Arc::new(CountedOwner { memory, drops: drops.clone() });
    let ptr = NonNull::new(owner.memory.as_ptr().cast::<u8>().cast_mut()).unwrap();
    // SAFETY: `ptr` points at `frame.len()` bytes inside `owner.memory`, which
    // is never written again and lives as long as `owner`.
    let shm = unsafe { buffer_from_owner(ptr, frame.len(), owner) };
    let slot = range_of(&shm);

    let DecodedFrame::RecordBatch(got) = dec.decode(&shm).unwrap() else { panic!("expected a batch") };
    drop(shm);
    assert_eq!(got, batch);
    let non_dict: Vec<_> =
        got.columns().iter().filter(|c| !matches!(c.data_type(), DataType::Dictionary(..))).collect();
    for col in &non_dict {
        assert_points_into(&col.to_data(), std::slice::from_ref(&slot));
    }
    assert_eq!(drops.load(Ordering::SeqCst), 0, "arrays still reference the slot");
    let keep = got.column(0).clone();
    drop(got);
    assert_eq!(drops.load(Ordering::SeqCst), 0, "one column is still alive");
    drop(keep);
    assert_eq!(drops.load(Ordering::SeqCst), 1, "owner released with the last array");
}

fn valid_frames() -> Vec<Buffer> {
    encode_all(&[&mixed_batch()])
}

fn aligned(bytes: &[u8]) -> Buffer {
    Buffer::from_slice_ref(bytes)
}

#[test]
fn hostile_frames_are_rejected_with_clear_errors() {
    let frames = valid_frames();
    let schema_frame = frames[0].as_slice().to_vec();
    let batch_frame = frames[2].as_slice().to_vec();
    let mut dec = ArrowFrameDecoder::new();

    assert!(matches!(dec.decode(&aligned(&[0xFF; 5])), Err(FrameDecodeError::Truncated { len: 5 })));
    assert!(matches!(
        dec.decode(&aligned(&[1, 2, 3, 4, 0, 0, 0, 0])),
        Err(FrameDecodeError::MissingContinuation { found: [1, 2, 3, 4] })
    ));

    let mut huge = schema_frame.clone();
    huge[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    assert!(matches!(dec.decode(&aligned(&huge)), Err(FrameDecodeError::MetadataLength { claimed: i32::MAX, .. })));
    huge[4..8].copy_from_slice(&(-8i32).to_le_bytes());
    assert!(matches!(dec.decode(&aligned(&huge)), Err(FrameDecodeError::MetadataLength { claimed: -8, .. })));

    let mut odd = schema_frame.clone();
    odd[4..8].copy_from_slice(&12i32.to_le_bytes());
    assert!(matches!(dec.decode(&aligned(&odd)), Err(FrameDecodeError::Misaligned(_))));

    let mut garbage = schema_frame.clone();
    garbage[8..].fill(0xA5);
    assert!(matches!(dec.decode(&aligned(&garbage)), Err(FrameDecodeError::InvalidMessage(_))));

    assert!(matches!(dec.decode(&aligned(&batch_frame)), Err(FrameDecodeError::MissingSchema("record batch"))));
    dec.decode(&aligned(&schema_frame)).unwrap();

    let truncated = &batch_frame[..batch_frame.len() - 64];
    assert!(matches!(dec.decode(&aligned(truncated)), Err(FrameDecodeError::BodyLength { .. })));
    let mut longer = batch_frame.clone();
    longer.extend_from_slice(&[0; 64]);
    assert!(matches!(dec.decode(&aligned(&longer)), Err(FrameDecodeError::BodyLength { .. })));

    // A frame at an address that is not a multiple of 8.
    let mut shifted = vec![0u8; 4];
    shifted.extend_from_slice(&schema_frame);
    let shifted = aligned(&shifted).slice(4);
    assert!(matches!(dec.decode(&shifted), Err(FrameDecodeError::Misaligned(_))));
}

#[test]
fn buffer_outside_body_is_an_error_not_a_panic() {
    // Build a record batch message whose first buffer claims to lie far past
    // the body; arrow-ipc itself would panic slicing it.
    let frames = valid_frames();
    let mut dec = ArrowFrameDecoder::new();
    dec.decode(&frames[0]).unwrap();
    dec.decode(&frames[1]).unwrap();
    let frame = frames[2].as_slice();
    let meta_len = i32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
    let message = arrow_ipc::root_as_message(&frame[8..8 + meta_len]).unwrap();
    let rb = message.header_as_record_batch().unwrap();
    let body_len = frame.len() - 8 - meta_len;
    // Locate the first non-empty buffer's `offset` field in the metadata and
    // rewrite it in place (arrow's Buffer struct is {offset: i64, length: i64}).
    let target = rb.buffers().unwrap().iter().find(|b| b.length() > 0).unwrap();
    let needle = [target.offset().to_le_bytes(), target.length().to_le_bytes()].concat();
    let meta = &frame[8..8 + meta_len];
    let pos = meta.windows(16).position(|w| w == needle.as_slice()).unwrap();
    let mut evil = frame.to_vec();
    evil[8 + pos..8 + pos + 8].copy_from_slice(&(body_len as i64 + 4096).to_le_bytes());
    match dec.decode(&aligned(&evil)) {
        Err(FrameDecodeError::OutOfBounds(msg)) => assert!(msg.contains("outside"), "{msg}"),
        other => panic!("expected OutOfBounds, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Mutated schema/dictionary/batch frames are decoded or rejected, never panic.
    #[test]
    fn mutated_frames_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let frames = valid_frames();
        let mut bytes = frames[which].as_slice().to_vec();
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let mut dec = ArrowFrameDecoder::new();
        for f in &frames[..which] {
            dec.decode(f).unwrap();
        }
        if let Ok(DecodedFrame::RecordBatch(b)) = dec.decode(&aligned(&bytes)) {
            // Validation accepted it: reading every value must be safe.
            let _ = format!("{b:?}");
        }
    }

    #[test]
    fn random_frames_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512), meta_len in any::<i32>()) {
        let mut bytes = CONTINUATION_MARKER.to_vec();
        bytes.extend_from_slice(&meta_len.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let mut dec = ArrowFrameDecoder::new();
        let _ = dec.decode(&aligned(&bytes));
        dec.decode(&valid_frames()[0]).unwrap();
        let _ = dec.decode(&aligned(&bytes));
    }
}
