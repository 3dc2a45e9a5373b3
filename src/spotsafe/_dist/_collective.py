"""The few collectives of an initialised torch.distributed job that ``Run(root, None)`` and the
framework integrations use: is there a job of several ranks, rank 0's value on every rank, a
barrier. Each is a no-op (or the value itself) for one process; torch is imported on call."""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")


def distributed() -> bool:
    """Whether this process is one rank of several in an initialised torch.distributed job."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_rank0(value: _T) -> _T:
    """Rank 0's ``value`` on every rank (a collective: every rank calls it at the same point);
    ``value`` itself for one process."""
    if not distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank of the job (nothing for one process)."""
    if distributed():
        import torch.distributed as dist

        dist.barrier()
