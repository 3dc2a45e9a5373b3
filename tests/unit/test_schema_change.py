"""Resuming after the state changed shape: components added or removed (``partial``), and
plain dicts that gained keys (kept, with a warning)."""

import warnings

import pytest
import torch
from helpers import assert_same_optimizer, assert_same_tensors, fresh_training, make_training, snapshot

import spotsafe


class EMA:
    def __init__(self, decay=0.9):
        self.decay, self.shadow = decay, torch.full((3,), 7.0)

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, sd):
        self.decay, self.shadow = sd["decay"], sd["shadow"].clone()


@pytest.fixture
def saved(root):
    model, opt, sched = make_training()
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(4, {"model": model, "optimizer": opt, "scheduler": sched, "extras": {"best": 0.5}})
    return root, model, opt, sched


def _fresh(**extra):
    model, opt, sched = fresh_training()
    return {"model": model, "optimizer": opt, "scheduler": sched, "extras": {"best": 9.0}, **extra}


def _spotsafe_warnings(seen):
    return [str(w.message) for w in seen if issubclass(w.category, spotsafe.SpotsafeWarning)]


def test_added_component_needs_partial_and_the_error_says_so(saved):
    root, *_ = saved
    state = _fresh(ema=EMA())
    before = snapshot(state["model"])
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match=r"has no 'ema' that the state holds; to resume with "
                                                              r"components added or removed pass partial=True"):
            mgr.restore(state)
        with pytest.raises(spotsafe.StateMismatchError, match=r"partial=\{'ema'\}"):
            mgr.restore(state, partial={"other"})
    assert_same_tensors(before, snapshot(state["model"]))


@pytest.mark.parametrize("partial", [True, {"ema"}, "ema"], ids=["True", "set", "str"])
def test_added_component_keeps_its_fresh_value(saved, partial):
    root, model, opt, sched = saved
    state = _fresh(ema=EMA(decay=0.99))
    with spotsafe.CheckpointManager(root) as mgr:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert mgr.restore(state, partial=partial) == 4
    msgs = _spotsafe_warnings(seen)
    assert len(msgs) == 1 and "'ema' not in the checkpoint (kept at their current values)" in msgs[0]
    assert_same_tensors(snapshot(model), snapshot(state["model"]))
    assert_same_optimizer(opt, state["optimizer"])
    assert state["scheduler"].last_epoch == sched.last_epoch == 3
    assert state["ema"].decay == 0.99 and torch.equal(state["ema"].shadow, torch.full((3,), 7.0))


def test_removed_component_is_ignored_with_one_warning(saved):
    root, model, opt, _ = saved
    state = _fresh()
    del state["scheduler"], state["extras"]
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match=r"holds 'scheduler', 'extras' that the state lacks"):
            mgr.restore(state)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert mgr.restore(state, partial=True) == 4
    msgs = _spotsafe_warnings(seen)
    assert len(msgs) == 1 and "'scheduler', 'extras' only in the checkpoint (ignored)" in msgs[0]
    assert_same_tensors(snapshot(model), snapshot(state["model"]))
    assert_same_optimizer(opt, state["optimizer"])


def test_added_and_removed_together_in_one_warning_through_run(saved):
    root, model, *_ = saved
    state = _fresh(ema=EMA())
    del state["scheduler"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with spotsafe.Run(root, state, notices=None, partial=True) as run:
            assert run.start_step == 4
            for _ in run.steps(5):
                pass
    msgs = [m for m in _spotsafe_warnings(seen) if "partial" in m]
    assert len(msgs) == 1
    assert "'ema' not in the checkpoint" in msgs[0] and "'scheduler' only in the checkpoint" in msgs[0]
    assert_same_tensors(snapshot(model), snapshot(state["model"]))


def test_plain_dict_keeps_a_new_key_and_restores_the_old_ones(saved):
    root, *_ = saved
    extras = {"best": 9.0, "tokens_seen": 123}
    state = _fresh(extras=extras)
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.warns(spotsafe.SpotsafeWarning, match=r"lacks the keys state\['extras'\]\['tokens_seen'\]"):
            assert mgr.restore(state) == 4
    assert state["extras"] is extras  # in place: references the user holds see the restored values
    assert extras == {"best": 0.5, "tokens_seen": 123}


def test_kind_change_is_a_mismatch_even_with_partial(saved):
    root, *_ = saved
    state = _fresh(extras=EMA())
    before = snapshot(state["model"])
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match=r"saved state\['extras'\] as value but it is now an "
                                                              r"object with state_dict\(\)"):
            mgr.restore(state, partial=True)
    assert_same_tensors(before, snapshot(state["model"]))  # refused before anything was loaded
    assert state["extras"].decay == 0.9 and torch.equal(state["extras"].shadow, torch.full((3,), 7.0))
    assert state["scheduler"].last_epoch == 0


def test_partial_of_the_wrong_type_is_refused(saved):
    root, *_ = saved
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(TypeError, match=r"partial=3 is not True, False or a collection of component names"):
            mgr.restore(_fresh(), partial=3)
