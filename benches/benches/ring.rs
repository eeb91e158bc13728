//! Criterion benches of the ring, with their baselines in the same run:
//!
//! - `latency/floor`: one-way latency of two processes bouncing one cache line (the hardware
//!   floor), then `latency/spin/<size>` and `latency/block/<size>`: one-way latency (RTT / 2) of
//!   a ping-pong through two rings between two processes on CPUs 0 and 1.
//! - `throughput/{unbatched,batched}/<size>`: messages between two threads on CPUs 0 and 1, and
//!   `throughput/memcpy/<size>`: single-thread memcpy of the same blocks, for the large sizes.
//!
//! Run with `cargo bench -p tadpole-benches --bench ring`. For one table with ratios and
//! targets, `cargo run --release -p tadpole-benches --bin ring_report` is the better tool.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use tadpole_benches::floor::FloorPeer;
use tadpole_benches::latency::{EchoSession, Mode};
use tadpole_benches::throughput::{Batching, ThroughputRing, capacity_for};
use tadpole_benches::{MAIN_CPU, peer, pin};

const LATENCY_SIZES: [usize; 3] = [8, 64, 1024];
const THROUGHPUT_SIZES: [usize; 4] = [8, 64, 4096, 65536];

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("latency");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));

    let mut floor: Option<FloorPeer> = None;
    group.bench_function("floor", |b| {
        let floor = floor.get_or_insert_with(|| FloorPeer::start().expect("start floor peer"));
        b.iter_custom(|iters| floor.time_round_trips(iters) / 2);
    });
    if let Some(floor) = floor {
        floor.stop().expect("floor peer answered every round trip");
    }

    for mode in [Mode::Spin, Mode::Block] {
        if mode == Mode::Block {
            // Each blocking round trip is preceded by an untimed idle gap: keep wall time sane.
            group.sample_size(10).measurement_time(Duration::from_secs(1));
        }
        for size in LATENCY_SIZES {
            let mut session: Option<EchoSession> = None;
            group.bench_function(BenchmarkId::new(mode.name(), size), |b| {
                let s = session.get_or_insert_with(|| EchoSession::start(size, mode).expect("start echo peer"));
                b.iter_custom(|iters| s.time_round_trips(iters).expect("round trips") / 2);
            });
            if let Some(s) = session {
                s.finish().expect("peer echoed every message");
            }
        }
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for size in THROUGHPUT_SIZES {
        let large = size >= 4096;
        group.throughput(if large { Throughput::Bytes(size as u64) } else { Throughput::Elements(1) });
        if large {
            let region = capacity_for(size);
            group.bench_function(BenchmarkId::new("memcpy", size), |b| {
                let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
                let mut dst = vec![0u8; region];
                let slots = region / size;
                let mut slot = 0;
                b.iter(|| {
                    dst[slot * size..(slot + 1) * size].copy_from_slice(std::hint::black_box(&src));
                    std::hint::black_box(&mut dst[slot * size]);
                    slot = (slot + 1) % slots;
                });
            });
        }
        for batching in [Batching::Unbatched, Batching::Batched] {
            let mut ring = ThroughputRing::new(size, batching).expect("create ring");
            group.bench_function(BenchmarkId::new(batching.name(), size), |b| {
                b.iter_custom(|iters| ring.run(iters).expect("every message arrived in order").elapsed);
            });
        }
    }
    group.finish();
}

fn main() {
    peer::run_peer_if_requested();
    if pin::allowed_cpus() < 2 {
        eprintln!("ring benches need two CPUs; skipping");
        return;
    }
    pin::pin_to_cpu(MAIN_CPU).expect("pin to CPU 0");
    let mut c = Criterion::default().configure_from_args();
    latency(&mut c);
    throughput(&mut c);
    c.final_summary();
}
