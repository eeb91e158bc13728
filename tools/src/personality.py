"""The personality agent of `tadpole demo`, written in Python with the `tadpole` bindings
(`tadpole demo --python personality` runs it instead of the Rust agent).

Reads verified envelopes from its ring, trims each order by 1% (its "personality": cautious)
and forwards it to execution with the signal's correlation id; refusals from risk travel on
unchanged. Envelopes are built with the generated FlatBuffers Python code and verified again by
the Rust side of the bindings before they enter the ring. Exits when its upstream closes.
"""

import argparse
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


def order(p, correlation_id):
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
                    {"personality": "cautious", "agent_language": "python"})


def refusal(p, correlation_id):
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
    return envelope(b, tp.Payload.BreakerAgentTriggered, payload, correlation_id, "execution", {})


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inbox", required=True, help="ring to read (named after this agent)")
    parser.add_argument("--outbox", required=True, help="ring to write (the execution agent's)")
    args = parser.parse_args()
    inbox = tadpole.EnvelopeReceiver(tadpole.Segment.open(args.inbox))
    outbox = tadpole.EnvelopeSender(tadpole.Segment.open(args.outbox))
    while True:
        try:
            env = inbox.recv(timeout=30.0)
        except tadpole.Disconnected:
            return 0
        message = env.to_dict()
        env.release()
        kind, correlation = message["message_type"], message["correlation_id"]
        if kind == "ExecutionOrderPlaced":
            outbox.send_bytes(order(message["payload"], correlation), timeout=10.0)
        elif kind == "BreakerAgentTriggered":
            outbox.send_bytes(refusal(message["payload"], correlation), timeout=10.0)
        else:
            print(f"personality (python): unexpected {kind}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
