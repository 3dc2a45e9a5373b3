"""The one shape every interruption warning is reduced to, and the protocol of its sources."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ._watcher import NoticeWatcher

DEFAULT_GRACE = 30.0
"""Seconds assumed between a notice and the machine going away when the source gives no time
(GCP and Azure give 30 s; Kubernetes' default terminationGracePeriodSeconds is 30 s)."""


@dataclass(frozen=True, kw_only=True)
class Notice:
    """An interruption warning.

    Attributes:
        source: Where it came from: ``"signal"``, ``"kubernetes"``, ``"slurm"``, ``"aws"``,
            ``"aws-rebalance"``, ``"gcp"``, ``"azure"`` or ``"file"``.
        deadline: Wall-clock time (``time.time()`` seconds) by which the machine goes away,
            or None when unknown.
        reason: One line for people: what was received.
        received: Wall-clock time it was received.
        advisory: An early warning (AWS rebalance recommendation): checkpoint now, keep going.
    """

    source: str
    deadline: float | None
    reason: str
    received: float = field(default_factory=time.time)
    advisory: bool = False

    def seconds_left(self, now: float | None = None) -> float | None:
        """Seconds until the deadline (negative once passed), or None when unknown."""
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)


class NoticeSource:
    """A source of notices.

    Call order, all from the thread that owns the :class:`NoticeWatcher` (the training
    loop's): ``start(watcher)`` once; then, once a checkpoint is durable after a notice,
    ``acknowledge()``; ``stop()`` once. Sources deliver notices with ``watcher.post()``
    from their own daemon thread or a signal handler; they never block the caller.
    """

    name = "source"

    def start(self, watcher: NoticeWatcher) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def acknowledge(self) -> None:
        """The checkpoint after the notice is durable: tell the platform it may proceed."""

    def stop(self) -> None:
        """Stop watching and restore whatever was replaced (signal handlers)."""

    @property
    def active(self) -> bool:
        """Whether the source is watching (False: disabled, or not answering in auto mode)."""
        return True
