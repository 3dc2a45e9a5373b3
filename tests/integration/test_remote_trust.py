"""Never lose the last good checkpoint; never claim durability that is not there (real SeaweedFS).

Nothing goes up unless its bytes verify against its manifest; retention keeps the newest
*valid* checkpoint on both tiers; an invalid copy on one tier is replaced from a valid copy
on the other; "on the remote" means confirmed there by this manager, whatever other steps
the prefix holds.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import child_env
from helpers import incomplete_uploads, remote_objects, write_remote
from unuploaded_child import state

import spotsafe
from spotsafe._format import MANIFEST, check_checkpoint, committed_steps, step_dir
from spotsafe._storage import ObstoreStorage, _obstore, open_storage
from spotsafe._telemetry import read_events
from spotsafe.errors import CheckpointSkippedWarning
from spotsafe.notices import FileTrigger

pytestmark = pytest.mark.slow
CHILD = Path(__file__).with_name("unuploaded_child.py")


def blank() -> dict:
    return {"model": None, "optimizer": None, "step": None}


def assert_state(got: dict, step: int) -> None:
    want = state(step)
    assert got["step"] == step
    for part in ("model", "optimizer"):
        assert got[part].keys() == want[part].keys()
        for k, v in want[part].items():
            assert torch.equal(got[part][k], v), (part, k)


def flip(path: Path, offset: int) -> None:
    """Flip one bit of ``path`` in place: same size, wrong checksum."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_corrupt_local_step_is_never_uploaded_and_keep_last_1_keeps_the_good_remote_copy(s3_url, tmp_path,
                                                                                           caplog):
    local = tmp_path / "node-a"
    proc = subprocess.run([sys.executable, str(CHILD), str(local), s3_url, "10", "20"], env=child_env(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert "remote 10" in proc.stdout
    remote = open_storage(s3_url)
    assert committed_steps(remote) == [10]
    assert [n for n in os.listdir(local) if n.startswith("step-")] == [step_dir(20)]  # keep_last=1: 10 is gone here
    flip(local / step_dir(20) / "model.bin", 100)  # bit rot (or a bad disk) before the restart

    caplog.set_level(logging.INFO)
    got = blank()
    with pytest.warns(CheckpointSkippedWarning, match=rf"{step_dir(20)} in {local} .*fails its checksum"):
        with spotsafe.CheckpointManager(local, remote=s3_url, keep=1) as mgr:
            assert mgr.restore(got) == 10 and mgr.restored_tier == "remote"
            assert not mgr.wait_uploaded(20, timeout=60)  # refused, not merely late
            assert mgr.remote_watermark == 10
    assert_state(got, 10)
    assert f"Not uploading {step_dir(20)} to {s3_url}: its local copy" in caplog.text
    assert committed_steps(remote) == [10] and check_checkpoint(remote, 10, deep=True).valid
    assert not [n for n in remote_objects(s3_url) if n.startswith(step_dir(20))]  # no partial upload left
    assert check_checkpoint(open_storage(local), 10, deep=True).valid  # the local tier was repaired

    # a restart on the same machine reads the repaired local copy...
    got = blank()
    with pytest.warns(CheckpointSkippedWarning, match=step_dir(20)):
        with spotsafe.CheckpointManager(local, remote=s3_url, keep=1) as mgr:
            assert mgr.restore(got) == 10 and mgr.restored_tier == "root"
    assert_state(got, 10)
    # ...and a brand-new machine the remote copy, bit for bit
    got = blank()
    with spotsafe.CheckpointManager(tmp_path / "node-b", remote=s3_url, keep=1) as mgr:
        assert mgr.restore(got) == 10 and mgr.restored_tier == "remote"
    assert_state(got, 10)
    assert committed_steps(remote) == [10]


def test_saving_a_step_again_repairs_its_invalid_remote_copy(s3_url, tmp_path):
    local = tmp_path / "run"
    with spotsafe.CheckpointManager(local, remote=s3_url) as mgr:
        mgr.save(5, state(5))
        mgr.wait(remote=True, timeout=60)
    # what the old bug left: a local copy that rotted, and the remote holding those same bad bytes
    flip(local / step_dir(5) / "model.bin", 7)
    remote = open_storage(s3_url)
    write_remote(s3_url, f"{step_dir(5)}/model.bin", (local / step_dir(5) / "model.bin").read_bytes())
    assert not check_checkpoint(remote, 5, deep=True).valid

    with spotsafe.CheckpointManager(local, remote=s3_url) as mgr:
        assert mgr.save(5, state(5)).skipped is False  # the invalid local copy is replaced...
        mgr.wait(remote=True, timeout=60)  # ...and so is the remote one
        assert mgr.remote_watermark == 5
    assert check_checkpoint(remote, 5, deep=True).valid
    assert files_of(local / step_dir(5)) == {n: remote.read_bytes(f"{step_dir(5)}/{n}") for n in
                                             files_of(local / step_dir(5))}
    got = blank()
    with spotsafe.CheckpointManager(tmp_path / "new-node", remote=s3_url) as mgr:
        assert mgr.restore(got) == 5 and mgr.restored_tier == "remote"
    assert_state(got, 5)


def test_a_truncated_remote_copy_is_replaced_from_the_valid_local_one_at_start(s3_url, tmp_path, caplog):
    local = tmp_path / "run"
    with spotsafe.CheckpointManager(local, remote=s3_url) as mgr:
        mgr.save(5, state(5))
        mgr.wait(remote=True, timeout=60)
    remote = open_storage(s3_url)
    write_remote(s3_url, f"{step_dir(5)}/optimizer.bin", b"short")  # same manifest, wrong size
    caplog.set_level(logging.INFO)
    with spotsafe.CheckpointManager(local, remote=s3_url) as mgr:
        assert mgr.wait_uploaded(5, timeout=60)  # the newest local step is checked and re-uploaded at start
    assert f"Replacing the copy of {step_dir(5)} on {s3_url} (invalid there: optimizer.bin is 5 bytes" in caplog.text
    assert check_checkpoint(remote, 5, deep=True).valid


def test_restoring_from_the_remote_repairs_a_corrupt_local_copy(s3_url, tmp_path):
    local = tmp_path / "run"
    with spotsafe.CheckpointManager(local, remote=s3_url) as mgr:
        mgr.save(5, state(5))
        mgr.wait(remote=True, timeout=60)
    good = files_of(local / step_dir(5))
    flip(local / step_dir(5) / "optimizer.bin", 3)
    got = blank()
    with pytest.warns(CheckpointSkippedWarning, match="optimizer.bin fails its checksum"):
        with spotsafe.CheckpointManager(local, remote=s3_url) as mgr:
            assert mgr.restore(got) == 5 and mgr.restored_tier == "remote"
            assert check_checkpoint(mgr.storage, 5, deep=True).valid  # repaired before restore returned
    assert_state(got, 5)
    assert files_of(local / step_dir(5)) == good  # byte for byte, manifest included
    assert not [n for n in os.listdir(local) if ".trash-" in n or ".tmp-" in n]


def garbage_at_900(url: str) -> None:
    """An invalid higher step on the remote: a manifest that is not one, under step-000000000900/."""
    write_remote(url, f"{step_dir(900)}/{MANIFEST}", b"not a manifest")


class Gate:
    """Holds every file upload until opened; closing it for good makes them fail."""

    def __init__(self, monkeypatch) -> None:
        self.opened = threading.Event()
        self.failing = False
        real = ObstoreStorage.upload_file

        def gated(st, fd, rel, **kw):
            self.opened.wait(60)
            if self.failing:
                raise PermissionError(13, "the test is over")
            return real(st, fd, rel, **kw)

        monkeypatch.setattr(ObstoreStorage, "upload_file", gated)

    def fail(self) -> None:
        self.failing = True
        self.opened.set()


def test_a_garbage_higher_step_on_the_remote_neither_ends_a_wait_nor_raises_the_watermark(s3_url, tmp_path,
                                                                                          monkeypatch):
    garbage_at_900(s3_url)
    gate = Gate(monkeypatch)
    remote = open_storage(s3_url)
    with spotsafe.CheckpointManager(tmp_path / "run", remote=s3_url, keep=1) as mgr:
        mgr.save(1, state(1))
        with pytest.raises(TimeoutError, match=rf"{step_dir(1)} is not confirmed on {s3_url} after 2s; the newest "
                                               "step confirmed there is none"):
            mgr.wait(remote=True, timeout=2)
        assert mgr.remote_watermark is None and not mgr.wait_uploaded(1, timeout=0.2)
        assert committed_steps(remote) == [900]  # the wait did not return early: nothing is there yet
        gate.opened.set()
        mgr.wait(remote=True, timeout=60)
        assert mgr.remote_watermark == 1
        assert check_checkpoint(remote, 1, deep=True).valid
    assert committed_steps(remote) == [1, 900]  # retention leaves the higher step alone, and keeps 1


def make_run_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, {"model": model, "optimizer": opt}


def train_step(model, opt) -> None:
    opt.zero_grad()
    model(torch.randn(8, 16)).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("upload", ["lands", "cannot finish"])
def test_the_emergency_path_says_remote_only_for_a_step_confirmed_there(upload, s3_url, tmp_path, monkeypatch, caplog):
    root = tmp_path / "run"
    model, opt, st = make_run_state()
    with spotsafe.Run(root, st, remote=s3_url, save_every=3, notices=None) as run:  # the first attempt: 3 on both
        for _ in run.steps(3):
            train_step(model, opt)
    garbage_at_900(s3_url)
    gate = Gate(monkeypatch) if upload == "cannot finish" else None
    trigger = tmp_path / "notice"
    caplog.set_level(logging.INFO)
    try:
        with pytest.warns(CheckpointSkippedWarning, match=step_dir(900)):
            with spotsafe.Run(root, st, remote=s3_url, notices=[FileTrigger(trigger, interval=0.02)], margin=1.0,
                              exit_on_notice=False) as run:
                assert run.start_step == 3
                for step in run.steps(100):
                    train_step(model, opt)
                    if step == 5:
                        trigger.write_text("4")  # 4 s left, 1 s of margin: 3 s for the save and its upload
                    time.sleep(0.02)
    finally:
        if gate is not None:
            gate.fail()
    on = run.step
    assert 5 <= on < 100 and run.exit_code == 75
    stop = [e for e in read_events(root / "events") if e["event"] == "stop"][-1]
    remote = open_storage(s3_url)
    if upload == "lands":
        assert run.tier == stop["tier"] == "remote"
        assert f"{step_dir(on)} is durable on {s3_url}" in caplog.text
        assert check_checkpoint(remote, on, deep=True).valid and on in committed_steps(remote)
    else:
        assert run.tier == stop["tier"] == "local"
        assert f"is durable on {s3_url}" not in caplog.text
        assert f"The newest step confirmed there is {step_dir(3)}" in caplog.text
        assert on not in committed_steps(remote)
    assert 900 in committed_steps(remote)


@pytest.mark.parametrize("size", [1000, 40 << 20], ids=["single PUT", "multipart"])
def test_upload_file_checks_the_bytes_as_it_reads_them_and_leaves_nothing_on_a_mismatch(size, s3_url, tmp_path):
    from spotsafe._format import digest_bytes
    from spotsafe.errors import CorruptCheckpointError

    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    remote = open_storage(s3_url)
    fd = os.open(path, os.O_RDONLY)
    try:
        remote.upload_file(fd, "good/blob", size=size, checksum=digest_bytes(data))
        assert remote.read_bytes("good/blob") == data
        with pytest.raises(CorruptCheckpointError, match=r"blob fails its checksum while uploading"):
            remote.upload_file(fd, "bad/blob", size=size, checksum="0" * 16)
        with pytest.raises(CorruptCheckpointError, match=rf"blob ended after {size} bytes while uploading, "
                                                         rf"manifest says {size + 1}"):
            remote.upload_file(fd, "bad/blob", size=size + 1, checksum=digest_bytes(data))
    finally:
        os.close(fd)
    assert remote.size("bad/blob") is None
    assert incomplete_uploads(s3_url) == []


def test_a_failed_part_stops_the_multipart_upload_before_it_returns(s3_url, tmp_path, monkeypatch):
    """A local read error on one part (EIO) fails the upload; the parts stop, nothing reads the
    caller's descriptor after the call returned (the caller closes it, and its number is reused),
    and the multipart upload is aborted: no object, no stored parts."""
    import errno

    from spotsafe._format import digest_bytes

    part, data = 1 << 20, os.urandom(24 << 20)  # 24 parts
    monkeypatch.setattr(_obstore, "_PIECE", part)
    monkeypatch.setattr(_obstore, "_SMALL", 2 * part)
    path = tmp_path / "blob"
    path.write_bytes(data)
    reads, returned = [], threading.Event()
    real = _obstore._pread_exact

    def disk(fd, n, offset):
        reads.append((offset, returned.is_set()))
        if offset == 4 * part:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, n, offset)

    monkeypatch.setattr(_obstore, "_pread_exact", disk)
    remote = open_storage(s3_url)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="Input/output error"):
            remote.upload_file(fd, "a/blob", size=len(data), checksum=digest_bytes(data))
        returned.set()
    finally:
        os.close(fd)
    time.sleep(1.0)  # parts left running would read (and send) meanwhile
    assert not [offset for offset, after in reads if after]
    assert len(reads) == 5  # it stopped at the failed part, not after reading the whole file
    assert remote.size("a/blob") is None
    assert incomplete_uploads(s3_url) == []


