//! Readers outside this crate (the Python ring view used by the interop tests) restate layout
//! constants in their own language: this test holds them to `ipc_core::layout`, so a layout change
//! that forgets them fails here rather than in a reader at run time.

use ipc_core::layout::{self, offsets};

/// `NAME = value` lines of a Python module, values being integers or `a << b`.
fn python_constants(source: &str) -> Vec<(String, u64)> {
    source
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(" = ")?;
            if !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                return None;
            }
            let value = value.trim();
            let parsed = match value.split_once("<<") {
                Some((a, b)) => a.trim().parse::<u64>().ok()? << b.trim().parse::<u32>().ok()?,
                None => value.parse().ok()?,
            };
            Some((name.to_owned(), parsed))
        })
        .collect()
}

#[test]
fn the_python_ring_view_uses_the_crate_s_offsets_and_flags() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/tests/python/tadpole_ring.py");
    let source = std::fs::read_to_string(path).expect("the Python ring view");
    let constants = python_constants(&source);
    let expected: &[(&str, u64)] = &[
        ("LAYOUT_VERSION", u64::from(layout::LAYOUT_VERSION)),
        ("HEADER_LEN", layout::HEADER_LEN as u64),
        ("PRODUCER_POSITION", offsets::producer_position::POSITION as u64),
        ("CONSUMER_POSITION", offsets::CONSUMER_HEAD as u64),
        ("FLAG_COMMITTED", layout::FLAG_COMMITTED),
        ("FLAG_PADDING", layout::FLAG_PADDING),
    ];
    for (name, value) in expected {
        let found = constants.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(found, Some(*value), "{name} in {path}");
    }
    // The descriptor is unpacked as "<QIIQQII" from offset 0: magic, version, header length,
    // capacity, segment length, max message length, payload alignment.
    assert!(source.contains("\"<QIIQQII\", self.map, 0"));
    let d = [
        offsets::descriptor::MAGIC,
        offsets::descriptor::LAYOUT_VERSION,
        offsets::descriptor::HEADER_LEN,
        offsets::descriptor::CAPACITY,
        offsets::descriptor::SEGMENT_LEN,
        offsets::descriptor::MAX_MESSAGE_LEN,
        offsets::descriptor::PAYLOAD_ALIGN,
    ];
    assert_eq!(d, [0, 8, 12, 16, 24, 32, 36]);
}
