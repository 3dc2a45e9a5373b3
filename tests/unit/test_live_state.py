"""A multi-rank save reads the flattened state dict from where each value lives (``_dist/_live.py``)
instead of asking torch each time: what it reads must be exactly what torch would give, and any
change torch would see differently must send it back to torch."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

from spotsafe._dist._global import _fingerprint
from spotsafe._dist._live import LiveState, ObjectBytes
from spotsafe._state._sharded import dcp_state, split_kinds


def _torch_flat(state):
    kinds, owners = split_kinds(state)
    planner = DefaultSavePlanner(dedup_save_to_lowest_rank=True)
    planner.set_up_planner(dcp_state(state, kinds, owners))
    return kinds, planner.state_dict


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _assert_as_torch_gives(live_flat, torch_flat):
    assert list(live_flat) == list(torch_flat)
    for k, v in torch_flat.items():
        got = live_flat[k]
        if isinstance(v, torch.Tensor):
            assert type(_local(got)) is type(_local(v)) or isinstance(got, torch.nn.Parameter), k
            assert _local(got).data_ptr() == _local(v).data_ptr(), f"{k} is not the live tensor's memory"
            assert torch.equal(_local(got), _local(v)), k
            assert tuple(got.shape) == tuple(v.shape) and got.dtype == v.dtype, k
        else:
            assert type(got) is type(v) and got == v, k


def _job(model):
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    return {"model": model, "optimizer": opt, "scheduler": sched}


def _train(state, steps=1):
    for _ in range(steps):
        state["model"](torch.randn(3, 4)).sum().backward()
        state["optimizer"].step()
        state["optimizer"].zero_grad()
        state["scheduler"].step()


def _recorded(state):
    _train(state)
    kinds, flat = _torch_flat(state)
    return kinds, LiveState(state, kinds, flat, _fingerprint(flat))


def test_values_read_live_are_what_torch_gives_after_every_step():
    state = _job(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)))
    kinds, live = _recorded(state)
    assert live.sources is not None
    for _ in range(4):  # the weights, Adam's moments and step, BatchNorm's running stats and the lr all move
        _train(state)
        got = live.flat(state, kinds)
        assert got is not None
        _, expected = _torch_flat(state)
        _assert_as_torch_gives(got, expected)
    assert got["optimizer.param_groups.0.lr"] == pytest.approx(0.1 * 0.5 ** 5)


@pytest.mark.parametrize("change", [
    "parameter replaced", "parameter data re-bound", "optimizer state loaded", "param group added", "buffer added",
    "parameter reshaped over the same memory", "learning rate made a tensor",
])
def test_a_change_torch_would_see_sends_the_save_back_to_torch(change):
    state = _job(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    kinds, live = _recorded(state)
    model, opt = state["model"], state["optimizer"]
    if change == "parameter replaced":
        model[0].bias = torch.nn.Parameter(torch.zeros(4))
    elif change == "parameter data re-bound":
        model[0].weight.data = model[0].weight.data.clone()
    elif change == "optimizer state loaded":
        opt.load_state_dict(opt.state_dict())
    elif change == "param group added":
        extra = torch.nn.Parameter(torch.zeros(2))
        model.register_parameter("extra", extra)
        opt.add_param_group({"params": [extra]})
    elif change == "buffer added":
        model.register_buffer("seen", torch.zeros(1))
    elif change == "learning rate made a tensor":
        opt.param_groups[0]["lr"] = torch.tensor(0.1)  # torch then plans a tensor item, not bytes
    else:
        model[0].weight.data = model[0].weight.data.view(2, 8)  # same address, other shape
    assert live.flat(state, kinds) is None


class _WithExtraState(torch.nn.Linear):
    def get_extra_state(self):
        return {"calls": 1}

    def set_extra_state(self, state):
        pass


def test_a_value_that_lives_nowhere_is_always_asked_of_torch():
    state = _job(torch.nn.Sequential(_WithExtraState(4, 2)))
    kinds, live = _recorded(state)
    assert live.sources is None
    assert live.flat(state, kinds) is None


def test_fsdp2_shards_read_live_are_what_torch_gives(tmp_path):
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 (fully_shard)")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=60))
    try:
        mesh = init_device_mesh("cpu", (1,))
        net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        for m in net:
            fully_shard(m, mesh=mesh)
        state = _job(fully_shard(net, mesh=mesh))
        kinds, live = _recorded(state)
        assert live.sources is not None
        for _ in range(3):
            _train(state)
            got = live.flat(state, kinds)
            assert got is not None
            _, expected = _torch_flat(state)
            _assert_as_torch_gives(got, expected)
            assert all(type(v).__name__ == "DTensor" or isinstance(v, torch.nn.Parameter)
                       for k, v in got.items() if k.startswith("model."))
    finally:
        dist.destroy_process_group()


def test_object_bytes_are_torch_save_of_the_value_and_reused_only_for_equal_values():
    import io

    enc = ObjectBytes()
    for v in (0.1, -0.0, 0.0, 1, True, None, (0.9, 0.999), [1, 2], "x", float("nan")):
        buf = io.BytesIO()
        torch.save(v, buf)
        first = enc(v)
        assert torch.load(io.BytesIO(first), weights_only=True) == v or v != v
        assert enc(v) is first  # kept
    # equal values of other bytes keep their own: -0.0 == 0.0 and 1 == True, each cached after the other
    assert torch.load(io.BytesIO(enc(0.0)), weights_only=True).hex() == (0.0).hex()
    assert torch.load(io.BytesIO(enc(-0.0)), weights_only=True).hex() == (-0.0).hex()
    assert torch.load(io.BytesIO(enc(True)), weights_only=True) is True
