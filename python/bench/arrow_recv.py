"""Receive time of a 1 k-row and a 1 M-row Arrow batch in Python: tadpole.BatchReceiver (zero
copy, validated) against pyarrow.ipc.open_stream reading the same batch from an in-memory
Arrow IPC stream.

    python3 python/bench/arrow_recv.py [--repeats N]

The batch has an int64 and a float64 column (16 MB at 1 M rows). Each repeat sends the batch
(not timed) and times only `recv()` (the pyarrow.RecordBatch in hand, buffers in the ring), or
`open_stream(...).read_next_batch()` over a buffer. Prints the median per size and the 1 M /
1 k ratio of each: a zero-copy receive should not grow with the rows.
"""

import argparse
import os
import time

import pyarrow as pa

import tadpole


def batch(rows):
    return pa.record_batch({"px_e8": pa.array(range(rows), pa.int64()), "w": pa.array([0.5] * rows, pa.float64())})


def median(xs):
    return sorted(xs)[len(xs) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    name = f"bench-arrow-{os.getpid()}"
    seg = tadpole.Segment.create(name, 1 << 26, payload_align=64)
    tx, rx = tadpole.BatchSender(tadpole.Segment.open(name)), tadpole.BatchReceiver(seg)
    rows_list = (1_000, 1_000_000)
    ring, ipc = {}, {}
    for rows in rows_list:
        b = batch(rows)
        times = []
        for _ in range(args.repeats):
            tx.send(b)
            t0 = time.perf_counter_ns()
            got = rx.recv()
            times.append(time.perf_counter_ns() - t0)
            assert got.num_rows == rows
            del got
        ring[rows] = median(times) / 1000
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, b.schema) as writer:
            writer.write_batch(b)
        stream = sink.getvalue()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter_ns()
            got = pa.ipc.open_stream(stream).read_next_batch()
            times.append(time.perf_counter_ns() - t0)
            del got
        ipc[rows] = median(times) / 1000
    print(f"median of {args.repeats} receives, load average {os.getloadavg()[0]:.1f}\n")
    print("| reader | 1 k rows µs | 1 M rows µs | 1 M / 1 k |")
    print("|---|---|---|---|")
    for label, r in (("tadpole.BatchReceiver.recv", ring), ("pyarrow.ipc.open_stream + read_next_batch", ipc)):
        print(f"| {label} | {r[1_000]:.1f} | {r[1_000_000]:.1f} | {r[1_000_000] / r[1_000]:.2f}x |")


if __name__ == "__main__":
    main()
