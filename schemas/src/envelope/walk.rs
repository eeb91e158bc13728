//! The envelope verifier specialised to our schema: the same checks as
//! FlatBuffers' generic verifier for `Envelope`, in straight-line code.
//!
//! FlatBuffers' verifier spends most of its time in generic plumbing (error
//! traces appended on every return, a `Result<TableVerifier>` moved through
//! every field visit): about 3 300 instructions for a 240-byte envelope,
//! against about 1 080 here.
//! This walk does the identical checks with a one-byte error and no
//! tracing; the event tables' field lists come from the event catalogue macro
//! in `catalogue.rs`, so they cannot drift from the accessors.
//!
//! Records in the encoder's own layout without metadata (the common case:
//! bytes 4..36 equal `header_layout::SHORT_HEAD`) take [`walk_own_layout`],
//! which knows where the table and every header field are and checks only
//! what can still be wrong: the two strings, the payload and the limits
//! (about 200 instructions fewer per record). Anything else, and anything it
//! refuses, goes through the generic [`walk_envelope`].
//!
//! What it must never do: accept a buffer FlatBuffers' verifier rejects. The
//! accessors read without bounds checks, relying on one of the two verifiers;
//! `specialised_verifier_agrees_with_flatbuffers` (proptest over mutated and
//! random records of every event type) checks the two accept the same set
//! and report the same error.
//! Every check mirrors one in `flatbuffers::verifier` 25.12 (positions are
//! relative to the record start, size prefix included):
//!
//! | FlatBuffers                    | here                                     |
//! |--------------------------------|------------------------------------------|
//! | `in_buffer::<T>` / `range_in_buffer` | [`Walk::in_buffer`] / [`Walk::range`] |
//! | `visit_table`                  | [`Walk::table`]                          |
//! | `TableVerifier::deref`         | [`Walk::slot`]                           |
//! | `ForwardsUOffset`, `&str`, `Vector` | [`Walk::forward`], [`Walk::string`], [`Walk::vector`] |
//! | `max_tables`, `max_apparent_size`, `max_depth` | counted at each step; compared before work that grows with a length, on entering a table, and at the end (see [`Walk::range`]) |
//!
//! The limits bound the work, not only the outcome: every byte range the walk
//! looks at (a string it checks for UTF-8, a vector it iterates) counts
//! towards the apparent size *before* it is looked at, and the walk stops as
//! soon as a count passes its limit. So a record whose offsets all point at
//! one large string costs at most `max_apparent_size` bytes of checking, not
//! (offsets x string length). Field slots are the generated `VT_*` constants
//! (see [`walk_table`]), never computed from a field's position.

use super::VerifyOptions;
use crate::fb::{Envelope as E, KeyValue as K};

/// The walk found something FlatBuffers' verifier would reject: a limit
/// passed (the checks run in FlatBuffers' order, so its verifier fails on the
/// same limit at the same step, and the caller reports that without rerunning
/// it), or anything else (the caller reruns FlatBuffers' verifier for the
/// detailed error). One byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reject {
    /// Out of bounds, misaligned, not UTF-8, inconsistent union, ...
    Malformed,
    /// `max_apparent_size` passed.
    ApparentSize,
    /// `max_tables` passed.
    Tables,
    /// `max_depth` passed.
    Depth,
}

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
pub(super) struct Table<'b> {
    pos: usize,
    /// The vtable's bytes (checked in range, even length).
    vtable: &'b [u8],
}

/// The walk over one record: the buffer, the counters FlatBuffers keeps and
/// their limits.
pub(super) struct Walk<'b> {
    buf: &'b [u8],
    apparent_size: usize,
    tables: usize,
    max_apparent_size: usize,
    max_tables: usize,
    max_depth: usize,
}

impl<'b> Walk<'b> {
    pub(super) fn new(buf: &'b [u8], opts: &VerifyOptions) -> Self {
        Self {
            buf,
            apparent_size: 0,
            tables: 0,
            max_apparent_size: opts.max_apparent_size,
            max_tables: opts.max_tables,
            max_depth: opts.max_depth,
        }
    }

