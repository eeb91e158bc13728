"""The personality agent of `tadpole demo`, written in Python with the `tadpole` bindings
(`tadpole demo --python personality` runs it instead of the Rust agent).

Reads verified envelopes from its ring, trims each order by 1% (its "personality": cautious)
and forwards it to execution with the tick's correlation id and the hop stamps of the agents
before it (adding its own, `t.3.personality`, from the same monotonic clock the Rust agents
use); refusals from risk travel on unchanged. Heartbeats go to the circuit breaker from the
main loop, so a stalled agent falls silent. Envelopes are built with the generated FlatBuffers
Python code and verified again by the Rust side of the bindings before they enter the ring.
Exits when its upstream closes, telling the breaker it is leaving.
"""

import argparse
import signal
import sys
import time
import uuid

import flatbuffers

import envelope_generated as tp
import tadpole

MASK64 = (1 << 64) - 1


def wire_id(builder, text):
    """A UUID string as the envelope's Uuid struct (hi = bytes 0..8 big-endian, lo = 8..16)."""
    value = uuid.UUID(text).int
    return tp.CreateUuid(builder, value >> 64, value & MASK64)


def enum_value(enum, name):
    return getattr(enum, name) if isinstance(name, str) else int(name or 0)


def envelope(builder, payload_type, payload, correlation_id, destination, metadata):
    source, dest = builder.CreateString("personality"), builder.CreateString(destination)
    entries = []
    for key, value in sorted(metadata.items()):
        k, v = builder.CreateString(key), builder.CreateString(value)
        tp.KeyValueStart(builder)
        tp.KeyValueAddKey(builder, k)
        tp.KeyValueAddValue(builder, v)
        entries.append(tp.KeyValueEnd(builder))
    tp.EnvelopeStartMetadataVector(builder, len(entries))
    for entry in reversed(entries):
        builder.PrependUOffsetTRelative(entry)
    meta = builder.EndVector()
    tp.EnvelopeStart(builder)
    tp.EnvelopeAddMessageId(builder, wire_id(builder, str(uuid.uuid4())))
    tp.EnvelopeAddCorrelationId(builder, wire_id(builder, correlation_id))
    tp.EnvelopeAddTimestampNs(builder, time.time_ns())
    tp.EnvelopeAddSource(builder, source)
    tp.EnvelopeAddDestination(builder, dest)
    tp.EnvelopeAddSchemaVersion(builder, tp.CreateSchemaVersion(builder, 1, 1, 0))
    tp.EnvelopeAddPayloadType(builder, payload_type)
    tp.EnvelopeAddPayload(builder, payload)
    tp.EnvelopeAddMetadata(builder, meta)
    builder.FinishSizePrefixed(tp.EnvelopeEnd(builder), file_identifier=b"TDPL")
    return bytes(builder.Output())


STAMP = "t.3.personality"


def stamps(metadata):
    """The hop stamps of the agents before this one, and this one's."""
    out = {k: v for k, v in (metadata or {}).items() if k.startswith("t.")}
    out[STAMP] = str(time.monotonic_ns())
    return out


