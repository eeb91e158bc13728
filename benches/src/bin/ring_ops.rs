//! Single-thread loop over one ring operation, for instruction counts under
//! `valgrind --tool=callgrind` (stable where time is not). Run it with two counts and divide
//! the difference by the difference in counts to get instructions per operation:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p target/release/ring_ops send-recv 64 100000
//! ```
//!
//! Operations: `send-recv` (try_send then try_recv), `reserve-recv` (try_reserve + commit, then
//! try_recv), `batch` (256 try_push + one commit, then one read_batch; per message),
//! `empty-poll` (try_recv on an empty ring), and the two ways to hold a window of 2048 records
//! (a relay's in flight) before giving them back: `explicit-window` (explicit release mode:
//! receive and drop 2048, then one `release_through`) and `lease-window` (2048 leases, dropped
//! oldest first). `waitset-8`: eight rings in a `WaitSet` (blocking strategy), a message sent
//! into one of them in turn, then `wait` (it is found by the first scan: no sleep) and
//! `try_recv` on the ring it names — the cost of hearing many rings from one thread, per message.

use ipc_core::{ReleaseMode, RingBuilder, TryRecvError, WaitSet, WaitStrategy};

/// Records held at once by the window operations.
const WINDOW: usize = 2048;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [op, size, n] = &args[..] else {
        eprintln!(
            "usage: ring_ops <send-recv|reserve-recv|batch|empty-poll|explicit-window|lease-window|waitset-8> <size> <count>"
        );
        std::process::exit(2);
    };
    let size: usize = size.parse().expect("size");
    let n: u64 = n.parse().expect("count");
    let segment = RingBuilder::new(256 * 1024).create_anonymous().expect("ring");
    let mut producer = segment.producer().expect("producer");
    let mut consumer = segment.consumer().expect("consumer");
    let payload: Vec<u8> = vec![7; size];
    let mut sink = vec![0u8; size];
    let mut received = 0u64;
    match op.as_str() {
        "send-recv" => {
            for _ in 0..n {
                producer.try_send(std::hint::black_box(&payload)).expect("send");
                let msg = consumer.try_recv().expect("recv");
                sink.copy_from_slice(&msg);
                received += 1;
            }
        }
        "reserve-recv" => {
            for _ in 0..n {
                let mut grant = producer.try_reserve(size).expect("reserve");
                grant.copy_from_slice(std::hint::black_box(&payload));
                grant.commit();
                let msg = consumer.try_recv().expect("recv");
                sink.copy_from_slice(&msg);
                received += 1;
            }
        }
        "batch" => {
            for _ in 0..n / 256 {
                let mut batch = producer.batch();
                for _ in 0..256 {
                    batch.try_push(std::hint::black_box(&payload)).expect("push");
                }
                batch.commit();
                let read = consumer.read_batch(256).expect("read");
                for record in read.iter() {
                    sink.copy_from_slice(record.payload);
                    received += 1;
                }
            }
        }
        "explicit-window" => {
            consumer.set_release_mode(ReleaseMode::Explicit).expect("explicit mode");
            for _ in 0..n / WINDOW as u64 {
                let mut last = 0;
                for _ in 0..WINDOW {
                    producer.try_send(std::hint::black_box(&payload)).expect("send");
                    let msg = consumer.try_recv().expect("recv");
                    sink.copy_from_slice(&msg);
                    last = msg.position();
                    received += 1;
                }
                consumer.release_through(last).expect("release");
            }
        }
        "lease-window" => {
            let mut held = std::collections::VecDeque::with_capacity(WINDOW);
            for _ in 0..n / WINDOW as u64 {
                for _ in 0..WINDOW {
                    producer.try_send(std::hint::black_box(&payload)).expect("send");
                    let lease = consumer.try_recv().expect("recv").into_lease().expect("lease");
                    sink.copy_from_slice(&lease);
                    held.push_back(lease);
                    received += 1;
                }
                held.clear();
            }
        }
        "empty-poll" => {
            for _ in 0..n {
                assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty));
                received += 1;
            }
        }
        "waitset-8" => {
            let rings: Vec<_> = (0..8).map(|_| RingBuilder::new(64 * 1024).create_anonymous().expect("ring")).collect();
            let mut producers: Vec<_> = rings.iter().map(|r| r.producer().expect("producer")).collect();
            let mut set = WaitSet::new(WaitStrategy::Block).expect("wait set");
            for r in &rings {
                set.insert(r.consumer().expect("consumer"));
            }
            for i in 0..n {
                producers[(i % 8) as usize].try_send(std::hint::black_box(&payload)).expect("send");
                let key = set.wait(std::time::Duration::from_secs(1))[0];
                let msg = set.get_mut(key).expect("member").try_recv().expect("recv");
                sink.copy_from_slice(&msg);
                received += 1;
            }
        }
        other => panic!("unknown op {other}"),
    }
    std::hint::black_box(&sink);
    println!("{received}");
}
