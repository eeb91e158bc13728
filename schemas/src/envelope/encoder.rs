//! [`EnvelopeEncoder`]: builds envelopes without allocating once warm.

use std::fmt;

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

use super::framing::{FILE_IDENTIFIER, FILE_IDENTIFIER_STR, SIZE_PREFIX_LEN};
use super::{EnvelopeHeader, header_layout};
use crate::fb;

/// A finished payload table plus its union discriminant, ready to go into an
/// envelope. Every `WIPOffset<fb::SomeEvent>` converts into one with `into()`.
#[derive(Clone, Copy)]
pub struct PayloadOffset {
    kind: fb::Payload,
    offset: WIPOffset<UnionWIPOffset>,
}

impl PayloadOffset {
    /// Pairs a union discriminant with a finished table. Prefer `into()` from
    /// the typed offset, which cannot pair the wrong two.
    pub fn new(kind: fb::Payload, offset: WIPOffset<UnionWIPOffset>) -> Self {
        Self { kind, offset }
    }

    /// No payload: the envelope carries only its header (`payload_type`
    /// `NONE`), e.g. a probe or an acknowledgement.
    ///
    /// ```
    /// use schemas::envelope::{verify_envelope, EnvelopeEncoder, EnvelopeHeader, PayloadOffset, VerifyOptions};
    /// let mut enc = EnvelopeEncoder::new();
    /// let bytes = enc.encode(&EnvelopeHeader::new("a", "b"), |_| PayloadOffset::none());
    /// let env = verify_envelope(bytes, &VerifyOptions::default()).unwrap();
    /// assert_eq!(env.payload_type(), schemas::fb::Payload::NONE);
    /// assert!(env.payload().is_none());
    /// ```
    pub fn none() -> Self {
        Self { kind: fb::Payload::NONE, offset: WIPOffset::new(0) }
    }

    /// The union discriminant (the message type).
    pub fn kind(&self) -> fb::Payload {
        self.kind
    }
}

impl fmt::Debug for PayloadOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadOffset").field("kind", &self.kind).field("offset", &self.offset.value()).finish()
    }
}

/// Errors from [`EnvelopeEncoder::write_into`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The destination cannot hold the encoded envelope.
    #[error("destination holds {available} bytes, the envelope needs {needed}")]
    BufferTooSmall {
        /// [`EnvelopeEncoder::encoded_len`].
        needed: usize,
        /// Length of the destination slice.
        available: usize,
    },
    /// `write_into` was called before any `encode`.
    #[error("nothing has been encoded yet")]
    NothingEncoded,
}

/// Builds envelopes with one reused [`FlatBufferBuilder`] (the payload) and,
/// for envelopes without metadata, a hand-written header around it (layout
/// drawn in the private `header_layout` module). After the first few
/// messages have grown the buffers, encoding allocates nothing.
///
/// Two ways to get the bytes out:
/// * [`encode`](Self::encode) returns the finished, size-prefixed record.
/// * [`encoded_len`](Self::encoded_len) + [`write_into`](Self::write_into)
///   copy it once into a caller-provided slice (a ring's reserved space).
///
/// ```
/// use schemas::envelope::{verify_envelope, EnvelopeEncoder, EnvelopeHeader, VerifyOptions};
/// use schemas::fb;
///
/// let mut enc = EnvelopeEncoder::new();
/// let header = EnvelopeHeader::new("market-analysis-1", "risk-1");
/// enc.encode(&header, |fbb| {
///     let symbol = fbb.create_string("BTC-USD");
///     fb::TradingSignalGenerated::create(fbb, &fb::TradingSignalGeneratedArgs {
///         symbol: Some(symbol),
///         side: fb::Side::Buy,
///         reference_price_e8: 6_512_345_000_000, // 65 123.45
///         ..Default::default()
///     })
/// });
///
/// let mut slot = vec![0u8; enc.encoded_len()]; // e.g. a ring reservation
/// let n = enc.write_into(&mut slot).unwrap();
/// let env = verify_envelope(&slot[..n], &VerifyOptions::default()).unwrap();
/// let signal = env.payload_as_trading_signal_generated().unwrap();
/// assert_eq!(signal.symbol(), Some("BTC-USD"));
/// ```
pub struct EnvelopeEncoder {
    pub(super) fbb: FlatBufferBuilder<'static>,
    metadata_order: Vec<usize>,
    metadata_offsets: Vec<WIPOffset<fb::KeyValue<'static>>>,
    /// The record when the envelope table was laid out by hand (see
    /// [`header_layout`]); reused, so it stops allocating once warm.
    record: Vec<u8>,
    pub(super) finished: Finished,
}

