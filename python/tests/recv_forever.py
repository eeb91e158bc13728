"""Blocks in Consumer.recv() with no timeout on ring NAME; prints "waiting" first."""

import sys

import tadpole

consumer = tadpole.Segment.open(sys.argv[1]).consumer()
print("waiting", flush=True)
try:
    consumer.recv()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(7)
