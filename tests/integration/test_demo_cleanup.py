"""The README's first command leaves nothing behind: the demo's temp dir (and its children's
temp files) is removed when it fails and when it is interrupted, and its children stop.

The full demo takes about a minute here, so these run it small: with no drill (a failure,
by design: nothing was proven) and interrupted mid-run by Ctrl-C (SIGINT to its process
group, as a terminal sends it) or by SIGTERM to the demo alone. ``$TMPDIR`` points at a
fresh dir of the test's own, so what is left there is what the demo left. It is a short
path under /tmp, as on a user's machine: the demo's children then keep their temp files
(multiprocessing's socket dir) inside the demo's dir too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import EXAMPLES, child_env

DEMO = EXAMPLES / "preemption_demo.py"


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def _demo(tmp: Path, *args: str, limit: float = 180.0) -> Iterator[subprocess.Popen]:
    """The demo in a session of its own, SIGKILLed with its session after ``limit`` seconds, and
    at the end of the test whatever happened (a failed assertion leaves nothing running)."""
    env = {**child_env(), "TMPDIR": str(tmp), "SPOTSAFE_AWS_METADATA_URL": "off",
           "SPOTSAFE_GCP_METADATA_URL": "off", "SPOTSAFE_AZURE_METADATA_URL": "off"}
    proc = subprocess.Popen([sys.executable, str(DEMO), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env=env, start_new_session=True)
    watchdog = threading.Timer(limit, _killpg, (proc.pid,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield proc
    finally:
        watchdog.cancel()
        _killpg(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.fixture
def tmpdir_short():
    """A fresh, short TMPDIR for the demo (a socket path must stay under 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="ssd-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


def _session_members(sid: int) -> list[int]:
    """Processes still in the demo's session (the supervisor; train.py has a session of its own)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


@pytest.mark.slow
def test_a_failed_demo_removes_its_temp_dir(tmpdir_short):
    with _demo(tmpdir_short, "--steps", "20", "--drills", "0", "--workers", "0") as proc:
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "FAIL: no drill was injected" in out and "Removed " in out
    assert list(tmpdir_short.iterdir()) == [], "the demo left files behind"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_demo_stops_its_children_and_removes_its_temp_dir(tmpdir_short, how):
    with _demo(tmpdir_short, "--steps", "200", "--drills", "1", "--chaos", "60s", "--workers", "1") as proc:
        seen = []
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # type: ignore[union-attr]  (the watchdog ends a silent demo)
            seen.append(line)
            if line.strip().startswith("resumed") or time.monotonic() > deadline:
                break  # the supervised run is training: its files are being written
        assert any(x.strip().startswith("resumed") for x in seen), "".join(seen)
        work = next(tmpdir_short.glob("spotsafe-demo-*"))
        assert (work / "interrupted").is_dir()
        t0 = time.monotonic()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        else:
            os.kill(proc.pid, signal.SIGTERM)   # the demo alone: it must stop its children itself
        rest, _ = proc.communicate(timeout=60)
        took = time.monotonic() - t0
        print(f"{how}: the demo ended {took:.1f} s after the signal, exit {proc.returncode}")
        assert proc.returncode == (130 if how == "ctrl-c" else 143), "".join(seen) + rest
        assert "Removed " in rest
        assert not work.exists() and list(tmpdir_short.iterdir()) == [], "the demo left files behind"
        time.sleep(0.5)
        assert _pids_alive(_session_members(proc.pid)) == [], "a child of the demo outlived it"
