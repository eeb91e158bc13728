"""The numbered, checksummed messages of the cross-process tests; mirrors python/peer/src/main.rs:
`[seq: u64 LE][filler][crc32 of everything before: u32 LE]`, 12 + seq % 48 bytes, filler byte i
being (seq + i) & 0xFF."""

import zlib

_PATTERN = bytes(range(256)) * 2


def message(seq):
    filler = seq % 48
    start = seq & 0xFF
    body = seq.to_bytes(8, "little") + _PATTERN[start : start + filler]
    return body + zlib.crc32(body).to_bytes(4, "little")


def check(view, expected_seq=None):
    """The seq of a received message after checking its length and checksum (and its seq, if
    `expected_seq` is given); raises AssertionError naming what is wrong."""
    seq = int.from_bytes(view[:8], "little")
    if expected_seq is not None and seq != expected_seq:
        raise AssertionError(f"expected message {expected_seq}, got {seq}")
    if len(view) != 12 + seq % 48:
        raise AssertionError(f"message {seq}: {len(view)} bytes, expected {12 + seq % 48}")
    if zlib.crc32(view[:-4]) != int.from_bytes(view[-4:], "little"):
        raise AssertionError(f"message {seq}: checksum mismatch")
    return seq
