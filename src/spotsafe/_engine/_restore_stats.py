"""RestoreStats: where the time of one :meth:`CheckpointManager.restore` went.

Restore already reads every byte to verify it, so timing its phases costs three clock
reads; benchmarks and the ``restore`` event read them here instead of wrapping the
manager's internals.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._names import Tier


@dataclass(frozen=True, kw_only=True)
class RestoreStats:
    """Timings and size of one restore, in seconds and bytes (``manager.last_restore``).

    The phases follow each other and do not overlap, so ``select_s + read_s + load_s <=
    total_s``; the rest of ``total_s`` is the bookkeeping after the load (retention's
    verdicts, a local copy repaired from the remote's).

    Attributes:
        step: The step restored; None when no checkpoint was restored (a fresh start).
        tier: Where it was read from (``Tier.ROOT`` or ``Tier.REMOTE``, as ``manager.restored_tier``);
            None with no step.
        bytes: Bytes of the checkpoint's files read and verified (every file its manifest
            lists; the manifest itself not counted); 0 with no step.
        fallbacks: Checkpoints (or copies on one tier) skipped as invalid before this one.
        select_s: Listing both tiers and every candidate tried and skipped before the
            restored one (its reads included): the cost of finding it.
        read_s: Reading the restored checkpoint's manifest and files and checking every
            size and checksum.
        load_s: Decoding its tensors, planning the restore and loading every object.
        total_s: The whole ``restore()`` call, including waiting for a save in flight.
    """

    step: int | None
    tier: Tier | None
    bytes: int
    fallbacks: int
    select_s: float
    read_s: float
    load_s: float
    total_s: float
