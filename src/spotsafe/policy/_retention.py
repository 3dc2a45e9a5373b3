"""Retention policies: which committed checkpoints to keep, as small objects combined with ``|``.

A policy sees the checkpoints of one store as ``(step, created)`` pairs, oldest first, and
says which steps it keeps; ``KeepLast(3) | KeepEvery(1000)`` keeps what either part keeps.
``created`` is the wall-clock time (seconds since the epoch) from each checkpoint's
manifest. Reading it costs one read per checkpoint, so callers read it only when
:attr:`RetentionPolicy.needs_times` says a time-based rule is part of the policy, and pass
0.0 otherwise.

Policies only choose; :func:`select_deletions` applies the rules no policy can override:
the newest *valid* checkpoint and the one just committed are always kept, and nothing newer
than the one just committed is deleted (deletion happens only after a newer checkpoint is
durable). Validity, not the name, decides: a policy only ever sees the checkpoints known to
be valid, so an invalid one (a garbage manifest, a file that fails its checksum, another
run's higher step) never takes a keep slot and never pushes the newest valid one out. A
checkpoint known to be invalid is deleted once it is older than the one just committed;
one whose verdict is unknown (it could not be read) is kept and takes no slot. The caller
supplies the verdicts (:mod:`spotsafe._engine._retention`). Everything here is pure Python
over numbers, so it is tested without files or sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from datetime import timedelta

from .._units import format_duration, parse_duration

_KEEP_LAST = 3


class RetentionPolicy:
    """Base of retention policies; subclasses implement :meth:`keep`."""

    @property
    def needs_times(self) -> bool:
        """Whether :meth:`keep` looks at creation times (else callers may pass 0.0 for them)."""
        return False

    def keep(self, checkpoints: list[tuple[int, float]]) -> set[int]:  # pragma: no cover - abstract
        """The steps to keep among ``checkpoints``, ``(step, created)`` pairs ordered oldest first."""
        raise NotImplementedError

    def __or__(self, other: RetentionPolicy) -> RetentionPolicy:
        if not isinstance(other, RetentionPolicy):
            return NotImplemented
        return KeepAny(*_parts(self), *_parts(other))


def _parts(p: RetentionPolicy) -> tuple[RetentionPolicy, ...]:
    return p.policies if isinstance(p, KeepAny) else (p,)


def _count(value: object, label: str, fix: str) -> int:
    """``value`` as a whole number of at least 1, or a ValueError naming ``label`` and ``fix``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} is not a whole number of at least 1; {fix}.")
    return value


class KeepAny(RetentionPolicy):
    """Keeps every checkpoint that any of its policies keeps."""

    def __init__(self, *policies: RetentionPolicy) -> None:
        self.policies = policies

    @property
    def needs_times(self) -> bool:
        return any(p.needs_times for p in self.policies)

    def keep(self, checkpoints: list[tuple[int, float]]) -> set[int]:
        return set().union(*(p.keep(checkpoints) for p in self.policies))

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.policies))


class KeepLast(RetentionPolicy):
    """Keeps the ``n`` newest checkpoints."""

    def __init__(self, n: int) -> None:
        self.n = _count(n, f"KeepLast({n!r})", "use KeepLast(1) or more (the newest checkpoint is always kept)")

    def keep(self, checkpoints: list[tuple[int, float]]) -> set[int]:
        return {step for step, _ in checkpoints[-self.n:]}

    def __repr__(self) -> str:
        return f"KeepLast({self.n})"


class KeepEvery(RetentionPolicy):
    """Keeps every checkpoint whose step is a multiple of ``k`` (milestones kept for good)."""

    def __init__(self, k: int) -> None:
        self.k = _count(k, f"KeepEvery({k!r})", "use KeepEvery(k) with k >= 1 steps, e.g. KeepEvery(1000)")

    def keep(self, checkpoints: list[tuple[int, float]]) -> set[int]:
        return {step for step, _ in checkpoints if step % self.k == 0}

    def __repr__(self) -> str:
        return f"KeepEvery({self.k})"


