//! The dead-letter record: what the sender writes into its dead-letter ring for a record the far
//! side rejected.

use crate::wire::RejectReason;

/// Version byte of the dead-letter record format.
pub const DEAD_LETTER_VERSION: u8 = 1;
/// Bytes before the stream name: version, reason, original message type, position, epoch,
/// name length.
pub const DEAD_LETTER_FIXED_LEN: usize = 1 + 1 + 2 + 8 + 8 + 1;

/// A rejected record, as written into the dead-letter ring (whose record message type is the
/// original's). Layout, little-endian: `version u8 (1) | reason u8 | message_type u16 |
/// position u64 | epoch u64 | stream_len u8 | stream | original payload`.
///
/// ```
/// use ipc_zmq::engine::DeadLetter;
/// use ipc_zmq::wire::RejectReason;
/// let letter = DeadLetter { reason: RejectReason::TooLarge, message_type: 9, position: 64, epoch: 5, stream: "orders", payload: b"big" };
/// let bytes = letter.encode();
/// assert_eq!(DeadLetter::decode(&bytes), Some(letter));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    /// Why the far side refused it.
    pub reason: RejectReason,
    /// The original message type.
    pub message_type: u16,
    /// Its position in the source ring.
    pub position: u64,
    /// The source ring's epoch.
    pub epoch: u64,
    /// The route it was sent on.
    pub stream: &'a str,
    /// The original payload.
    pub payload: &'a [u8],
}

impl<'a> DeadLetter<'a> {
    /// Bytes of the encoded record.
    pub fn encoded_len(&self) -> usize {
        DEAD_LETTER_FIXED_LEN + self.stream.len() + self.payload.len()
    }

    /// Writes the record into `out`, which must be [`encoded_len`](Self::encoded_len) long.
    pub fn write_to(&self, out: &mut [u8]) {
        out[0] = DEAD_LETTER_VERSION;
        out[1] = self.reason.code();
        out[2..4].copy_from_slice(&self.message_type.to_le_bytes());
        out[4..12].copy_from_slice(&self.position.to_le_bytes());
        out[12..20].copy_from_slice(&self.epoch.to_le_bytes());
        out[20] = self.stream.len() as u8;
        let name_end = DEAD_LETTER_FIXED_LEN + self.stream.len();
        out[DEAD_LETTER_FIXED_LEN..name_end].copy_from_slice(self.stream.as_bytes());
        out[name_end..].copy_from_slice(self.payload);
    }

    /// The encoded record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0; self.encoded_len()];
        self.write_to(&mut out);
        out
    }

    /// Reads a dead-letter record (`None` if it is not one).
    pub fn decode(bytes: &'a [u8]) -> Option<DeadLetter<'a>> {
        if bytes.len() < DEAD_LETTER_FIXED_LEN || bytes[0] != DEAD_LETTER_VERSION {
            return None;
        }
        let reason = RejectReason::from_code(bytes[1])?;
        let message_type = u16::from_le_bytes([bytes[2], bytes[3]]);
        let position = u64::from_le_bytes(bytes[4..12].try_into().ok()?);
        let epoch = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
        let name_end = DEAD_LETTER_FIXED_LEN + bytes[20] as usize;
        let stream = std::str::from_utf8(bytes.get(DEAD_LETTER_FIXED_LEN..name_end)?).ok()?;
        Some(DeadLetter { reason, message_type, position, epoch, stream, payload: &bytes[name_end..] })
    }
}
