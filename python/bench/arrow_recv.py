"""Receive time of a 1 k-row and a 1 M-row Arrow batch in Python: tadpole.BatchReceiver (zero
copy, validated) against pyarrow.ipc.open_stream reading the same batch from an in-memory
Arrow IPC stream.

    python3 python/bench/arrow_recv.py [--repeats N]

The batch has an int64 and a float64 column (16 MB at 1 M rows). A sender process keeps the ring
full; each repeat spins 5 ms in Python (so no wait is timed), then times only `recv()`
(validating, and with trust_peer=True) (the pyarrow.RecordBatch in hand, buffers in the ring), or
`open_stream(...).read_next_batch()` over a buffer after the same pause. Prints the median
per size and the 1 M / 1 k ratio of each: a zero-copy receive should not grow with the rows.
"""

import argparse
import os
import subprocess
import sys
import time

import pyarrow as pa

import tadpole


def batch(rows):
    return pa.record_batch({"px_e8": pa.array(range(rows), pa.int64()), "w": pa.array([0.5] * rows, pa.float64())})


def median(xs):
    return sorted(xs)[len(xs) // 2]


def pause():
    """5 ms spinning in Python before each timed read, for both readers: the sender refills the
    ring meanwhile, and each read starts as after other work (caches no longer hot for it)."""
    until = time.perf_counter() + 0.005
    while time.perf_counter() < until:
        pass


def send(name, repeats):
    tx = tadpole.BatchSender(tadpole.Segment.open(name))
    for rows in (1_000, 1_000_000):
        b = batch(rows)
        for _ in range(repeats):
            tx.send(b, timeout=60)


def main():
    if sys.argv[1:2] == ["--send"]:
        return send(sys.argv[2], int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    rows_list = (1_000, 1_000_000)
    ring, trusted, ipc = {}, {}, {}
    for trust, out in ((False, ring), (True, trusted)):
        name = f"bench-arrow-{os.getpid()}-{trust}"
        seg = tadpole.Segment.create(name, 1 << 26, payload_align=64)
        rx = tadpole.BatchReceiver(seg, trust_peer=trust)
        # The sender is another process, as in use: it keeps the ring full, and each receive is
        # timed after a pause that lets it refill, so no wait is timed.
        sender = subprocess.Popen([sys.executable, __file__, "--send", name, str(args.repeats)])
        for rows in rows_list:
            times = []
            for _ in range(args.repeats):
                pause()
                t0 = time.perf_counter_ns()
                got = rx.recv(timeout=30)
                times.append(time.perf_counter_ns() - t0)
                assert got.num_rows == rows
                del got
            out[rows] = median(times) / 1000
        sender.wait(60)
        del rx, seg
    for rows in rows_list:
        b = batch(rows)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, b.schema) as writer:
            writer.write_batch(b)
        stream = sink.getvalue()
        times = []
        for _ in range(args.repeats):
            pause()
            t0 = time.perf_counter_ns()
            got = pa.ipc.open_stream(stream).read_next_batch()
            times.append(time.perf_counter_ns() - t0)
            del got
        ipc[rows] = median(times) / 1000
    print(f"median of {args.repeats} receives, load average {os.getloadavg()[0]:.1f}\n")
    print("| reader | 1 k rows µs | 1 M rows µs | 1 M / 1 k |")
    print("|---|---|---|---|")
    rows_of = (
        ("tadpole.BatchReceiver.recv (validating)", ring),
        ("tadpole.BatchReceiver.recv (trust_peer=True)", trusted),
        ("pyarrow.ipc.open_stream + read_next_batch", ipc),
    )
    for label, r in rows_of:
        print(f"| {label} | {r[1_000]:.1f} | {r[1_000_000]:.1f} | {r[1_000_000] / r[1_000]:.2f}x |")


if __name__ == "__main__":
    main()
