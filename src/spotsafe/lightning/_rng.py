"""Every rank's random number generators in a Lightning checkpoint, as tensors and plain values.

Lightning saves no RNG state. The callback carries it in its ``state_dict`` (Lightning's
``checkpoint["callbacks"]``), in a form both stores can hold without pickle: spotsafe's
manifest, and a stock ``torch.load(weights_only=True)`` of a checkpoint file a user's
``ModelCheckpoint`` writes (numpy arrays are not allowed there, so the Mersenne Twister words
of python and numpy are int64 tensors).

Lightning dumps a checkpoint on every rank and writes rank 0's dict, so a save that every
rank makes together (the run's own) gathers every rank's state into it; each rank restores
its own. A rank the checkpoint has no state for (the job grew) is seeded from the
checkpoint, the step and its rank instead, with one warning.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

from .._format._hash import digest_bytes
from .._state._rng import check_rng, restore_rng
from .._state._sharded import seed_rngs
from ..errors import SpotsafeWarning


class Snapshot:
    """This process's RNG states as they are, cheap to take and put back (a few microseconds each): the
    callback takes one after every training batch and puts it back before the next."""

    __slots__ = ("cuda", "numpy", "python", "torch")

    def __init__(self) -> None:
        self.python = random.getstate()
        self.numpy = np.random.get_state(legacy=True)
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    def saved(self) -> dict[str, Any]:
        """As tensors and plain values, for a checkpoint."""
        version, words, gauss = self.python
        kind, key, pos, has_gauss, cached = self.numpy
        out: dict[str, Any] = {
            "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
            "numpy": {"kind": str(kind), "key": torch.from_numpy(np.asarray(key).astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": self.torch.clone(),
        }
        if self.cuda is not None:
            out["cuda"] = [s.clone() for s in self.cuda]
        return out


def _native(state: dict[str, Any]) -> dict[str, Any]:
    """:meth:`Snapshot.saved`'s form back in :func:`~spotsafe._state._rng.capture_rng`'s, checked."""
    try:
        py, npy = state["python"], state["numpy"]
        native: dict[str, Any] = {
            "python": {"version": py["version"], "state": py["state"].numpy().astype(np.uint32),
                       "gauss": py["gauss"]},
            "numpy": (npy["kind"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                      npy["cached_gaussian"]),
            "torch": state["torch"],
        }
        if state.get("cuda") is not None:
            native["cuda"] = list(state["cuda"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"the saved RNG state is malformed ({type(e).__name__}: {e})") from None
    check_rng(native)
    return native


def gather(mine: dict[str, Any], together: bool) -> list[dict[str, Any]]:
    """Every rank's state, in rank order, when ``together`` (every rank saves at this point); else this
    rank's alone. Under torch.distributed a collective: all ranks call it at the same point."""
    import torch.distributed as dist

    if not together or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)  # in memory between the ranks, never from a file
    return every


def derived_seed(saved: list[dict[str, Any]], step: int, rank: int) -> int:
    """A seed for a rank the checkpoint has no RNG state for: from rank 0's torch state, the step and the
    rank (the same on every restart, different on every rank)."""
    base = digest_bytes(saved[0]["torch"].numpy().tobytes()) if saved else ""
    return int(digest_bytes(f"spotsafe-lightning-rng:{base}:{step}:{rank}".encode()), 16) % (2**63)


class PendingRng:
    """What a rank restores at the first training batch after a resume: its own state, or a seed."""

    def __init__(self, saved: dict[str, Any], rank: int) -> None:
        states = saved.get("ranks") or []
        step = int(saved.get("step") or 0)
        self.state: dict[str, Any] | None = None
        self.seed: int | None = None
        if rank < len(states):
            self.state = _native(states[rank])
        else:
            self.seed = derived_seed(states, step, rank)
            warnings.warn(f"The checkpoint of step {step} holds the RNG states of {len(states)} rank(s) and this is "
                          f"rank {rank}: its RNGs are seeded from the checkpoint, the step and the rank instead, so "
                          "its randomness does not replay that of an uninterrupted run.", SpotsafeWarning,
                          stacklevel=3)

    def apply(self) -> None:
        if self.state is not None:
            restore_rng(self.state)
        elif self.seed is not None:
            seed_rngs(self.seed)
