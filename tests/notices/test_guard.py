"""The suite's guard against the real metadata addresses works, in this process and in children."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from conftest import child_env


def test_the_guard_refuses_and_records_in_this_process(tmp_path, monkeypatch):
    log = tmp_path / "guard.log"
    monkeypatch.setenv("SPOTSAFE_TEST_GUARD_LOG", str(log))   # this test's own record, not the suite's
    with pytest.raises(ConnectionRefusedError, match="spotsafe test guard"):
        socket.create_connection(("169.254.169.254", 80), timeout=0.5)
    with pytest.raises(ConnectionRefusedError, match="metadata.google.internal"):
        socket.getaddrinfo("metadata.google.internal", 80)
    assert log.read_text().count("tried to") == 2


def test_auto_with_the_real_defaults_is_caught_in_a_child(tmp_path):
    """What would happen if a test forgot the loopback URLs: the child's probes are refused
    and recorded (so the suite's own check would fail that test)."""
    log = tmp_path / "guard.log"
    env = child_env()
    for name in ("SPOTSAFE_AWS_METADATA_URL", "SPOTSAFE_GCP_METADATA_URL", "SPOTSAFE_AZURE_METADATA_URL"):
        env.pop(name)
    env["SPOTSAFE_TEST_GUARD_LOG"] = str(log)
    code = ("import time; from spotsafe.notices import NoticeWatcher, make_sources\n"
            "w = NoticeWatcher(make_sources('auto')).start()\n"
            "end = time.monotonic() + 10\n"
            "while len(w.active) > 1 and time.monotonic() < end: time.sleep(0.05)\n"
            "print(sorted(w.active)); w.stop()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['signal']"                  # every cloud source gave up quietly
    tried = log.read_text()
    assert "tried to resolve 169.254.169.254" in tried and "tried to resolve metadata.google.internal" in tried
    assert "WARNING" not in out.stderr
