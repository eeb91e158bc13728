//! Bytes -> a segment file -> `Segment::open`; if it opens, attach and use both sides.
//!
//! Input: the first byte picks the form. Even: the rest is the whole file, raw. Odd: a valid
//! segment (capacity and alignment picked by bits 1 and 2) patched by the rest, read as
//! `[offset: u16 le][n: u8][n bytes]...`, so header fields and records are mutated in place.

#![no_main]

use ipc_core::{PayloadAlign, Segment};
use libfuzzer_sys::fuzz_target;
use tadpole_ipc_core_fuzz::{CAPACITIES, ShmFile, exercise, valid_image};

fn patched(mode: u8, mut patches: &[u8]) -> Vec<u8> {
    let capacity = CAPACITIES[usize::from(mode >> 1 & 1)];
    let align = if mode & 4 == 0 { PayloadAlign::Eight } else { PayloadAlign::SixtyFour };
    let mut image = valid_image(capacity, align);
    while let [lo, hi, n, rest @ ..] = patches {
        let offset = usize::from(u16::from_le_bytes([*lo, *hi])) % image.len();
        let n = usize::from(*n).min(rest.len()).min(image.len() - offset);
        image[offset..offset + n].copy_from_slice(&rest[..n]);
        patches = &rest[n..];
    }
    image
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let image = if mode & 1 == 0 { rest.to_vec() } else { patched(mode, rest) };
    let file = ShmFile::write(&image);
    if let Ok(segment) = Segment::open(&file.name) {
        exercise(&segment);
    }
});
