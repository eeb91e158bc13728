"""A pyzmq CURVE client, with keys made by pyzmq, speaks PROTOCOL.md (through tadpole_wire.py,
written from the document) to a real `tadpole relay` process, and the relay's local ring, read
with schemas/tests/python/tadpole_ring.py, holds exactly what was sent.

    python3 -m pytest -q ipc-zmq/tests/python

The relay binary is $TADPOLE_BIN, else target/ci/tadpole (built with cargo if missing).
"""

import json
import os
import pathlib
import random
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

import pytest
import zmq

import tadpole_wire as wire

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "schemas" / "tests" / "python"))

from tadpole_ring import RingView  # noqa: E402

STREAM = "py-orders"
RECV_TIMEOUT_MS = 5000


def relay_binary():
    if os.environ.get("TADPOLE_BIN"):
        return os.environ["TADPOLE_BIN"]
    path = REPO / "target" / "ci" / "tadpole"
    if not path.exists():
        subprocess.run(["cargo", "build", "--profile", "ci", "--quiet", "-p", "tadpole-tools"], cwd=REPO, check=True)
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_key_file(prefix, public, secret):
    """What `tadpole keygen --out prefix` writes (ipc-zmq/src/keys.rs): `prefix.key`, created
    0600 and exclusively, with both keys as TOML lines, and `prefix.pub` with the public key."""
    key = f"{prefix}.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "# Tadpole CURVE key pair. Keep this file secret (mode 0600).\n"
            f'public_key = "{public.decode()}"\nsecret_key = "{secret.decode()}"\n'
        )
    pathlib.Path(f"{prefix}.pub").write_text(f"# Tadpole CURVE public key\n{public.decode()}\n")
    return key


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def metric(text, name, **labels):
    """The value of the series `name` (counters carry the `_total` suffix) with these labels."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


class Relay:
    """A `tadpole relay` process listening on loopback, allowing `allowed` (Z85 public keys),
    writing stream STREAM into a ring it creates."""

    def __init__(self, tmp, allowed):
        self.tmp = tmp
        self.server_public, server_secret = zmq.curve_keypair()
        write_key_file(tmp / "relay", self.server_public, server_secret)
        assert os.stat(tmp / "relay.key").st_mode & 0o777 == 0o600
        self.port, self.health = free_port(), free_port()
        self.ring = f"py-relay-{os.getpid()}-{self.port}"
        allow = ", ".join(f'"{k.decode()}"' for k in allowed)
        self.config = tmp / "relay.toml"
        self.config.write_text(
            f'name = "py-test-relay"\nkey_file = "relay.key"\nlisten = "tcp://127.0.0.1:{self.port}"\n'
            f'allow = [{allow}]\nhealth = "127.0.0.1:{self.health}"\n\n'
            f'[[route_in]]\nstream = "{STREAM}"\nring = "{self.ring}"\n'
        )
        self.stderr = open(tmp / "relay.stderr", "w+")
        self.proc = subprocess.Popen(
            [relay_binary(), "relay", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        deadline = time.monotonic() + 20
        while http_get(self.health, "/ready")[0] != 200:
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited {self.proc.returncode}: {self.log()}")
            assert time.monotonic() < deadline, f"relay not ready within 20 s: {self.log()}"
            time.sleep(0.05)

    def log(self):
        self.stderr.flush()
        return (self.tmp / "relay.stderr").read_text()

    def metrics(self):
        code, text = http_get(self.health, "/metrics")
        assert code == 200, text
        return text

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.stderr.close()
        try:
            os.unlink(f"/dev/shm/tadpole.{self.ring}")  # the relay keeps rings it created
        except FileNotFoundError:
            pass


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def client_keys():
    return zmq.curve_keypair()


@pytest.fixture
def relay(tmp_path, client_keys):
    r = Relay(tmp_path, [client_keys[0]])
    try:
        yield r
    finally:
        r.stop()


def curve_dealer(ctx, relay, keys, rcvtimeo=RECV_TIMEOUT_MS):
    public, secret = keys
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvtimeo = rcvtimeo
    s.sndtimeo = RECV_TIMEOUT_MS
    s.curve_publickey = public
    s.curve_secretkey = secret
    s.curve_serverkey = relay.server_public  # pinned: any other server fails the handshake
    s.connect(f"tcp://127.0.0.1:{relay.port}")
    return s


def payload(seq):
    """Record `seq`: its sequence number, 0 to 300 bytes derived from it, then a CRC-32 of both."""
    rng = random.Random(seq)
    body = struct.pack("<Q", seq) + rng.randbytes(rng.randrange(0, 301))
    return body + struct.pack("<I", zlib.crc32(body))


def message_type(seq):
    return (seq * 7919) & 0xFFFF


def source_records(n):
    """N records as a source ring would number them: positions advance by the record's ring
    length, and now and then jump (the padding at a ring's wrap)."""
    records, position = [], 0
    for seq in range(n):
        data = payload(seq)
        records.append(wire.Record(position, message_type(seq), data))
        position += wire.record_len(len(data))
        if seq % 997 == 996:
            position += 4096
    return records


def batches(records, sizes=(1, 7, 64, 250, 512, 1000, 33)):
    out, i, k = [], 0, 0
    while i < len(records):
        out.append(records[i : i + sizes[k % len(sizes)]])
        i += len(out[-1])
        k += 1
    return out


def hello(sock, epoch, origin="py-client"):
    sock.send_multipart(wire.encode_hello(origin, STREAM, epoch))
    reply = wire.decode_reply(sock.recv_multipart())
    assert isinstance(reply, wire.Welcome), reply
    assert (reply.epoch, reply.stream, reply.rejects) == (epoch, STREAM, [])
    return reply


def test_a_pyzmq_curve_client_delivers_records_once_in_order_and_gets_them_acknowledged(zctx, relay, client_keys):
    n = 5000
    records = source_records(n)
    epoch = random.getrandbits(63) | 1
    dealer = curve_dealer(zctx, relay, client_keys)
    welcome = hello(dealer, epoch)
    assert welcome.next == 0, "a new stream starts at 0"

    # Pipelined, as a relay sends: each message's `from` is just past the last record sent
    # before it, `released` is what the ACKs so far let go of (nothing yet, here).
    sent, from_ = [], 0
    for batch in batches(records):
        parts = wire.encode_data("py-client", STREAM, epoch, from_, 0, batch)
        dealer.send_multipart(parts)
        sent.append((parts, batch[-1].position + 1))
        from_ = batch[-1].position + 1
    # ACKs are cumulative, and one may answer several DATA messages (PROTOCOL.md, "Delayed
    # ACKs"): read them until the last record is acknowledged.
    last = records[-1].position + 1
    boundaries = {expected_next for _, expected_next in sent}
    acked = 0
    while acked != last:
        ack = wire.decode_reply(dealer.recv_multipart())
        assert isinstance(ack, wire.Ack), ack
        assert (ack.stream, ack.epoch, ack.busy, ack.rejects) == (STREAM, epoch, False, [])
        # PROTOCOL.md: next is the last done position + 1, of a DATA message's last record.
        assert ack.next in boundaries and ack.next > acked, (ack.next, acked)
        acked = ack.next

    # A resend of the last message (as after a timeout) is acknowledged again, not committed again.
    dealer.send_multipart(sent[-1][0])
    again = wire.decode_reply(dealer.recv_multipart())
    assert isinstance(again, wire.Ack) and (again.next, again.busy, again.rejects) == (last, False, [])
    # A reconnecting sender is told where to resume.
    assert hello(dealer, epoch).next == last

    ring = RingView(relay.ring)
    got = [(mtype, bytes(data)) for mtype, data in ring.records()]
    assert len(got) == n, f"{len(got)} records in the ring, sent {n}"
    for seq, (mtype, data) in enumerate(got):
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        assert zlib.crc32(body) == crc, f"record {seq}: checksum"
        assert struct.unpack_from("<Q", body)[0] == seq, f"record {seq}: out of order or repeated"
        assert (mtype, data) == (records[seq].message_type, records[seq].payload), f"record {seq} changed"
    metrics = relay.metrics()
    assert metric(metrics, "tadpole_relay_records_committed") == n
    assert metric(metrics, "tadpole_relay_duplicates_dropped") == len(batches(records)[-1])
    assert metric(metrics, "tadpole_relay_malformed_messages") == 0
    dealer.close()


def test_a_gap_in_from_is_answered_with_a_welcome_and_nothing_is_committed(zctx, relay, client_keys):
    epoch = random.getrandbits(63) | 1
    dealer = curve_dealer(zctx, relay, client_keys)
    hello(dealer, epoch)
    first = wire.Record(0, 1, b"first")
    dealer.send_multipart(wire.encode_data("py-client", STREAM, epoch, 0, 0, [first]))
    assert wire.decode_reply(dealer.recv_multipart()).next == 1
    # `from` 64 > next 1: the records in between were lost on the way.
    lost_after = wire.Record(128, 2, b"after a gap")
    dealer.send_multipart(wire.encode_data("py-client", STREAM, epoch, 64, 0, [lost_after]))
    reply = wire.decode_reply(dealer.recv_multipart())
    assert isinstance(reply, wire.Welcome) and (reply.epoch, reply.next) == (epoch, 1), reply
    assert [(t, bytes(p)) for t, p in RingView(relay.ring).records()] == [(1, b"first")]
    dealer.close()


def test_a_version_2_client_is_refused_unanswered_counted_and_logged(zctx, relay, client_keys):
    epoch = random.getrandbits(63) | 1
    old = curve_dealer(zctx, relay, client_keys, rcvtimeo=1500)
    (v3_hello,) = wire.encode_hello("py-old", STREAM, epoch)
    head, body = wire.encode_data("py-old", STREAM, epoch, 0, 0, [wire.Record(0, 0, b"v2")])
    old.send_multipart([b"\x02" + v3_hello[1:]])
    old.send_multipart([b"\x02" + head[1:], struct.pack("<QHI", 0, 0, 2) + b"v2"])  # version 2's DATA
    with pytest.raises(zmq.Again):
        old.recv_multipart()
    assert list(RingView(relay.ring).records()) == []
    metrics = relay.metrics()
    assert metric(metrics, "tadpole_relay_unsupported_version_messages") == 2, metrics
    assert metric(metrics, "tadpole_relay_malformed_messages") == 2, metrics
    said = [json.loads(line) for line in relay.log().splitlines() if '"unsupported_version"' in line]
    assert [(e["version"], e["ours"]) for e in said] == [(2, 3)], said  # once per key and version
    # The same key speaking version 3 is served.
    old.rcvtimeo = RECV_TIMEOUT_MS
    assert hello(old, epoch, origin="py-new").next == 0
    old.close()


def test_a_pyzmq_client_whose_key_is_not_allowlisted_gets_no_welcome_and_delivers_nothing(zctx, relay, client_keys):
    intruder = curve_dealer(zctx, relay, zmq.curve_keypair(), rcvtimeo=2000)
    epoch = random.getrandbits(63) | 1
    try:
        intruder.send_multipart(wire.encode_hello("intruder", STREAM, epoch))
        intruder.send_multipart(wire.encode_data("intruder", STREAM, epoch, 0, 0, [wire.Record(0, 9, b"forged")]))
    except zmq.Again:
        pass  # nothing could even be queued: delivered nothing, as required
    with pytest.raises(zmq.Again):
        intruder.recv_multipart()
    intruder.close()

    ring = RingView(relay.ring)
    assert ring.positions() == (0, 0) and list(ring.records()) == [], "the ring stays empty"
    metrics = relay.metrics()
    assert metric(metrics, "tadpole_relay_auth_failures", reason="unknown_key") >= 1, metrics
    assert metric(metrics, "tadpole_relay_records_committed") == 0
    # The relay was there and serving all along: the allowlisted client is welcomed.
    friend = curve_dealer(zctx, relay, client_keys)
    assert hello(friend, epoch).next == 0
    friend.close()


def test_an_allowlisted_client_cannot_speak_for_an_origin_another_key_opened(tmp_path, zctx):
    owner_keys, other_keys = zmq.curve_keypair(), zmq.curve_keypair()
    relay = Relay(tmp_path, [owner_keys[0], other_keys[0]])
    try:
        epoch = random.getrandbits(63) | 1
        owner = curve_dealer(zctx, relay, owner_keys)
        assert hello(owner, epoch, origin="host-a").next == 0
        # Another allowlisted key claims the same origin: nothing answers, nothing is committed.
        impostor = curve_dealer(zctx, relay, other_keys, rcvtimeo=1500)
        impostor.send_multipart(wire.encode_hello("host-a", STREAM, epoch))
        impostor.send_multipart(wire.encode_data("host-a", STREAM, epoch, 0, 0, [wire.Record(0, 9, b"forged")]))
        with pytest.raises(zmq.Again):
            impostor.recv_multipart()
        assert list(RingView(relay.ring).records()) == []
        metrics = relay.metrics()
        assert metric(metrics, "tadpole_relay_auth_failures", reason="origin_of_another_key") >= 2, metrics
        # Under its own name the same key is served.
        assert hello(impostor, epoch, origin="host-c").next == 0
        impostor.close()
        owner.close()
    finally:
        relay.stop()


def test_tadpole_wire_encodes_the_offsets_protocol_md_gives():
    (h,) = wire.encode_hello("ab", "xyz", 0x0102030405060708)
    assert h == bytes([3, 1]) + bytes(range(8, 0, -1)) + b"\x02ab\x03xyz"
    head, rec = wire.encode_data("o", "s", 7, 16, 8, [wire.Record(24, 0x0201, b"pay")])
    assert head[:2] == b"\x03\x03" and struct.unpack_from("<QQQI", head, 2) == (7, 16, 8, 1)
    # Step 3 = delta 1 (floor 16, 16 + 8 = 24) | t, type 0x0201, length 3.
    assert head[30:] == b"\x01o\x01s" and rec == b"\x03\x01\x02\x03pay"
    # PROTOCOL.md's example body, and a 64-byte record after another: 2 prefix bytes.
    _, body = wire.encode_data(
        "o", "s", 7, 13, 0, [wire.Record(16, 3, b"first"), wire.Record(48, 3, b""), wire.Record(56, 0, b"xy")]
    )
    assert body == b"\x01\x03\x00\x05first" + b"\x06\x00" + b"\x01\x00\x00\x02xy"
    _, body = wire.encode_data("o", "s", 7, 0, 0, [wire.Record(0, 0, bytes(64)), wire.Record(72, 0, bytes(64))])
    assert body == b"\x00\x40" + bytes(64) + b"\x10\x40" + bytes(64)
    assert wire.varint(300) == b"\xac\x02" and wire.varint(2**64 - 1) == b"\xff" * 9 + b"\x01"
    ack = bytes([3, 4]) + struct.pack("<QQB", 7, 40, 1) + b"\x01s" + struct.pack("<HQB", 1, 32, 2)
    assert wire.decode_reply([ack]) == wire.Ack(7, 40, True, "s", [(32, 2)])
    welcome = bytes([3, 2]) + struct.pack("<QQ", 7, 40) + b"\x01s" + struct.pack("<H", 0)
    assert wire.decode_reply([welcome]) == wire.Welcome(7, 40, "s", [])
    for bad in [ack + b"\x00", ack[:-1], ack.replace(b"\x03\x04", b"\x02\x04", 1), ack[:18] + b"\x02" + ack[19:]]:
        with pytest.raises(wire.FrameError):
            wire.decode_reply([bad])
    with pytest.raises(wire.FrameError):  # a reject at or above next
        wire.decode_reply([bytes([3, 4]) + struct.pack("<QQB", 7, 32, 0) + b"\x01s" + struct.pack("<HQB", 1, 32, 1)])
