//! Two threads over a heap-backed ring: small enough for Miri to check every access of the
//! publish/consume protocol for data races and undefined behaviour
//! (`MIRIFLAGS=-Zmiri-disable-isolation cargo +nightly miri test -p tadpole-ipc-core --test miri`).
//! Also runs as an ordinary test.

use ipc_core::{PayloadAlign, RingBuilder, TryRecvError, TrySendError};

const MESSAGES: u32 = if cfg!(miri) { 300 } else { 100_000 };

#[test]
fn two_threads_exchange_messages_through_a_private_ring() {
    for align in [PayloadAlign::Eight, PayloadAlign::SixtyFour] {
        let seg = RingBuilder::new(4096).payload_align(align).create_private().unwrap();
        let (mut p, mut c) = (seg.producer().unwrap(), seg.consumer().unwrap());
        let reader = std::thread::spawn(move || {
            let mut next = 0u32;
            let mut leases = Vec::new();
            loop {
                match c.try_recv() {
                    Ok(msg) => {
                        let len = (next % 200) as usize;
                        assert_eq!(msg.len(), len);
                        assert!(msg.iter().enumerate().all(|(i, b)| *b == (next as usize + i) as u8));
                        if next % 7 == 0 {
                            leases.push(msg.into_lease().unwrap());
                        }
                        next += 1;
                        if leases.len() > 3 {
                            leases.remove(0);
                        }
                    }
                    Err(TryRecvError::Empty) => {
                        // Held leases hold back every later record: let them go when idle, or a
                        // full ring would wait on us forever (that is the documented backpressure).
                        leases.clear();
                        std::hint::spin_loop()
                    }
                    Err(TryRecvError::Disconnected) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(next, MESSAGES);
        });
        let mut sent = 0u32;
        while sent < MESSAGES {
            let len = (sent % 200) as usize;
            let result = if sent % 3 == 0 {
                let mut batch = p.batch();
                let r = batch.try_reserve(len, 0).map(|buf| {
                    buf.iter_mut().enumerate().for_each(|(i, b)| *b = (sent as usize + i) as u8);
                });
                batch.commit();
                r
            } else {
                p.try_reserve(len).map(|mut g| {
                    g.iter_mut().enumerate().for_each(|(i, b)| *b = (sent as usize + i) as u8);
                    g.commit();
                })
            };
            match result {
                Ok(()) => sent += 1,
                Err(TrySendError::Full) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        drop(p);
        reader.join().unwrap();
    }
}
