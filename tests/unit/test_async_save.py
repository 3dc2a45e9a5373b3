"""Asynchronous saves: the state is snapshotted when save() returns, buffers are reused,
busy saves follow the when_busy rule, and background failures are raised, never lost."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
import torch
from helpers import assert_same_tensors, fresh_training, make_training, snapshot

import spotsafe


def train_steps(model, opt, n: int, width: int = 4) -> None:
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(6, width)).pow(2).sum().backward()
        opt.step()


def test_changes_right_after_save_do_not_reach_the_checkpoint(root):
    model, opt, sched = make_training()
    at_save = snapshot(model)
    with spotsafe.CheckpointManager(root) as mgr:
        expected_opt = {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in v.items()}
                        for k, v in opt.state_dict()["state"].items()}
        stats = mgr.save(5, {"model": model, "optimizer": opt})
        assert stats.persist_s is None and stats.total_s is None  # not durable yet
        with torch.no_grad():  # change every parameter at once, while the write may be running
            for p in model.parameters():
                p.add_(1000.0)
        train_steps(model, opt, 3)
        done = mgr.wait()
    assert done.step == 5 and done.durable and done.bytes == stats.bytes
    assert not torch.equal(model[0].weight, at_save["0.weight"])
    model2, opt2, _ = fresh_training()
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.restore({"model": model2, "optimizer": opt2}) == 5
    assert_same_tensors(snapshot(model2), at_save)
    for k, v in opt2.state_dict()["state"].items():
        for n, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(expected_opt[k][n])), (k, n)


def test_staging_buffers_are_reused_and_hold_at_most_the_state(root):
    model = torch.nn.Linear(256, 512)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 256)).sum().backward()
    opt.step()
    state = {"model": model, "optimizer": opt, "arr": np.arange(1000, dtype=np.float32)}
    tensors = [*model.state_dict().values(), *[t for s in opt.state.values() for t in s.values() if t.dim()]]
    state_bytes = sum(t.numel() * t.element_size() for t in tensors) + 4000
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        mgr.save(1, state)
        mgr.wait()
        ptrs = {k: b.data_ptr() for k, b in mgr._buffers._buffers.items()}
        allocations = mgr._buffers.allocations
        for step in range(2, 6):
            train_steps(model, opt, 1, width=256)
            mgr.save(step, state)
        mgr.wait()
        assert mgr._buffers.allocations == allocations  # warm saves allocate nothing
        assert {k: b.data_ptr() for k, b in mgr._buffers._buffers.items()} == ptrs
        # one save in flight: the extra host memory is the state plus alignment padding
        # (64 bytes per tensor, and each component's buffer rounded up to a 4 KiB page)
        assert len(mgr._buffers._buffers) == 3
        assert state_bytes <= mgr.staging_bytes <= state_bytes + 64 * (len(tensors) + 3) + 4096 * 3
    model2 = torch.nn.Linear(256, 512)
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        restored = {"model": model2, "optimizer": torch.optim.Adam(model2.parameters()), "arr": None}
        assert mgr.restore(restored) == 5
    assert_same_tensors(model2.state_dict(), model.state_dict())
    assert np.array_equal(restored["arr"], np.arange(1000, dtype=np.float32))


class Gate:
    """Holds every background file write until released, to keep a save in flight."""

    def __init__(self, monkeypatch, storage) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        real = storage.write_file

        def slow(*a, **kw):
            self.entered.set()
            assert self.release.wait(30), "gate never released"
            return real(*a, **kw)

        monkeypatch.setattr(storage, "write_file", slow)


def test_a_save_while_one_is_in_flight_waits_by_default(root, monkeypatch):
    with spotsafe.CheckpointManager(root) as mgr:
        gate = Gate(monkeypatch, mgr.storage)
        mgr.save(1, {"v": torch.ones(10)})
        assert gate.entered.wait(10)
        threading.Timer(0.3, gate.release.set).start()
        second = mgr.save(2, {"v": torch.full((10,), 2.0)})
        assert second.waited_s >= 0.2 and second.stall_s >= second.waited_s and not second.skipped
        mgr.wait()
        assert [c.step for c in mgr.checkpoints()] == [1, 2]


def test_a_save_while_one_is_in_flight_is_skipped_and_counted_with_when_busy_skip(root, monkeypatch):
    with spotsafe.CheckpointManager(root, when_busy="skip") as mgr:
        gate = Gate(monkeypatch, mgr.storage)
        mgr.save(1, {"v": torch.ones(10)})
        assert gate.entered.wait(10)
        skipped = mgr.save(2, {"v": torch.full((10,), 2.0)})
        assert skipped.skipped and skipped.step == 2 and mgr.skipped_saves == 1
        gate.release.set()
        assert mgr.wait().step == 1
        assert not mgr.save(3, {"v": torch.full((10,), 3.0)}).skipped
        mgr.wait()
        assert [c.step for c in mgr.checkpoints()] == [1, 3]


def failing_write(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["save", "wait", "close"])
def test_a_background_failure_is_raised_on_the_next_call(root, monkeypatch, where):
    mgr = spotsafe.CheckpointManager(root)
    mgr.save(1, {"v": torch.ones(4)})
    mgr.wait()
    monkeypatch.setattr(mgr.storage, "write_file", failing_write)
    mgr.save(2, {"v": torch.ones(4) * 2})  # returns: the failure happens in the background
    match = (r"Background save of step-000000000002 .* failed \(OSError: .*No space left"
             r".*newest checkpoint there is step-000000000001")
    with pytest.raises(spotsafe.SpotsafeError, match=match):
        if where == "save":
            mgr._persist_executor.submit(lambda: None).result()
            mgr.save(3, {"v": torch.ones(4) * 3})
        elif where == "wait":
            mgr.wait()
        else:
            mgr.close()
    monkeypatch.undo()
    if where != "close":
        assert mgr.save(3, {"v": torch.ones(4) * 3}).step == 3  # raised once; saving works again
        mgr.close()
    assert sorted(os.listdir(root)) == [".spotsafe-writer.lock"] + (
        ["step-000000000001"] if where == "close" else ["step-000000000001", "step-000000000003"])  # no temp dir left


def test_synchronous_saves_return_durable(root):
    model, opt, _ = make_training()
    with spotsafe.CheckpointManager(root, async_save=False) as mgr:
        stats = mgr.save(3, {"model": model, "optimizer": opt})
        assert stats.durable and stats.persist_s > 0 and stats.stall_s == stats.total_s
        assert mgr.staging_bytes == 0  # no staging copy: tensors were written in place
        assert [c.step for c in mgr.checkpoints()] == [3]


def test_when_busy_must_be_known(root):
    with pytest.raises(ValueError, match="when_busy='later' is not one of"):
        spotsafe.CheckpointManager(root, when_busy="later")


class IoSpy:
    """Records which bytes went through O_DIRECT descriptors and which through the page cache."""

    def __init__(self, monkeypatch, fail_direct: bool = False) -> None:
        self.direct_fds: set[int] = set()
        self.direct = self.buffered = 0
        real_open, real_pwrite = os.open, os.pwrite

        def spy_open(path, flags, *a, **kw):
            fd = real_open(path, flags, *a, **kw)
            if flags & getattr(os, "O_DIRECT", 0):
                self.direct_fds.add(fd)
            else:
                self.direct_fds.discard(fd)
            return fd

        def spy_pwrite(fd, data, offset):
            if fd in self.direct_fds:
                if fail_direct:
                    raise OSError(errno.EINVAL, "Invalid argument")
                self.direct += len(data)
            else:
                self.buffered += len(data)
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "pwrite", spy_pwrite)


def direct_io_supported(path) -> bool:
    try:
        fd = os.open(path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except (OSError, AttributeError):
        return False
    os.close(fd)
    os.unlink(path / "probe")
    return True


@pytest.mark.parametrize("fail_direct", [False, True], ids=["direct", "einval-fallback"])
def test_async_saves_write_whole_pages_with_o_direct_and_fall_back_cleanly(root, tmp_path, monkeypatch, fail_direct):
    weights = torch.randn(3 << 18)  # 3 MiB
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        spy = IoSpy(monkeypatch, fail_direct)
        mgr.save(1, {"model": {"w": weights}})
        mgr.wait()
        monkeypatch.undo()
    nbytes = weights.numel() * 4
    if direct_io_supported(tmp_path) and not fail_direct:
        assert spy.direct >= nbytes - 4096 and spy.buffered < 4096  # the page cache saw only the tail
    else:
        assert spy.direct == 0 and spy.buffered >= nbytes  # refused: everything through the page cache
    state = {"model": None}
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        assert mgr.restore(state) == 1
    assert torch.equal(state["model"]["w"], weights)
