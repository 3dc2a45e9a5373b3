"""Save policies: when to take a checkpoint, as small objects combined with ``|``.

A policy is asked once per completed step, ``due(step, now)``, and told about every
checkpoint taken, ``saved(step, now)``. ``now`` comes from an injected clock (monotonic
seconds), so tests never sleep. ``EverySteps(500) | EveryDuration("30m")`` is due when
either part is.
"""

from __future__ import annotations

from datetime import timedelta

from .._units import format_duration, parse_duration, parse_interval


class SavePolicy:
    """Base of save policies; subclasses implement :meth:`due` and may track :meth:`saved`."""

    def start(self, step: int, now: float) -> None:
        """The run starts (or resumes) at ``step``; called once before the first step."""

    def due(self, step: int, now: float) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def saved(self, step: int, now: float) -> None:
        """A checkpoint of ``step`` was taken (by this policy or any other reason)."""

    def __or__(self, other: SavePolicy) -> SavePolicy:
        if not isinstance(other, SavePolicy):
            return NotImplemented
        return AnyOf(*_parts(self), *_parts(other))


def _parts(p: SavePolicy) -> tuple[SavePolicy, ...]:
    return p.policies if isinstance(p, AnyOf) else (p,)


class AnyOf(SavePolicy):
    """Due when any of its policies is due."""

    def __init__(self, *policies: SavePolicy) -> None:
        self.policies = policies

    def start(self, step: int, now: float) -> None:
        for p in self.policies:
            p.start(step, now)

    def due(self, step: int, now: float) -> bool:
        return any([p.due(step, now) for p in self.policies])  # every part sees every step

    def saved(self, step: int, now: float) -> None:
        for p in self.policies:
            p.saved(step, now)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.policies))


class EverySteps(SavePolicy):
    """Due on every step that is a multiple of ``n`` (so resumed runs save on the same steps)."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"EverySteps({n!r}) needs a whole number of steps of at least 1.")
        self.n = n

    def due(self, step: int, now: float) -> bool:
        return step % self.n == 0

    def __repr__(self) -> str:
        return f"EverySteps({self.n})"


class EveryDuration(SavePolicy):
    """Due once ``interval`` has passed since the last checkpoint (or the start)."""

    def __init__(self, interval: float | str | timedelta) -> None:
        self.seconds = parse_duration(interval, what="EveryDuration")
        if self.seconds <= 0:
            raise ValueError(f"EveryDuration({interval!r}) must be longer than 0 seconds.")
        self._last: float | None = None

    def start(self, step: int, now: float) -> None:
        self._last = now

    def due(self, step: int, now: float) -> bool:
        if self._last is None:
            self._last = now
        return now - self._last >= self.seconds

    def saved(self, step: int, now: float) -> None:
        self._last = now

    def __repr__(self) -> str:
        return f"EveryDuration({format_duration(self.seconds)!r})"


class Never(SavePolicy):
    """Never due: checkpoints only on notices, at the end, or when asked."""

    def due(self, step: int, now: float) -> bool:
        return False

    def __repr__(self) -> str:
        return "Never()"


def as_policy(value: SavePolicy | int | float | str | timedelta | None) -> SavePolicy:
    """``save_every=`` as a policy: a policy as is, None as :class:`Never`, else steps or a duration."""
    if value is None:
        return Never()
    if isinstance(value, SavePolicy):
        return value
    interval = parse_interval(value)
    return EverySteps(interval.steps) if interval.steps is not None else EveryDuration(interval.seconds)
