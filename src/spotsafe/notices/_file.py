"""A file whose appearance is a notice: for drills, and for orchestrators that can touch a file."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

from .._env import NOTICE_FILE_ENV
from .._storage._local import open_regular
from .._units import parse_duration
from ._notice import DEFAULT_GRACE, Notice, NoticeSource
from ._poller import poll_interval

logger = logging.getLogger(__name__)

MAX_NOTICE_BYTES = 64  # a duration such as "45" or "2m"; anything longer is not read


class FileTrigger(NoticeSource):
    """A notice when ``path`` exists; the file may hold the seconds left (``"45"``, ``"2m"``).

    Default path: ``$SPOTSAFE_NOTICE_FILE``. Polled every ``interval`` (default as the
    other pollers) from a daemon thread; one ``lstat`` per poll. Anything appearing at the
    path is a notice, but only a regular file is read, and only its first
    :data:`MAX_NOTICE_BYTES` bytes: a link is not followed, and a FIFO or a device is never
    opened for a blocking read (the poller must not hang), so those mean the default grace.
    """

    name = "file"

    def __init__(self, path: str | os.PathLike | None = None, *, interval: float | str | timedelta | None = None,
                 grace: float | str | timedelta = DEFAULT_GRACE) -> None:
        path = path if path is not None else os.environ.get(NOTICE_FILE_ENV)
        if not path:
            raise ValueError(f"FileTrigger needs a path; pass one or set {NOTICE_FILE_ENV}.")
        self.path = Path(path)
        self.interval = poll_interval(interval)
        self.grace = parse_duration(grace, what="grace")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, watcher) -> None:
        self._watcher = watcher
        self._thread = threading.Thread(target=self._run, name="spotsafe-notice-file", daemon=True)
        self._thread.start()

    def _read(self) -> str:
        """The first bytes of the notice file, as text; raises OSError when it is not a regular file."""
        fd = open_regular(self.path.parent, self.path.name)
        try:
            return os.read(fd, MAX_NOTICE_BYTES).decode("utf-8", errors="replace").strip()
        finally:
            os.close(fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                os.lstat(self.path)
                appeared = True
            except OSError:
                appeared = False
            if appeared:
                now = time.time()
                grace = self.grace
                try:
                    text = self._read()
                    if text:
                        grace = parse_duration(text, what=str(self.path))
                except (OSError, ValueError) as e:
                    logger.info("Notice file %s does not hold a duration (%s); assuming %gs", self.path,
                                getattr(e, "strerror", None) or e, grace)
                self._watcher.post(Notice(source=self.name, deadline=now + grace, reason=f"{self.path} appeared",
                                          received=now))
                return
            self._stop.wait(self.interval)

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
