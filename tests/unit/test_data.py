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
