"""A read-only view of a Tadpole ring segment from Python, following ipc-core/src/layout.rs.

It never writes to the segment (so it consumes nothing): it validates the descriptor, then walks
the committed records from the consumer's position, checking every record header the way the
Rust consumer does, and yields memoryviews of the payloads *into the mapping* (no copy).
"""

import mmap
import os
import struct

MAGIC = int.from_bytes(b"TADPOLE\x01", "little")
LAYOUT_VERSION = 2
HEADER_LEN = 4096
PRODUCER_POSITION = 128
CONSUMER_POSITION = 256
FLAG_COMMITTED = 1 << 48
FLAG_PADDING = 1 << 49
KNOWN_FLAGS = FLAG_COMMITTED | FLAG_PADDING


class RingError(Exception):
    pass


def check_byte(position):
    return (((position >> 3) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 56


class RingView:
    def __init__(self, name):
        path = f"/dev/shm/tadpole.{name}"
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_LEN:
                raise RingError(f"{path}: {size} bytes, smaller than the header")
            self.map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version, header_len, capacity, segment_len, max_len, align = struct.unpack_from(
            "<QIIQQII", self.map, 0
        )
        if magic != MAGIC:
            raise RingError(f"bad magic {magic:#x}")
        if version != LAYOUT_VERSION or header_len != HEADER_LEN:
            raise RingError(f"unsupported layout {version}/{header_len}")
        if capacity & (capacity - 1) or segment_len != HEADER_LEN + capacity or segment_len != size:
            raise RingError(f"bad sizes: capacity {capacity}, segment {segment_len}, file {size}")
        self.capacity, self.max_len, self.align = capacity, max_len, align
        self.view = memoryview(self.map)

    def positions(self):
        (tail,) = struct.unpack_from("<Q", self.map, PRODUCER_POSITION)
        (head,) = struct.unpack_from("<Q", self.map, CONSUMER_POSITION)
        return head, tail

    def records(self):
        """Yields (message_type, payload memoryview) for every committed record, oldest first."""
        pos, _ = self.positions()
        while True:
            offset = pos & (self.capacity - 1)
            (word,) = struct.unpack_from("<Q", self.map, HEADER_LEN + offset)
            if word == 0:
                return
            flags = word & (0xFF << 48)
            if not flags & FLAG_COMMITTED or flags & ~KNOWN_FLAGS or word >> 56 != check_byte(pos):
                raise RingError(f"corrupt header {word:#x} at {pos}")
            length, mtype = word & 0xFFFFFFFF, (word >> 32) & 0xFFFF
            record = 8 + ((length + 7) & ~7)
            if offset + record > self.capacity or (not flags & FLAG_PADDING and length > self.max_len):
                raise RingError(f"record at {pos} out of bounds")
            if not flags & FLAG_PADDING:
                start = HEADER_LEN + offset + 8
                yield mtype, self.view[start : start + length]
            pos += record

    def address_range(self):
        """(start, end) addresses of the mapping, to check that readers point into it."""
        import pyarrow as pa

        start = pa.py_buffer(self.view).address
        return start, start + len(self.view)
