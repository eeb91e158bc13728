//! The envelope verifier specialised to our schema: the same checks as
//! FlatBuffers' generic verifier for `Envelope`, in straight-line code.
//!
//! FlatBuffers' verifier spends most of its time in generic plumbing (error
//! traces appended on every return, a `Result<TableVerifier>` moved through
//! every field visit): about 3 300 instructions for a 240-byte envelope,
//! against about 1 000 here.
//! This walk does the identical checks with a zero-sized error and no
//! tracing; the event tables' field lists come from the event catalogue macro
//! in `envelope.rs`, so they cannot drift from the accessors.
//!
//! What it must never do: accept a buffer FlatBuffers' verifier rejects. The
//! accessors read without bounds checks, relying on one of the two verifiers;
//! `specialised_verifier_agrees_with_flatbuffers` (proptest over mutated and
//! random records of every event type) checks the two accept the same set.
//! Every check mirrors one in `flatbuffers::verifier` 25.12 (positions are
//! relative to the record start, size prefix included):
//!
//! | FlatBuffers                    | here                                     |
//! |--------------------------------|------------------------------------------|
//! | `in_buffer::<T>` / `range_in_buffer` | [`Walk::in_buffer`] / [`Walk::range`] |
//! | `visit_table`                  | [`Walk::table`]                          |
//! | `TableVerifier::deref`         | [`Walk::slot`]                           |
//! | `ForwardsUOffset`, `&str`, `Vector` | [`Walk::forward`], [`Walk::string`], [`Walk::vector`] |
//! | `max_tables`, `max_apparent_size`, `max_depth` | counted, compared once at the end |
//!
//! The limits are compared at the end rather than at each step: the counts
//! only grow, so the outcome (accept or not) is the same.

use super::VerifyOptions;

/// The walk found something FlatBuffers' verifier would reject. Zero-sized:
/// the caller reruns FlatBuffers' verifier for the detailed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reject;

pub(super) type Step<T = ()> = Result<T, Reject>;

/// How a field is stored, i.e. which FlatBuffers `Verifiable` impl its
/// accessor's type uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// Stored inline: a scalar, an enum or a struct. `in_buffer::<T>`.
    Inline { size: usize, align: usize },
    /// `ForwardsUOffset<&str>`.
    String,
    /// `ForwardsUOffset<Vector<ForwardsUOffset<&str>>>`.
    StringVector,
}

impl Shape {
    const fn inline<T>() -> Self {
        Self::Inline { size: size_of::<T>(), align: align_of::<T>() }
    }
}

/// Maps an accessor's return type to the [`Shape`] the generated verifier
/// checks for that field.
pub(super) trait FieldShape {
    const SHAPE: Shape;
}

macro_rules! inline_shape {
    ($($t:ty => $stored:ty),* $(,)?) => {$(
        impl FieldShape for $t {
            const SHAPE: Shape = Shape::inline::<$stored>();
        }
    )*};
}
inline_shape!(
    bool => bool, u8 => u8, i8 => i8, u16 => u16, i16 => i16, u32 => u32, i32 => i32, u64 => u64, i64 => i64,
    // Enums are verified as their `byte` representation.
    crate::fb::Side => i8, crate::fb::OrderType => i8, crate::fb::TimeInForce => i8, crate::fb::Liquidity => i8,
    crate::fb::Severity => i8, crate::fb::MeshTopology => i8, crate::fb::TerminationReason => i8,
    crate::fb::HealthStatus => i8,
    // Structs: `in_buffer::<Self>`, with Rust's alignment of the struct (1).
    Option<&crate::fb::Uuid> => crate::fb::Uuid,
);

impl FieldShape for Option<&str> {
    const SHAPE: Shape = Shape::String;
}

impl FieldShape for Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>> {
    const SHAPE: Shape = Shape::StringVector;
}

/// The [`Shape`] of the field an accessor reads, e.g.
/// `shape_of(fb::Heartbeat::sequence)`.
pub(super) fn shape_of<T, R: FieldShape>(_accessor: fn(&T) -> R) -> Shape {
    R::SHAPE
}

/// A table's position and its vtable, as `visit_table` found them.
pub(super) struct Table {
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

/// The walk over one record: the buffer and the counters FlatBuffers keeps.
pub(super) struct Walk<'b> {
    buf: &'b [u8],
    apparent_size: usize,
    tables: usize,
    depth: usize,
}

impl<'b> Walk<'b> {
    fn new(buf: &'b [u8]) -> Self {
        Self { buf, apparent_size: 0, tables: 0, depth: 0 }
    }

    /// `range_in_buffer`: `size` bytes at `pos` lie inside the buffer; they
    /// count towards the apparent size.
    #[inline(always)]
    fn range(&mut self, pos: usize, size: usize) -> Step {
        if pos.saturating_add(size) > self.buf.len() {
            return Err(Reject);
        }
        self.apparent_size = self.apparent_size.saturating_add(size);
        Ok(())
    }

