"""The writer lock of a local run root: one writing process per directory.

Why ``flock(2)`` on a file in the root: the kernel drops the lock when the last
descriptor of it closes, so a writer killed by SIGKILL, the OOM killer or a crashed node
(on a network file system, when its lease with the server ends) leaves no stale lock to
clean up, and the next writer takes the root at once. The file is never deleted (deleting
a lock file lets two processes lock two different inodes of the same name); it holds the
holder's identity as JSON, for the refusal message.

A descriptor survives ``fork()``: a forked child (a DataLoader worker) would keep the lock
alive after its parent died. Forked children therefore close their copy at once. The
descriptor is close-on-exec, so ``exec``-ed children never hold it. Within one process a
second lock of the same file is refused too (a network file system may emulate ``flock``
with per-process POSIX locks, which would let it through).

Call order: ``acquire()`` once, from the thread creating the writer; ``release()`` once,
from the thread closing it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path

from ..errors import ReadOnlyRootError, RootLockedError
from ._owner import Owner

logger = logging.getLogger(__name__)

_held: dict[tuple[int, int], WriterLock] = {}  # (st_dev, st_ino) -> the lock of this process
_held_lock = threading.Lock()


def _close_in_child() -> None:
    for lock in list(_held.values()):
        if lock._fd is not None:
            try:
                os.close(lock._fd)  # only this copy: LOCK_UN here would unlock the parent too
            except OSError:
                pass
            lock._fd = None
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class WriterLock:
    """An exclusive, kernel-released lock on ``root/name`` naming ``owner``."""

    def __init__(self, root: Path, name: str, owner: Owner) -> None:
        self.path = Path(root) / name
        self.owner = owner
        self._fd: int | None = None
        self._key: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RootLockedError` naming the holder."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RootLockedError(f"The writer lock {self.path} is a symbolic link; remove it and start "
                                      "again.") from None
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ReadOnlyRootError(f"Run root {self.path.parent} is not writable here ({e.strerror}); pass "
                                        "read_only=True to restore from it, or use a writable root.") from None
            raise
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            with _held_lock:
                mine = _held.get(key)
                if mine is None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError as e:
                        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                            raise
                    else:
                        _held[key] = self
                        self._fd, self._key = fd, key
            if self._fd is None:
                holder = mine.owner if mine is not None else self._read_holder()
                raise RootLockedError(self._refusal(holder, in_process=mine is not None))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.owner.to_dict()).encode() + b"\n", 0)
        except BaseException:
            if self._fd is None:
                os.close(fd)
            else:
                self.release()
            raise
        logger.debug("Took the writer lock %s", self.path)

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays, emptied."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with _held_lock:
            if self._key is not None and _held.get(self._key) is self:
                del _held[self._key]
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _read_holder(self) -> Owner | None:
        """The owner written in the lock file; it may be a moment late after the holder locked it."""
        for _ in range(20):
            try:
                with open(self.path, "rb") as f:
                    text = f.read(64 << 10)
                holder = Owner.from_dict(json.loads(text))
            except (OSError, ValueError):
                holder = None
            if holder is not None:
                return holder
            time.sleep(0.025)
        return None

    def _refusal(self, holder: Owner | None, *, in_process: bool) -> str:
        root = self.path.parent
        if in_process:
            return (f"Run root {root} is already being written by another CheckpointManager in this process "
                    f"({holder.describe() if holder else 'pid ' + str(os.getpid())}); close that one first, or use "
                    "another root.")
        who = holder.describe() if holder else "a process that did not say who it is"
        return (f"Run root {root} is being written by another process ({who}); wait for it to stop, stop it, or use "
                "another root (readers need no lock: pass read_only=True).")