    /// `range_in_buffer`: `size` bytes at `pos` lie inside the buffer; they
    /// count towards the apparent size.
    ///
    /// The limit is compared where the walk is about to do work that grows
    /// with a length it read (a vector or string, [`Self::vector`]), where it
    /// enters a table (FlatBuffers' next table-limit check must not come
    /// first) and at the end ([`verify_fast`]). In between are only
    /// fixed-size steps, so the work stays bounded by the limit; and a walk
    /// that passes the limit between two comparisons and then finds the
    /// record malformed is rerun through FlatBuffers' verifier, which reports
    /// the limit, as it would have.
    #[inline(always)]
    fn range(&mut self, pos: usize, size: usize) -> Step {
        if pos.saturating_add(size) > self.buf.len() {
            return Err(Reject::Malformed);
        }
        self.apparent_size = self.apparent_size.saturating_add(size);
        Ok(())
    }

    /// The apparent size so far is within its limit.
    #[inline(always)]
    fn within_apparent_size(&self) -> Step {
        if self.apparent_size > self.max_apparent_size {
            return Err(Reject::ApparentSize);
        }
        Ok(())
    }

    /// `in_buffer::<T>`: aligned (relative to the record start) and in range.
    #[inline(always)]
    fn in_buffer(&mut self, pos: usize, size: usize, align: usize) -> Step {
        // `align` is a power of two (an `align_of`): a mask, not a division.
        debug_assert!(align.is_power_of_two());
        if pos & (align - 1) != 0 {
            return Err(Reject::Malformed);
        }
        self.range(pos, size)
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, pos: usize) -> Step<[u8; N]> {
        self.buf.get(pos..).and_then(<[u8]>::first_chunk::<N>).copied().ok_or(Reject::Malformed)
    }

    #[inline(always)]
    fn u16_at(&mut self, pos: usize) -> Step<usize> {
        self.in_buffer(pos, 2, 2)?;
        Ok(usize::from(u16::from_le_bytes(self.bytes(pos)?)))
    }

    #[inline(always)]
    fn u32_at(&mut self, pos: usize) -> Step<usize> {
        self.in_buffer(pos, 4, 4)?;
        usize::try_from(u32::from_le_bytes(self.bytes(pos)?)).map_err(|_| Reject::Malformed)
    }

    /// `ForwardsUOffset<T>`: the position the `u32` offset at `pos` points to.
    #[inline(always)]
    pub(super) fn forward(&mut self, pos: usize) -> Step<usize> {
        Ok(self.u32_at(pos)?.saturating_add(pos))
    }

    /// `visit_table` of a table `depth` levels deep (the root is 1; the
    /// schema has no recursive tables, so the depth is known statically).
    #[inline(always)]
    pub(super) fn table(&mut self, pos: usize, depth: usize) -> Step<Table<'b>> {
        self.in_buffer(pos, 4, 4)?;
        let soffset = i32::from_le_bytes(self.bytes(pos)?);
        let distance = usize::try_from(soffset.unsigned_abs()).map_err(|_| Reject::Malformed)?;
        let vtable = if soffset > 0 { pos.checked_sub(distance) } else { pos.checked_add(distance) };
        let vtable = vtable.filter(|&v| v < self.buf.len()).ok_or(Reject::Malformed)?;
        let vtable_len = self.u16_at(vtable)?;
        if !vtable.saturating_add(vtable_len).is_multiple_of(2) {
            return Err(Reject::Malformed);
        }
        self.range(vtable, vtable_len)?;
        self.within_apparent_size()?;
        self.tables += 1;
        if self.tables > self.max_tables {
            return Err(Reject::Tables);
        }
        if depth > self.max_depth {
            return Err(Reject::Depth);
        }
        let vtable = self.buf.get(vtable..vtable + vtable_len).ok_or(Reject::Malformed)?;
        Ok(Table { pos, vtable })
    }

    /// `TableVerifier::deref`: the field's position, `None` if absent.
    #[inline(always)]
    fn slot(&mut self, table: &Table<'_>, voffset: usize) -> Step<Option<usize>> {
        // `u16_at` without its alignment and range checks, which cannot fail
        // here: `table` checked the vtable is 2-aligned, of even length and in
        // range, and `voffset` is even, so it is inside the vtable exactly
        // when its two bytes are; past the end, the field is absent. The
        // apparent size counts.
        debug_assert!(voffset.is_multiple_of(2));
        let Some(&[lo, hi]) = table.vtable.get(voffset..voffset + 2) else {
            return Ok(None);
        };
        self.apparent_size = self.apparent_size.saturating_add(2);
        let field_offset = usize::from(u16::from_le_bytes([lo, hi]));
        Ok((field_offset > 0).then(|| table.pos.saturating_add(field_offset)))
    }

    /// `verify_vector_range::<T>`: the element range of the vector at `pos`.
    #[inline(always)]
    fn vector(&mut self, pos: usize, elem_size: usize, elem_align: usize) -> Step<(usize, usize)> {
        let len = self.u32_at(pos)?;
        let start = pos.saturating_add(4);
        debug_assert!(elem_align.is_power_of_two());
        if start & (elem_align - 1) != 0 {
            return Err(Reject::Malformed);
        }
        let size = len.saturating_mul(elem_size);
        self.range(start, size)?;
        // Before the caller looks at any element or byte of it.
        self.within_apparent_size()?;
        Ok((start, start.saturating_add(size)))
    }

    /// `&str`: in range, valid UTF-8, followed by a NUL byte.
    #[inline(always)]
    fn string(&mut self, pos: usize) -> Step {
        let (start, end) = self.vector(pos, 1, 1)?;
        let text = self.buf.get(start..end).ok_or(Reject::Malformed)?;
        // ASCII is valid UTF-8; only other text pays for the full validation.
        if self.buf.get(end) != Some(&0) || !(is_ascii(text) || std::str::from_utf8(text).is_ok()) {
            return Err(Reject::Malformed);
        }
        Ok(())
    }

    /// `visit_field` of an optional field of `shape` in slot `voffset`.
    #[inline(always)]
    pub(super) fn field(&mut self, table: &Table<'_>, voffset: usize, shape: Shape) -> Step {
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
}

