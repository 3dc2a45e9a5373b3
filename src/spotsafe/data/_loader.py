"""ResumableDataLoader: a DataLoader that resumes mid-epoch at exactly the next sample.

Three things make a resumed run see the same batches, and the same augmentations, as an
uninterrupted one:

* Order: batches come from :class:`ResumableSampler` (depends on seed and epoch only).
* What was consumed: workers prefetch ahead of the training loop, so the sampler's own
  progress overstates it. The loader advances ``position`` only when it hands a batch to
  the loop, so a checkpoint taken after the step holds exactly the samples trained on.
* Per-sample randomness: before ``dataset[i]`` runs, python's ``random``, numpy's global
  generator and torch's CPU generator are seeded from ``(seed, epoch, i)``. Augmentation
  then depends on the sample alone, not on the worker that loaded it nor on how many
  workers there are. In the main process (``num_workers=0``) the global generators are
  put back afterwards, so loading never shifts the training loop's random stream.

The loader also gives the underlying DataLoader a private generator, because PyTorch
otherwise draws each iterator's base seed from the global torch generator, and a resumed
run (one extra iterator) would drift from an uninterrupted one.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import xxhash

from ._sampler import ResumableSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The 64-bit seed of one sample's randomness."""
    return xxhash.xxh3_64_intdigest(struct.pack("<qqq", seed, epoch, index))


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset; item ``(epoch, i)`` is ``dataset[i]`` with seeded RNGs."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        """A batch of items (torch's fetcher calls this when it exists): in the main process the
        global generators are saved and put back once a batch, not once a sample (numpy's state
        alone takes tens of microseconds each way)."""
        in_worker = torch.utils.data.get_worker_info() is not None
        if not in_worker:
            saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            out = []
            for epoch, index in keys:
                s = sample_seed(self.seed, epoch, index)
                random.seed(s)
                np.random.seed(s & 0xFFFF_FFFF)
                torch.default_generator.manual_seed(s)
                out.append(self.dataset[index])
            return out
        finally:
            if not in_worker:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


class _PlannedBatches(torch.utils.data.Sampler[list]):
    """The batch sampler the inner DataLoader iterates: whatever plan the loader set."""

    def __init__(self) -> None:
        self.plan: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


class ResumableDataLoader:
    """A DataLoader whose position is part of the checkpoint.

    Iterating yields the remaining batches of the current epoch; when the epoch is
    exhausted the next iteration starts the next epoch. Put it in the checkpointed state
    (``state["data"] = loader``) and a restore continues with exactly the next batch::

        loader = ResumableDataLoader(dataset, batch_size=32, seed=0, num_workers=2)
        while step < total:
            for batch in loader:
                ...

    Args:
        dataset: A map-style dataset.
        batch_size: Samples per batch (per rank).
        shuffle, seed, drop_last: As for :class:`ResumableSampler`.
        seed_samples: Seed the global RNGs per sample from ``(seed, epoch, index)`` (default True).
        num_replicas, rank: Data-parallel world size and this rank.
        global_batch_size: Keep the global batch at this many samples at any world size: each
            rank yields :attr:`grad_accum` micro-batches of ``batch_size`` per optimizer step
            (see :class:`ResumableSampler`).
        **dataloader_kwargs: Passed to ``torch.utils.data.DataLoader`` (``num_workers``,
            ``collate_fn``, ``pin_memory``, ``persistent_workers``, ...); not ``sampler``,
            ``batch_sampler``, ``shuffle`` or ``generator``, which the loader owns.
    """

    _sampler_type: type[ResumableSampler] = ResumableSampler  # a framework's loader may refine the sampler

    def __init__(self, dataset: Any, batch_size: int = 1, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, seed_samples: bool = True, num_replicas: int = 1, rank: int = 0,
                 global_batch_size: int | None = None, **dataloader_kwargs: Any) -> None:
        owned = {"sampler", "batch_sampler", "shuffle", "generator", "batch_size", "drop_last"} & set(dataloader_kwargs)
        if owned:
            raise TypeError(f"ResumableDataLoader sets {sorted(owned)} itself; drop them from the arguments.")
        self.dataset = dataset
        self.sampler = self._sampler_type(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                          batch_size=batch_size, num_replicas=num_replicas, rank=rank,
                                          global_batch_size=global_batch_size)
        self.seed_samples = seed_samples
        self._batches = _PlannedBatches()
        target = SeededDataset(dataset, seed) if seed_samples else _Unkeyed(dataset)
        self._loader = torch.utils.data.DataLoader(target, batch_sampler=self._batches,
                                                   generator=torch.Generator().manual_seed(seed),
                                                   **dataloader_kwargs)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def grad_accum(self) -> int:
        """Micro-batches per optimizer step on each rank (1 without ``global_batch_size``)."""
        return self.sampler.grad_accum

    @property
    def position(self) -> int:
        """Samples of the current epoch consumed by the training loop (all ranks together)."""
        return self.sampler.position

    def __len__(self) -> int:
        """Batches left in the current epoch."""
        return len(self.sampler.batches())

    def __iter__(self) -> Iterator[Any]:
        epoch = self.sampler.epoch
        planned = self.sampler.batches()
        self._batches.plan = [[(epoch, i) for i in mine] for mine, _ in planned]
        for batch, (_, consumed) in zip(self._loader, planned, strict=False):
            self.sampler.position += consumed
            yield batch
        self.sampler.epoch, self.sampler.position = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.sampler.load_state_dict(sd)


class _Unkeyed(torch.utils.data.Dataset):
    """Passes ``(epoch, i)`` keys through as ``dataset[i]`` without seeding."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.dataset[key[1]]
