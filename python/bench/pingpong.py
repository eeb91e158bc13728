"""Python ping-pong round trips, 64 B and 1 KiB, through Tadpole and the usual alternatives, all
in the same run: Tadpole Python <-> Python and Python <-> Rust (python/peer's `echo`), pyzmq
PAIR over ipc://, a multiprocessing Pipe, and iceoryx2's own Python package (publish-subscribe,
polled).

    python3 python/bench/pingpong.py [--rounds N] [--peer PATH]

Each transport gets one echo process; this process sends a message, waits for it to come back,
and times the round trip with perf_counter_ns (after a warm-up). Both sides of every transport
spin or block as that transport does by default for a Python user: Tadpole's waits spin in
Rust with the GIL released (busy_spin), pyzmq and the pipe block in the kernel, iceoryx2 is
polled in a Python loop. Every cell runs `--passes` times in rotating order; the table gives
the median of the passes' p50 and p99, the best pass's p50, and each p50 as a ratio of Tadpole
Python <-> Python's. On a machine shared with other work, read the ratios, not the absolute
figures: with 2 CPUs and other load, two spinning ends often share one CPU and every round trip
then costs two context switches (the p50 of one pass jumps from ~2 µs to ~12 µs).
"""

import argparse
import ctypes
import multiprocessing as mp
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SIZES = (64, 1024)


def percentiles(samples):
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1000  # noqa: E731
    return pick(0.50), pick(0.99)


def timed(rounds, warmup, once):
    for _ in range(warmup):
        once()
    out = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        t0 = clock()
        once()
        out.append(clock() - t0)
    return out


# --- Tadpole --------------------------------------------------------------------------------


def tadpole_echo(ping, pong, wait):
    import tadpole

    consumer = tadpole.Segment.open(ping).consumer()
    producer = tadpole.Segment.open(pong).producer()
    consumer.set_wait_strategy(wait)
    producer.set_wait_strategy(wait)
    while True:
        try:
            view = consumer.recv()
        except tadpole.Disconnected:
            return
        producer.send(view)
        view.release()


def tadpole_run(size, rounds, warmup, wait, rust_peer=None):
    import tadpole

    tag = f"bench-{os.getpid()}-{size}-{'rs' if rust_peer else 'py'}"
    ping_seg = tadpole.Segment.create(f"{tag}-ping", 1 << 20)
    pong_seg = tadpole.Segment.create(f"{tag}-pong", 1 << 20)
    producer, consumer = ping_seg.producer(), pong_seg.consumer()
    producer.set_wait_strategy(wait)
    consumer.set_wait_strategy(wait)
    if rust_peer:
        echo = subprocess.Popen([rust_peer, "echo", ping_seg.name, pong_seg.name])
    else:
        echo = mp.get_context("spawn").Process(target=tadpole_echo, args=(ping_seg.name, pong_seg.name, wait))
        echo.start()
    msg = bytes(size)

    def once():
        producer.send(msg)
        consumer.recv().release()

    samples = timed(rounds, warmup, once)
    producer.close()
    if rust_peer:
        echo.wait(10)
    else:
        echo.join(10)
    return samples


# --- pyzmq ----------------------------------------------------------------------------------


def zmq_echo(addr):
    import zmq

    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.connect(addr)
    while True:
        msg = sock.recv(copy=True)
        if msg == b"stop":
            return
        sock.send(msg)


def zmq_run(size, rounds, warmup):
    import zmq

    addr = f"ipc:///tmp/tadpole-bench-{os.getpid()}-{size}.sock"
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.bind(addr)
    echo = mp.get_context("spawn").Process(target=zmq_echo, args=(addr,))
    echo.start()
    msg = bytes(size)

    def once():
        sock.send(msg)
        sock.recv()

    samples = timed(rounds, warmup, once)
    sock.send(b"stop")
    echo.join(10)
    sock.close()
    return samples


# --- multiprocessing pipe -------------------------------------------------------------------


def pipe_echo(conn):
    while True:
        msg = conn.recv_bytes()
        if msg == b"stop":
            return
        conn.send_bytes(msg)


def pipe_run(size, rounds, warmup):
    here, there = mp.Pipe()
    echo = mp.get_context("spawn").Process(target=pipe_echo, args=(there,))
    echo.start()
    msg = bytes(size)

    def once():
        here.send_bytes(msg)
        here.recv_bytes()

    samples = timed(rounds, warmup, once)
    here.send_bytes(b"stop")
    echo.join(10)
    return samples


# --- iceoryx2 -------------------------------------------------------------------------------


