"""A Python consumer in its own process: `consumer_proc.py NAME COUNT PROGRESS_FILE`.

Receives until message COUNT-1, checking each message's checksum and that seqs are consecutive
from the first one received. Before releasing each view it stores the seq in PROGRESS_FILE (an
8-byte shared mapping, so the value survives kill -9). Prints "first F last L" at the end.
"""

import mmap
import os
import struct
import sys

import tadpole
from framing import check

name, count, progress_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(progress_path, os.O_RDWR)
progress = mmap.mmap(fd, 8)
consumer = tadpole.Segment.open(name).consumer()
first = expected = None
while expected != count:
    with consumer.recv(timeout=30) as view:
        seq = check(view, expected)
        struct.pack_into("<q", progress, 0, seq)
    if first is None:
        first = seq
    expected = seq + 1
print(f"first {first} last {expected - 1}", flush=True)
