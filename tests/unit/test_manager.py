import json
import os
import random

import numpy as np
import pytest
import torch
from helpers import assert_same_optimizer, assert_same_tensors, fresh_training, make_training, snapshot

import spotsafe
from spotsafe.policy import KeepEvery, KeepLast


def test_round_trip_restores_every_component_in_place(root):
    model, opt, sched = make_training()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    extras = {"best": 0.125, "tags": ("a", "b"), "counts": {1: 2}, "emb": torch.arange(5)}
    with spotsafe.CheckpointManager(root) as mgr:
        stats = mgr.save(7, {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler, "extras": extras})
    assert stats.step == 7 and stats.bytes > 0 and not stats.skipped
    assert sorted(os.listdir(root)) == [".spotsafe-writer.lock", "step-000000000007"]  # and the writer lock

    m2, o2, s2 = fresh_training()
    sc2 = torch.amp.GradScaler("cpu", init_scale=2.0)
    state = {"model": m2, "optimizer": o2, "scheduler": s2, "scaler": sc2, "extras": None}
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.restore(state) == 7
        assert mgr.restored.step == 7
    assert_same_tensors(snapshot(model), snapshot(m2))
    assert_same_optimizer(opt, o2)
    assert s2.state_dict() == sched.state_dict()
    assert sc2.get_scale() == 1024.0
    assert state["extras"]["best"] == 0.125 and state["extras"]["tags"] == ("a", "b")
    assert state["extras"]["counts"] == {1: 2} and torch.equal(state["extras"]["emb"], torch.arange(5))


def test_rng_streams_continue_exactly_after_restore(root):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(1, {"x": 1})
        expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
        random.seed(9), np.random.seed(9), torch.manual_seed(9)
        mgr.restore({"x": None})
        got = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_rng_opt_out_leaves_generators_alone(root):
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        mgr.save(1, {"x": 1})
        mgr.wait()
        manifest = json.loads((root / "step-000000000001" / "manifest.json").read_text())
        assert "__rng__" not in manifest["components"]
        torch.manual_seed(5)
        expected = torch.rand(2)
        torch.manual_seed(5)
        mgr.restore({"x": None})
        assert torch.equal(torch.rand(2), expected)  # restore did not touch the generator


def test_empty_root_restores_nothing(root):
    model, opt, _ = fresh_training()
    before = snapshot(model)
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.restore({"model": model, "optimizer": opt}) is None
        assert mgr.checkpoints() == []
    assert_same_tensors(before, snapshot(model))


def test_restore_a_given_step_and_a_missing_one(root):
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        for s in (10, 20, 30):
            mgr.save(s, {"v": torch.full((3,), float(s))})
        state = {"v": None}
        assert mgr.restore(state, step=20) == 20
        assert torch.equal(state["v"], torch.full((3,), 20.0))
        with pytest.raises(spotsafe.CheckpointNotFoundError, match="step-000000000025 does not exist"):
            mgr.restore(state, step=25)


def test_saving_a_committed_step_again_keeps_the_valid_one(root):
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(5, {"v": 1})
        again = mgr.save(5, {"v": 2})
        assert again.skipped
        state = {"v": None}
        mgr.restore(state)
    assert state["v"] == 1


def test_retention_on_disk_keeps_last_and_every(root):
    with spotsafe.CheckpointManager(root, keep=KeepLast(2) | KeepEvery(30)) as mgr:
        for s in range(10, 101, 10):
            mgr.save(s, {"v": s})
        mgr.wait()
        assert [c.step for c in mgr.checkpoints()] == [30, 60, 90, 100]
        assert all(c.valid for c in mgr.checkpoints())


def test_leftovers_of_interrupted_saves_are_cleaned_and_never_loaded(root):
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(1, {"v": 1})
    # an interrupted save of a newer step: files written, never committed
    leftover = root / "step-000000000002.tmp-deadbeef0001"
    leftover.mkdir()
    (leftover / "v.bin").write_bytes(b"x" * 10)
    with spotsafe.CheckpointManager(root) as mgr:
        assert not leftover.exists()
        state = {"v": None}
        assert mgr.restore(state) == 1 and state["v"] == 1


def test_unsupported_value_fails_before_anything_is_written(root):
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(spotsafe.UnsupportedStateError, match=r"state\['cfg'\].*function"):
            mgr.save(1, {"cfg": {"fn": lambda: 0}})
    assert os.listdir(root) == [".spotsafe-writer.lock"]  # only the (released) writer lock


def test_cuda_less_state_records_devices_and_dtypes(root):
    t = torch.ones(2, 3, dtype=torch.bfloat16)
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(1, {"t": t, "b": torch.tensor([True, False]), "c": torch.tensor([1 + 2j])})
        state = {"t": None, "b": None, "c": None}
        mgr.restore(state)
    assert state["t"].dtype == torch.bfloat16 and torch.equal(state["t"], t)
    assert torch.equal(state["b"], torch.tensor([True, False]))
    assert torch.equal(state["c"], torch.tensor([1 + 2j]))


def test_manager_rejects_bad_arguments(root):
    with pytest.raises(ValueError, match=r"keep=0 is not a whole number of at least 1; use keep=1 or more"):
        spotsafe.CheckpointManager(root, keep=0)
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(ValueError, match="Step -1"):
            mgr.save(-1, {"v": 1})
        with pytest.raises(TypeError, match="dict"):
            mgr.save(1, [1])
        with pytest.raises(ValueError, match="'__x'"):
            mgr.save(1, {"__x": 1})
    with pytest.raises(RuntimeError, match="closed"):
        mgr.save(2, {"v": 1})


def test_a_failed_background_deletion_is_raised_on_the_next_save(root, monkeypatch):
    import shutil

    def refuse(path, ignore_errors=False):
        raise PermissionError(13, "Permission denied", str(path))

    with spotsafe.CheckpointManager(root, keep=1) as mgr:
        mgr.save(1, {"v": 1})
        monkeypatch.setattr(shutil, "rmtree", refuse)
        mgr.save(2, {"v": 2})  # prunes step 1 in the background, which fails
        mgr._persist_executor.submit(lambda: None).result()  # let the save and its prune run
        mgr._gc_executor.submit(lambda: None).result()  # let the deletion run
        with pytest.raises(spotsafe.SpotsafeError, match=r"Deleting old checkpoint step-000000000001\.trash-\w+ in .* failed"):
            mgr.save(3, {"v": 3})
        monkeypatch.undo()
        assert mgr.save(3, {"v": 3}).step == 3


def test_every_failed_background_deletion_is_raised_none_dropped(root, monkeypatch):
    import shutil
    import threading

    from spotsafe._format import step_dir

    def refuse(path, ignore_errors=False):
        raise PermissionError(13, "Permission denied", str(path))

    with spotsafe.CheckpointManager(root, keep=1) as mgr:
        mgr.save(1, {"v": 1})
        mgr.wait()
        monkeypatch.setattr(shutil, "rmtree", refuse)
        gate = threading.Event()
        mgr._gc_executor.submit(gate.wait, 30)  # deletions queue behind it
        for step in (2, 3):  # each prunes the one before
            mgr.save(step, {"v": step})
            mgr.wait()
        gate.set()
        mgr._gc_executor.submit(lambda: None).result()
        for gone in (1, 2):
            with pytest.raises(spotsafe.SpotsafeError, match=rf"Deleting old checkpoint {step_dir(gone)}\.trash-"):
                mgr.wait()
        monkeypatch.undo()
        assert mgr.wait().step == 3
