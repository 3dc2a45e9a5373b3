"""Resumable data loading: exact mid-epoch resume, independent of workers and ranks."""

import random

import numpy as np
import pytest
import torch

import spotsafe
from spotsafe.data import ResumableDataLoader, ResumableSampler, epoch_order


class Augmented(torch.utils.data.Dataset):
    """Each item draws from python, numpy and torch RNGs, like real augmentation."""

    def __len__(self):
        return 37

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand()), random.random()])


def drain(loader, n=None):
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_do_not_depend_on_the_number_of_workers(workers):
    ref = drain(ResumableDataLoader(Augmented(), batch_size=5, seed=3, num_workers=0))
    got = drain(ResumableDataLoader(Augmented(), batch_size=5, seed=3, num_workers=workers))
    assert len(ref) == len(got) == 8
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_resume_mid_epoch_continues_with_exactly_the_next_batch(root):
    full = ResumableDataLoader(Augmented(), batch_size=4, seed=1, num_workers=2)
    expected = drain(full) + drain(full)  # two epochs

    first = ResumableDataLoader(Augmented(), batch_size=4, seed=1, num_workers=2)
    seen = drain(first, 6)
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(6, {"data": first})
        resumed = ResumableDataLoader(Augmented(), batch_size=4, seed=1, num_workers=2)
        assert mgr.restore({"data": resumed}) == 6
    assert (resumed.epoch, resumed.position) == (0, 24)
    seen += drain(resumed) + drain(resumed)
    assert len(seen) == len(expected) == 20
    for a, b in zip(seen, expected):
        assert torch.equal(a, b)


def test_epochs_reshuffle_and_samples_get_fresh_randomness():
    loader = ResumableDataLoader(Augmented(), batch_size=37, seed=0)
    e0, e1 = drain(loader)[0], drain(loader)[0]
    assert sorted(e0[:, 0].tolist()) == sorted(e1[:, 0].tolist()) == [float(i) for i in range(37)]
    assert e0[:, 0].tolist() != e1[:, 0].tolist()
    by_index0 = {int(r[0]): r for r in e0}
    by_index1 = {int(r[0]): r for r in e1}
    assert not torch.equal(by_index0[5], by_index1[5])  # epoch enters the per-sample seed


def test_loading_in_the_main_process_does_not_shift_the_training_rng():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    drain(ResumableDataLoader(Augmented(), batch_size=4, num_workers=0))
    got = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_rank_slices_cover_the_single_process_order():
    n, bs = 50, 4
    single = list(ResumableSampler(n, batch_size=bs * 2, seed=9, drop_last=True))
    ranks = [list(ResumableSampler(n, batch_size=bs, seed=9, num_replicas=2, rank=r, drop_last=True))
             for r in range(2)]
    rebuilt = []
    for g in range(len(ranks[0]) // bs):
        rebuilt += ranks[0][g * bs:(g + 1) * bs] + ranks[1][g * bs:(g + 1) * bs]
    assert rebuilt == single
    assert single == epoch_order(n, 9, 0, True)[:48].tolist()


def test_sampler_refuses_another_dataset():
    s = ResumableSampler(10)
    with pytest.raises(ValueError, match="covered 10 samples"):
        ResumableSampler(11).load_state_dict(s.state_dict())


def test_loader_refuses_arguments_it_owns():
    with pytest.raises(TypeError, match=r"sets \['sampler'\] itself"):
        ResumableDataLoader(Augmented(), batch_size=2, sampler=None, shuffle=True)


def _global_steps(samplers: list[ResumableSampler], steps: int) -> list[list[int]]:
    """``steps`` optimizer steps of a job whose ranks are ``samplers``: the global sample indices of
    each step (rank 0's micro-batches first), consumed as a training loop does."""
    its = [iter(s.batches()) for s in samplers]
    out = []
    for _ in range(steps):
        step: list[int] = []
        for s, it in zip(samplers, its, strict=True):
            for _ in range(s.grad_accum):
                mine, consumed = next(it)
                step += mine
                s.position += consumed
        out.append(step)
    return out


@pytest.mark.parametrize("global_batch_size", [None, 8])
def test_a_change_of_world_size_mid_epoch_continues_with_exactly_the_next_global_sample(global_batch_size):
    def job(world: int) -> list[ResumableSampler]:
        return [ResumableSampler(50, seed=3, batch_size=4, num_replicas=world, rank=r,
                                 global_batch_size=global_batch_size) for r in range(world)]

    whole = [i for step in _global_steps(job(2), 6) for i in step]  # uninterrupted, 2 ranks: 48 samples
    first = job(2)
    before = _global_steps(first, 3)
    saved = first[0].state_dict()  # every rank's position is the job's: rank 0's is enough
    assert saved == first[1].state_dict() and saved["position"] == 24
    second = job(1)  # one node lost: 1 rank goes on
    second[0].load_state_dict(saved)
    steps_after = 3 if global_batch_size else 6  # the same global batch takes the same number of steps
    after = _global_steps(second, steps_after)
    assert [i for step in before + after for i in step] == whole
    assert all(len(step) == 8 for step in before) and all(len(step) == (8 if global_batch_size else 4)
                                                          for step in after)
    assert second[0].grad_accum == (2 if global_batch_size else 1)


def test_grad_accum_keeps_the_global_batch_and_says_when_it_cannot():
    from spotsafe.data import grad_accum

    assert [grad_accum(96, 8, w) for w in (1, 2, 3, 4, 6, 12)] == [12, 6, 4, 3, 2, 1]
    loader = ResumableDataLoader(list(range(40)), batch_size=2, global_batch_size=8, num_replicas=2, rank=1,
                                 shuffle=False)
    assert loader.grad_accum == 2 and len(loader) == 10
    batches = [b.tolist() for b in loader]
    assert batches[:4] == [[4, 5], [6, 7], [12, 13], [14, 15]]  # rank 1's half of each global batch of 8
    with pytest.raises(ValueError, match="A global batch of 96 samples cannot be split over 5 ranks in "
                                         "micro-batches of 8; run on a world size that divides it "
                                         r"\(1, 2, 3, 4, 6, 12\) or choose a global_batch_size divisible by "
                                         "5 x 8 = 40"):
        ResumableSampler(1000, batch_size=8, num_replicas=5, global_batch_size=96)


def test_linear_lr_scaling_multiplies_the_optimizer_and_the_scheduler_exactly():
    from spotsafe._state._lr import scale_learning_rates

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW([{"params": [model.weight], "lr": 0.3}, {"params": [model.bias], "lr": 0.07}])
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    opt.step()
    sched.step()
    before = [g["lr"] for g in opt.param_groups]
    assert scale_learning_rates({"m": model, "o": opt, "s": sched, "n": 3}, 3 / 2) == ["o", "s"]
    assert [g["lr"] for g in opt.param_groups] == [x * 1.5 for x in before]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.3 * 1.5, 0.07 * 1.5]
    assert sched.base_lrs == [0.3 * 1.5, 0.07 * 1.5] and sched.get_last_lr() == [x * 1.5 for x in before]
    sched.step()  # the schedule goes on from the scaled rates
    assert [g["lr"] for g in opt.param_groups] == [x * 1.5 * 0.5 for x in before]


def test_run_names_an_unknown_lr_scaling_rule(tmp_path):
    with pytest.raises(ValueError, match="scale_lr='sqrt' is not a scaling rule spotsafe knows; use 'linear', or None"):
        spotsafe.Run(tmp_path / "run", {}, scale_lr="sqrt")
