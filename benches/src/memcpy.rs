//! The memcpy baseline for large-message throughput: one thread copying `size` bytes from a
//! private source buffer into successive slots of a destination region as large as the ring,
//! the way the producer fills the ring, so both buffers stay in cache the same way.

use std::time::{Duration, Instant};

/// Bytes per second of single-thread `copy_from_slice` of `size`-byte blocks into a
/// `region`-byte destination walked in order, measured for about `duration`.
pub fn bandwidth(size: usize, region: usize, duration: Duration) -> f64 {
    assert!(size > 0 && region >= size);
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![0u8; region];
    let slots = region / size;
    // One lap to fault the pages in and warm the caches.
    copy_laps(&src, &mut dst, slots, 1);
    let mut laps = 1u64;
    loop {
        let start = Instant::now();
        copy_laps(&src, &mut dst, slots, laps);
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return (laps * slots as u64 * size as u64) as f64 / elapsed.as_secs_f64();
        }
        laps *= 2;
    }
}

fn copy_laps(src: &[u8], dst: &mut [u8], slots: usize, laps: u64) {
    let size = src.len();
    for _ in 0..laps {
        for slot in 0..slots {
            dst[slot * size..(slot + 1) * size].copy_from_slice(std::hint::black_box(src));
            std::hint::black_box(&mut dst[slot * size]);
        }
    }
}
