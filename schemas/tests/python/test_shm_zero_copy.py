"""pyarrow reads record batches that Rust left in a shared-memory ring, in place: every buffer of
every column points into the ring's mapping."""

import os
import pathlib
import subprocess

import pyarrow as pa

from tadpole_ring import RingView

REPO = pathlib.Path(__file__).resolve().parents[3]


def write_ring(name, batches):
    """Runs the `arrow_to_shm` example: `$TADPOLE_ARROW_TO_SHM` (scripts/test points it at the
    workspace build), or built and run here with cargo."""
    binary = os.environ.get("TADPOLE_ARROW_TO_SHM")
    command = [binary] if binary else ["cargo", "run", "--profile", "ci", "--quiet", "-p", "tadpole-examples", "--bin", "arrow_to_shm", "--"]
    subprocess.run(command + [name, str(batches)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def test_pyarrow_reads_batches_in_place_from_a_tadpole_ring():
    name = f"py-zero-copy-{os.getpid()}"
    write_ring(name, 3)
    try:
        ring = RingView(name)
        lo, hi = ring.address_range()
        schema, batches = None, []
        for message_type, payload in ring.records():
            if message_type == 0:  # the ring record type is the Arrow MessageHeader; 0 = end of stream
                break
            message = pa.ipc.read_message(pa.py_buffer(payload))
            if message.type == "schema":
                schema = pa.ipc.read_schema(message)
            elif message.type == "record batch":
                batches.append(pa.ipc.read_record_batch(message, schema))
        assert schema is not None and schema.names == ["id", "price", "symbol"]
        assert len(batches) == 3
        checked = 0
        for b, batch in enumerate(batches):
            assert batch.num_rows == 1000
            assert batch.column("id").to_pylist()[:3] == [b * 1000, b * 1000 + 1, b * 1000 + 2]
            assert batch.column("symbol")[8].as_py() == "SYM1"
            for column in batch.columns:
                for buf in column.buffers():
                    if buf is not None and buf.size:
                        assert lo <= buf.address and buf.address + buf.size <= hi, "copied out of the ring"
                        checked += 1
        assert checked >= 9
    finally:
        os.unlink(f"/dev/shm/tadpole.{name}")


def test_a_file_that_is_not_a_ring_is_refused(tmp_path):
    name = f"py-not-a-ring-{os.getpid()}"
    path = f"/dev/shm/tadpole.{name}"
    with open(path, "wb") as f:
        f.write(b"\x00" * 8192)
    try:
        try:
            RingView(name)
        except Exception as e:  # noqa: BLE001 - the reader's own error type
            assert "magic" in str(e)
        else:
            raise AssertionError("a zero-filled file was accepted as a ring")
    finally:
        os.unlink(path)