def test_a_prune_that_fails_leaves_the_new_step_durable_and_uploaded(tmp_path):
    """Retention cannot move an old checkpoint aside (a mount point: EBUSY). The step just committed is
    durable and goes to the remote all the same; the failure is raised as the deletion it is, not as a
    failed save of the new step (which then was never uploaded)."""
    import shutil
    import uuid

    remote, root = f"memory://prune-{uuid.uuid4().hex[:8]}/run", tmp_path / "run"
    with spotsafe.CheckpointManager(root, remote=remote, keep=1) as mgr:
        mgr.save(1, {"v": torch.ones(3)})
        mgr.wait(remote=True, timeout=30)
    shutil.copytree(root / step_dir(1), tmp_path / "copy")
    if subprocess.run(["mount", "--bind", str(tmp_path / "copy"), str(root / step_dir(1))],
                      capture_output=True).returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        with spotsafe.CheckpointManager(root, remote=remote, keep=1) as mgr:
            mgr.save(2, {"v": torch.ones(3) * 2})
            with pytest.raises(spotsafe.SpotsafeError, match=rf"^Deleting old checkpoint {step_dir(1)} in {root} "
                                                             r"failed \(.*Device or resource busy.*\); check"):
                mgr.wait()
            assert mgr.wait(remote=True, timeout=30).step == 2
            assert mgr.remote_watermark == 2
        assert committed_steps(open_storage(remote)) == [2]
        assert committed_steps(open_storage(root)) == [1, 2]
    finally:
        subprocess.run(["umount", str(root / step_dir(1))], capture_output=True)


