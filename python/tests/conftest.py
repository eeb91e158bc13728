"""Fixtures of the `tadpole` module's tests: unique ring names, the Rust peer binary, and
helpers to run Python ends of a ring in their own processes."""

import os
import pathlib
import subprocess
import sys
import uuid

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))


@pytest.fixture
def ring_name():
    """A name no other test (or test run) uses; the segment is unlinked afterwards."""
    name = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        os.unlink(f"/dev/shm/tadpole.{name}")
    except FileNotFoundError:
        pass


@pytest.fixture(scope="session")
def peer():
    """The Rust peer (python/peer): `$TADPOLE_PY_PEER`, or built here with the ci profile."""
    path = os.environ.get("TADPOLE_PY_PEER")
    if path:
        return path
    subprocess.run(
        ["cargo", "build", "--quiet", "--profile", "ci", "-p", "tadpole-python-peer"], cwd=ROOT, check=True
    )
    return str(ROOT / "target" / "ci" / "tadpole-py-peer")


def python_proc(script, *args, **kw):
    """Runs `python3 python/tests/<script> args...` as its own process."""
    return subprocess.Popen([sys.executable, str(HERE / script), *map(str, args)], **kw)