/// Where the last encoded record lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Finished {
    Nothing,
    /// `fbb.finished_data()`: the whole envelope went through the builder.
    Builder,
    /// `record`: the envelope header laid out by hand in front of the payload.
    Record,
}

impl Default for EnvelopeEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EnvelopeEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeEncoder").field("encoded_len", &self.encoded_len()).finish_non_exhaustive()
    }
}

impl EnvelopeEncoder {
    /// An encoder with a 1 KiB initial buffer.
    pub fn new() -> Self {
        Self::with_capacity(1024)
    }

    /// An encoder whose buffer starts at `bytes` (it still grows as needed).
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(bytes),
            metadata_order: Vec::new(),
            metadata_offsets: Vec::new(),
            record: Vec::with_capacity(bytes),
            finished: Finished::Nothing,
        }
    }

    /// Encodes one envelope and returns the finished size-prefixed record.
    ///
    /// `payload` builds the event table (and its strings/vectors) in the
    /// builder and returns its offset; the envelope is built around it.
    /// The bytes stay valid until the next `encode`.
    ///
    /// # Panics
    ///
    /// Only if `payload` misuses the builder (e.g. leaves a table unfinished:
    /// a panic with metadata; without, the unfinished bytes are left
    /// unreferenced), returns an offset it did not build, or the envelope
    /// exceeds the 2 GiB FlatBuffers limit.
    pub fn encode<P, F>(&mut self, header: &EnvelopeHeader<'_>, payload: F) -> &[u8]
    where
        F: FnOnce(&mut FlatBufferBuilder<'static>) -> P,
        P: Into<PayloadOffset>,
    {
        self.fbb.reset();
        self.finished = Finished::Nothing;
        let payload = payload(&mut self.fbb).into();
        if payload.kind != fb::Payload::NONE {
            self.lay_out_header(header, payload);
            self.finished = Finished::Record;
            return &self.record;
        }
        self.finish_with_builder(header, payload)
    }

    /// The envelope through `FlatBufferBuilder` only (the reference layout,
    /// and the path for a `NONE` payload kind, which the builder elides).
    pub(super) fn finish_with_builder(&mut self, header: &EnvelopeHeader<'_>, payload: PayloadOffset) -> &[u8] {
        let source = self.fbb.create_string(header.source);
        let destination = self.fbb.create_string(header.destination);
        let metadata = self.build_metadata(header.metadata);

        let message_id = header.message_id.to_wire();
        let correlation_id = header.correlation_id.to_wire();
        let schema_version = header.schema_version.to_wire();
        let root = fb::Envelope::create(
            &mut self.fbb,
            &fb::EnvelopeArgs {
                message_id: Some(&message_id),
                correlation_id: Some(&correlation_id),
                timestamp_ns: header.timestamp_ns,
                source: Some(source),
                destination: Some(destination),
                schema_version: Some(&schema_version),
                payload_type: payload.kind,
                // No union value for `NONE`: key and value absent together.
                payload: (payload.kind != fb::Payload::NONE).then_some(payload.offset),
                metadata,
            },
        );
        self.fbb.finish_size_prefixed(root, Some(FILE_IDENTIFIER_STR));
        self.finished = Finished::Builder;
        self.fbb.finished_data()
    }

    /// Writes the record into `self.record`: the envelope header laid out by
    /// hand (see [`header_layout`]), then the payload the builder holds,
    /// unchanged. The builder's generic table/vtable machinery costs ~1 150
    /// instructions for the envelope header (callgrind); this costs ~440.
    fn lay_out_header(&mut self, header: &EnvelopeHeader<'_>, payload: PayloadOffset) {
        let plan = self.plan_header(header, payload);
        let mut record = std::mem::take(&mut self.record);
        record.clear();
        record.resize(plan.len, 0);
        self.write_header(&plan, header, payload, &mut record);
        self.record = record;
    }

    /// Builds the payload with `payload`, then lays the whole envelope out
    /// straight into the buffer `place` hands out for its exact length (a
    /// ring's write grant), so the record is written once, where the reader
    /// will read it, and never copied. Returns that buffer and the payload
    /// kind; if `place` fails nothing was written and its error is returned.
    /// Leaves nothing in [`finished`](Self::finished).
    ///
    /// # Panics
    ///
    /// As [`encode`](Self::encode), before `place` is called.
    pub(crate) fn encode_into<P, F, G, E>(
        &mut self,
        header: &EnvelopeHeader<'_>,
        payload: F,
        place: impl FnOnce(usize) -> Result<G, E>,
    ) -> Result<(G, fb::Payload), E>
    where
        F: FnOnce(&mut FlatBufferBuilder<'static>) -> P,
        P: Into<PayloadOffset>,
        G: std::ops::DerefMut<Target = [u8]>,
    {
        self.fbb.reset();
        self.finished = Finished::Nothing;
        let payload = payload(&mut self.fbb).into();
        if payload.kind == fb::Payload::NONE {
            // Rare (a probe): through the builder, then one copy.
            self.finish_with_builder(header, payload);
            self.finished = Finished::Nothing;
            let src = self.fbb.finished_data();
            let mut out = place(src.len())?;
            out[..src.len()].copy_from_slice(src);
            return Ok((out, payload.kind));
        }
        let plan = self.plan_header(header, payload);
        let mut out = place(plan.len)?;
        let dst = &mut out[..plan.len];
        // Padding and NUL terminators must read zero; ring space holds old records.
        dst[..plan.front].fill(0);
        self.write_header(&plan, header, payload, dst);
        Ok((out, payload.kind))
    }

    /// Where everything of the hand-laid header goes, for `header` around the
    /// payload the builder holds (and the metadata order, into
    /// `self.metadata_order`).
    ///
    /// The builder aligns everything relative to the end of its data, so the
    /// payload keeps its alignment as long as the record length is a multiple
    /// of 8 (the largest alignment in the schema).
    fn plan_header(&mut self, header: &EnvelopeHeader<'_>, payload: PayloadOffset) -> HeaderPlan {
        use header_layout::*;
        let tail_len = self.fbb.unfinished_data().len();
        let payload_from_end = payload.offset.value() as usize;
        assert!(
            (4..=tail_len).contains(&payload_from_end),
            "payload offset {payload_from_end} is not inside the builder's {tail_len} bytes"
        );
        let metadata = header.metadata;
        // Without metadata the vtable and table stop before the `metadata`
        // slot: 8 bytes shorter, which keeps small envelopes in fewer cache lines.
        let (table_at, table_len, short) =
            if metadata.is_empty() { (TABLE_AT_SHORT, TABLE_LEN - 4, true) } else { (TABLE_AT, TABLE_LEN, false) };
        let source_at = table_at + table_len;
        let destination_at = source_at + string_len(header.source);
        let mut end = destination_at + 4 + header.destination.len() + 1;
        let vector_at = end.next_multiple_of(4);
        if !metadata.is_empty() {
            // Stable, so duplicate keys keep the caller's order (as the builder path).
            self.metadata_order.clear();
            self.metadata_order.extend(0..metadata.len());
            self.metadata_order.sort_by_key(|&i| metadata[i].0);
            let strings: usize = metadata.iter().map(|(k, v)| string_len(k) + string_len(v)).sum();
            end = vector_at + 4 + 4 * metadata.len() + 8 + KEY_VALUE_LEN * metadata.len() + strings;
        }
        let len = (end + tail_len).next_multiple_of(8);
        assert!(len <= flatbuffers::FLATBUFFERS_MAX_BUFFER_SIZE, "envelope exceeds the 2 GiB FlatBuffers limit");
        HeaderPlan {
            table_at,
            short,
            source_at,
            destination_at,
            vector_at,
            len,
            front: len - tail_len,
            payload_from_end,
        }
    }

    /// Writes the record `plan` describes into `out` (exactly `plan.len`
    /// bytes, zero up to `plan.front`): the header, then the builder's payload.
    fn write_header(&self, plan: &HeaderPlan, header: &EnvelopeHeader<'_>, payload: PayloadOffset, out: &mut [u8]) {
        use header_layout::*;
        let &HeaderPlan { table_at: t, short, source_at, destination_at, vector_at, len, front, payload_from_end } =
            plan;
        let vtable = if short { &VTABLE_SHORT[..] } else { &VTABLE[..] };
        let metadata = header.metadata;
        // In range: every value below is at most `len`, which fits the limit.
        let u32_of = |v: usize| (v as u32).to_le_bytes();

        out[0..4].copy_from_slice(&u32_of(len - SIZE_PREFIX_LEN));
        out[4..8].copy_from_slice(&u32_of(t - 4));
        out[8..12].copy_from_slice(&FILE_IDENTIFIER);
        for (i, v) in vtable.iter().enumerate() {
            out[VTABLE_AT + 2 * i..][..2].copy_from_slice(&v.to_le_bytes());
        }
        out[t..t + 4].copy_from_slice(&((t - VTABLE_AT) as i32).to_le_bytes());
        out[t + PAYLOAD_TYPE] = payload.kind.0;
        out[t + SCHEMA_VERSION..][..6].copy_from_slice(&header.schema_version.to_wire().0);
        out[t + SOURCE..][..4].copy_from_slice(&u32_of(source_at - (t + SOURCE)));
        out[t + TIMESTAMP_NS..][..8].copy_from_slice(&header.timestamp_ns.to_le_bytes());
        out[t + MESSAGE_ID..][..16].copy_from_slice(&header.message_id.to_wire().0);
        out[t + CORRELATION_ID..][..16].copy_from_slice(&header.correlation_id.to_wire().0);
        out[t + DESTINATION..][..4].copy_from_slice(&u32_of(destination_at - (t + DESTINATION)));
        out[t + PAYLOAD..][..4].copy_from_slice(&u32_of(len - payload_from_end - (t + PAYLOAD)));
        put_string(out, source_at, header.source.as_bytes());
        put_string(out, destination_at, header.destination.as_bytes());
        if !metadata.is_empty() {
            out[t + METADATA..][..4].copy_from_slice(&u32_of(vector_at - (t + METADATA)));
            out[vector_at..][..4].copy_from_slice(&u32_of(metadata.len()));
            let kv_vtable_at = vector_at + 4 + 4 * metadata.len();
            for (i, v) in KEY_VALUE_VTABLE.iter().enumerate() {
                out[kv_vtable_at + 2 * i..][..2].copy_from_slice(&v.to_le_bytes());
            }
            let first_kv = kv_vtable_at + 8;
            let mut string_at = first_kv + KEY_VALUE_LEN * metadata.len();
            for (n, &i) in self.metadata_order.iter().enumerate() {
                let (key, value) = metadata[i];
                let element = vector_at + 4 + 4 * n;
                let kv = first_kv + KEY_VALUE_LEN * n;
                out[element..][..4].copy_from_slice(&u32_of(kv - element));
                out[kv..][..4].copy_from_slice(&((kv - kv_vtable_at) as i32).to_le_bytes());
                out[kv + 4..][..4].copy_from_slice(&u32_of(string_at - (kv + 4)));
                put_string(out, string_at, key.as_bytes());
                string_at += string_len(key);
                out[kv + 8..][..4].copy_from_slice(&u32_of(string_at - (kv + 8)));
                put_string(out, string_at, value.as_bytes());
                string_at += string_len(value);
            }
        }
        out[front..len].copy_from_slice(self.fbb.unfinished_data());
    }

    /// Builds the sorted `[KeyValue]` vector without allocating (after
    /// warm-up): the sort permutes reused index scratch, not the caller's slice.
    #[allow(clippy::type_complexity)]
    fn build_metadata(
        &mut self,
        metadata: &[(&str, &str)],
    ) -> Option<WIPOffset<Vector<'static, ForwardsUOffset<fb::KeyValue<'static>>>>> {
        if metadata.is_empty() {
            return None;
        }
        self.metadata_order.clear();
        self.metadata_order.extend(0..metadata.len());
        // Stable, so duplicate keys keep the caller's order.
        self.metadata_order.sort_by_key(|&i| metadata[i].0);
        self.metadata_offsets.clear();
        for &i in &self.metadata_order {
            let (k, v) = metadata[i];
            let key = self.fbb.create_string(k);
            let value = self.fbb.create_string(v);
            let kv = fb::KeyValue::create(&mut self.fbb, &fb::KeyValueArgs { key: Some(key), value: Some(value) });
            self.metadata_offsets.push(kv);
        }
        Some(self.fbb.create_vector(&self.metadata_offsets))
    }

    /// The last encoded record, or an empty slice before the first `encode`.
    pub fn finished(&self) -> &[u8] {
        match self.finished {
            Finished::Nothing => &[],
            Finished::Builder => self.fbb.finished_data(),
            Finished::Record => &self.record,
        }
    }

    /// Length in bytes of the last encoded record (size prefix included).
    pub fn encoded_len(&self) -> usize {
        self.finished().len()
    }

    /// Copies the last encoded record into the front of `dst` (the one copy
    /// on the way into shared memory) and returns its length.
    ///
    /// For [`verify_envelope`](super::verify_envelope) to accept the record, the reader must see
    /// exactly `encoded_len()` bytes (or, with
    /// [`VerifyOptions::allow_padding_to_8`](super::VerifyOptions::allow_padding_to_8), that rounded up to 8).
    pub fn write_into(&self, dst: &mut [u8]) -> Result<usize, EncodeError> {
        if self.finished == Finished::Nothing {
            return Err(EncodeError::NothingEncoded);
        }
        let src = self.finished();
        let available = dst.len();
        let out = dst.get_mut(..src.len()).ok_or(EncodeError::BufferTooSmall { needed: src.len(), available })?;
        out.copy_from_slice(src);
        Ok(src.len())
    }
}

/// Where [`EnvelopeEncoder::write_header`] puts things (positions from the
/// record start; see `header_layout`).
struct HeaderPlan {
    /// The envelope table.
    table_at: usize,
    /// No metadata: the trimmed vtable and table.
    short: bool,
    source_at: usize,
    destination_at: usize,
    /// The metadata vector (if any).
    vector_at: usize,
    /// The whole record, size prefix included.
    len: usize,
    /// Where the builder's payload bytes start.
    front: usize,
    /// The payload table's offset from the end of the builder's bytes.
    payload_from_end: usize,
}

/// Bytes a FlatBuffers string takes: `u32` length, the text, NUL, padded to 4.
fn string_len(text: &str) -> usize {
    (4 + text.len() + 1).next_multiple_of(4)
}

/// Writes a FlatBuffers string at `at`: `u32` length, the bytes (the NUL
/// after them is already zero).
fn put_string(out: &mut [u8], at: usize, text: &[u8]) {
    out[at..][..4].copy_from_slice(&(text.len() as u32).to_le_bytes());
    out[at + 4..][..text.len()].copy_from_slice(text);
}