    /// `in_buffer::<T>`: aligned (relative to the record start) and in range.
    #[inline(always)]
    fn in_buffer(&mut self, pos: usize, size: usize, align: usize) -> Step {
        // `align` is a power of two (an `align_of`): a mask, not a division.
        debug_assert!(align.is_power_of_two());
        if pos & (align - 1) != 0 {
            return Err(Reject);
        }
        self.range(pos, size)
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, pos: usize) -> Step<[u8; N]> {
        self.buf.get(pos..).and_then(<[u8]>::first_chunk::<N>).copied().ok_or(Reject)
    }

    #[inline(always)]
    fn u16_at(&mut self, pos: usize) -> Step<usize> {
        self.in_buffer(pos, 2, 2)?;
        Ok(usize::from(u16::from_le_bytes(self.bytes(pos)?)))
    }

    #[inline(always)]
    fn u32_at(&mut self, pos: usize) -> Step<usize> {
        self.in_buffer(pos, 4, 4)?;
        usize::try_from(u32::from_le_bytes(self.bytes(pos)?)).map_err(|_| Reject)
    }

    /// `ForwardsUOffset<T>`: the position the `u32` offset at `pos` points to.
    #[inline(always)]
    fn forward(&mut self, pos: usize) -> Step<usize> {
        Ok(self.u32_at(pos)?.saturating_add(pos))
    }

    /// `visit_table` (without the depth bookkeeping, see [`verify_fast`]).
    #[inline(always)]
    pub(super) fn table(&mut self, pos: usize) -> Step<Table> {
        self.in_buffer(pos, 4, 4)?;
        let soffset = i32::from_le_bytes(self.bytes(pos)?);
        let distance = usize::try_from(soffset.unsigned_abs()).map_err(|_| Reject)?;
        let vtable = if soffset > 0 { pos.checked_sub(distance) } else { pos.checked_add(distance) };
        let vtable = vtable.filter(|&v| v < self.buf.len()).ok_or(Reject)?;
        let vtable_len = self.u16_at(vtable)?;
        if !vtable.saturating_add(vtable_len).is_multiple_of(2) {
            return Err(Reject);
        }
        self.range(vtable, vtable_len)?;
        self.tables += 1;
        Ok(Table { pos, vtable, vtable_len })
    }

    /// `TableVerifier::deref`: the field's position, `None` if absent.
    #[inline(always)]
    fn slot(&mut self, table: &Table, voffset: usize) -> Step<Option<usize>> {
        if voffset >= table.vtable_len {
            return Ok(None);
        }
        // `u16_at` without its alignment and range checks, which cannot fail
        // here: `table` checked the vtable is 2-aligned, of even length and in
        // range, and `voffset` is even and inside it. The apparent size counts.
        debug_assert!(voffset.is_multiple_of(2));
        self.apparent_size = self.apparent_size.saturating_add(2);
        let field_offset = usize::from(u16::from_le_bytes(self.bytes(table.vtable + voffset)?));
        Ok((field_offset > 0).then(|| table.pos.saturating_add(field_offset)))
    }

    /// `verify_vector_range::<T>`: the element range of the vector at `pos`.
    #[inline(always)]
    fn vector(&mut self, pos: usize, elem_size: usize, elem_align: usize) -> Step<(usize, usize)> {
        let len = self.u32_at(pos)?;
        let start = pos.saturating_add(4);
        debug_assert!(elem_align.is_power_of_two());
        if start & (elem_align - 1) != 0 {
            return Err(Reject);
        }
        let size = len.saturating_mul(elem_size);
        self.range(start, size)?;
        Ok((start, start.saturating_add(size)))
    }

    /// `&str`: in range, valid UTF-8, followed by a NUL byte.
    #[inline(always)]
    fn string(&mut self, pos: usize) -> Step {
        let (start, end) = self.vector(pos, 1, 1)?;
        let text = self.buf.get(start..end).ok_or(Reject)?;
        // ASCII (word at a time, inlined) is valid UTF-8; only other text
        // pays for the full validation.
        if self.buf.get(end) != Some(&0) || !(text.is_ascii() || std::str::from_utf8(text).is_ok()) {
            return Err(Reject);
        }
        Ok(())
    }

    /// `visit_field` of an optional field of `shape` in slot `voffset`.
    #[inline(always)]
    pub(super) fn field(&mut self, table: &Table, voffset: usize, shape: Shape) -> Step {
        match self.slot(table, voffset)? {
            Some(pos) => self.field_at(pos, shape),
            None => Ok(()),
        }
    }

