"""POSIX signals as notices: plain signals, Kubernetes' SIGTERM, SLURM's ``--signal``.

A handler only records the signal (a list append: no lock, nothing that could deadlock
with the interrupted main thread); the training loop reads it after the current step. The
previous handlers are put back by ``stop()``. Handlers can only be installed from the
main thread; elsewhere the source says so in the log and stays inactive.

Several signal sources share one handler per signal; the one started last names the
source and sets the deadline (``Kubernetes`` after ``Signals`` makes SIGTERM a
"kubernetes" notice with the pod's grace period).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._env import SAGEMAKER_GRACE_ENV, SIGNAL_GRACE_ENV, SLURM_GRACE_ENV, TERMINATION_GRACE_ENV
from .._units import parse_duration
from ._notice import DEFAULT_GRACE, Notice, NoticeSource

if TYPE_CHECKING:  # pragma: no cover
    from ._watcher import NoticeWatcher

logger = logging.getLogger(__name__)

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
"""What ``signal.signal`` takes and returns: a function, ``SIG_DFL`` / ``SIG_IGN``, or None (not set from Python)."""

GIVE_UP_AFTER = 3
"""The first signal is a notice, the second says hurry (skip the remote), the third is obeyed at once."""


def _signum(sig: int | str | signal.Signals) -> signal.Signals:
    if isinstance(sig, str):
        name = sig.upper() if sig.upper().startswith("SIG") else f"SIG{sig.upper()}"
        try:
            return signal.Signals[name]
        except KeyError:
            raise ValueError(f"Unknown signal {sig!r}; use a name such as SIGTERM, SIGINT or SIGUSR1.") from None
    return signal.Signals(sig)


def _grace(value: float | str | timedelta | None, env: str) -> float:
    if value is None:
        value = os.environ.get(env) or DEFAULT_GRACE
        return parse_duration(value, what=env)
    return parse_duration(value, what="grace")


class Signals(NoticeSource):
    """Signals as notices (default SIGTERM, SIGINT and SIGUSR1).

    Args:
        signals: Signal numbers or names.
        grace: Seconds between the signal and a forced kill, used as the deadline
            (default ``$SPOTSAFE_SIGNAL_GRACE`` or 30 s).
    """

    name = "signal"
    env = SIGNAL_GRACE_ENV

    def __init__(self, signals: Iterable[int | str] = ("SIGTERM", "SIGINT", "SIGUSR1"), *,
                 grace: float | str | timedelta | None = None) -> None:
        self.signals = tuple(_signum(s) for s in signals)
        if not self.signals:
            raise ValueError(f"{type(self).__name__} needs at least one signal.")
        self.grace = _grace(grace, self.env)
        self._previous: dict[signal.Signals, _Handler] = {}
        self._watcher: NoticeWatcher | None = None
        self._installed = False

    def start(self, watcher: NoticeWatcher) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Not installing handlers for %s: signal handlers can only be set from the main thread; "
                           "use the other notice sources or enter spotsafe.Run in the main thread.",
                           ", ".join(s.name for s in self.signals))
            return
        self._watcher = watcher
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._installed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes: record and return, nothing else.
        watcher = self._watcher
        if watcher is None:  # installed only by start(), which sets it first; never None here
            return
        now = time.time()
        watcher.post(Notice(source=self.name, deadline=now + self.grace,
                                  reason=f"{signal.Signals(signum).name} received", received=now), signal=True)
        if watcher.signals >= GIVE_UP_AFTER:
            self._give_up(signum, frame)

    def _give_up(self, signum: int, frame: FrameType | None) -> None:
        """A third signal: behave as if spotsafe were not there (Ctrl-C three times always stops)."""
        sig = signal.Signals(signum)
        previous = self._previous.get(sig)
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)  # e.g. Python's default SIGINT handler: KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)  # the default action: end the process by this signal

    def stop(self) -> None:
        if not self._installed:
            return
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self._installed = False

    @property
    def active(self) -> bool:
        return self._installed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[s.name for s in self.signals]}, grace={self.grace:g})"


class Kubernetes(Signals):
    """Kubernetes: SIGTERM, with the pod's grace period as the deadline.

    The kubelet sends SIGTERM, then SIGKILL after ``terminationGracePeriodSeconds``; the
    pod cannot read that value, so pass it here or set ``SPOTSAFE_TERMINATION_GRACE``
    (default 30 s, Kubernetes' own default).
    """

    name = "kubernetes"
    env = TERMINATION_GRACE_ENV

    def __init__(self, *, grace: float | str | timedelta | None = None) -> None:
        super().__init__(("SIGTERM",), grace=grace)

    @staticmethod
    def detected() -> bool:
        return "KUBERNETES_SERVICE_HOST" in os.environ


class SageMaker(Signals):
    """SageMaker training jobs: SIGTERM, then 120 s before the container is killed (``StopTrainingJob``).

    How a managed spot interruption reaches the container is not documented; when it does
    as a stop does, the deadline is ``grace`` (default ``$SPOTSAFE_SAGEMAKER_GRACE`` or 120 s).
    """

    name = "sagemaker"
    env = SAGEMAKER_GRACE_ENV

    def __init__(self, *, grace: float | str | timedelta | None = None) -> None:
        super().__init__(("SIGTERM",), grace=grace if grace is not None else os.environ.get(self.env) or 120.0)

    @staticmethod
    def detected() -> bool:
        from .._platforms import detect

        found = detect()
        return found is not None and found.name == "sagemaker"


class Slurm(Signals):
    """SLURM: ``sbatch --signal=USR1@120`` sends SIGUSR1 before the time limit, scancel and
    preemption send SIGTERM then SIGKILL after KillWait. The deadline is ``grace``
    (default ``$SPOTSAFE_SLURM_GRACE`` or 30 s; set it to the ``@`` seconds you chose)."""

    name = "slurm"
    env = SLURM_GRACE_ENV

    def __init__(self, signals: Iterable[int | str] = ("SIGUSR1", "SIGTERM"), *,
                 grace: float | str | timedelta | None = None) -> None:
        super().__init__(signals, grace=grace)

    @staticmethod
    def detected() -> bool:
        return "SLURM_JOB_ID" in os.environ
