"""The personality agent of `tadpole demo`, written in Python with the `tadpole` bindings
(`tadpole demo --python personality` runs it instead of the Rust agent).

Reads verified envelopes from its ring, trims each order by 1% (its "personality": cautious)
and forwards it to execution with the tick's correlation id and the hop stamps of the agents
before it (adding its own, `t.3.personality`, from the same monotonic clock the Rust agents
use); refusals from risk travel on unchanged. Heartbeats go to the circuit breaker from the
main loop, so a stalled agent falls silent. Envelopes are built with the generated FlatBuffers
Python code and verified again by the Rust side of the bindings before they enter the ring.
Exits when its upstream closes, telling the breaker it is leaving. A record that is no valid
envelope is refused (the bindings count it as a dead letter), logged, and reported as Degraded
in the next heartbeat, as the Rust agents do; it does not stop the agent.

Logs are JSON lines on stderr in the shape of the Rust agents' (`tracing` JSON, flattened):
`timestamp`, `level`, `message`, `target`, then the event's fields (`agent`, `error`,
`correlation_id`, ...). Warnings and errors only, like the Rust agents' default.

With `--metrics-port PORT` it serves `/metrics` (OpenMetrics text, rendered by
`prometheus_client`), `/health` and `/ready` on 127.0.0.1:PORT, as the Rust agents do: the same
families and labels (`tadpole_demo_handled_total{process="personality"}`, ...,
`tadpole_demo_hop_latency_seconds{process="personality",hop="risk -> personality"}`, and the
`tadpole_ring_*{ring=...}` series of its three rings). Like theirs, the counters are plain numbers
the main loop bumps and a scrape reads; the ring series come from `Segment.status()`, which reads
the rings' counters in shared memory and never a record.
"""

import argparse
import datetime
import http.server
import json
import signal
import sys
import threading
import time
import uuid

import flatbuffers

import envelope_generated as tp
import tadpole

MASK64 = (1 << 64) - 1


