"""Preemption drills: interruptions injected at random times, reproducibly (no torch).

Interruptions arrive as a Poisson process: the wait before each one is drawn from an
exponential distribution with the given mean, counted from the moment the attempt is
ready (its command reported its restore), so a drill tests the training, not the imports. Each is a *notice* (SIGTERM,
then SIGKILL if the command has not exited after ``grace``, as a cloud does) or, with
probability ``kill_share``, a *hard kill* (SIGKILL to the whole process group, no
warning, as when a machine vanishes). The same seed gives the same sequence of waits and
kinds, so a drill can be replayed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NOTICE = "notice"
KILL = "kill"


@dataclass
class Chaos:
    """Draws the drills of a supervised run.

    Args:
        every: Mean seconds between injected interruptions (the rate is 1/every).
        seed: Seed of the draws.
        kill_share: Fraction of interruptions that are hard kills (the rest are notices).
        grace: Seconds between a notice's SIGTERM and its SIGKILL.
        max_injections: Stop injecting after this many (None: no limit).
        ready_timeout: Drills are timed from the moment the attempt's command reports its
            restore (its ``restore`` event: its notice handlers are in place), or from this
            many seconds after its start when it writes no such event.
    """

    every: float
    seed: int = 0
    kill_share: float = 0.5
    grace: float = 30.0
    max_injections: int | None = None
    ready_timeout: float = 60.0
    injected: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.every > 0:
            raise ValueError(f"--chaos must be a positive duration (mean time between drills), got {self.every}.")
        if not 0.0 <= self.kill_share <= 1.0:
            raise ValueError(f"--chaos-kill-share must be between 0 and 1, got {self.kill_share}.")
        if not self.grace > 0:
            raise ValueError(f"--chaos-grace must be more than 0 seconds, got {self.grace}.")
        self._rng = random.Random(self.seed)

    @property
    def exhausted(self) -> bool:
        return self.max_injections is not None and self.injected >= self.max_injections

    def next(self) -> tuple[float, str] | None:
        """(seconds after the attempt's start, kind) of the attempt's drill, or None when exhausted.

        One drill per attempt at most: the attempt ends with it.
        """
        if self.exhausted:
            return None
        wait = self._rng.expovariate(1.0 / self.every)
        kind = KILL if self._rng.random() < self.kill_share else NOTICE
        return wait, kind
