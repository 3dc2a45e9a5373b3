"""Copies event files to ``<remote>/events/`` in the background (no torch).

An object store cannot append, so a file is copied whole (one PUT: the copy on the
remote is always a complete snapshot of the local file at some moment). Each remote file
has one writer at a time: a ``spotsafe.Run`` copies its own file when it is not
supervised; under ``spotsafe run`` the supervisor copies every file of the run, including
those of attempts that were killed before they could. Failures are logged and retried on
the next push: telemetry never stops training.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._storage import Storage

logger = logging.getLogger(__name__)

REMOTE_EVENTS = "events"


class EventMirror:
    """Background copier of local ``*.jsonl`` event files to ``<remote>/events/``."""

    def __init__(self, remote: str | Storage, storage_options: dict[str, Any] | None = None) -> None:
        self.remote = remote
        self._options = storage_options
        self._storage: Storage | None = None  # opened on the mirror thread, at the first copy
        self._pushed: dict[str, int] = {}      # file name -> size last copied
        self._queue: set[Path] = set()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="spotsafe-event-mirror", daemon=True)
        self._thread.start()

    def push(self, *paths: str | os.PathLike) -> None:
        """Queue files (or every ``*.jsonl`` of a directory) for copying; returns at once."""
        with self._cond:
            for p in map(Path, paths):
                self._queue.update(p.glob("*.jsonl") if p.is_dir() else [p])
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is copied (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> bool:
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return done

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if self._closed and not self._queue:
                    return
                batch, self._queue = sorted(self._queue), set()
                self._busy = True
            try:
                for path in batch:
                    self._copy(path)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _copy(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError:
            return
        if self._pushed.get(path.name) == len(data):
            return
        try:
            if self._storage is None:
                from .._storage import Storage, open_storage

                self._storage = open_storage(self.remote, None if isinstance(self.remote, Storage) else self._options)
            self._storage.put_bytes(f"{REMOTE_EVENTS}/{path.name}", data)
            self._pushed[path.name] = len(data)
        except Exception as e:
            self.errors += 1
            logger.warning("Cannot copy events %s to %s/%s (%s); will try again on the next push.",
                           path.name, self.remote, REMOTE_EVENTS, e)


def read_remote_events(remote: str, storage_options: dict[str, Any] | None = None) -> list[dict]:
    """Every event under ``<remote>/events/`` (all writers), oldest first; torn lines skipped."""
    from .._storage import open_storage
    from ._events import parse_lines

    storage = open_storage(remote, storage_options)
    out: list[dict] = []
    for name in storage.listdir(REMOTE_EVENTS):
        if name.endswith(".jsonl"):
            out += parse_lines(storage.read_bytes(f"{REMOTE_EVENTS}/{name}").decode(errors="replace"))
    out.sort(key=lambda r: r["ts"])
    return out
