//! The envelope header as [`EnvelopeEncoder`](super::EnvelopeEncoder) lays it out by hand (the
//! payload the builder made follows, unchanged). Byte positions from the
//! record start; `T` = [`TABLE_AT`]:
//!
//! ```text
//!  0        4        8        12                   34    40
//!  +--------+--------+--------+--------------------+-----+------------------------------+
//!  | prefix | root=36| "TDPL" | vtable: 11 x u16   | pad | Envelope table (68 bytes)    |
//!  +--------+--------+--------+--------------------+-----+------------------------------+
//!  T+0 soffset = 28 (vtable at T-28)   T+4 payload_type u8, T+5 pad
//!  T+6 schema_version (3 x u16)        T+12 source uoffset
//!  T+16 timestamp_ns u64               T+24 message_id (16)    T+40 correlation_id (16)
//!  T+56 destination uoffset            T+60 payload uoffset    T+64 metadata uoffset
//!  108: source (u32 len, bytes, NUL), pad to 4, destination (same), then if there is
//!  metadata, 4-aligned: [KeyValue] (u32 count, count x uoffset), one KeyValue vtable
//!  [8, 12, 4, 8], count x KeyValue table (soffset, key uoffset, value uoffset), and the
//!  key and value strings in sorted order (each 4-aligned); zero padding so the record
//!  length is a multiple of 8; the builder's payload bytes.
//! ```
//!
//! Without metadata the vtable is trimmed to 10 entries (20 bytes, no pad),
//! the table starts at 32 with root = 28 and soffset = 20, and it is 64 bytes
//! long (no `metadata` offset). Every other field is always present (a zero
//! timestamp is stored, not elided).
//! `hand_layout_reads_like_the_builder_layout` checks it against the builder.

pub(super) const VTABLE_AT: usize = 12;
pub(super) const TABLE_AT: usize = 40;
pub(super) const TABLE_LEN: usize = 68;
/// Without metadata: the table right after a 10-entry vtable.
pub(super) const TABLE_AT_SHORT: usize = 32;
pub(super) const PAYLOAD_TYPE: usize = 4;
pub(super) const SCHEMA_VERSION: usize = 6;
pub(super) const SOURCE: usize = 12;
pub(super) const TIMESTAMP_NS: usize = 16;
pub(super) const MESSAGE_ID: usize = 24;
pub(super) const CORRELATION_ID: usize = 40;
pub(super) const DESTINATION: usize = 56;
pub(super) const PAYLOAD: usize = 60;
pub(super) const METADATA: usize = 64;
/// vtable length, table length, then the field offsets in slot order
/// (`fb::Envelope::VT_MESSAGE_ID` .. `VT_METADATA`; the last is set to 0
/// when there is no metadata).
pub(super) const VTABLE: [u16; 11] = [
    22,
    TABLE_LEN as u16,
    MESSAGE_ID as u16,
    CORRELATION_ID as u16,
    TIMESTAMP_NS as u16,
    SOURCE as u16,
    DESTINATION as u16,
    SCHEMA_VERSION as u16,
    PAYLOAD_TYPE as u16,
    PAYLOAD as u16,
    METADATA as u16,
];
/// Without metadata: trimmed before the `metadata` slot, table 64 bytes.
pub(super) const VTABLE_SHORT: [u16; 10] = {
    let mut short = [0; 10];
    let mut i = 2;
    while i < 10 {
        short[i] = VTABLE[i];
        i += 1;
    }
    short[0] = 20;
    short[1] = TABLE_LEN as u16 - 4;
    short
};
/// Bytes 4..36 of every record without metadata: root offset, file
/// identifier, the trimmed vtable and the table's soffset. The encoder copies
/// them in one go; the verifier's fast path (`walk::walk_own_layout`)
/// recognises the layout by them.
pub(super) const SHORT_HEAD: [u8; SHORT_HEAD_END - 4] = {
    let mut head = [0u8; SHORT_HEAD_END - 4];
    let root = ((TABLE_AT_SHORT - 4) as u32).to_le_bytes();
    let soffset = ((TABLE_AT_SHORT - VTABLE_AT) as i32).to_le_bytes();
    let ident = super::FILE_IDENTIFIER;
    let mut i = 0;
    while i < 4 {
        head[i] = root[i];
        head[4 + i] = ident[i];
        head[TABLE_AT_SHORT - 4 + i] = soffset[i];
        i += 1;
    }
    let mut v = 0;
    while v < VTABLE_SHORT.len() {
        let entry = VTABLE_SHORT[v].to_le_bytes();
        head[VTABLE_AT - 4 + 2 * v] = entry[0];
        head[VTABLE_AT - 4 + 2 * v + 1] = entry[1];
        v += 1;
    }
    head
};
/// Where [`SHORT_HEAD`] ends: after the short table's soffset.
pub(super) const SHORT_HEAD_END: usize = TABLE_AT_SHORT + 4;

/// The vtable shared by every `KeyValue`: length 8, table 12 bytes, key at
/// +4, value at +8.
pub(super) const KEY_VALUE_VTABLE: [u16; 4] = [8, 12, 4, 8];
pub(super) const KEY_VALUE_LEN: usize = 12;
const _: () = assert!(VTABLE_AT + 2 * VTABLE.len() <= TABLE_AT && TABLE_AT.is_multiple_of(8));
const _: () = assert!(VTABLE_AT + 2 * VTABLE_SHORT.len() == TABLE_AT_SHORT && TABLE_AT_SHORT.is_multiple_of(8));