def iox_payload(size):
    return type(f"Payload{size}", (ctypes.Structure,), {"_fields_": [("data", ctypes.c_uint8 * size)]})


def iox_ports(size, ping, pong, is_echo):
    import iceoryx2 as iox2

    iox2.set_log_level_from_env_or(iox2.LogLevel.Warn)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    payload = iox_payload(size)
    services = [
        node.service_builder(iox2.ServiceName.new(n)).publish_subscribe(payload).open_or_create() for n in (ping, pong)
    ]
    sub_service, pub_service = (services[0], services[1]) if is_echo else (services[1], services[0])
    return node, payload, pub_service.publisher_builder().create(), sub_service.subscriber_builder().create()


def iox_echo(size, ping, pong, ready):
    node, payload, publisher, subscriber = iox_ports(size, ping, pong, True)
    ready.set()
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 5:
        sample = subscriber.receive()
        if sample is None:
            continue
        publisher.loan_uninit().write_payload(payload.from_buffer_copy(sample.payload().contents)).send()
        del sample
        idle_since = time.monotonic()


def iox_run(size, rounds, warmup):
    ping, pong = f"tadpole-bench/{os.getpid()}/{size}/ping", f"tadpole-bench/{os.getpid()}/{size}/pong"
    node, payload, publisher, subscriber = iox_ports(size, ping, pong, False)
    ready = mp.get_context("spawn").Event()
    echo = mp.get_context("spawn").Process(target=iox_echo, args=(size, ping, pong, ready))
    echo.start()
    ready.wait(30)
    time.sleep(0.5)  # let the echo's subscriber connect before the first sample
    msg = payload()

    def once():
        publisher.loan_uninit().write_payload(msg).send()
        while subscriber.receive() is None:
            pass

    samples = timed(rounds, warmup, once)
    echo.join(15)
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--passes", type=int, default=3, help="runs of every cell, in rotating order")
    parser.add_argument("--wait", default="spin_then_yield", help="Tadpole's Python wait strategy")
    parser.add_argument("--only", default="", help="run only transports whose name contains this")
    parser.add_argument("--peer", default=str(ROOT / "target" / "ci" / "tadpole-py-peer"))
    args = parser.parse_args()

    runs = {
        "tadpole py<->py": lambda s: tadpole_run(s, args.rounds, args.warmup, args.wait),
        "tadpole py<->rust": lambda s: tadpole_run(s, args.rounds, args.warmup, args.wait, rust_peer=args.peer),
        "pyzmq ipc:// PAIR": lambda s: zmq_run(s, args.rounds, args.warmup),
        "multiprocessing Pipe": lambda s: pipe_run(s, args.rounds, args.warmup),
        "iceoryx2 (PyPI) pub-sub": lambda s: iox_run(s, args.rounds, args.warmup),
    }
    # Every cell runs `passes` times, the order rotating between passes, so a burst of load
    # from elsewhere hits different cells; each cell reports the median of its passes.
    cells = [(name, size) for size in SIZES for name in runs if args.only in name]
    passes = {cell: [] for cell in cells}
    for p in range(args.passes):
        shift = p * len(cells) // max(args.passes, 1)
        for name, size in cells[shift:] + cells[:shift]:
            try:
                passes[name, size].append(percentiles(runs[name](size)))
                print(f"pass {p}: {name} {size} B: p50 {passes[name, size][-1][0]:.1f} µs", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - a missing competitor is reported, not fatal
                print(f"{name} {size} B: {type(e).__name__}: {e}", file=sys.stderr)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    results = {
        cell: (median([r[0] for r in rs]), min(r[0] for r in rs), median([r[1] for r in rs]))
        for cell, rs in passes.items()
        if rs
    }
    print(
        f"round trips: {args.rounds} per cell and pass after {args.warmup} warm-up, {args.passes} passes,"
        f" Tadpole wait strategy {args.wait}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| transport | size | p50 µs (median of passes) | p50 µs (best pass) | p99 µs | p50 / tadpole py<->py (median, best) |")
    print("|---|---|---|---|---|---|")
    for size in SIZES:
        base = results.get(("tadpole py<->py", size))
        for name in runs:
            if args.only not in name:
                continue
            if (name, size) not in results:
                print(f"| {name} | {size} B | — | — | — | — |")
                continue
            p50, best, p99 = results[name, size]
            ratio = f"{p50 / base[0]:.2f}x, {best / base[1]:.2f}x" if base else "—"
            print(f"| {name} | {size} B | {p50:.1f} | {best:.1f} | {p99:.1f} | {ratio} |")

if __name__ == "__main__":
    main()