/// Whether every byte of `text` is ASCII: one OR over all of them, which
/// LLVM vectorises. No early exit (text that is not ASCII is validated as
/// UTF-8 next anyway); a 1 KiB string costs ~310 instructions against ~620
/// for `<[u8]>::is_ascii`, a short one ~15 more (callgrind).
#[inline(always)]
pub(super) fn is_ascii(text: &[u8]) -> bool {
    text.iter().fold(0u8, |acc, &b| acc | b) < 0x80
}

/// What the walk learnt on the way that the envelope rules beyond
/// FlatBuffers' verifier need (see `verify::check_semantics`), so they cost
/// no second lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Walked {
    /// Position of the `message_id` struct, if present (verified in range).
    pub(super) message_id: Option<usize>,
    /// The payload union has a value of a type this build does not know
    /// (so nothing verified it).
    pub(super) unknown_payload: bool,
}

/// Whether FlatBuffers' verifier, run by `size_prefixed_root_with_opts` with
/// `opts`' limits over `record` (size prefix included, no padding), accepts
/// it. `Ok` means the generated accessors may read the record.
///
/// A record in the encoder's own layout without metadata is walked by
/// [`walk_own_layout`]; anything else, and anything that walk refuses, by
/// [`walk_envelope`], so a refusal always carries the generic walk's reason.
#[inline]
pub(super) fn verify_fast(record: &[u8], opts: &VerifyOptions) -> Step<Walked> {
    if is_own_layout(record) {
        let mut walk = Walk::new(record, opts);
        if let Ok(walked) = walk_own_layout(&mut walk) {
            if walk.within_apparent_size().is_ok() {
                return Ok(walked);
            }
        }
    }
    let mut walk = Walk::new(record, opts);
    let walked = walk_envelope(&mut walk)?;
    walk.within_apparent_size()?;
    Ok(walked)
}

/// Whether `record` starts like every record the encoder lays out without
/// metadata: bytes 4..36 (root offset, identifier, vtable, the table's
/// soffset) are [`SHORT_HEAD`](header_layout::SHORT_HEAD), and the table
/// lies inside the record.
#[inline(always)]
fn is_own_layout(record: &[u8]) -> bool {
    record.len() >= OWN_TABLE_END
        && record.get(4..header_layout::SHORT_HEAD_END) == Some(&header_layout::SHORT_HEAD[..])
}

use super::header_layout;

/// End of the envelope table in the own layout.
const OWN_TABLE_END: usize = header_layout::TABLE_AT_SHORT + header_layout::TABLE_LEN - 4;

