"""Envelopes: sent from keyword arguments or from bytes built with the generated Python
FlatBuffers code, verified in Rust, read as fields, a FlatBuffers view and a dict."""

import pathlib
import sys
import uuid

import flatbuffers
import pytest

import tadpole

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "schemas" / "tests" / "python" / "generated"))
import envelope_generated as tp  # noqa: E402


@pytest.fixture
def channel(ring_name):
    seg = tadpole.Segment.create(ring_name, 1 << 16)
    return seg, tadpole.EnvelopeSender(seg), tadpole.EnvelopeReceiver(tadpole.Segment.open(ring_name))


def mesh_formed_envelope(source="py-coordinator"):
    b = flatbuffers.Builder(256)
    mesh_id = b.CreateString("mesh-7")
    tp.MeshFormedStart(b)
    tp.MeshFormedAddMeshId(b, mesh_id)
    tp.MeshFormedAddTopology(b, tp.MeshTopology.FullMesh)
    payload = tp.MeshFormedEnd(b)
    src = b.CreateString(source)
    tp.EnvelopeStart(b)
    tp.EnvelopeAddMessageId(b, tp.CreateUuid(b, 0x4000, (0x8000 << 48) | 10))
    tp.EnvelopeAddCorrelationId(b, tp.CreateUuid(b, 0x4000, (0x8000 << 48) | 10))
    tp.EnvelopeAddTimestampNs(b, 1_700_000_000_000_000_000)
    tp.EnvelopeAddSource(b, src)
    tp.EnvelopeAddSchemaVersion(b, tp.CreateSchemaVersion(b, 1, 1, 0))
    tp.EnvelopeAddPayloadType(b, tp.Payload.MeshFormed)
    tp.EnvelopeAddPayload(b, payload)
    b.FinishSizePrefixed(tp.EnvelopeEnd(b), file_identifier=b"TDPL")
    return bytes(b.Output())


def test_an_envelope_from_keywords_arrives_verified_with_its_fields_and_dict(channel):
    seg, tx, rx = channel
    request = str(uuid.uuid4())
    tx.send(
        source="risk-1",
        destination="exec-1",
        heartbeat={"sequence": 42, "interval_ns": 1000},
        correlation_id=request,
        metadata={"trace": "t-1"},
    )
    env = rx.recv(timeout=1)
    assert (env.source, env.destination, env.message_type) == ("risk-1", "exec-1", "Heartbeat")
    assert env.correlation_id == request and env.message_id != request
    assert env.payload["sequence"] == 42 and env.payload["interval_ns"] == 1000
    d = env.to_dict()
    assert d["metadata"] == {"trace": "t-1"} and d["message_type"] == "Heartbeat"
    # The bytes in shared memory, read as a table with the generated code.
    with env.view() as view:
        table = tp.Envelope.GetRootAs(view, 4)
        assert table.Source() == b"risk-1" and table.PayloadType() == tp.Payload.Heartbeat
        with pytest.raises(BufferError, match="views of the envelope are open"):
            env.release()
    head, tail = seg.positions()
    assert head < tail
    env.release()
    assert seg.positions()[0] == tail
    with pytest.raises(tadpole.TadpoleError, match="envelope released"):
        env.source


def test_a_heartbeat_from_keywords_carries_its_status_by_name_or_number(channel):
    seg, tx, rx = channel
    tx.send(source="agent", heartbeat={"sequence": 1, "status": "Degraded"})
    tx.send(source="agent", heartbeat={"sequence": 2, "status": 3})
    tx.send(source="agent", heartbeat={"sequence": 3})
    statuses = []
    for _ in range(3):
        with rx.recv(timeout=1) as env:
            statuses.append(env.payload.get("status"))
    assert statuses == ["Degraded", "Unhealthy", "Unspecified"]


def test_a_heartbeat_with_an_unknown_field_or_status_is_refused_and_nothing_is_sent(channel):
    seg, tx, rx = channel
    with pytest.raises(ValueError, match='heartbeat has no field "state"; its fields are sequence, interval_ns, status'):
        tx.send(source="agent", heartbeat={"sequence": 1, "state": "Degraded"})
    with pytest.raises(ValueError, match='heartbeat status "Sick" is none of Unspecified, Healthy, Degraded, Unhealthy'):
        tx.send(source="agent", heartbeat={"status": "Sick"})
    assert seg.positions() == (0, 0), "nothing was written"


def test_an_envelope_built_with_the_generated_python_code_is_verified_and_delivered(channel):
    seg, tx, rx = channel
    tx.send_bytes(mesh_formed_envelope())
    with rx.recv(timeout=1) as env:
        assert env.message_type == "MeshFormed" and env.source == "py-coordinator"
        assert env.payload["mesh_id"] == "mesh-7"


def test_invalid_envelope_bytes_are_refused_before_they_enter_the_ring(channel):
    seg, tx, rx = channel
    data = bytearray(mesh_formed_envelope())
    data[4:8] = b"NOPE"  # breaks the root offset / identifier
    with pytest.raises(tadpole.Rejected):
        tx.send_bytes(bytes(data))
    assert seg.positions() == (0, 0), "nothing was written"
    whole = mesh_formed_envelope()
    cut = f"^size prefix says {len(whole) - 4} bytes follow, but the record is {len(whole) - 8} bytes long$"
    with pytest.raises(tadpole.Rejected, match=cut):
        tx.send_bytes(whole[:-8])
    assert seg.positions() == (0, 0), "nothing was written"


def test_a_record_that_is_not_an_envelope_is_rejected_and_counted(ring_name):
    seg = tadpole.Segment.create(ring_name, 1 << 16)
    raw = seg.producer()
    rx = tadpole.EnvelopeReceiver(tadpole.Segment.open(ring_name))
    raw.send(b"not an envelope at all", message_type=20)
    with pytest.raises(tadpole.Rejected, match="rejected"):
        rx.recv(timeout=1)
    assert rx.dead_letters == 1
    raw.close()
    with pytest.raises(tadpole.Disconnected):
        rx.recv(timeout=1)
