"""A valid checkpoint that does not fit the objects raises before anything is modified."""

import pytest
import torch
from helpers import assert_same_tensors, fresh_training, make_training, snapshot

import spotsafe


@pytest.fixture
def saved(root):
    model, opt, sched = make_training(width=8)
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(3, {"model": model, "optimizer": opt, "scheduler": sched, "note": "x"})
    return root


def _state(width=8):
    model, opt, sched = fresh_training(width)
    return {"model": model, "optimizer": opt, "scheduler": sched, "note": None}


def _untouched(state, before):
    assert_same_tensors(before["model"], snapshot(state["model"]))
    assert state["optimizer"].state_dict()["state"] == {}
    assert state["scheduler"].last_epoch == 0
    assert state["note"] is None


def test_model_of_another_shape_raises_and_is_untouched(saved):
    state = _state(width=16)
    before = {"model": snapshot(state["model"])}
    torch.manual_seed(42)
    rng_before = torch.get_rng_state()
    with spotsafe.CheckpointManager(saved) as mgr:
        with pytest.raises(spotsafe.StateMismatchError,
                           match=r"step-000000000003 does not fit state\['model'\]: '0.weight' has shape \(8, 4\)"):
            mgr.restore(state)
    _untouched(state, before)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_missing_component_raises(saved):
    state = _state()
    del state["note"]
    before = {"model": snapshot(state["model"])}
    with spotsafe.CheckpointManager(saved) as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match=r"holds 'note' that the state lacks"):
            mgr.restore(state)
    assert_same_tensors(before["model"], snapshot(state["model"]))


def test_optimizer_of_another_layout_raises_before_the_model_is_loaded(saved):
    state = _state()
    model = state["model"]
    state["optimizer"] = torch.optim.Adam([{"params": list(model.parameters())[:2]},
                                           {"params": list(model.parameters())[2:]}])
    before = {"model": snapshot(model)}
    with spotsafe.CheckpointManager(saved) as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match="1 parameter groups"):
            mgr.restore(state)
    assert_same_tensors(before["model"], snapshot(model))


def test_failing_custom_object_rolls_back_what_was_loaded(saved, root):
    class Picky:
        def __init__(self):
            self.value = 0

        def state_dict(self):
            return {"value": self.value}

        def load_state_dict(self, sd):
            raise ValueError("picky refuses")

    model, opt, sched = make_training()
    with spotsafe.CheckpointManager(root / "b") as mgr:
        mgr.save(1, {"model": model, "optimizer": opt, "scheduler": sched, "picky": Picky()})
    m2, o2, s2 = fresh_training()
    state = {"model": m2, "optimizer": o2, "scheduler": s2, "picky": Picky()}
    before = snapshot(m2)
    with spotsafe.CheckpointManager(root / "b") as mgr:
        with pytest.raises(spotsafe.StateMismatchError, match=r"state\['picky'\] \(picky refuses\)"):
            mgr.restore(state)
    assert_same_tensors(before, snapshot(m2))
    assert o2.state_dict()["state"] == {} and s2.last_epoch == 0
