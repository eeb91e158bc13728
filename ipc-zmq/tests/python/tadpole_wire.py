"""The relay wire protocol, version 3, written from ipc-zmq/PROTOCOL.md (not from wire.rs), so
that a test using it checks the document as much as the relay.

Encodes what a sending relay sends (HELLO, DATA) and strictly decodes what a receiving relay
answers (WELCOME, ACK). A message is a list of ZeroMQ frames (bytes); integers are little-endian;
a name is `len: u8` then `len` bytes of UTF-8.
"""

import struct
import unicodedata
from dataclasses import dataclass, field

VERSION = 3
HELLO, WELCOME, DATA, ACK = 1, 2, 3, 4
MAX_NAME_LEN = 64
MAX_RECORDS = 4096
MAX_REJECTS = 4096
ACK_BUSY = 1
REJECT_REASONS = {1: "unknown route", 2: "too large", 3: "invalid envelope"}


class FrameError(ValueError):
    """A message the document says a peer must refuse."""


@dataclass(frozen=True)
class Record:
    position: int
    message_type: int
    payload: bytes


@dataclass(frozen=True)
class Welcome:
    epoch: int
    next: int
    stream: str
    rejects: list = field(default_factory=list)  # [(position, reason code)]


@dataclass(frozen=True)
class Ack:
    epoch: int
    next: int
    busy: bool
    stream: str
    rejects: list = field(default_factory=list)


def _name(text):
    raw = text.encode()
    if not raw or len(raw) > MAX_NAME_LEN or any(unicodedata.category(c) == "Cc" for c in text):
        raise FrameError(f"{text!r} is not a valid origin or stream name")
    return bytes([len(raw)]) + raw


def encode_hello(origin, stream, epoch):
    """HELLO: version, kind, epoch u64, origin, stream. One frame."""
    return [struct.pack("<BBQ", VERSION, HELLO, epoch) + _name(origin) + _name(stream)]


def varint(value):
    """Unsigned LEB128: 7 bits a byte, least significant first, the top bit on all but the last."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_data(origin, stream, epoch, from_, released, records):
    """DATA: a header frame (version, kind, epoch, from, released u64, count u32, origin,
    stream), then one body frame holding every record back to back, each behind its prefix:
    step varint (delta << 1 | t, position = floor + 8 * delta, floor = from rounded up to 8,
    then the previous position + 8), the message type u16 when t (only when it differs from
    the previous record's, 0 before the first), the payload length varint, the payload."""
    if not 1 <= len(records) <= MAX_RECORDS:
        raise FrameError(f"{len(records)} records; a DATA message holds 1 to {MAX_RECORDS}")
    head = struct.pack("<BBQQQI", VERSION, DATA, epoch, from_, released, len(records)) + _name(origin) + _name(stream)
    body, floor, message_type = bytearray(), (from_ + 7) & ~7, 0
    for rec in records:
        if rec.position % 8 or rec.position < floor:
            raise FrameError(f"position {rec.position} misaligned or out of order")
        typed = rec.message_type != message_type
        body += varint((rec.position - floor) // 8 << 1 | typed)
        if typed:
            body += struct.pack("<H", rec.message_type)
            message_type = rec.message_type
        body += varint(len(rec.payload)) + bytes(rec.payload)
        floor = rec.position + 8
    return [head, bytes(body)]


class _Reader:
    def __init__(self, buf):
        self.buf, self.at = bytes(buf), 0

    def take(self, n):
        if self.at + n > len(self.buf):
            raise FrameError("truncated")
        out = self.buf[self.at : self.at + n]
        self.at += n
        return out

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def name(self):
        (n,) = self.unpack("<B")
        try:
            text = self.take(n).decode()
        except UnicodeDecodeError as e:
            raise FrameError("name is not UTF-8") from e
        _name(text)  # the same rules as sending
        return text

    def rejects(self, next_):
        """A reject list ends the frame: count u16 (<= 4096), then count x (position u64, reason u8)."""
        (count,) = self.unpack("<H")
        if count > MAX_REJECTS:
            raise FrameError(f"{count} rejects")
        if len(self.buf) - self.at != 9 * count:
            raise FrameError("reject list does not match the bytes left")
        out = []
        for _ in range(count):
            position, reason = self.unpack("<QB")
            if reason not in REJECT_REASONS:
                raise FrameError(f"unknown reject reason {reason}")
            if position % 8 or position >= next_:
                raise FrameError(f"reject position {position}")
            out.append((position, reason))
        return out


def decode_reply(frames):
    """Decodes a WELCOME or an ACK (exactly one frame), refusing anything PROTOCOL.md refuses."""
    if len(frames) != 1:
        raise FrameError(f"{len(frames)} frames; WELCOME and ACK are one frame")
    r = _Reader(frames[0])
    version, kind = r.unpack("<BB")
    if version != VERSION:
        raise FrameError(f"version {version}")
    if kind == WELCOME:
        epoch, next_ = r.unpack("<QQ")
        stream = r.name()
        return Welcome(epoch, next_, stream, r.rejects(next_))
    if kind == ACK:
        epoch, next_, flags = r.unpack("<QQB")
        if flags & ~ACK_BUSY:
            raise FrameError(f"unknown flags {flags:#x}")
        stream = r.name()
        return Ack(epoch, next_, bool(flags & ACK_BUSY), stream, r.rejects(next_))
    raise FrameError(f"kind {kind} is not a reply")


def record_len(payload_len):
    """Bytes a record takes in a ring (8-byte header, payload padded to 8): how far positions
    advance from one record to the next in a source ring without wrap padding."""
    return 8 + ((payload_len + 7) & ~7)
