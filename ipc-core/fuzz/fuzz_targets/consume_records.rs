//! A valid header over a fuzzed data region: the consumer must deliver records or refuse them as
//! corrupt, never read outside the segment or panic.
//!
//! Input: `[flags: u8][head offset: u16 le][used: u16 le][lap: u8][data region bytes...]`.
//! Flags bit 0 picks the capacity, bit 1 the payload alignment. The head sits `lap` laps in at
//! the given (8-aligned) offset, the tail `used` bytes (8-aligned, at most a ring) after it.

#![no_main]

use ipc_core::layout::HEADER_LEN;
use ipc_core::{PayloadAlign, Segment};
use libfuzzer_sys::fuzz_target;
use tadpole_ipc_core_fuzz::{
    CAPACITIES, CONSUMER_POSITION, PRODUCER_POSITION, ShmFile, exercise, valid_image, write_u64,
};

fuzz_target!(|data: &[u8]| {
    let [flags, h0, h1, u0, u1, lap, region @ ..] = data else { return };
    let capacity = CAPACITIES[usize::from(flags & 1)];
    let align = if flags & 2 == 0 { PayloadAlign::Eight } else { PayloadAlign::SixtyFour };
    let cap = capacity as u64;
    let head = u64::from(*lap) * cap + (u64::from(u16::from_le_bytes([*h0, *h1])) & !7) % cap;
    let used = (u64::from(u16::from_le_bytes([*u0, *u1])) & !7) % (cap + 8);
    let mut image = valid_image(capacity, align);
    write_u64(&mut image, CONSUMER_POSITION, head);
    write_u64(&mut image, PRODUCER_POSITION, head + used);
    let n = region.len().min(capacity);
    image[HEADER_LEN..HEADER_LEN + n].copy_from_slice(&region[..n]);
    let file = ShmFile::write(&image);
    let segment = Segment::open(&file.name).expect("a valid header opens");
    exercise(&segment);
});
