"""Raw bytes in one process: views, release rules, reservations, errors, threads, signals."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import tadpole
from conftest import python_proc


@pytest.fixture
def ends(ring_name):
    seg = tadpole.Segment.create(ring_name, 1 << 16)
    return seg, seg.producer(), tadpole.Segment.open(ring_name).consumer()


def test_a_received_view_reads_shared_memory_and_releases_its_space_when_released(ends):
    seg, producer, consumer = ends
    producer.send(b"hello")
    view = consumer.recv(timeout=1)
    assert view.readonly and bytes(view) == b"hello"
    assert view.obj.position == 0 and not view.obj.released
    head, tail = seg.positions()
    assert head < tail, "the open view holds its record"
    view.release()
    assert seg.positions()[0] == tail


def test_status_reads_the_rings_counters_and_attachments_as_tadpole_stat_shows_them(ends):
    seg, producer, consumer = ends
    for payload in (b"a" * 10, b"b" * 20, b"c" * 30):
        producer.send(payload)
    with consumer.recv(timeout=1):
        pass
    producer.close()
    status = seg.status()
    assert status["capacity"] == 1 << 16 and status["epoch"] == seg.epoch
    assert status["produced"]["messages"] == 3 and status["produced"]["bytes"] == 60, status
    assert status["depth_messages"] == status["produced"]["messages"] - status["consumed"]["messages"], status
    assert (status["head"], status["tail"]) == seg.positions()
    assert status["creator"] == {"pid": os.getpid(), "alive": True}
    assert status["producer"] == {"state": "detached", "pid": None}, status
    assert status["consumer"] == {"state": "alive", "pid": os.getpid()}, status
    assert status["dead_letters"] == 0 and status["dead_letters_by_reason"] == {"malformed": 0, "undeliverable": 0}
    assert status["consumed"]["corrupt_records"] == 0 and status["leases_held"] == 0


def test_views_used_after_release_raise_instead_of_reading_freed_space(ends):
    seg, producer, consumer = ends
    producer.send(b"first")
    view = consumer.recv(timeout=1)
    record = view.obj
    view.release()
    with pytest.raises(ValueError, match="released memoryview"):
        bytes(view)
    with pytest.raises(ValueError):
        view[0]
    # The record refuses new views once its space was given back.
    assert record.released
    with pytest.raises(BufferError, match="record released"):
        memoryview(record)
    # The space is reused by the next message, which the stale record never shows.
    producer.send(b"second")
    with consumer.recv(timeout=1) as again:
        assert bytes(again) == b"second"


def test_slices_and_views_of_a_view_keep_its_record_until_the_last_is_released(ends):
    seg, producer, consumer = ends
    producer.send(b"abcdef")
    view = consumer.recv(timeout=1)
    part = view[2:4]
    again = memoryview(view)
    view.release()  # CPython lets it go: `part` and `again` share its export
    assert seg.positions()[0] < seg.positions()[1], "slices keep the record"
    assert bytes(part) == b"cd" and bytes(again) == b"abcdef"
    del part
    assert seg.positions()[0] < seg.positions()[1]
    again.release()
    assert seg.positions()[0] == seg.positions()[1], "released with the last view"
    with pytest.raises(ValueError):
        bytes(again)


def test_a_reservation_is_written_in_place_and_refuses_commit_while_a_view_is_open(ends):
    seg, producer, consumer = ends
    res = producer.reserve(5)
    view = memoryview(res)
    view[:] = b"world"
    with pytest.raises(BufferError, match="views of the reservation are open"):
        res.commit()
    with pytest.raises(tadpole.ReservationOutstanding):
        producer.send(b"no")
    view.release()
    res.commit(message_type=9)
    with pytest.raises(BufferError, match="committed or abandoned"):
        memoryview(res)
    with consumer.recv(timeout=1) as got:
        assert bytes(got) == b"world" and got.obj.message_type == 9


def test_a_reservation_context_commits_on_success_and_abandons_on_an_exception(ends):
    seg, producer, consumer = ends
    with pytest.raises(RuntimeError):
        with producer.reserve(3) as buf:
            buf[:] = b"bad"
            raise RuntimeError("abandon")
    with producer.reserve(3) as buf:
        buf[:] = b"ok!"
    with consumer.recv(timeout=1) as got:
        assert bytes(got) == b"ok!"
    with pytest.raises(tadpole.Empty):
        consumer.try_recv()


def test_an_unfinished_reservation_collected_gives_the_producer_back(ends):
    seg, producer, consumer = ends
    producer.reserve(4)  # dropped at once: abandoned
    producer.send(b"after")
    with consumer.recv(timeout=1) as got:
        assert bytes(got) == b"after"


def test_errors_carry_the_rust_names_and_messages(ends, ring_name):
    seg, producer, consumer = ends
    with pytest.raises(tadpole.Empty, match="^ring empty$"):
        consumer.try_recv()
    with pytest.raises(tadpole.Timeout, match="^timed out waiting for a message$"):
        consumer.recv(timeout=0.05)
    big = seg.max_message_len + 1
    with pytest.raises(tadpole.TooLarge, match=f"^message of {big} bytes exceeds the ring's maximum of {big - 1}$"):
        producer.send(bytes(big))
    with pytest.raises(tadpole.Busy, match="Producer side is held by live process"):
        seg.producer()
    with pytest.raises(tadpole.NotFound, match='^no segment named "no-such-ring-here"$'):
        tadpole.Segment.open("no-such-ring-here")
    with pytest.raises(tadpole.AlreadyExists):
        tadpole.Segment.create(ring_name, 1 << 16)
    with pytest.raises(tadpole.InvalidOptions, match="^invalid ring options: capacity 1000 must be a power of two"):
        tadpole.Segment.create(ring_name + "-x", 1000)
    assert issubclass(tadpole.Full, tadpole.TadpoleError)
    while True:
        try:
            producer.try_send(bytes(1000))
        except tadpole.Full as e:
            assert str(e) == "ring full"
            break
    with pytest.raises(tadpole.Timeout, match="^timed out waiting for ring space$"):
        producer.send(bytes(1000), timeout=0.05)
    producer.close()
    while True:
        try:
            consumer.recv(timeout=1).release()
        except tadpole.Disconnected as e:
            assert str(e) == "producer disconnected"
            break


def test_held_views_keep_their_space_and_the_producer_sees_full_not_corruption(ends):
    seg, producer, consumer = ends
    producer.send(b"held" * 100)
    held = consumer.recv(timeout=1)
    sent = 0
    with pytest.raises(tadpole.Full):
        while True:
            producer.try_send(sent.to_bytes(8, "little") * 32)
            sent += 1
            views = consumer.recv_many(1000, timeout=0)
            for v in views:
                assert v.obj.position > held.obj.position
            del views
    assert bytes(held) == b"held" * 100, "the held record was never overwritten"
    held.release()
    producer.try_send(b"room again")


def test_a_blocking_recv_releases_the_gil_and_ctrl_c_interrupts_it(ring_name):
    seg = tadpole.Segment.create(ring_name, 1 << 16)
    proc = python_proc("recv_forever.py", ring_name, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 7
        assert proc.stdout.read().strip() == "interrupted"
    finally:
        proc.kill()
    del seg


def test_other_threads_run_while_one_waits_in_recv(ends):
    seg, producer, consumer = ends
    got = []
    waiter = threading.Thread(target=lambda: got.append(bytes(consumer.recv(timeout=5))))
    waiter.start()
    spins = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        spins += 1
    assert spins > 1000, "the waiting thread held the GIL"
    producer.send(b"wake")
    waiter.join(5)
    assert got == [b"wake"]


def test_handles_are_shared_safely_by_several_python_threads(ends):
    seg, producer, consumer = ends
    per_thread, threads = 20_000, 4
    received = []

    def send(t):
        for i in range(per_thread):
            producer.send(t.to_bytes(1, "little") + i.to_bytes(4, "little"), timeout=30)

    def recv():
        for _ in range(per_thread * threads // 2):
            with consumer.recv(timeout=30) as v:
                received.append(bytes(v))

    workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    workers += [threading.Thread(target=recv) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert len(received) == per_thread * threads
    for t in range(threads):
        mine = [int.from_bytes(m[1:], "little") for m in received if m[0] == t]
        assert sorted(mine) == list(range(per_thread)), f"thread {t}'s messages"


def test_too_many_open_views_raise_leases_exhausted_and_the_refused_record_comes_next(ends):
    seg, producer, consumer = ends
    consumer.set_max_leases(2)
    for i in range(3):
        producer.send(bytes([i]) * 8)
    first, second = consumer.recv(timeout=1), consumer.recv(timeout=1)
    with pytest.raises(tadpole.LeasesExhausted, match="^2 leases outstanding: drop some before receiving more$"):
        consumer.try_recv()
    first.release()
    with consumer.recv(timeout=1) as third:
        assert bytes(third) == bytes([2]) * 8, "the refused record was put back, not lost"
    assert bytes(second) == bytes([1]) * 8


def fill(producer):
    """Sends 1000-byte messages until the ring is full."""
    while True:
        try:
            producer.try_send(bytes(1000))
        except tadpole.Full:
            return


def test_a_send_waiting_in_one_thread_never_sees_the_producer_closed_while_another_thread_tries_to_reserve(ends):
    seg, producer, consumer = ends
    fill(producer)
    errors = []
    stop = time.monotonic() + 1.5

    def send():
        while time.monotonic() < stop:
            try:
                producer.send(bytes(1000), timeout=0.05)
            except tadpole.Timeout:
                pass
            except Exception as e:  # noqa: BLE001 - any other error is the failure
                errors.append(e)
                return

    senders = [threading.Thread(target=send) for _ in range(2)]
    for s in senders:
        s.start()
    while time.monotonic() < stop:
        with pytest.raises(tadpole.Timeout):
            producer.reserve(64, timeout=0)
    for s in senders:
        s.join(5)
    assert errors == [], "a live producer looked closed to a waiting sender"


def test_a_reserve_waiting_for_room_raises_closed_not_disconnected_when_another_thread_closes_the_producer(ends):
    seg, producer, consumer = ends
    fill(producer)
    errors = []

    def reserve():
        try:
            producer.reserve(64, timeout=5)
        except Exception as e:  # noqa: BLE001 - the error is what is checked
            errors.append(e)

    waiter = threading.Thread(target=reserve)
    waiter.start()
    time.sleep(0.2)
    producer.close()
    waiter.join(5)
    assert len(errors) == 1
    assert not isinstance(errors[0], tadpole.Disconnected), "the consumer is still attached"
    assert type(errors[0]) is tadpole.TadpoleError and str(errors[0]) == "producer is closed"


def test_a_huge_max_leases_is_bounded_by_the_ring_instead_of_aborting_the_process(ring_name):
    # In a process of its own: the old code aborted it (an 8 TiB allocation).
    script = f"""
import tadpole
seg = tadpole.Segment.create({ring_name!r}, 1 << 16)
producer, consumer = seg.producer(), seg.consumer()
consumer.set_max_leases(2 ** 40)
producer.send(b"x")
views = [consumer.recv(timeout=1)]
for i in range(10_000):
    try:
        producer.try_send(b"")
    except tadpole.Full:
        break
    views.append(consumer.recv(timeout=1))
print(len(views))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 4096, "more views than the default limit, as many as the ring holds"


def test_a_recv_waiting_for_a_message_raises_closed_when_another_thread_closes_the_consumer(ends):
    seg, producer, consumer = ends
    errors = []

    def recv():
        try:
            consumer.recv(timeout=5)
        except Exception as e:  # noqa: BLE001 - the error is what is checked
            errors.append(e)

    waiter = threading.Thread(target=recv)
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    consumer.close()
    waiter.join(5)
    assert time.monotonic() - started < 2, "close waited for the receiver's whole timeout"
    assert len(errors) == 1
    assert not isinstance(errors[0], (tadpole.Disconnected, tadpole.Timeout)), errors[0]
    assert type(errors[0]) is tadpole.TadpoleError and str(errors[0]) == "consumer is closed"
