//! Helpers shared by the fuzz targets: a segment file of this process in /dev/shm (removed after
//! each input), valid segment images to mutate, and a bounded workout of a segment that opened.
//! Whatever the bytes, the library must answer with typed errors: any panic or crash is a bug.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use ipc_core::{LeaseRefused, PayloadAlign, RingBuilder, Segment, TryRecvError, TrySendError};

/// Ring capacities the images come in.
pub const CAPACITIES: [usize; 2] = [4096, 8192];

/// Byte offsets of the head and tail positions in the header page.
pub use ipc_core::layout::offsets::{CONSUMER_POSITION, PRODUCER_POSITION};

/// `/dev/shm/tadpole.<name>` holding one input; unique to this process and input, removed on drop
/// (also when the target panics, so a crash leaves nothing behind).
pub struct ShmFile {
    pub name: String,
    path: String,
}

impl ShmFile {
    pub fn write(contents: &[u8]) -> ShmFile {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let path = format!("/dev/shm/tadpole.{name}");
        std::fs::write(&path, contents).expect("write the segment file");
        ShmFile { name, path }
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The bytes of a freshly created segment, as its creator wrote them (computed once).
pub fn valid_image(capacity: usize, align: PayloadAlign) -> Vec<u8> {
    static IMAGES: OnceLock<Vec<(usize, PayloadAlign, Vec<u8>)>> = OnceLock::new();
    let images = IMAGES.get_or_init(|| {
        let mut images = Vec::new();
        for capacity in CAPACITIES {
            for align in [PayloadAlign::Eight, PayloadAlign::SixtyFour] {
                let name = format!("fuzz-image-{}-{capacity}-{}", std::process::id(), align.bytes());
                let segment = RingBuilder::new(capacity).payload_align(align).create_named(&name).expect("create");
                let bytes = std::fs::read(format!("/dev/shm/tadpole.{name}")).expect("read image");
                drop(segment);
                images.push((capacity, align, bytes));
            }
        }
        images
    });
    images.iter().find(|(c, a, _)| *c == capacity && *a == align).expect("a known shape").2.clone()
}

pub fn read_u64(image: &[u8], offset: usize) -> u64 {
    image.get(offset..offset + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

pub fn write_u64(image: &mut [u8], offset: usize, value: u64) {
    image[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Attaches both sides of an opened segment and uses them: drain (single receives, batches and
/// leases), send a few messages, drain again. Every payload handed out is read in full, so a
/// record outside the mapping faults here.
pub fn exercise(segment: &Segment) {
    let _ = segment.status();
    let Ok(mut consumer) = segment.consumer() else { return };
    let max = segment.max_message_len();
    let mut checksum = 0u64;
    let mut drain = |consumer: &mut ipc_core::Consumer| {
        let mut leases = Vec::new();
        // Every record is at least 8 bytes: a ring holds at most capacity / 8 of them.
        for i in 0..segment.capacity() / 8 + 2 {
            let result = match i % 3 {
                0 => consumer.try_recv().map(|m| {
                    assert!(m.len() <= max);
                    m.iter().map(|&b| u64::from(b)).sum::<u64>()
                }),
                1 => consumer.read_batch(1 + i % 7).map(|batch| {
                    assert!(!batch.is_empty());
                    let mut sum = 0u64;
                    for record in batch.iter() {
                        assert!(record.payload.len() <= max);
                        sum += record.payload.iter().map(|&b| u64::from(b)).sum::<u64>();
                    }
                    sum
                }),
                _ => consumer
                    .try_recv()
                    .and_then(|m| {
                        // Not expected (at most 4 leases held, release on drop): the match below
                        // panics on an exhausted lease queue.
                        m.into_lease().map_err(|refused| match refused.reason {
                            LeaseRefused::Exhausted { capacity } => TryRecvError::LeasesExhausted { capacity },
                            LeaseRefused::ExplicitRelease => unreachable!("this consumer releases on drop"),
                        })
                    })
                    .map(|lease| {
                    let sum = lease.iter().map(|&b| u64::from(b)).sum::<u64>();
                    leases.push(lease);
                    sum
                }),
            };
            match result {
                Ok(sum) => checksum = checksum.wrapping_add(sum),
                Err(TryRecvError::Empty | TryRecvError::Disconnected | TryRecvError::Corrupt { .. }) => return,
                Err(e) => panic!("unexpected receive error {e}"),
            }
            if leases.len() > 3 {
                leases.swap_remove(0);
            }
        }
    };
    drain(&mut consumer);
    if let Ok(mut producer) = segment.producer() {
        for len in [0, 1, 100, max] {
            match producer.try_send(&vec![0x5A; len]) {
                Ok(()) | Err(TrySendError::Full | TrySendError::TooLarge { .. } | TrySendError::Corrupt(_)) => {}
                Err(e) => panic!("unexpected send error {e}"),
            }
        }
        drain(&mut consumer);
    }
    std::hint::black_box(checksum);
}
