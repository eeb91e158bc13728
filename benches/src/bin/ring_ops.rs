//! Single-thread loop over one ring operation, for instruction counts under
//! `valgrind --tool=callgrind` (stable where time is not). Run it with two counts and divide
//! the difference by the difference in counts to get instructions per operation:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p target/release/ring_ops send-recv 64 100000
//! ```
//!
//! Operations: `send-recv` (try_send then try_recv), `reserve-recv` (try_reserve + commit, then
//! try_recv), `batch` (256 try_push + one commit, then one read_batch; per message), and
//! `empty-poll` (try_recv on an empty ring).

use ipc_core::{RingBuilder, TryRecvError};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [op, size, n] = &args[..] else {
        eprintln!("usage: ring_ops <send-recv|reserve-recv|batch|empty-poll> <size> <count>");
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
        "empty-poll" => {
            for _ in 0..n {
                assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty));
                received += 1;
            }
        }
        other => panic!("unknown op {other}"),
    }
    std::hint::black_box(&sink);
    println!("{received}");
}