def order(p, correlation_id, metadata):
    """ExecutionOrderPlaced, 1% smaller than the one received."""
    b = flatbuffers.Builder(512)
    account, symbol, venue = (b.CreateString(p.get(k) or "") for k in ("account_id", "symbol", "venue"))
    tp.ExecutionOrderPlacedStart(b)
    for key, add in (("order_id", tp.ExecutionOrderPlacedAddOrderId), ("signal_id", tp.ExecutionOrderPlacedAddSignalId)):
        if p.get(key):
            add(b, wire_id(b, p[key]))
    tp.ExecutionOrderPlacedAddAccountId(b, account)
    tp.ExecutionOrderPlacedAddSymbol(b, symbol)
    tp.ExecutionOrderPlacedAddSide(b, enum_value(tp.Side, p.get("side")))
    tp.ExecutionOrderPlacedAddOrderType(b, enum_value(tp.OrderType, p.get("order_type")))
    quantity = int(p.get("quantity_e8") or 0)
    tp.ExecutionOrderPlacedAddQuantityE8(b, quantity - quantity // 100)
    tp.ExecutionOrderPlacedAddLimitPriceE8(b, int(p.get("limit_price_e8") or 0))
    tp.ExecutionOrderPlacedAddVenue(b, venue)
    payload = tp.ExecutionOrderPlacedEnd(b)
    return envelope(b, tp.Payload.ExecutionOrderPlaced, payload, correlation_id, "execution",
                    dict(metadata, personality="cautious", agent_language="python"))


def refusal(p, correlation_id, metadata):
    """BreakerAgentTriggered, forwarded as it came."""
    b = flatbuffers.Builder(512)
    agent, breaker, reason = (b.CreateString(p.get(k) or "") for k in ("agent_id", "breaker", "reason"))
    tp.BreakerAgentTriggeredStart(b)
    tp.BreakerAgentTriggeredAddAgentId(b, agent)
    tp.BreakerAgentTriggeredAddBreaker(b, breaker)
    tp.BreakerAgentTriggeredAddSeverity(b, enum_value(tp.Severity, p.get("severity")))
    tp.BreakerAgentTriggeredAddThresholdE8(b, int(p.get("threshold_e8") or 0))
    tp.BreakerAgentTriggeredAddObservedE8(b, int(p.get("observed_e8") or 0))
    tp.BreakerAgentTriggeredAddReason(b, reason)
    payload = tp.BreakerAgentTriggeredEnd(b)
    return envelope(b, tp.Payload.BreakerAgentTriggered, payload, correlation_id, "execution", metadata)


def terminated(reason, detail, uptime_ns):
    """AgentTerminated, so the breaker knows the heartbeat ring closing is not a crash."""
    b = flatbuffers.Builder(256)
    agent, text = b.CreateString("personality"), b.CreateString(detail)
    tp.AgentTerminatedStart(b)
    tp.AgentTerminatedAddAgentId(b, agent)
    tp.AgentTerminatedAddReason(b, reason)
    tp.AgentTerminatedAddDetail(b, text)
    tp.AgentTerminatedAddUptimeNs(b, uptime_ns)
    payload = tp.AgentTerminatedEnd(b)
    return envelope(b, tp.Payload.AgentTerminated, payload, str(uuid.uuid4()), "breaker", {})


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inbox", required=True, help="ring to read (named after this agent)")
    parser.add_argument("--outbox", required=True, help="ring to write (the execution agent's)")
    parser.add_argument("--heartbeat", required=True, help="ring the circuit breaker hears this agent on")
    parser.add_argument("--heartbeat-ms", type=int, default=20, help="heartbeat interval")
    parser.add_argument("--stall-ms", type=int, default=0, help="testing: sleep before each message")
    args = parser.parse_args()
    # A Ctrl-C meant for the demo reaches this agent too: it leaves when its upstream closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox = tadpole.EnvelopeReceiver(tadpole.Segment.open(args.inbox))
    outbox = tadpole.EnvelopeSender(tadpole.Segment.open(args.outbox))
    beats = tadpole.EnvelopeSender(tadpole.Segment.open(args.heartbeat))
    interval_ns = args.heartbeat_ms * 1_000_000
    started = time.monotonic_ns()
    state = {"sequence": 0, "next": 0}

    def beat():
        now = time.monotonic_ns()
        if now >= state["next"]:
            state["sequence"] += 1
            state["next"] = now + interval_ns
            try:
                beats.send(source="personality", destination="breaker", timeout=0.0,
                           heartbeat={"sequence": state["sequence"], "interval_ns": interval_ns})
            except (tadpole.Timeout, tadpole.Full):
                pass  # a breaker that is behind misses a beat

    status = 1
    try:
        status = serve(args, inbox, outbox, beat)
    finally:
        reason = tp.TerminationReason.Completed if status == 0 else tp.TerminationReason.Crashed
        beats.send_bytes(terminated(reason, "" if status == 0 else "failed", time.monotonic_ns() - started), timeout=1.0)
    return status


def serve(args, inbox, outbox, beat):
    while True:
        beat()
        wait = max(state_wait(args.heartbeat_ms), 0.0001)
        try:
            env = inbox.recv(timeout=wait)
        except tadpole.Timeout:
            continue
        except tadpole.Disconnected:
            return 0
        if args.stall_ms:
            time.sleep(args.stall_ms / 1000)
            beat()
        message = env.to_dict()
        env.release()
        kind, correlation = message["message_type"], message["correlation_id"]
        metadata = stamps(message.get("metadata"))
        if kind == "ExecutionOrderPlaced":
            outbox.send_bytes(order(message["payload"], correlation, metadata), timeout=10.0)
        elif kind == "BreakerAgentTriggered":
            outbox.send_bytes(refusal(message["payload"], correlation, metadata), timeout=10.0)
        else:
            print(f"personality (python): unexpected {kind}", file=sys.stderr)
            return 1


def state_wait(heartbeat_ms):
    """Seconds to wait for work before the next heartbeat is due (at most one interval)."""
    return heartbeat_ms / 1000


if __name__ == "__main__":
    sys.exit(main())
