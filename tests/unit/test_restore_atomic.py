"""Restore is all or nothing: a failure anywhere leaves every object, value and RNG as it was.

A malformed tree in a checkpoint whose checksums pass (an optimizer with
``param_groups: [1]``, an RNG state no generator takes) is corrupt: restore skips it and
falls back to the older checkpoint, before touching anything.
"""

import json
import random
import warnings

import numpy as np
import pytest
import torch
from helpers import assert_same_optimizer, assert_same_tensors, make_training, resign_manifest, snapshot

import spotsafe


class Counter:
    """A user object with state; ``fail`` makes its load raise after it changed itself."""

    def __init__(self, value=0, fail=False):
        self.value, self.fail = value, fail

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, sd):
        self.value = sd["value"]
        if self.fail:
            raise RuntimeError("counter refuses")


def _training_state(seed, **extra):
    model, opt, sched = make_training(seed=seed)
    return {"model": model, "optimizer": opt, "scheduler": sched, "counter": Counter(seed),
            "extras": {"best": float(seed), "seen": [seed]}, **extra}


class _Before:
    """A deep record of every object and global RNG, to compare after a failed restore."""

    def __init__(self, state):
        self.state = state
        self.model = snapshot(state["model"])
        self.opt = torch.optim.Adam(state["model"].parameters())
        self.opt.load_state_dict(state["optimizer"].state_dict())  # a deep copy (tensors cloned below)
        for s in self.opt.state.values():
            for k, v in s.items():
                s[k] = v.clone()
        self.sched = dict(state["scheduler"].state_dict())
        self.counter = state["counter"].value
        self.extras, self.extras_obj = json.dumps(state["extras"]), state["extras"]
        self.head = snapshot(state["head"]) if "head" in state else None
        self.rng = (torch.get_rng_state().clone(), random.getstate(), np.random.get_state(legacy=True))

    def assert_same(self):
        s = self.state
        assert_same_tensors(self.model, snapshot(s["model"]))
        assert_same_optimizer(self.opt, s["optimizer"])
        assert s["scheduler"].state_dict() == self.sched
        assert s["counter"].value == self.counter
        assert s["extras"] is self.extras_obj and json.dumps(s["extras"]) == self.extras
        if self.head is not None:
            assert_same_tensors(self.head, snapshot(s["head"]))
        torch_rng, py_rng, np_rng = self.rng
        assert torch.equal(torch.get_rng_state(), torch_rng)
        assert random.getstate() == py_rng
        now = np.random.get_state(legacy=True)
        assert now[0] == np_rng[0] and np.array_equal(now[1], np_rng[1]) and now[2:] == np_rng[2:]


def _seed_rngs(n):
    torch.manual_seed(n)
    random.seed(n)
    np.random.seed(n)


def test_failing_third_object_leaves_every_object_as_it_was(root):
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(5, _training_state(0))
    state = _training_state(1)
    state["counter"].fail = True  # loads after the optimizer and the scheduler, and changes itself first
    _seed_rngs(7)
    before = _Before(state)
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match=r"state\['counter'\] \(counter refuses\); every object"):
            mgr.restore(state)
        assert mgr.restored is None
    before.assert_same()


class Head(torch.nn.Linear):
    """A module whose load copies its parameters, then raises (a failing load hook)."""

    def __init__(self):
        super().__init__(2, 2)
        self.register_load_state_dict_post_hook(self._refuse)
        self.refuse = False

    def _refuse(self, module, keys):
        if self.refuse:
            raise RuntimeError("head hook refuses")


def test_failing_module_after_the_model_puts_every_module_back(root):
    torch.manual_seed(3)
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(5, _training_state(0, head=Head()))
    torch.manual_seed(4)
    state = _training_state(1, head=Head())
    state["head"].refuse = True  # modules load last, the model first: both are overwritten before it raises
    _seed_rngs(8)
    before = _Before(state)
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match="head hook refuses"):
            mgr.restore(state)
    before.assert_same()
    # the same checkpoint loads once the hook agrees
    state["head"].refuse = False
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.restore(state) == 5
    assert state["counter"].value == 0 and state["extras"] == {"best": 0.0, "seen": [0]}


def _rewrite_manifest(root, step, edit):
    """Change a committed manifest's body and give it a matching self-checksum: bytes that verify."""
    resign_manifest(root / f"step-{step:012d}", edit)


def _two_checkpoints(root):
    states = {}
    with spotsafe.CheckpointManager(root, async_save=False) as mgr:
        for step, seed in ((1, 10), (2, 20)):
            states[step] = _training_state(seed)
            _seed_rngs(step)
            mgr.save(step, states[step])
    return states