def log(level, message, **fields):
    """One JSON log line on stderr, as `tracing_subscriber`'s flattened JSON format writes them."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    line = {"timestamp": now.replace("+00:00", "Z"), "level": level, "message": message,
            "target": "tadpole::demo::personality", **fields}
    print(json.dumps(line), file=sys.stderr, flush=True)


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
UPSTREAM_STAMP = "t.2.risk"


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


PROCESS = "personality"
HOP = "risk -> personality"
# The Rust agents' histogram buckets (tools/src/pipeline/metrics.rs BOUNDS_NS), as they render
# them, then +Inf.
BOUNDS_NS = [10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
             10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 500_000_000, 1_000_000_000]
BOUND_LABELS = ["0.00001", "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf"]


class Metrics:
    """What this agent publishes: the fields of the Rust agents' `Metrics`. Only the main loop
    writes them; a scrape reads them (an int read under the GIL is whole)."""

    COUNTERS = [
        ("handled", "tadpole_demo_handled", "Messages handled"),
        ("refused", "tadpole_demo_refused", "Orders or signals refused"),
        ("heartbeats", "tadpole_demo_heartbeats", "Heartbeats sent (or heard, by the breaker)"),
        ("breaker_trips", "tadpole_demo_breaker_trips", "BreakerAgentTriggered notices"),
        ("breaker_emergencies", "tadpole_demo_breaker_emergencies", "BreakerSystemEmergency notices"),
        ("sla_alerts", "tadpole_demo_sla_alerts", "SLA alerts raised"),
    ]

    # The Rust agents' per-ring families (tools/src/metrics.rs add_ring): (name, help, kind,
    # reading from `Segment.status()`).
    RING_VALUES = [
        ("tadpole_ring_capacity_bytes", "Bytes in the ring's data region", "gauge", lambda s: s["capacity"]),
        ("tadpole_ring_depth_bytes", "Bytes committed and not yet released", "gauge", lambda s: s["depth_bytes"]),
        ("tadpole_ring_depth_messages", "Messages committed and not yet received", "gauge",
         lambda s: s["depth_messages"]),
        ("tadpole_ring_produced_messages", "Messages the producer committed", "counter",
         lambda s: s["produced"]["messages"]),
        ("tadpole_ring_produced_bytes", "Payload bytes the producer committed", "counter",
         lambda s: s["produced"]["bytes"]),
        ("tadpole_ring_consumed_messages", "Messages the consumer received", "counter",
         lambda s: s["consumed"]["messages"]),
        ("tadpole_ring_consumed_bytes", "Payload bytes the consumer received", "counter",
         lambda s: s["consumed"]["bytes"]),
        ("tadpole_ring_full_ring_waits", "Reservation attempts that found the ring full", "counter",
         lambda s: s["produced"]["full_ring_waits"]),
        ("tadpole_ring_corrupt_records", "Records the consumer refused as corrupt", "counter",
         lambda s: s["consumed"]["corrupt_records"]),
        ("tadpole_ring_leases_held", "Records the consumer holds as leases", "gauge", lambda s: s["leases_held"]),
        ("tadpole_ring_lease_capacity", "Most leases the consumer may hold", "gauge", lambda s: s["lease_capacity"]),
    ]

    def __init__(self):
        # (name, tadpole.Segment) of the rings this agent uses: their series are served too.
        self.rings = []
        for field, _, _ in self.COUNTERS:
            setattr(self, field, 0)
        # The personality never holds orders back: 0 closed (risk and execution hear the breaker).
        self.breaker_state = 0
        self.buckets = [0] * len(BOUND_LABELS)
        self.sum_ns = 0

    def record_hop(self, ns):
        i = next((i for i, bound in enumerate(BOUNDS_NS) if ns <= bound), len(BOUNDS_NS))
        self.buckets[i] += 1
        self.sum_ns += ns

    def collect(self):
        """The families, as a `prometheus_client` collector (read at scrape time)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for field, name, help_text in self.COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=["process"])
            family.add_metric([PROCESS], getattr(self, field))
            yield family
            if field == "refused":
                # In the Rust agents' order: the breaker state follows the refusals.
                gauge = GaugeMetricFamily("tadpole_demo_breaker_state", "0 closed, 1 open, 2 halted",
                                          labels=["process"])
                gauge.add_metric([PROCESS], self.breaker_state)
                yield gauge
        counts, cumulative, buckets = list(self.buckets), 0, []
        for label, count in zip(BOUND_LABELS, counts):
            cumulative += count
            buckets.append((label, cumulative))
        hist = HistogramMetricFamily("tadpole_demo_hop_latency_seconds", "Latency of a pipeline hop",
                                     labels=["process", "hop"])
        hist.add_metric([PROCESS, HOP], buckets, sum_value=self.sum_ns / 1e9)
        yield hist
        yield from self.ring_families()

    def ring_families(self):
        """The series of this agent's rings, read from shared memory now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
        statuses = [(name, segment.status()) for name, segment in self.rings]
        for name, help_text, kind, read in self.RING_VALUES:
            family = kinds[kind](name, help_text, labels=["ring"])
            for ring, status in statuses:
                family.add_metric([ring], read(status))
            yield family
        letters = CounterMetricFamily("tadpole_ring_dead_letters",
                                      "Records a receiver refused: malformed (not a valid message) or undeliverable",
                                      labels=["ring", "reason"])
        for ring, status in statuses:
            for reason in ("malformed", "undeliverable"):
                letters.add_metric([ring, reason], status["dead_letters_by_reason"][reason])
        yield letters
        alive = GaugeMetricFamily("tadpole_ring_alive", "1 while the side's process runs", labels=["ring", "side"])
        dead = GaugeMetricFamily("tadpole_ring_dead",
                                 "1 when the side's process is gone without detaching (crashed or killed)",
                                 labels=["ring", "side"])
        pid = GaugeMetricFamily("tadpole_ring_pid", "The side's process id (0: none)", labels=["ring", "side"])
        for ring, status in statuses:
            creator = status["creator"]
            sides = [("creator", "alive" if creator["alive"] else "detached", creator["pid"])]
            sides += [(side, status[side]["state"], status[side]["pid"]) for side in ("producer", "consumer")]
            for side, state, side_pid in sides:
                alive.add_metric([ring, side], int(state == "alive"))
                dead.add_metric([ring, side], int(state == "dead"))
                pid.add_metric([ring, side], side_pid if state in ("alive", "dead") else 0)
        yield from (alive, dead, pid)

    def health(self):
        return {"healthy": True, "detail": {"process": PROCESS, "handled": self.handled, "breaker": "closed"}}


def serve_metrics(port, metrics):
    """Serves /metrics, /health and /ready on 127.0.0.1:`port` from a daemon thread."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self.reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/health":
                self.reply(200, json.dumps(metrics.health()).encode(), "application/json")
            elif path == "/ready":
                self.reply(200, b'{"ready":true}', "application/json")
            else:
                self.reply(404, b"not found: try /metrics, /health or /ready\n", "text/plain")

        def reply(self, code, body, content_type):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # a scrape is not news

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inbox", required=True, help="ring to read (named after this agent)")
    parser.add_argument("--outbox", required=True, help="ring to write (the execution agent's)")
    parser.add_argument("--heartbeat", required=True, help="ring the circuit breaker hears this agent on")
    parser.add_argument("--heartbeat-ms", type=int, default=20, help="heartbeat interval")
    parser.add_argument("--stall-ms", type=int, default=0, help="testing: sleep before each message")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics, /health and /ready on 127.0.0.1:PORT")
    args = parser.parse_args()
    metrics = Metrics()
    if args.metrics_port:
        serve_metrics(args.metrics_port, metrics)
    # A Ctrl-C meant for the demo reaches this agent too: it leaves when its upstream closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    segments = [(name, tadpole.Segment.open(name)) for name in (args.heartbeat, args.inbox, args.outbox)]
    metrics.rings = segments
    beats, inbox, outbox = (tadpole.EnvelopeSender(segments[0][1]), tadpole.EnvelopeReceiver(segments[1][1]),
                            tadpole.EnvelopeSender(segments[2][1]))
    interval_ns = args.heartbeat_ms * 1_000_000
    started = time.monotonic_ns()
    # "refused": an input record was refused since the last heartbeat (the next one says Degraded).
    state = {"sequence": 0, "next": 0, "refused": False}

    def beat():
        now = time.monotonic_ns()
        if now >= state["next"]:
            state["sequence"] += 1
            state["next"] = now + interval_ns
            status = "Degraded" if state["refused"] else "Healthy"
            try:
                beats.send(source="personality", destination="breaker", timeout=0.0,
                           heartbeat={"sequence": state["sequence"], "interval_ns": interval_ns,
                                      "status": status})
                metrics.heartbeats += 1
                state["refused"] = False
            except (tadpole.Timeout, tadpole.Full):
                pass  # a breaker that is behind misses a beat

    status = 1
    try:
        status = serve(args, inbox, outbox, beat, metrics, state)
    finally:
        reason = tp.TerminationReason.Completed if status == 0 else tp.TerminationReason.Crashed
        beats.send_bytes(terminated(reason, "" if status == 0 else "failed", time.monotonic_ns() - started), timeout=1.0)
    return status


