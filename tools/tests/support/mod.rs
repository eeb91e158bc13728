pub mod netns;
pub mod relay;
pub mod topology;

/// Record `seq` of route `route`: the sequence number, then bytes derived from both; 8 to 200
/// bytes, so a record that arrives on the wrong route, damaged, twice or out of order is seen.
#[allow(dead_code)] // not every test binary that includes `support` checks records
pub fn record(route: u64, seq: u64, buf: &mut Vec<u8>) {
    let mut x = (seq ^ (route << 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let len = 8 + (x % 193) as usize;
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.push(x as u8);
    }
}