def test_upload_file_on_a_generic_store_removes_what_fails(tmp_path):
    import uuid

    from spotsafe._format import digest_bytes
    from spotsafe.errors import CorruptCheckpointError

    data = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    remote = open_storage(f"memory://trust-{uuid.uuid4().hex[:8]}/run")
    fd = os.open(path, os.O_RDONLY)
    try:
        remote.upload_file(fd, "a/blob", size=len(data), checksum=digest_bytes(data))
        with pytest.raises(CorruptCheckpointError, match="fails its checksum while uploading"):
            remote.upload_file(fd, "b/blob", size=len(data), checksum="0" * 16)
    finally:
        os.close(fd)
    assert remote.read_bytes("a/blob") == data and remote.size("b/blob") is None


def test_a_checkpoint_file_that_is_a_link_is_never_uploaded(s3_url, tmp_path, caplog):
    local = tmp_path / "run"
    with spotsafe.CheckpointManager(local) as mgr:  # no remote yet
        mgr.save(5, state(5))
    secret = tmp_path / "elsewhere.bin"
    model = local / step_dir(5) / "model.bin"
    secret.write_bytes(model.read_bytes())  # same bytes: only the link is wrong
    model.unlink()
    model.symlink_to(secret)
    caplog.set_level(logging.INFO)
    with spotsafe.CheckpointManager(local, remote=s3_url) as mgr:
        assert not mgr.wait_uploaded(5, timeout=60)
    assert "model.bin is a symbolic link" in caplog.text
    assert not [n for n in remote_objects(s3_url) if n.startswith("step-")]