/// What [`walk_envelope`] adds to the apparent size of an own-layout record
/// in the steps [`walk_own_layout`] does not repeat (it does the strings and
/// the payload itself): the root offset (4), the table's soffset (4), vtable
/// length (2) and vtable (20), one `u16` per vtable slot read (8 slots: every
/// field but `metadata`, which is past the trimmed vtable's end and so not
/// read), the two ids
/// (16 each), the timestamp (8), the schema version (6) and the payload type
/// (1). `own_layout_walk_counts_what_the_generic_walk_counts` checks it.
const OWN_FIXED_APPARENT_SIZE: usize = 4 + 4 + 2 + 20 + 8 * 2 + 16 + 16 + 8 + 6 + 1;

/// [`walk_envelope`] for a record [`is_own_layout`] accepted, with the table
/// and vtable lookups done at compile time: the positions of the table and of
/// every field are those of `header_layout`, and so in range and aligned
/// (the `const` asserts below), which leaves the strings and the payload to
/// check. It counts the same apparent size and tables as `walk_envelope`,
/// and accepts only records `walk_envelope` accepts; it may refuse more
/// (the caller then runs `walk_envelope` for the reason).
#[inline(always)]
fn walk_own_layout(walk: &mut Walk<'_>) -> Step<Walked> {
    use header_layout::{DESTINATION, MESSAGE_ID, PAYLOAD, PAYLOAD_TYPE, SOURCE, TABLE_AT_SHORT as T};
    // `table(T, 1)`'s limit checks (the apparent size is compared at the end).
    walk.apparent_size = walk.apparent_size.saturating_add(OWN_FIXED_APPARENT_SIZE);
    walk.tables += 1;
    if walk.tables > walk.max_tables || walk.max_depth < 1 {
        return Err(Reject::Malformed);
    }
    let source = walk.forward(T + SOURCE)?;
    walk.string(source)?;
    let destination = walk.forward(T + DESTINATION)?;
    walk.string(destination)?;
    let kind = crate::fb::Payload(walk.bytes::<1>(T + PAYLOAD_TYPE)?[0]);
    let known = super::catalogue::is_known_payload(kind);
    if known {
        let payload = walk.forward(T + PAYLOAD)?;
        super::catalogue::walk_payload(walk, kind, payload)?;
    }
    Ok(Walked { message_id: Some(T + MESSAGE_ID), unknown_payload: !known })
}

// The own layout's fixed positions are aligned as `walk_envelope` requires
// (record-relative): the table and the offsets to 4, the timestamp to 8.
const _: () = {
    use header_layout::{DESTINATION, PAYLOAD, SOURCE, TABLE_AT_SHORT as T, TIMESTAMP_NS};
    assert!(T % 4 == 0 && (T + SOURCE) % 4 == 0 && (T + DESTINATION) % 4 == 0 && (T + PAYLOAD) % 4 == 0);
    assert!((T + TIMESTAMP_NS) % 8 == 0 && T + PAYLOAD + 4 <= OWN_TABLE_END);
};

/// What the walk over `record` counted before it accepted or stopped:
/// (accepted, apparent size, tables). For tests that prove the work is bounded.
#[cfg(test)]
pub(super) fn walk_counts(record: &[u8], opts: &VerifyOptions) -> (bool, usize, usize) {
    let mut walk = Walk::new(record, opts);
    let accepted = walk_envelope(&mut walk).is_ok() && walk.within_apparent_size().is_ok();
    (accepted, walk.apparent_size, walk.tables)
}

/// [`walk_counts`] of the own-layout walk, `None` if `record` is not in the
/// own layout; plus what it found.
#[cfg(test)]
pub(super) fn own_layout_walk_counts(
    record: &[u8],
    opts: &VerifyOptions,
) -> Option<(bool, usize, usize, Option<Walked>)> {
    if !is_own_layout(record) {
        return None;
    }
    let mut walk = Walk::new(record, opts);
    let walked = walk_own_layout(&mut walk).ok().filter(|_| walk.within_apparent_size().is_ok());
    Some((walked.is_some(), walk.apparent_size, walk.tables, walked))
}

/// The generic walk's result on `record`, for comparing with the own-layout walk.
#[cfg(test)]
pub(super) fn generic_walk(record: &[u8], opts: &VerifyOptions) -> Option<Walked> {
    let mut walk = Walk::new(record, opts);
    walk_envelope(&mut walk).ok().filter(|_| walk.within_apparent_size().is_ok())
}

