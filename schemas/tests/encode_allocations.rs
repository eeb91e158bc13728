//! The encode path must not allocate once the encoder has warmed up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use schemas::envelope::{EnvelopeEncoder, EnvelopeHeader, MessageId};
use schemas::fb;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn encoding_after_warm_up_does_not_allocate() {
    let mut enc = EnvelopeEncoder::new();
    let mut slot = vec![0u8; 4096];
    let metadata = [("trace_id", "abc"), ("priority", "high")];
    let mut encode_one = |enc: &mut EnvelopeEncoder, seq: u64| {
        let header = EnvelopeHeader::new("execution-1", "risk-1").with_metadata(&metadata);
        enc.encode(&header, |fbb| {
            let symbol = fbb.create_string("BTC-USD");
            let order_id = MessageId::new_v4().to_wire();
            fb::ExecutionOrderPlaced::create(
                fbb,
                &fb::ExecutionOrderPlacedArgs {
                    order_id: Some(&order_id),
                    symbol: Some(symbol),
                    side: fb::Side::Buy,
                    quantity_e8: seq as i64,
                    ..Default::default()
                },
            )
        });
        let n = enc.encoded_len();
        enc.write_into(&mut slot[..n]).unwrap();
    };
    for seq in 0..16 {
        encode_one(&mut enc, seq);
    }
    let before = allocations();
    for seq in 0..10_000 {
        encode_one(&mut enc, seq);
    }
    assert_eq!(allocations() - before, 0, "encode + write_into allocated after warm-up");
}
