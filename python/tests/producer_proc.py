"""A Python producer in its own process: `producer_proc.py NAME COUNT`. Sends messages 0..COUNT-1
(every 7th built in place through a reservation), waiting for room. Prints "sent COUNT"."""

import sys

import tadpole
from framing import message

name, count = sys.argv[1], int(sys.argv[2])
producer = tadpole.Segment.open(name).producer()
for seq in range(count):
    msg = message(seq)
    if seq % 7:
        producer.send(msg, timeout=30)
    else:
        with producer.reserve(len(msg), timeout=30) as buf:
            buf[:] = msg
print(f"sent {count}", flush=True)
