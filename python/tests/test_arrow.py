"""Arrow record batches: received zero-copy into pyarrow (every buffer inside the ring's
mapping), held batches keep their ring space, and pyarrow batches sent with one copy."""

import gc
import os

import pyarrow as pa
import pytest

import tadpole


def mapping_of(name):
    """(start, end) of this process's mappings of /dev/shm/tadpole.<name>, from /proc/self/maps."""
    path = f"/dev/shm/tadpole.{name}"
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(path):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                spans.append((lo, hi))
    assert spans, f"{path} is not mapped"
    return spans


def sample(rows, offset=0):
    return pa.record_batch(
        {
            "px_e8": pa.array(range(offset, offset + rows), pa.int64()),
            "venue": pa.array([f"v{i % 7}" for i in range(rows)]),
            "qty": pa.array([None if i % 5 == 0 else i for i in range(rows)], pa.int32()),
        }
    )


@pytest.fixture
def channel(ring_name):
    seg = tadpole.Segment.create(ring_name, 1 << 20, payload_align=64)
    return seg, tadpole.BatchSender(tadpole.Segment.open(ring_name)), tadpole.BatchReceiver(seg)


def test_received_batch_buffers_all_lie_inside_the_ring_mapping(channel, ring_name):
    seg, tx, rx = channel
    sent = sample(1000)
    assert tx.send(sent) == 2  # schema frame + batch frame
    got = rx.recv(timeout=5)
    assert isinstance(got, pa.RecordBatch)
    assert got.equals(sent)
    spans = mapping_of(ring_name)
    buffers = [b for column in got.columns for b in column.buffers() if b is not None]
    assert len(buffers) >= 5
    for b in buffers:
        assert any(lo <= b.address and b.address + b.size <= hi for lo, hi in spans), hex(b.address)


def test_a_batch_held_by_python_keeps_its_ring_space_until_its_last_buffer_goes(channel):
    seg, tx, rx = channel
    tx.send(sample(2000))
    batch = rx.recv(timeout=5)
    column = batch.column("px_e8")
    head, tail = seg.positions()
    assert head < tail, "the held batch pins its record"
    # Backpressure, never corruption: the producer fills the rest of the ring and then waits.
    sent = 0
    with pytest.raises(tadpole.Timeout):
        while True:
            tx.send(sample(2000, offset=sent), timeout=0.05)
            sent += 1
    assert sent >= 1
    assert column.to_pylist() == list(range(2000)), "the held batch was never overwritten"
    del batch
    assert seg.positions()[0] == head, "a column still holds the record"
    del column
    gc.collect()
    assert seg.positions()[0] > head, "released when pyarrow dropped the last buffer"
    for i in range(sent):
        assert rx.recv(timeout=5).column("px_e8")[0].as_py() == i * 1


def test_a_channel_needs_a_sixty_four_aligned_ring(ring_name):
    seg = tadpole.Segment.create(ring_name, 1 << 16)
    with pytest.raises(tadpole.NotSixtyFourAligned, match="Arrow channels need PayloadAlign::SixtyFour"):
        tadpole.BatchReceiver(seg)


def test_an_oversized_batch_is_refused_with_too_large(channel):
    seg, tx, rx = channel
    with pytest.raises(tadpole.TooLarge, match="exceeds the ring's maximum message length"):
        tx.send(sample(200_000))
    tx.send(sample(3))
    assert rx.recv(timeout=5).num_rows == 3


def test_sending_something_that_is_not_a_record_batch_raises_arrow_instead_of_panicking(channel):
    seg, tx, rx = channel

    class ExportsNothing:
        def _export_to_c(self, array_ptr, schema_ptr):
            pass

    with pytest.raises(tadpole.Arrow, match="not a record batch"):
        tx.send(pa.array([1, 2, 3]))
    with pytest.raises(tadpole.Arrow, match="exported no Arrow array"):
        tx.send(ExportsNothing())
    tx.send(sample(3))
    assert rx.recv(timeout=5).num_rows == 3


def test_a_forked_child_dropping_an_inherited_batch_leaves_the_parents_record_held(channel):
    seg, tx, rx = channel
    tx.send(sample(100))
    batch = rx.recv(timeout=5)
    before = seg.positions()
    assert before[0] < before[1]
    pid = os.fork()
    if pid == 0:
        del batch  # what the child's interpreter does at exit
        gc.collect()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert seg.positions() == before, "the child released the parent's batch"
    assert batch.column("px_e8").to_pylist() == list(range(100))
