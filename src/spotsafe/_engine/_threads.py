"""What the engine's background threads share: their priority, and the one way their failures reach the caller.

A background thread cannot raise into the caller's thread. Its failure is stored in a
:class:`BackgroundErrors` and re-raised by the caller's next ``save()``, ``wait()`` or
``close()``, once (Orbax's ``_FinalizeThread``: store, then re-raise on join). Persisting,
deleting and uploading all report this way; the thread inventory is in the package's
docstring (:mod:`spotsafe._engine`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque

from .._env import BACKGROUND_NICE_ENV

logger = logging.getLogger(__name__)

BACKGROUND_NICE = int(os.environ.get(BACKGROUND_NICE_ENV, "10"))  # added to the nice value of the
# threads that persist and upload; 0 turns it off


def lower_thread_priority(by: int = BACKGROUND_NICE) -> None:
    """Make the calling thread yield the CPU to the training loop (Linux: per-thread nice).

    Persisting mostly waits on the disk, so it loses little; the loop, which on a small
    machine uses every core, no longer loses its CPU to checksums and kernel copies.
    """
    if by <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (AttributeError, OSError):
        pass


class BackgroundErrors:
    """Failures of background threads, held until the caller's thread raises them: each exactly once.

    A background thread calls :meth:`put` with the error the caller should see (a leaf class
    whose one-sentence message names the step or the file) and the exception that actually
    happened, kept as its ``__cause__``. The caller's thread calls :meth:`raise_next` at every
    ``save()`` / ``wait()`` / ``close()``: the oldest stored error is removed and raised, so a
    failure is raised once, and several are raised by successive calls, in the order they
    happened (none is dropped for another). :meth:`drain` takes what is left when there is no
    next call (``close()``). Every error is also logged when it is stored, so an operator sees
    it when it happens, not only when the loop next calls.

    Any thread may call any method. At most ``limit`` errors are held (a store that fails
    every few seconds for a day must not fill memory); beyond, the oldest held one is
    dropped and counted, and the next error raised says how many were.
    """

    def __init__(self, limit: int = 100) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}.")
        self._lock = threading.Lock()
        self._errors: deque[BaseException] = deque()
        self._limit = limit
        self._dropped = 0

    def put(self, error: BaseException, cause: BaseException | None = None) -> None:
        """Store ``error`` (from any thread) for the caller's next call; ``cause`` becomes its ``__cause__``."""
        if cause is not None and cause is not error:
            error.__cause__ = cause
            error.__suppress_context__ = True
        logger.error("%s", error)
        with self._lock:
            self._errors.append(error)
            while len(self._errors) > self._limit:
                self._errors.popleft()
                self._dropped += 1

    @property
    def pending(self) -> int:
        """How many stored errors no call has raised yet."""
        with self._lock:
            return len(self._errors)

    def raise_next(self) -> None:
        """Raise the oldest stored error and forget it; return when none is stored."""
        with self._lock:
            if not self._errors:
                return
            error = self._errors.popleft()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            error.add_note(f"{dropped} older background failure(s) were dropped (logged when they happened).")
        raise error

    def drain(self) -> list[BaseException]:
        """Take every stored error, oldest first (for a last call such as ``close()``)."""
        with self._lock:
            errors, self._errors = list(self._errors), deque()
            dropped, self._dropped = self._dropped, 0
        if dropped and errors:
            errors[0].add_note(f"{dropped} older background failure(s) were dropped (logged when they happened).")
        return errors
