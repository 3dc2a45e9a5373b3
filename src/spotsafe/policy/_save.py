"""Save policies: when to take a checkpoint, as small objects combined with ``|``.

A policy is asked once per completed step, ``due(step, now)``, and told about every
checkpoint taken, ``saved(step, now, stall_s)`` (the time the save blocked training).
``now`` comes from an injected clock (monotonic seconds), so tests never sleep.
``EverySteps(500) | EveryDuration("30m")`` is due when either part is.

Call order, from the training thread (``spotsafe.Run`` does this): ``history(measured)``
once when the run's past is known, ``start(step, now)`` once, then per step ``due`` and,
after any checkpoint, ``saved``.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from datetime import timedelta
from typing import Any

from .._units import format_duration, parse_duration, parse_interval
from ._interval import daly_interval

logger = logging.getLogger(__name__)


class SavePolicy:
    """Base of save policies; subclasses implement :meth:`due` and may track :meth:`saved`."""

    wants_history = False  # whether history() is worth reading the run's events for

    def start(self, step: int, now: float) -> None:
        """The run starts (or resumes) at ``step``; called once before the first step."""

    by_step = False
    """True when :meth:`due` depends on the step alone, so that every rank of a job decides the
    same without asking the others (a time-based policy fires on each rank at its own step)."""

    def due(self, step: int, now: float) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def saved(self, step: int, now: float, stall_s: float | None = None) -> None:
        """A checkpoint of ``step`` was taken (by this policy or any other reason), blocking ``stall_s``."""

    def history(self, measured: Any) -> None:
        """What earlier attempts of this run measured (:class:`spotsafe._telemetry.Measured`)."""

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
        self.wants_history = any(p.wants_history for p in policies)
        self.by_step = all(p.by_step for p in policies)

    def start(self, step: int, now: float) -> None:
        for p in self.policies:
            p.start(step, now)

    def due(self, step: int, now: float) -> bool:
        return any([p.due(step, now) for p in self.policies])  # every part sees every step

    def saved(self, step: int, now: float, stall_s: float | None = None) -> None:
        for p in self.policies:
            p.saved(step, now, stall_s)

    def history(self, measured: Any) -> None:
        for p in self.policies:
            p.history(measured)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.policies))


class EverySteps(SavePolicy):
    """Due on every step that is a multiple of ``n`` (so resumed runs save on the same steps)."""

    by_step = True

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

    def saved(self, step: int, now: float, stall_s: float | None = None) -> None:
        self._last = now

    def __repr__(self) -> str:
        return f"EveryDuration({format_duration(self.seconds)!r})"


class Never(SavePolicy):
    """Never due: checkpoints only on notices, at the end, or when asked."""

    by_step = True

    def due(self, step: int, now: float) -> bool:
        return False

    def __repr__(self) -> str:
        return "Never()"


class OnNotice(Never):
    """Checkpoint on interruption notices (``spotsafe.Run`` always does; this names it in a combination)."""

    def __repr__(self) -> str:
        return "OnNotice()"


class _StepTimes:
    """Step durations from consecutive ``due`` calls; the estimate is the longest recent one."""

    def __init__(self, window: int) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.prev: float | None = None

    def tick(self, now: float) -> None:
        if self.prev is not None and now >= self.prev:
            self.recent.append(now - self.prev)
        self.prev = now

    def longest(self) -> float:
        return max(self.recent) if self.recent else 0.0


class LostWorkBudget(SavePolicy):
    """At most ``max_lost`` of work lost to an interruption without notice.

    Converted to steps from the measured step time, and adapting when it changes: a save is
    due when the time since the last checkpoint plus ``safety`` x the longest of the last
    ``window`` steps would reach the budget by the end of the next step. A step up to
    ``safety`` times longer than the recent ones still ends within the budget.
    """

    def __init__(self, max_lost: float | str | timedelta, *, safety: float = 2.0, window: int = 20) -> None:
        self.seconds = parse_duration(max_lost, what="max_lost")
        if self.seconds <= 0:
            raise ValueError(f"LostWorkBudget({max_lost!r}) must allow more than 0 seconds of lost work.")
        if safety < 1 or window < 1:
            raise ValueError(f"LostWorkBudget needs safety >= 1 and window >= 1, got {safety} and {window}.")
        self.safety = safety
        self._times = _StepTimes(window)
        self._last: float | None = None

    def start(self, step: int, now: float) -> None:
        self._last = now
        self._times.prev = now

    def due(self, step: int, now: float) -> bool:
        self._times.tick(now)
        if self._last is None:
            self._last = now
        return now - self._last + self.safety * self._times.longest() >= self.seconds

    def saved(self, step: int, now: float, stall_s: float | None = None) -> None:
        self._last = now

    @property
    def steps(self) -> int | None:
        """The budget in steps at the current step time (None until one step is measured)."""
        longest = self._times.longest()
        return max(1, int(self.seconds // (self.safety * longest))) if longest > 0 else None

    def __repr__(self) -> str:
        return f"LostWorkBudget({format_duration(self.seconds)!r})"


class Optimal(SavePolicy):
    """The Young/Daly interval from the measured checkpoint stall and an interruption rate.

    Args:
        mtbf: Mean time between interruptions (a duration). None: estimated from the run's
            own event history (``history()``; with n interruptions seen in T hours of
            running, MTBF = T / (n + 1), so a clean history is not taken as "never").
        initial: The interval used until a save's stall has been measured.

    Daly's interval is recomputed after every save from the median of the last 20 stalls.
    The restart cost does not enter it (in Daly's model it scales the expected wall time,
    not the optimum); ``spotsafe plan`` uses it for time and money.
    """

    wants_history = True

    def __init__(self, mtbf: float | str | timedelta | None = None, *,
                 initial: float | str | timedelta = "10m") -> None:
        self.mtbf = parse_duration(mtbf, what="mtbf") if mtbf is not None else None
        if self.mtbf is not None and self.mtbf <= 0:
            raise ValueError(f"mtbf={mtbf!r} must be longer than 0 seconds.")
        self.interval = parse_duration(initial, what="initial")
        self._stalls: deque[float] = deque(maxlen=20)
        self._last: float | None = None

    def history(self, measured: Any) -> None:
        if self.mtbf is None and getattr(measured, "mtbf_s", None):
            self.mtbf = measured.mtbf_s
            logger.info("Optimal checkpoint interval: MTBF %s estimated from %d interruption(s) in %.1f h of running",
                        format_duration(self.mtbf), measured.interruptions, measured.running_s / 3600)
        for s in getattr(measured, "stalls_s", None) or []:
            self._stalls.append(s)
        self._update()

    def start(self, step: int, now: float) -> None:
        self._last = now

    def due(self, step: int, now: float) -> bool:
        if self._last is None:
            self._last = now
        return now - self._last >= self.interval

    def saved(self, step: int, now: float, stall_s: float | None = None) -> None:
        self._last = now
        if stall_s is not None and stall_s > 0:
            self._stalls.append(stall_s)
            self._update()

    def _update(self) -> None:
        if not self._stalls:
            return
        if self.mtbf is None:
            logger.warning("Optimal() has no interruption rate: pass mtbf= or keep the run's events; using %s",
                           format_duration(self.interval))
            return
        new = daly_interval(statistics.median(self._stalls), self.mtbf)
        if abs(new - self.interval) > 0.2 * self.interval:
            logger.info("Checkpoint interval now %s (Daly: stall %s, MTBF %s)", format_duration(new),
                        format_duration(statistics.median(self._stalls)), format_duration(self.mtbf))
        self.interval = new

    def __repr__(self) -> str:
        mtbf = format_duration(self.mtbf) if self.mtbf else "from history"
        return f"Optimal(mtbf={mtbf!r}, interval={format_duration(self.interval)!r})"


class OverheadBudget(SavePolicy):
    """Caps the share of training time spent stalled in checkpoints; lengthens ``inner``'s interval.

    When ``inner`` is due but the measured stalls so far (plus the last one again) would
    exceed ``share`` of the time since the start, the save is skipped (the interval grows)
    and a warning says so, once per stretch.
    """

    def __init__(self, inner: SavePolicy, share: float = 0.05) -> None:
        if not 0 < share < 1:
            raise ValueError(f"OverheadBudget share={share!r} must be between 0 and 1 (0.05 is 5%).")
        self.inner, self.share = inner, share
        self.wants_history = inner.wants_history
        self.stalled = 0.0
        self.skipped = 0
        self._last_stall = 0.0
        self._t0: float | None = None
        self._warned = False

    def start(self, step: int, now: float) -> None:
        self._t0 = now
        self.inner.start(step, now)

    def history(self, measured: Any) -> None:
        self.inner.history(measured)

    def due(self, step: int, now: float) -> bool:
        if self._t0 is None:
            self._t0 = now
        if not self.inner.due(step, now):
            return False
        elapsed = now - self._t0
        if elapsed > 0 and (self.stalled + self._last_stall) / elapsed > self.share:
            self.skipped += 1
            if not self._warned:
                logger.warning("Checkpoint stalls are %.1f%% of training time, over the %.1f%% budget: lengthening "
                               "the interval (skipping the save at step %d)", 100 * self.stalled / elapsed,
                               100 * self.share, step)
                self._warned = True
            return False
        self._warned = False
        return True

    def saved(self, step: int, now: float, stall_s: float | None = None) -> None:
        if stall_s:
            self.stalled += stall_s
            self._last_stall = stall_s
        self.inner.saved(step, now, stall_s)

    def __repr__(self) -> str:
        return f"OverheadBudget({self.inner!r}, share={self.share:g})"


def as_policy(value: SavePolicy | int | float | str | timedelta | None) -> SavePolicy:
    """``save_every=`` as a policy: a policy as is, None as :class:`Never`, else steps or a duration."""
    if value is None:
        return Never()
    if isinstance(value, SavePolicy):
        return value
    interval = parse_interval(value)
    if interval.steps is not None:
        return EverySteps(interval.steps)
    assert interval.seconds is not None  # an Interval holds exactly one of the two
    return EveryDuration(interval.seconds)
