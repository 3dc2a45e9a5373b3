"""A deterministic, resumable sample order that does not depend on workers or ranks.

The order of epoch ``e`` is a permutation of ``range(n)`` drawn from a private generator
seeded with ``(seed, e)``: it depends on nothing else, so it is the same in every process,
for any number of DataLoader workers and any world size. ``position`` counts the samples
of the epoch already consumed by the whole job (all ranks together), so a resume on
another number of ranks continues from the same global sample.

With ``num_replicas`` ranks, the epoch is cut into global batches of
``batch_size * num_replicas`` samples and rank ``r`` takes the ``r``-th slice of each. With
``global_batch_size`` the global batch stays that many samples at every world size: each
rank takes ``global_batch_size / num_replicas`` of them, in :attr:`~ResumableSampler.grad_accum`
micro-batches of ``batch_size`` (see :func:`grad_accum`).
"""

from __future__ import annotations

from typing import Any

import torch

_DEFAULT_SEED = 0


def grad_accum(global_batch_size: int, batch_size: int, world_size: int) -> int:
    """The micro-batches each rank accumulates per optimizer step so that ``world_size`` ranks
    with micro-batches of ``batch_size`` consume ``global_batch_size`` samples a step; raises
    ValueError, in one sentence with the way out, when it cannot be split so."""
    if min(global_batch_size, batch_size, world_size) < 1:
        raise ValueError(f"global_batch_size ({global_batch_size}), batch_size ({batch_size}) and the world size "
                         f"({world_size}) must all be at least 1.")
    per_rank, rest = divmod(global_batch_size, world_size)
    if rest or per_rank % batch_size:
        fits = sorted({w for w in range(1, 2 * world_size + 9)
                       if global_batch_size % (w * batch_size) == 0})[:6]
        raise ValueError(
            f"A global batch of {global_batch_size} samples cannot be split over {world_size} ranks in micro-batches "
            f"of {batch_size}; run on a world size that divides it ({', '.join(map(str, fits)) or 'none near'}) or "
            f"choose a global_batch_size divisible by {world_size} x {batch_size} = {world_size * batch_size}.")
    return per_rank // batch_size


def _parts(seq: list[int], k: int) -> list[list[int]]:
    """``seq`` cut into ``k`` contiguous parts as equal as can be (the first ones one longer)."""
    size, extra = divmod(len(seq), k)
    out, at = [], 0
    for i in range(k):
        n = size + (i < extra)
        out.append(seq[at:at + n])
        at += n
    return out


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of ``epoch``: the same on every process, for every worker count."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(n, generator=g)


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Yields sample indices from the current position on; its state is (seed, epoch, position).

    Use it on its own with ``num_workers=0``, or through :class:`ResumableDataLoader`, which
    counts what the training loop consumed (DataLoader workers prefetch ahead of it).

    Args:
        data_source: The dataset, or its length.
        shuffle: Draw a new permutation per epoch (default True).
        seed: The seed of every permutation.
        drop_last: Drop the final partial batch of an epoch (only with ``batch_size``).
        batch_size: Samples per batch per rank (a micro-batch, with ``global_batch_size``); needed
            with ``num_replicas > 1`` or ``drop_last``.
        num_replicas, rank: The data-parallel world size and this rank.
        global_batch_size: Keep the global batch at this many samples whatever the world size
            (an elastic job that lost a node): each rank yields :attr:`grad_accum` micro-batches
            of ``batch_size`` per optimizer step. Default: ``batch_size * num_replicas``, which
            changes with the world size.
    """

    def __init__(self, data_source: Any, *, shuffle: bool = True, seed: int = _DEFAULT_SEED,
                 drop_last: bool = False, batch_size: int = 1, num_replicas: int = 1, rank: int = 0,
                 global_batch_size: int | None = None) -> None:
        n = data_source if isinstance(data_source, int) else len(data_source)
        if n < 1 or batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler needs a non-empty dataset, batch_size >= 1 and 0 <= rank < "
                             f"num_replicas (got n={n}, batch_size={batch_size}, rank={rank}, "
                             f"num_replicas={num_replicas}).")
        self.n, self.shuffle, self.seed, self.drop_last = n, shuffle, seed, drop_last
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.global_batch_size = global_batch_size
        self.grad_accum = 1 if global_batch_size is None else grad_accum(global_batch_size, batch_size, num_replicas)
        """Micro-batches per optimizer step on each rank (1 without ``global_batch_size``)."""
        self.epoch = 0
        self.position = 0  # samples of this epoch consumed by all ranks together

    @property
    def global_batch(self) -> int:
        """Samples the whole job consumes per optimizer step."""
        return self.batch_size * self.num_replicas * self.grad_accum

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch``."""
        self.epoch, self.position = epoch, 0

    def batches(self) -> list[tuple[list[int], int]]:
        """This rank's remaining batches of the current epoch: (its indices, samples all ranks consume)
        pairs; with :attr:`grad_accum` > 1, its micro-batches, the last of a step counting the step's
        samples (a step is consumed whole or not at all)."""
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle)[self.position:].tolist()
        out: list[tuple[list[int], int]] = []
        for start in range(0, len(order), self.global_batch):
            glob = order[start:start + self.global_batch]
            if self.drop_last and len(glob) < self.global_batch:
                break
            # a full global batch: rank r's slice, in micro-batches of batch_size; the short last one of an
            # epoch (a resume on another world size can make one) is shared as evenly: no rank is left empty
            # while there are samples for every micro-batch
            mine = _parts(glob, self.num_replicas)[self.rank]
            for k, micro in enumerate(_parts(mine, self.grad_accum)):
                out.append((micro, len(glob) if k == self.grad_accum - 1 else 0))
        return out

    def __iter__(self):
        for mine, consumed in self.batches():
            yield from mine
            self.position += consumed
        self.epoch, self.position = self.epoch + 1, 0

    def __len__(self) -> int:
        return sum(len(m) for m, _ in self.batches())

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "n": self.n,
                "shuffle": self.shuffle}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd["n"] != self.n or sd["shuffle"] != self.shuffle:
            raise ValueError(f"the saved sampler covered {sd['n']} samples (shuffle={sd['shuffle']}), this one covers "
                             f"{self.n} (shuffle={self.shuffle}); use the same dataset")
        if not 0 <= sd["position"] <= self.n:
            raise ValueError(f"saved position {sd['position']} lies outside the dataset of {self.n} samples")
        self.seed, self.epoch, self.position = int(sd["seed"]), int(sd["epoch"]), int(sd["position"])
