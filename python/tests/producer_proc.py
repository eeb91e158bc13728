"""A Python producer in its own process: `producer_proc.py NAME COUNT`. Sends messages up to
COUNT-1 (every 7th built in place through a reservation), waiting for room, starting after the
last message the ring carried (so a replacement of a killed producer resumes exactly). Prints
"resumed at N, sent COUNT"."""

import sys

import tadpole
from framing import message

name, count = sys.argv[1], int(sys.argv[2])
producer = tadpole.Segment.open(name).producer()
first = producer.frontier()[1]
for seq in range(first, count):
    msg = message(seq)
    if seq % 7:
        producer.send(msg, timeout=30)
    else:
        with producer.reserve(len(msg), timeout=30) as buf:
            buf[:] = msg
print(f"resumed at {first}, sent {count}", flush=True)
