"""Replication to a remote, on memory:// (fast, no server): queue bound, pins, retries, watermark."""

from __future__ import annotations

import threading
import uuid

import pytest
import torch

import spotsafe
from spotsafe._backoff import Backoff, retry
from spotsafe._format import committed_steps
from spotsafe._storage import FsspecStorage, open_storage
from spotsafe.errors import RemoteError


@pytest.fixture
def remote():
    return f"memory://repl-{uuid.uuid4().hex[:8]}/run"


class UploadGate:
    def __init__(self, monkeypatch):
        self.open = threading.Event()
        self.started = threading.Event()
        real = FsspecStorage.upload_file

        def gated(st, fd, rel, **kw):
            self.started.set()
            assert self.open.wait(30), "gate never opened"
            return real(st, fd, rel, **kw)

        monkeypatch.setattr(FsspecStorage, "upload_file", gated)


def test_the_queue_is_bounded_and_drops_the_oldest_waiting_step(root, remote, monkeypatch):
    gate = UploadGate(monkeypatch)
    with spotsafe.CheckpointManager(root, remote=remote, max_pending_uploads=1, keep=5) as mgr:
        mgr.save(1, {"v": torch.ones(3)})
        mgr.wait()
        assert gate.started.wait(10)  # step 1 is being uploaded
        for step in (2, 3, 4):
            mgr.save(step, {"v": torch.ones(3) * step})
            mgr.wait()
        assert mgr.dropped_uploads == 2  # 2 and 3 were superseded while 1 was in flight
        gate.open.set()
        mgr.wait(remote=True, timeout=30)
        assert mgr.remote_watermark == 4
        assert committed_steps(open_storage(remote)) == [1, 4]


def test_local_retention_keeps_steps_that_still_wait_for_upload(root, remote, monkeypatch):
    gate = UploadGate(monkeypatch)
    with spotsafe.CheckpointManager(root, remote=remote, keep=1, max_pending_uploads=3) as mgr:
        for step in (1, 2, 3):
            mgr.save(step, {"v": torch.ones(3) * step})
            mgr.wait()
        assert [c.step for c in mgr.checkpoints()] == [1, 2, 3]  # pinned until uploaded
        gate.open.set()
        mgr.wait(remote=True, timeout=30)
        mgr.save(4, {"v": torch.ones(3) * 4})
        mgr.wait(remote=True, timeout=30)
        assert [c.step for c in mgr.checkpoints()] == [4]
        assert [c.step for c in mgr.checkpoints(remote=True)] == [4]


def test_transient_upload_errors_are_retried_and_the_step_still_lands(root, remote, monkeypatch):
    real = FsspecStorage.upload_file
    failures = []

    def flaky(st, fd, rel, **kw):
        if len(failures) < 2:
            failures.append(rel)
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(st, fd, rel, **kw)

    monkeypatch.setattr(FsspecStorage, "upload_file", flaky)
    with spotsafe.CheckpointManager(root, remote=remote, upload_backoff=Backoff(base=0.01, cap=0.05)) as mgr:
        mgr.save(1, {"v": torch.arange(10)})
        mgr.wait(remote=True, timeout=30)
        assert mgr.remote_watermark == 1 and mgr.uploads[-1].retries == 2
        assert all(c.valid for c in mgr.checkpoints(remote=True))


def test_a_permanent_upload_error_is_not_retried_and_is_raised_on_the_next_call(root, remote, monkeypatch):
    calls = []

    def denied(st, fd, rel, **kw):
        calls.append(rel)
        raise PermissionError(13, "Access Denied")

    monkeypatch.setattr(FsspecStorage, "upload_file", denied)
    mgr = spotsafe.CheckpointManager(root, remote=remote)
    mgr.save(1, {"v": torch.arange(10)})
    with pytest.raises(RemoteError, match=r"Uploading step-000000000001 to memory://.* failed after 0 retries "
                                          r"\(PermissionError: .*Access Denied\); the newest step confirmed on the "
                                          r"remote is still none"):
        mgr.wait(remote=True, timeout=30)
    assert len(calls) == 1 and mgr.remote_watermark is None
    assert [c.step for c in mgr.checkpoints()] == [1]  # the local checkpoint is fine
    mgr.close()


def test_backoff_grows_exponentially_with_bounded_jitter():
    b = Backoff(base=1.0, cap=8.0)
    for attempt, nominal in enumerate([1, 2, 4, 8, 8]):
        delays = [b.delay(attempt) for _ in range(200)]
        assert all(0.5 * nominal <= d < 1.5 * nominal for d in delays)
        assert max(delays) - min(delays) > 0.3 * nominal  # jittered, not fixed
    with pytest.raises(ValueError, match="Invalid backoff"):
        Backoff(base=0)


def test_retry_stops_at_the_attempt_limit_and_never_retries_permanent_errors():
    calls = []

    def always(exc):
        def fn():
            calls.append(1)
            raise exc
        return fn

    policy = Backoff(base=0.001, cap=0.002, attempts=4)
    with pytest.raises(TimeoutError):
        retry(always(TimeoutError()), policy=policy, transient=lambda e: True, what="x")
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(PermissionError):
        retry(always(PermissionError()), policy=policy, transient=lambda e: not isinstance(e, PermissionError), what="x")
    assert len(calls) == 1


def test_close_with_a_timeout_says_which_steps_did_not_reach_the_remote(root, remote, monkeypatch):
    """close(timeout=...) that returns means every saved step is on the remote; otherwise it raises
    a TimeoutError naming the ones that are not, and stays within its timeout plus a short join."""
    import time

    real = FsspecStorage.upload_file

    def slow(st, fd, rel, **kw):  # a slow link: each file takes a second
        time.sleep(1.0)
        return real(st, fd, rel, **kw)

    monkeypatch.setattr(FsspecStorage, "upload_file", slow)
    mgr = spotsafe.CheckpointManager(root, remote=remote, keep=5, max_pending_uploads=3)
    for step in (1, 2, 3):
        mgr.save(step, {"v": torch.ones(3) * step})
        mgr.wait()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"Uploads to memory://.* did not finish within 0.2s: (step-\d+, )*"
                                           r"step-000000000003 (is|are) not on it; the newest step confirmed "):
        mgr.close(timeout=0.2)
    assert time.monotonic() - t0 < 5
    assert 3 not in committed_steps(open_storage(remote))
    with spotsafe.CheckpointManager(root, read_only=True) as reader:
        assert [c.step for c in reader.checkpoints()] == [1, 2, 3]  # all still here, for the next writer
