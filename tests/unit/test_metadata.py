"""Metadata is checked in save() itself, stored faithfully (NaN and infinities too), and a
background failure names its actual cause."""

import json
import math
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from conftest import run_cli
from helpers import make_training

import spotsafe


def _state():
    model, opt, sched = make_training()
    return {"model": model, "optimizer": opt, "scheduler": sched}


def _strict(data: bytes):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(data, parse_constant=refuse)


def test_nan_metadata_saves_round_trips_and_later_saves_succeed(root):
    state = _state()
    with spotsafe.CheckpointManager(root, keep=5) as mgr:  # asynchronous: the manifest is written later
        mgr.save(1, state, metadata={"loss": float("nan"), "grad": {"max": float("inf"), "min": -math.inf},
                                     "losses": [1.5, float("nan")], "lr": np.float32(0.5), "note": "spike"})
        for step in (2, 3):
            mgr.save(step, state, metadata={"loss": float("nan")})
        assert mgr.wait().step == 3
        infos = mgr.checkpoints()
    assert [i.step for i in infos if i.valid] == [1, 2, 3]
    meta = infos[0].manifest.metadata
    assert math.isnan(meta["loss"]) and meta["grad"] == {"max": math.inf, "min": -math.inf}
    assert meta["losses"][0] == 1.5 and math.isnan(meta["losses"][1])
    assert meta["lr"] == 0.5 and meta["note"] == "spike"
    raw = _strict((root / "step-000000000001" / "manifest.json").read_bytes())  # strict JSON on disk
    assert raw["metadata"]["loss"] == {"$float": "nan"}
    shown = run_cli("inspect", root, "--step", 1)
    assert shown.returncode == 0, shown.stderr
    assert '"loss": NaN' in shown.stdout and '"max": Infinity' in shown.stdout


def test_metadata_is_a_copy_taken_at_save(root):
    meta = {"loss": 1.0, "history": [1.0]}
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(1, _state(), metadata=meta)
        meta["loss"] = 2.0
        meta["history"].append(2.0)
        mgr.wait()
        assert mgr.checkpoints()[0].manifest.metadata == {"loss": 1.0, "history": [1.0]}


@pytest.mark.parametrize("value, message", [
    (torch.tensor(0.25), r"metadata\['loss'\] is a torch.Tensor, which a manifest cannot hold; pass loss.item\(\)"),
    (np.zeros(3), r"metadata\['loss'\] is a numpy.ndarray, .*pass loss.item\(\) for one number or loss.tolist\(\)"),
    ({"parts": [object()]}, r"metadata\['loss'\]\['parts'\]\[0\] is a builtins.object"),
], ids=["tensor", "ndarray", "object"])
def test_a_value_a_manifest_cannot_hold_raises_in_save(root, value, message):
    state = _state()
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(1, state)
        with pytest.raises(spotsafe.UnsupportedStateError, match=message):
            mgr.save(2, state, metadata={"loss": value})
        assert mgr.save(3, state, metadata={"loss": 0.25}).step == 3  # nothing is left broken
        mgr.wait()
        assert [i.step for i in mgr.checkpoints()] == [1, 3]


def test_a_huge_integer_or_a_reserved_key_raises_in_save(root):
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(ValueError, match=r"metadata\['n'\] is an integer of 201 bits"):
            mgr.save(1, _state(), metadata={"n": 2**200})
        with pytest.raises(TypeError, match=r"metadata has the key '\$float'"):
            mgr.save(1, _state(), metadata={"$float": "nan"})
        assert mgr.checkpoints() == []


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs (real ENOSPC / EROFS); skipped where this process may not mount."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", f"spotsafe-{uuid.uuid4().hex[:8]}", str(mnt)],
                       capture_output=True, timeout=10)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def test_background_failure_names_a_full_disk(small_fs):
    big = {"w": torch.zeros(1 << 18)}  # 1 MiB: more than the file system holds
    with pytest.raises(spotsafe.SpotsafeError) as err:
        with spotsafe.CheckpointManager(small_fs / "run") as mgr:
            mgr.save(1, big)
            mgr.wait()
    msg = str(err.value)
    assert "step-000000000001" in msg and "No space left on device" in msg and "free space there" in msg
    assert "permissions" not in msg


def test_background_failure_names_a_refused_write_not_free_space(root):
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(1, {"w": torch.ones(4)})
        mgr.wait()
        r = subprocess.run(["chattr", "+i", str(root)], capture_output=True, timeout=10)  # even root may not write
        if r.returncode != 0:
            pytest.skip(f"cannot make a directory immutable here: {r.stderr.decode().strip()}")
        try:
            mgr.save(2, {"w": torch.ones(4)})
            with pytest.raises(spotsafe.SpotsafeError) as err:
                mgr.wait()
        finally:
            subprocess.run(["chattr", "-i", str(root)], capture_output=True, timeout=10)
        assert mgr.save(3, {"w": torch.ones(4)}).step == 3  # and the next save works again
        assert mgr.wait().step == 3
    msg = str(err.value)
    assert "step-000000000002" in msg and "the newest checkpoint there is step-000000000001" in msg
    assert "Operation not permitted" in msg and "fix the permissions" in msg and "free space" not in msg