/// Whether the payload union's value slot of an accepted `record` holds an
/// offset to something shaped like a table (offset, table and vtable inside
/// the record), as [`Envelope::payload`](crate::fb::Envelope::payload) and
/// [`Table::vtable`](flatbuffers::Table::vtable) assume. Neither verifier
/// checks this for a union member it does not know; the generated code
/// still reads it.
pub(super) fn payload_slot_is_table(record: &[u8], opts: &VerifyOptions) -> bool {
    let check = |walk: &mut Walk<'_>| -> Step {
        let root = walk.forward(super::SIZE_PREFIX_LEN)?;
        let table = walk.table(root, 1)?;
        if let Some(value) = walk.slot(&table, usize::from(E::VT_PAYLOAD))? {
            let payload = walk.forward(value)?;
            walk.table(payload, 2)?;
        }
        Ok(())
    };
    check(&mut Walk::new(record, opts)).is_ok()
}

fn walk_envelope(walk: &mut Walk<'_>) -> Step<Walked> {
    // `SkipSizePrefix<ForwardsUOffset<Envelope>>` at 0.
    let root = walk.forward(super::SIZE_PREFIX_LEN)?;
    let table = walk.table(root, 1)?;
    let uuid = Shape::inline::<crate::fb::Uuid>();
    let message_id = walk.slot(&table, usize::from(E::VT_MESSAGE_ID))?;
    if let Some(pos) = message_id {
        walk.field_at(pos, uuid)?;
    }
    walk.field(&table, usize::from(E::VT_CORRELATION_ID), uuid)?;
    walk.field(&table, usize::from(E::VT_TIMESTAMP_NS), Shape::inline::<u64>())?;
    walk.field(&table, usize::from(E::VT_SOURCE), Shape::String)?;
    walk.field(&table, usize::from(E::VT_DESTINATION), Shape::String)?;
    walk.field(&table, usize::from(E::VT_SCHEMA_VERSION), Shape::inline::<crate::fb::SchemaVersion>())?;

    // `visit_union`: both or neither of key and value; an unknown member is
    // accepted unverified (its table is never read: `Event` reports it).
    let value = walk.slot(&table, usize::from(E::VT_PAYLOAD))?;
    let key = walk.slot(&table, usize::from(E::VT_PAYLOAD_TYPE))?;
    let mut unknown_payload = false;
    match (key, value) {
        (None, None) => {}
        (Some(key), Some(value)) => {
            walk.in_buffer(key, 1, 1)?;
            let kind = crate::fb::Payload(walk.bytes::<1>(key)?[0]);
            if super::catalogue::is_known_payload(kind) {
                let payload = walk.forward(value)?;
                super::catalogue::walk_payload(walk, kind, payload)?;
            } else {
                unknown_payload = true;
            }
        }
        _ => return Err(Reject::Malformed),
    }

    // `metadata: [KeyValue]`, `key` required.
    if let Some(pos) = walk.slot(&table, usize::from(E::VT_METADATA))? {
        let vector = walk.forward(pos)?;
        let (start, end) = walk.vector(vector, 4, 4)?;
        for element in (start..end).step_by(4) {
            let kv_pos = walk.forward(element)?;
            let kv = walk.table(kv_pos, 2)?;
            let key = walk.slot(&kv, usize::from(K::VT_KEY))?.ok_or(Reject::Malformed)?;
            walk.field_at(key, Shape::String)?;
            walk.field(&kv, usize::from(K::VT_VALUE), Shape::String)?;
        }
    }
    Ok(Walked { message_id, unknown_payload })
}

/// Walks the table at `$pos` (`$depth` levels deep) as the generated verifier
/// of table type `$table` would: `visit_table`, then each listed field at the
/// slot its generated constant `$table::$vt` names, checked as the shape of
/// its accessor `$table::$field` says. Evaluates to a [`Step`].
///
/// The slot always comes from the generated constant, so a field declared
/// with an explicit `(id: N)`, or after a deprecated one, is read where the
/// accessor reads it (`walk_follows_explicit_field_ids` proves it).
macro_rules! walk_table {
    ($walk:expr, $pos:expr, $depth:expr, $table:ident { $($field:ident = $vt:ident),* $(,)? }) => {{
        let walk: &mut $crate::envelope::walk::Walk<'_> = $walk;
        let table = walk.table($pos, $depth)?;
        $(
            walk.field(&table, usize::from($table::$vt), $crate::envelope::walk::shape_of($table::$field))?;
        )*
        let _ = &table;
        Ok::<(), $crate::envelope::walk::Reject>(())
    }};
}
pub(super) use walk_table;
