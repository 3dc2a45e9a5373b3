"""Exponential backoff with jitter, shared by uploads (and later the supervisor); no torch."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays ``base * 2**attempt`` capped at ``cap``, each scaled by a random factor in [0.5, 1.5).

    The jitter keeps many workers that failed together from retrying together.
    ``attempts`` bounds the tries (the first one included); ``max_elapsed`` bounds the time.
    """

    base: float = 0.5
    cap: float = 30.0
    attempts: int = 8
    max_elapsed: float = 600.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.attempts < 1 or self.max_elapsed <= 0:
            raise ValueError(f"Invalid backoff {self}; base must be > 0, cap >= base, attempts >= 1, "
                             "max_elapsed > 0.")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep after failed try number ``attempt`` (0-based)."""
        r = (rng or random).random()
        return min(self.cap, self.base * 2 ** attempt) * (0.5 + r)


def retry(fn: Callable[[], T], *, policy: Backoff, transient: Callable[[BaseException], bool],
          what: str, stop: threading.Event | None = None, on_retry: Callable[[int, BaseException, float], None] | None = None,
          clock: Callable[[], float] = time.monotonic) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors under ``policy``.

    Re-raises a permanent error at once, and the last transient error once the attempts or
    the time run out (or ``stop`` is set). ``on_retry(attempt, error, delay)`` is called
    before each sleep.
    """
    start = clock()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as e:
            if not transient(e) or attempt == policy.attempts - 1:
                raise
            pause = policy.delay(attempt)
            if clock() - start + pause > policy.max_elapsed or (stop is not None and stop.is_set()):
                raise
            if on_retry is not None:
                on_retry(attempt, e, pause)
            if stop is not None:
                if stop.wait(pause):
                    raise
            else:
                time.sleep(pause)
    raise AssertionError(f"unreachable: retry loop for {what} ended")  # pragma: no cover
