"""Which committed checkpoints to delete after a save.

Pure functions over step numbers, so they are tested without files. Rules: keep the last
``keep_last`` steps, keep every step divisible by ``keep_every``, never delete the newest
checkpoint nor any step newer than the one just committed (deletion happens only after a
newer checkpoint is committed).
"""

from __future__ import annotations

from collections.abc import Iterable


def select_deletions(steps: Iterable[int], *, committed: int, keep_last: int,
                     keep_every: int | None = None) -> list[int]:
    """Steps to delete, oldest first, after ``committed`` was just committed."""
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last} would delete the newest checkpoint; use keep_last >= 1.")
    if keep_every is not None and keep_every < 1:
        raise ValueError(f"keep_every={keep_every} is not a positive number of steps; use None or >= 1.")
    ordered = sorted(set(steps))
    eligible = [s for s in ordered if s <= committed]
    keep = set(eligible[-keep_last:]) | {committed}
    if ordered:
        keep.add(ordered[-1])
    if keep_every:
        keep |= {s for s in eligible if s % keep_every == 0}
    return [s for s in eligible if s not in keep]
