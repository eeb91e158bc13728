//! Helpers shared by the channel tests.

#![allow(dead_code)]

use std::ops::Range;

/// A segment name unique to this process and `tag`.
pub fn unique_name(tag: &str) -> String {
    format!("schemas-test-{tag}-{}", std::process::id())
}

/// The address range of this process's mapping of the named segment `name`
/// (`/dev/shm/tadpole.<name>`), read from `/proc/self/maps`: proof that a
/// pointer lies in shared memory, independent of the ring's own bookkeeping.
pub fn shm_mapping(name: &str) -> Range<usize> {
    let path = format!("/dev/shm/{}{name}", ipc_core::NAME_PREFIX);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let ranges: Vec<Range<usize>> = maps
        .lines()
        .filter(|line| line.split_whitespace().nth(5) == Some(path.as_str()))
        .map(|line| {
            let (start, end) = line.split_whitespace().next().unwrap().split_once('-').unwrap();
            usize::from_str_radix(start, 16).unwrap()..usize::from_str_radix(end, 16).unwrap()
        })
        .collect();
    assert_eq!(ranges.len(), 1, "expected one mapping of {path}, found {ranges:?}");
    ranges[0].clone()
}

/// The data region of a segment mapped at `mapping` (everything after the header page).
pub fn data_region(mapping: &Range<usize>) -> Range<usize> {
    mapping.start + ipc_core::layout::HEADER_LEN..mapping.end
}

/// Whether `bytes` lies entirely inside `region`.
pub fn within(bytes: &[u8], region: &Range<usize>) -> bool {
    let start = bytes.as_ptr() as usize;
    region.start <= start && start + bytes.len() <= region.end
}