def serve(args, inbox, outbox, beat, metrics, state):
    while True:
        beat()
        wait = max(state_wait(args.heartbeat_ms), 0.0001)
        try:
            env = inbox.recv(timeout=wait)
        except tadpole.Timeout:
            continue
        except tadpole.Disconnected:
            return 0
        except tadpole.Rejected as e:
            # Not an envelope: counted as a dead letter by the receiver; the next record is read.
            log("WARN", "envelope refused", agent=PROCESS, error=str(e))
            state["refused"] = True
            continue
        if args.stall_ms:
            time.sleep(args.stall_ms / 1000)
            beat()
        message = env.to_dict()
        env.release()
        kind, correlation = message["message_type"], message["correlation_id"]
        metadata = stamps(message.get("metadata"))
        upstream = metadata.get(UPSTREAM_STAMP, "")
        if upstream.isdigit() and int(upstream) != 0:
            # As the Rust agents: from the stamp of the agent before to this one's.
            metrics.record_hop(max(int(metadata[STAMP]) - int(upstream), 0))
        metrics.handled += 1
        if kind == "ExecutionOrderPlaced":
            outbox.send_bytes(order(message["payload"], correlation, metadata), timeout=10.0)
        elif kind == "BreakerAgentTriggered":
            outbox.send_bytes(refusal(message["payload"], correlation, metadata), timeout=10.0)
        else:
            log("ERROR", "unexpected message", agent=PROCESS, message_type=kind, correlation_id=correlation)
            return 1


def state_wait(heartbeat_ms):
    """Seconds to wait for work before the next heartbeat is due (at most one interval)."""
    return heartbeat_ms / 1000


if __name__ == "__main__":
    sys.exit(main())
