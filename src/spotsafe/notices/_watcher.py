"""NoticeWatcher: many sources at once, one question for the training loop.

Sources post from signal handlers and daemon threads; the loop asks ``watcher.notice``
after each step, which reads a list (no lock, no I/O): watching costs the loop nothing.
Polling sources report how their first probe went (``probed``); once all have, one INFO
line says which sources are watching.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from .._env import NOTICE_FILE_ENV
from ._clouds import AWS, GCP, Azure
from ._file import FileTrigger
from ._notice import Notice, NoticeSource
from ._poller import Poller
from ._signals import Kubernetes, SageMaker, Signals, Slurm

logger = logging.getLogger(__name__)

NoticesSpec = str | None | bool | Iterable[NoticeSource | str]
NAMES = ("signals", "kubernetes", "slurm", "sagemaker", "aws", "gcp", "azure", "file")


class NoticeWatcher:
    """Starts the sources, collects their notices, and answers the training loop."""

    def __init__(self, sources: Iterable[NoticeSource]) -> None:
        self.sources = list(sources)
        self._posted: list[Notice] = []
        self._signals = 0
        self._advisories_read = 0
        self._started = False
        self._lock = threading.Lock()
        self._probes: dict[int, tuple[str, str]] = {}  # id(poller) -> (state, detail)
        self._said = False

    def start(self) -> NoticeWatcher:
        for s in self.sources:
            s.start(self)
        self._started = True
        self._say_sources()
        return self

    def probed(self, source: NoticeSource, state: str, detail: str = "") -> None:
        """A polling source's first probe: ``state`` "on", "off" or "probing" (any thread)."""
        with self._lock:
            self._probes[id(source)] = (state, detail)
        self._say_sources()

    def _say_sources(self) -> None:
        """Log once, at INFO, which sources watch, when every polling source has probed."""
        with self._lock:
            if self._said or not self._started:
                return
            on: list[str] = []
            probing: list[str] = []
            off: list[str] = []
            for s in self.sources:
                if isinstance(s, Poller) and s.url is not None:
                    if id(s) not in self._probes:
                        return  # not settled yet
                    state, detail = self._probes[id(s)]
                    {"on": on, "probing": probing}.get(state, off).append(f"{s.name} ({detail})" if detail else s.name)
                else:
                    (on if s.active else off).append(s.name)
            self._said = True
        logger.info("Notice sources watching: %s%s%s", ", ".join(on) or "none",
                    f"; probing: {', '.join(probing)}" if probing else "", f"; off: {', '.join(off)}" if off else "")

    def stop(self) -> None:
        """Stop every source, last started first (so signal handlers unwind in order)."""
        if not self._started:
            return
        for s in reversed(self.sources):
            try:
                s.stop()
            except Exception:
                logger.exception("Stopping notice source %r failed", s)
        self._started = False

    def __enter__(self) -> NoticeWatcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def post(self, notice: Notice, *, signal: bool = False) -> None:
        """Deliver a notice (any thread, or a signal handler: appends only)."""
        self._posted.append(notice)
        if signal:
            self._signals += 1

    @property
    def notice(self) -> Notice | None:
        """The first notice that means "the machine is going away", or None."""
        for n in self._posted:
            if not n.advisory:
                return n
        return None

    @property
    def notices(self) -> list[Notice]:
        """Every notice received, in order, advisories included."""
        return list(self._posted)

    def new_advisories(self) -> list[Notice]:
        """Advisory notices (AWS rebalance) not returned by an earlier call."""
        advisories = [n for n in self._posted if n.advisory]
        fresh = advisories[self._advisories_read:]
        self._advisories_read = len(advisories)
        return fresh

    @property
    def signals(self) -> int:
        """How many signals were received."""
        return self._signals

    @property
    def urgent(self) -> bool:
        """A second signal arrived: stop waiting for anything but the local checkpoint."""
        return self._signals >= 2

    def acknowledge(self) -> None:
        """Tell every source that the checkpoint after its notice is durable (Azure's ack)."""
        for s in self.sources:
            try:
                s.acknowledge()
            except Exception:
                logger.exception("Acknowledging the notice of %r failed", s)

    @property
    def active(self) -> list[str]:
        """Names of the sources that are watching."""
        return [s.name for s in self.sources if s.active]


def make_sources(spec: NoticesSpec = "auto") -> list[NoticeSource]:
    """The sources for ``notices=``.

    ``"auto"``: signals (SIGTERM, SIGINT, SIGUSR1), Kubernetes' SIGTERM grace when in a pod,
    SLURM's signals in a job, SageMaker's SIGTERM grace (120 s) in a training job, the AWS,
    GCP and Azure metadata servers that answer (probed in the background; quiet off-cloud),
    and ``$SPOTSAFE_NOTICE_FILE`` when set. ``None``,
    ``False`` or ``"off"``: none. A comma-separated string or a list of names (``NAMES``)
    and/or :class:`NoticeSource` objects: exactly those.
    """
    if spec is None or spec is False or (isinstance(spec, str) and spec.strip().lower() in ("off", "none", "")):
        return []
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        sources: list[NoticeSource] = [Signals()]
        if Kubernetes.detected():
            sources.append(Kubernetes())
        if Slurm.detected():
            sources.append(Slurm())
        if SageMaker.detected():
            sources.append(SageMaker())
        sources += [AWS(auto=True), GCP(auto=True), Azure(auto=True)]
        if os.environ.get(NOTICE_FILE_ENV):
            sources.append(FileTrigger())
        return sources
    items = spec.split(",") if isinstance(spec, str) else list(spec)  # type: ignore[arg-type]
    sources = []
    for item in items:
        if isinstance(item, NoticeSource):
            sources.append(item)
            continue
        if not isinstance(item, str):
            raise TypeError(f"notices= takes 'auto', None, names or NoticeSource objects, not {item!r}.")
        name = item.strip().lower()
        factory = {"signals": Signals, "signal": Signals, "kubernetes": Kubernetes, "k8s": Kubernetes,
                   "slurm": Slurm, "sagemaker": SageMaker, "aws": AWS, "gcp": GCP, "azure": Azure, "file": FileTrigger}.get(name)
        if factory is None:
            raise ValueError(f"Unknown notice source {item!r}; use 'auto' or any of {', '.join(NAMES)}.")
        sources.append(factory())
    return sources