@pytest.mark.parametrize("mangle", [
    lambda t: t.__setitem__("param_groups", [1]),
    lambda t: t.__setitem__("state", 5),
    lambda t: t["param_groups"][0].__setitem__("params", "abc"),
], ids=["param_groups=[1]", "state=5", "params=str"])
def test_mangled_optimizer_tree_is_skipped_for_the_older_checkpoint(root, mangle):
    states = _two_checkpoints(root)
    _rewrite_manifest(root, 2, lambda body: mangle(body["components"]["optimizer"]["tree"]))
    state = _training_state(3)
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.warns(spotsafe.CheckpointSkippedWarning, match="step-000000000002.*optimizer state of "
                                                                   r"state\['optimizer'\] is malformed"):
            assert mgr.restore(state) == 1
        assert len(mgr.restore_skipped) == 1
    assert_same_tensors(snapshot(states[1]["model"]), snapshot(state["model"]))
    assert_same_optimizer(states[1]["optimizer"], state["optimizer"])
    assert state["counter"].value == 10


def test_malformed_rng_fails_before_anything_is_touched(root):
    _two_checkpoints(root)
    # a python RNG state of the wrong length (step 1), and one in the tuple form of earlier
    # checkpoints, also too short (step 2): their trees parse, no generator takes them
    _rewrite_manifest(root, 1, lambda body: body["components"]["__rng__"]["tree"]["python"]
                      .__setitem__("state", {"$ndarray": 1}))  # numpy's 624 words, not 625
    _rewrite_manifest(root, 2, lambda body: body["components"]["__rng__"]["tree"].__setitem__(
        "python", {"$tuple": [3, {"$tuple": [1, 2, 3]}, None]}))
    state = _training_state(3)
    _seed_rngs(9)
    before = _Before(state)
    with spotsafe.CheckpointManager(root) as mgr:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(spotsafe.CorruptCheckpointError, match="all 2 failed verification"):
                mgr.restore(state)
    assert any("python RNG state is malformed" in str(w.message) for w in seen)
    before.assert_same()


def test_python_rng_in_the_tuple_form_of_earlier_checkpoints_restores(root):
    _two_checkpoints(root)
    random.seed(1234)
    version, words, gauss = random.getstate()
    legacy = {"$tuple": [version, {"$tuple": list(words)}, gauss]}  # how checkpoints before the array form hold it
    _rewrite_manifest(root, 2, lambda body: body["components"]["__rng__"]["tree"].__setitem__("python", legacy))
    random.seed(99)
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.restore(_training_state(3)) == 2
    assert random.getstate() == (version, words, gauss)


def test_malformed_rng_of_the_newest_falls_back_with_its_rng(root):
    _two_checkpoints(root)
    _rewrite_manifest(root, 2, lambda body: body["components"]["__rng__"]["tree"].__setitem__("torch", [1, 2]))
    _seed_rngs(1)
    expected = torch.get_rng_state().clone()
    _seed_rngs(99)
    state = _training_state(3)
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.warns(spotsafe.CheckpointSkippedWarning, match="torch RNG state is malformed"):
            assert mgr.restore(state) == 1
    assert torch.equal(torch.get_rng_state(), expected)


def test_plain_values_are_restored_in_place(root):
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(1, {"extras": {"best": 0.25, "nested": {"a": 1}}, "history": [1, 2, 3], "note": "saved"})
    extras, history = {"best": 9.0, "nested": {"a": 7}}, [9]
    state = {"extras": extras, "history": history, "note": None}
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.restore(state) == 1
    assert state["extras"] is extras and extras == {"best": 0.25, "nested": {"a": 1}}
    assert state["history"] is history and history == [1, 2, 3]
    assert state["note"] == "saved"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_failing_restore_puts_cuda_modules_and_the_cuda_rng_back(root):
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64).cuda()
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(1, {"model": model, "head": Head().cuda()})
    torch.manual_seed(1)
    state = {"model": torch.nn.Linear(64, 64).cuda(), "head": Head().cuda()}
    state["head"].refuse = True
    torch.cuda.manual_seed_all(5)
    cuda_rng = torch.cuda.get_rng_state_all()
    before = {k: snapshot(v) for k, v in state.items()}
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match="head hook refuses"):
            mgr.restore(state)
    for k, v in state.items():
        assert_same_tensors(before[k], snapshot(v))
        assert all(t.is_cuda for t in v.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_rng))
