"""`tadpole demo --python personality`: the trading pipeline with its personality agent running
in Python on these bindings, between Rust agents, over the same rings."""

import os
import re
import subprocess
import sys

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


def test_the_demo_refuses_an_agent_without_a_python_implementation():
    out = subprocess.run(
        [tadpole_binary(), "demo", "--signals", "10", "--python", "risk"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "no Python implementation of the risk agent" in out.stderr, out.stderr