class KeepEveryDuration(RetentionPolicy):
    """Keeps one checkpoint per ``interval`` of wall-clock time: the oldest in each window.

    Windows are aligned to the epoch (``floor(created / seconds)``), not to the first
    checkpoint, so the choice does not change as old checkpoints are deleted or the run
    resumes. ``interval`` is float seconds, a :class:`~datetime.timedelta` or a string such
    as ``"1h"`` or ``"30m"``.
    """

    def __init__(self, interval: float | str | timedelta) -> None:
        self.seconds = parse_duration(interval, what="KeepEveryDuration")
        if self.seconds <= 0:
            raise ValueError(f"KeepEveryDuration({interval!r}) must be longer than 0 seconds; use e.g. '1h'.")

    @property
    def needs_times(self) -> bool:
        return True

    def keep(self, checkpoints: list[tuple[int, float]]) -> set[int]:
        oldest: dict[int, tuple[float, int]] = {}
        for step, created in checkpoints:
            window = math.floor(created / self.seconds)
            oldest[window] = min(oldest.get(window, (created, step)), (created, step))
        return {step for _, step in oldest.values()}

    def __repr__(self) -> str:
        return f"KeepEveryDuration({format_duration(self.seconds)!r})"


def select_deletions(policy: RetentionPolicy, checkpoints: Iterable[tuple[int, float]], committed: int, *,
                     valid: Collection[int] | None = None, invalid: Collection[int] = ()) -> list[int]:
    """Steps to delete, oldest first, now that ``committed`` was just committed.

    Args:
        policy: What to keep among the valid checkpoints up to ``committed``.
        checkpoints: ``(step, created)`` of every committed checkpoint of one store, any order.
        committed: The step just committed (valid by definition). It, the newest valid
            checkpoint and any step newer than it are kept whatever the policy says.
        valid: The steps known to be valid; None: every step is. Only these are shown to
            the policy, so only these take its keep slots.
        invalid: The steps known to be invalid: deleted when older than ``committed``.
            A step in neither set has an unknown verdict: kept, and shown to no policy.

    Returns:
        The steps to delete, oldest first: the valid ones the policy lets go and the
        invalid ones, all older than ``committed``.
    """
    ordered = sorted(dict(checkpoints).items())
    good = ({step for step, _ in ordered} if valid is None else set(valid)) | {committed}
    bad = set(invalid) - good
    eligible = [(step, created) for step, created in ordered if step <= committed]
    kept = policy.keep([(step, created) for step, created in eligible if step in good]) | {committed}
    newest_valid = [step for step, _ in ordered if step in good]
    if newest_valid:
        kept.add(newest_valid[-1])
    return [step for step, _ in eligible if step not in kept and (step in good or step in bad)]


def as_retention(keep: int | RetentionPolicy = _KEEP_LAST) -> RetentionPolicy:
    """The ``keep=`` argument of the manager and ``Run`` as one policy.

    Args:
        keep: A number ``n`` (keep the ``n`` newest, at least 1) or a policy such as
            ``KeepLast(2) | KeepEveryDuration("1h")``.

    Returns:
        ``keep`` as is when it is a policy, else ``KeepLast(keep)``.

    Raises:
        ValueError: A number below 1.
        TypeError: ``keep`` is neither a whole number nor a :class:`RetentionPolicy`.
    """
    if isinstance(keep, RetentionPolicy):
        return keep
    if isinstance(keep, int) and not isinstance(keep, bool):
        return KeepLast(_count(keep, f"keep={keep!r}", "use keep=1 or more (the newest checkpoint is always kept)"))
    raise TypeError(f"keep={keep!r} is not a number or a retention policy; use keep=3, KeepLast(n), KeepEvery(k), "
                    "KeepEveryDuration('1h') or a combination with |.")