    /// The checks of a present field of `shape` at `pos`.
    #[inline(always)]
    fn field_at(&mut self, pos: usize, shape: Shape) -> Step {
        match shape {
            Shape::Inline { size, align } => self.in_buffer(pos, size, align),
            Shape::String => {
                let s = self.forward(pos)?;
                self.string(s)
            }
            Shape::StringVector => {
                let v = self.forward(pos)?;
                let (start, end) = self.vector(v, 4, 4)?;
                for element in (start..end).step_by(4) {
                    let s = self.forward(element)?;
                    self.string(s)?;
                }
                Ok(())
            }
        }
    }

    /// A table one level below the envelope was visited.
    #[inline(always)]
    pub(super) fn nested_table(&mut self) {
        self.depth = 2;
    }
}

// Envelope vtable slots (`fb::Envelope::VT_*`; `vtable_slots_match_generated` checks them).
const VT_MESSAGE_ID: usize = 4;
const VT_CORRELATION_ID: usize = 6;
const VT_TIMESTAMP_NS: usize = 8;
const VT_SOURCE: usize = 10;
const VT_DESTINATION: usize = 12;
const VT_SCHEMA_VERSION: usize = 14;
const VT_PAYLOAD_TYPE: usize = 16;
const VT_PAYLOAD: usize = 18;
const VT_METADATA: usize = 20;
const VT_KEY: usize = 4;
const VT_VALUE: usize = 6;

/// Whether FlatBuffers' verifier, run by `size_prefixed_root_with_opts` with
/// `opts`' limits over `record` (size prefix included, no padding), accepts
/// it. `true` means the generated accessors may read the record.
pub(super) fn verify_fast(record: &[u8], opts: &VerifyOptions) -> bool {
    let mut walk = Walk::new(record);
    walk.depth = 1;
    walk_envelope(&mut walk).is_ok()
        && walk.depth <= opts.max_depth
        && walk.tables <= opts.max_tables
        && walk.apparent_size <= opts.max_apparent_size
}

fn walk_envelope(walk: &mut Walk<'_>) -> Step {
    // `SkipSizePrefix<ForwardsUOffset<Envelope>>` at 0.
    let root = walk.forward(super::SIZE_PREFIX_LEN)?;
    let table = walk.table(root)?;
    let uuid = Shape::inline::<crate::fb::Uuid>();
    walk.field(&table, VT_MESSAGE_ID, uuid)?;
    walk.field(&table, VT_CORRELATION_ID, uuid)?;
    walk.field(&table, VT_TIMESTAMP_NS, Shape::inline::<u64>())?;
    walk.field(&table, VT_SOURCE, Shape::String)?;
    walk.field(&table, VT_DESTINATION, Shape::String)?;
    walk.field(&table, VT_SCHEMA_VERSION, Shape::inline::<crate::fb::SchemaVersion>())?;

    // `visit_union`: both or neither of key and value; an unknown member is
    // accepted unverified (its table is never read: `Event` reports it).
    let value = walk.slot(&table, VT_PAYLOAD)?;
    let key = walk.slot(&table, VT_PAYLOAD_TYPE)?;
    match (key, value) {
        (None, None) => {}
        (Some(key), Some(value)) => {
            walk.in_buffer(key, 1, 1)?;
            let kind = crate::fb::Payload(walk.bytes::<1>(key)?[0]);
            if super::is_known_payload(kind) {
                let payload = walk.forward(value)?;
                super::walk_payload(walk, kind, payload)?;
                walk.nested_table();
            }
        }
        _ => return Err(Reject),
    }

    // `metadata: [KeyValue]`, `key` required.
    if let Some(pos) = walk.slot(&table, VT_METADATA)? {
        let vector = walk.forward(pos)?;
        let (start, end) = walk.vector(vector, 4, 4)?;
        for element in (start..end).step_by(4) {
            let kv_pos = walk.forward(element)?;
            let kv = walk.table(kv_pos)?;
            walk.nested_table();
            let key = walk.slot(&kv, VT_KEY)?.ok_or(Reject)?;
            walk.field_at(key, Shape::String)?;
            walk.field(&kv, VT_VALUE, Shape::String)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[test]
fn vtable_slots_match_generated() {
    use crate::fb::{Envelope as E, KeyValue as K};
    let ours = [
        VT_MESSAGE_ID,
        VT_CORRELATION_ID,
        VT_TIMESTAMP_NS,
        VT_SOURCE,
        VT_DESTINATION,
        VT_SCHEMA_VERSION,
        VT_PAYLOAD_TYPE,
        VT_PAYLOAD,
        VT_METADATA,
        VT_KEY,
        VT_VALUE,
    ];
    let generated = [
        E::VT_MESSAGE_ID,
        E::VT_CORRELATION_ID,
        E::VT_TIMESTAMP_NS,
        E::VT_SOURCE,
        E::VT_DESTINATION,
        E::VT_SCHEMA_VERSION,
        E::VT_PAYLOAD_TYPE,
        E::VT_PAYLOAD,
        E::VT_METADATA,
        K::VT_KEY,
        K::VT_VALUE,
    ]
    .map(usize::from);
    assert_eq!(ours, generated);
}
