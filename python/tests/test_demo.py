"""`tadpole demo --python personality`: the trading pipeline with its personality agent running
in Python on these bindings, between Rust agents, over the same rings."""

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT


def tadpole_binary():
    """`$TADPOLE_BIN`, or the ci-profile build (`cargo test --profile ci` makes it)."""
    path = os.environ.get("TADPOLE_BIN")
    if path:
        return path
    subprocess.run(["cargo", "build", "--quiet", "--profile", "ci", "-p", "tadpole-tools"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "ci" / "tadpole")


def test_the_demo_runs_its_personality_agent_in_python_and_every_signal_comes_back():
    env = dict(os.environ, TADPOLE_PYTHON=sys.executable)
    out = subprocess.run(
        [tadpole_binary(), "demo", "--signals", "200", "--python", "personality"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "personality (python)" in out.stdout, out.stdout
    timed = re.search(r"signals: (\d+) timed \((\d+) filled, (\d+) refused by risk\)", out.stdout)
    assert timed, out.stdout
    total, filled, refused = map(int, timed.groups())
    assert total == 200 and filled + refused == 200 and filled > 0 and refused > 0, out.stdout


def test_the_python_personality_fed_bad_records_logs_them_reports_itself_degraded_and_the_breaker_trips_it():
    # As the Rust agent does (tools/tests/demo_breaker.rs): risk commits three records that are
    # no envelope into personality's ring; the Python agent refuses each (a JSON log line, a
    # dead letter), keeps serving, and its next heartbeat says Degraded.
    env = dict(os.environ, TADPOLE_PYTHON=sys.executable)
    out = subprocess.run(
        [tadpole_binary(), "demo", "--rate", "300", "--duration", "3", "--corrupt-agent", "risk",
         "--python", "personality"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, f"bad records are not fatal: {out.stdout}\n{out.stderr}"
    assert "BreakerAgentTriggered personality misbehaving: it reports itself Degraded" in out.stdout, out.stdout
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    refused = [e for e in events if e.get("message") == "envelope refused" and e.get("agent") == "personality"]
    assert len(refused) == 3, out.stderr
    assert all(e["level"] == "WARN" and "rejected" in e["error"] for e in refused), refused
    ring = re.search(r"^ +personality +\d+ msgs.* (\d+) dead$", out.stdout, re.M)
    assert ring and int(ring.group(1)) == 3, out.stdout
    ticks = re.search(r"ticks: (\d+) sent, (\d+) dropped", out.stdout)
    assert ticks and ticks.groups() == ("900", "0"), out.stdout


def test_the_demo_refuses_an_agent_without_a_python_implementation():
    out = subprocess.run(
        [tadpole_binary(), "demo", "--signals", "10", "--python", "risk"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "no Python implementation of the risk agent" in out.stderr, out.stderr


def free_port_range(n):
    """A base port with `n` free ports from it (the demo's collector, agents and breaker)."""
    for _ in range(50):
        base = random.randrange(30_000, 60_000)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def get(port, path):
    """(status, body) of GET 127.0.0.1:port/path, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None


def families(text):
    """{family name: (type, {sample name with sorted labels: value})} of an OpenMetrics body."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    out = {}
    for f in text_string_to_metric_families(text):
        out[f.name] = (f.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples})
    return out


def shape(fams):
    """What must match between two processes' metrics: families, types, sample names, label keys
    (and the histogram's bucket bounds)."""
    return {name: (kind, sorted({(n, tuple(k if k != "le" else f"le={v}" for k, v in labels)) for n, labels in samples}))
            for name, (kind, samples) in fams.items()}


def test_the_python_personality_agent_serves_the_rust_agents_metrics_and_health_and_its_counters_move():
    pytest.importorskip("prometheus_client", reason="scripts/setup installs prometheus_client")
    base = free_port_range(6)
    env = dict(os.environ, TADPOLE_PYTHON=sys.executable)
    demo = subprocess.Popen(
        [tadpole_binary(), "demo", "--rate", "200", "--duration", "6", "--python", "personality",
         "--metrics-port-base", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    personality, execution = base + 3, base + 4
    try:
        def scrape_until(port, handled_above, deadline):
            while time.monotonic() < deadline:
                got = get(port, "/metrics")
                if got and got[0] == 200:
                    fams = families(got[1])
                    handled = fams.get("tadpole_demo_handled", (None, {}))[1]
                    if any(v > handled_above for v in handled.values()):
                        return fams
                if demo.poll() is not None:
                    break
                time.sleep(0.1)
            raise AssertionError(f"port {port}: no handled count above {handled_above}")

        deadline = time.monotonic() + 60
        first = scrape_until(personality, 0, deadline)
        rust = scrape_until(execution, 0, deadline)
        label = (("process", "personality"),)
        handled = first["tadpole_demo_handled"][1][("tadpole_demo_handled_total", label)]
        beats = first["tadpole_demo_heartbeats"][1][("tadpole_demo_heartbeats_total", label)]
        second = scrape_until(personality, handled + 50, deadline)
        code, health = get(personality, "/health")
    finally:
        out, err = demo.communicate(timeout=120)
    assert demo.returncode == 0, err
    assert "personality (python)" in out, out

    # The same families, types, sample names and label keys as the Rust execution agent's.
    assert shape(first) == shape(rust), (shape(first), shape(rust))
    # The counters move: messages handled, heartbeats sent, the hop risk -> personality timed.
    assert second["tadpole_demo_handled"][1][("tadpole_demo_handled_total", label)] >= handled + 50
    assert second["tadpole_demo_heartbeats"][1][("tadpole_demo_heartbeats_total", label)] > beats
    hop = second["tadpole_demo_hop_latency_seconds"][1]
    hop_label = (("hop", "risk -> personality"), ("process", "personality"))
    count = hop[("tadpole_demo_hop_latency_seconds_count", hop_label)]
    assert count >= handled + 50 and hop[("tadpole_demo_hop_latency_seconds_sum", hop_label)] > 0, hop
    inf = tuple(sorted(hop_label + (("le", "+Inf"),)))
    assert hop[("tadpole_demo_hop_latency_seconds_bucket", inf)] == count, hop
    # The series of its rings, read from shared memory (Segment.status()): what it received from
    # its inbox and sent into execution's ring moved, and it is its inbox's live consumer.
    run = f"pipeline-{demo.pid}"
    inbox, outbox = (("ring", f"{run}-personality"),), (("ring", f"{run}-execution"),)
    consumed = second["tadpole_ring_consumed_messages"][1]
    assert consumed[("tadpole_ring_consumed_messages_total", inbox)] >= handled + 50, consumed
    produced = second["tadpole_ring_produced_messages"][1]
    assert produced[("tadpole_ring_produced_messages_total", outbox)] >= handled + 50, produced
    alive = second["tadpole_ring_alive"][1]
    assert alive[("tadpole_ring_alive", tuple(sorted(inbox + (("side", "consumer"),))))] == 1, alive
    assert code == 200, health
    health = json.loads(health)
    assert health["healthy"] and health["detail"]["process"] == "personality", health
    assert health["detail"]["breaker"] == "closed" and health["detail"]["handled"] >= handled + 50, health


def scrape_in(namespace, port):
    """GET /metrics on 127.0.0.1:port inside network namespace `namespace` (None: this one)."""
    if namespace is None:
        got = get(port, "/metrics")
        return got[1] if got and got[0] == 200 else None
    code = ("import sys, urllib.request\n"
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=2).read().decode())")
    out = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=20)
    return out.stdout if out.returncode == 0 else None


def test_the_python_personality_agent_runs_on_host_b_of_a_cross_host_demo():
    pytest.importorskip("tadpole", reason="the tadpole bindings are not installed (pip install ./python)")
    pytest.importorskip("prometheus_client", reason="scripts/setup installs prometheus_client")
    root = os.geteuid() == 0
    base = free_port_range(6)
    env = dict(os.environ, TADPOLE_PYTHON=sys.executable)
    demo = subprocess.Popen(
        [tadpole_binary(), "demo", "--cross-host", "--rate", "200", "--duration", "6", "--python", "personality",
         "--metrics-port-base", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    # As root the agents after the relayed hop (personality first) run in namespace B, their
    # metrics endpoints too; otherwise everything is on loopback.
    namespace = f"tpc-xh{demo.pid}-b" if root else None
    handled = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and demo.poll() is None and handled < 100:
            body = scrape_in(namespace, base + 3)
            if body:
                match = re.search(r'^tadpole_demo_handled_total\{process="personality"\} (\S+)', body, re.M)
                handled = float(match.group(1)) if match else 0
            time.sleep(0.2)
    finally:
        out, err = demo.communicate(timeout=120)
    assert demo.returncode == 0, err
    assert handled >= 100, f"the Python agent's /metrics (namespace {namespace}) never counted 100 envelopes"
    assert "-> personality (python) ->" in out, out
    via = "netns" if root else "loopback"
    hop = re.search(rf"cross-host hop risk -> personality \(via relays, {via}\) \((\d+) samples\)", out)
    assert hop and int(hop.group(1)) > 0, out
    ticks = re.search(r"ticks: (\d+) sent, (\d+) dropped", out)
    assert ticks and int(ticks.group(1)) > 0 and int(ticks.group(2)) == 0, out
    if root:
        assert re.search(r"host B \(tpc-xh\d+-b\): relay-b, personality, execution", out), out
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"tpc-xh{demo.pid}-" not in left, left
