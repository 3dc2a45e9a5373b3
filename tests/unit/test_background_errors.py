"""One way for a background failure to reach the caller: stored once, raised once by the next call.

The helper on its own, then the two local channels with real failures: a save that meets a
full disk (a tiny tmpfs) and a retention deletion that meets an immutable file
(``chattr +i``: root cannot delete it either).
"""

from __future__ import annotations

import errno
import subprocess
import threading
from pathlib import Path

import pytest
import torch

import spotsafe
from spotsafe._engine._threads import BackgroundErrors
from spotsafe._format import step_dir


class TestBackgroundErrors:
    def test_each_error_is_raised_once_in_the_order_stored_with_its_cause(self):
        errors = BackgroundErrors()
        first, second = OSError(errno.ENOSPC, "No space left on device"), PermissionError(13, "denied")
        errors.put(spotsafe.SaveFailedError("save of step 2 failed"), first)
        errors.put(spotsafe.DeletionFailedError("deleting step 1 failed"), second)
        assert errors.pending == 2
        with pytest.raises(spotsafe.SaveFailedError, match="step 2") as raised:
            errors.raise_next()
        assert raised.value.__cause__ is first and raised.value.__suppress_context__
        with pytest.raises(spotsafe.DeletionFailedError, match="step 1") as raised:
            errors.raise_next()
        assert raised.value.__cause__ is second
        assert errors.pending == 0
        errors.raise_next()  # nothing left: returns
        assert errors.drain() == []

    def test_errors_from_many_threads_are_each_raised_exactly_once(self):
        errors = BackgroundErrors(limit=1000)
        start = threading.Barrier(8)

        def fail(t: int) -> None:
            start.wait(10)
            for i in range(50):
                errors.put(spotsafe.DeletionFailedError(f"t{t} n{i}"), OSError(errno.EIO, f"t{t} n{i}"))

        raised: list[str] = []
        threads = [threading.Thread(target=fail, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for _ in range(2000):  # the caller raises while the threads still store
            try:
                errors.raise_next()
            except spotsafe.DeletionFailedError as e:
                assert str(e.__cause__).endswith(str(e))  # each carries its own cause
                raised.append(str(e))
            if len(raised) == 400:
                break
        for th in threads:
            th.join(10)
        raised += [str(e) for e in errors.drain()]
        assert sorted(raised) == sorted(f"t{t} n{i}" for t in range(8) for i in range(50))  # none lost, none twice
        for t in range(8):  # one thread's errors keep their order
            mine = [int(r.split("n")[1]) for r in raised if r.startswith(f"t{t} ")]
            assert mine == list(range(50))

    def test_beyond_the_limit_the_oldest_are_dropped_and_the_next_raised_says_how_many(self):
        errors = BackgroundErrors(limit=3)
        for i in range(5):
            errors.put(spotsafe.DeletionFailedError(f"n{i}"))
        with pytest.raises(spotsafe.DeletionFailedError, match="n2") as raised:
            errors.raise_next()
        assert "2 older background failure(s) were dropped" in "".join(raised.value.__notes__)
        assert [str(e) for e in errors.drain()] == ["n3", "n4"]


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")


def test_a_save_that_meets_a_full_disk_is_raised_once_as_save_failed(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "1m")
    root = disk / "run"
    try:
        mgr = spotsafe.CheckpointManager(root, rng=False)
        mgr.save(1, {"v": torch.ones(1000)})
        mgr.wait()
        mgr.save(2, {"v": torch.ones(1 << 20)})  # 4 MiB on a 1 MiB disk: fails on the persist thread
        with pytest.raises(spotsafe.SaveFailedError, match=r"^Background save of step-000000000002 to .* failed "
                           r"\(OSError: .*No space left on device.*\); the newest checkpoint there is "
                           r"step-000000000001; the storage is full") as raised:
            mgr.wait()
        assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == errno.ENOSPC
        assert mgr.wait().step == 1  # raised once: the next call is clean
        assert mgr.save(3, {"v": torch.full((1000,), 3.0)}).step == 3
        mgr.close()  # nothing left to raise
        assert sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) == [step_dir(1), step_dir(3)]
        state = {"v": None}
        with spotsafe.CheckpointManager(root, read_only=True, rng=False) as reader:
            assert reader.restore(state) == 3
        assert torch.equal(state["v"], torch.full((1000,), 3.0))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_deletion_that_fails_is_raised_once_as_deletion_failed_and_saving_goes_on(root):
    with spotsafe.CheckpointManager(root, keep=1, rng=False) as mgr:
        mgr.save(1, {"v": torch.ones(4)})
        mgr.wait()
        pinned = root / step_dir(1) / "v.bin"
        if not pinned.exists():
            pinned = next(p for p in (root / step_dir(1)).iterdir() if p.name != "manifest.json")
        if subprocess.run(["chattr", "+i", str(pinned)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available on this file system")
        try:
            mgr.save(2, {"v": torch.ones(4) * 2})  # retention moves step 1 aside; the gc thread cannot delete it
            mgr._persist_executor.submit(lambda: None).result(30)  # the save and its prune have run
            mgr._gc_executor.submit(lambda: None).result(30)  # and so has the deletion
            with pytest.raises(spotsafe.DeletionFailedError, match=rf"^Deleting old checkpoint {step_dir(1)}\.trash-\w+ "
                               rf"in {root} failed \(.*Operation not permitted.*\); check the permissions") as raised:
                mgr.wait()
            assert isinstance(raised.value.__cause__, PermissionError)
            assert mgr.wait().step == 2  # raised once
            mgr.save(3, {"v": torch.ones(4) * 3})  # training goes on; step 2 is deleted as it should be
            mgr.wait()
            mgr._gc_executor.submit(lambda: None).result(30)
            assert mgr._errors.pending == 0
            left = sorted(p.name for p in root.iterdir() if p.name.startswith("step-"))
            assert left[-1] == step_dir(3) and len(left) == 2 and left[0].startswith(f"{step_dir(1)}.trash-")
            assert [c.step for c in mgr.checkpoints()] == [3]
        finally:
            for p in root.glob(f"{step_dir(1)}*/*"):
                subprocess.run(["chattr", "-i", str(p)], capture_output=True)
    with spotsafe.CheckpointManager(root, keep=1, rng=False):  # a new writer cleans what was left aside
        assert sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) == [step_dir(3)]
