"""The storage protocol: what the engine asks of a run root, in which order, from which thread.

Modelled on torch.distributed.checkpoint's ``StorageWriter`` (a store should expect a fixed
sequence of calls) and Orbax's ``atomicity_types.py`` (the commit is a strategy object).
Every store (:class:`~spotsafe._storage.LocalStorage`, :class:`~spotsafe._storage.ObstoreStorage`,
:class:`~spotsafe._storage.FsspecStorage`)
implements :class:`Storage`; what only some stores can do is a separate, smaller protocol
(:class:`LocalFiles`, :class:`Uploadable`) that a caller checks with ``isinstance``.

Layout: names are ``/``-separated and relative to the root (``step-000000001500/model.bin``);
a store never learns what a step, a tensor or a manifest's content is.

**A write has three phases**, and a store should expect exactly this sequence of calls::

    handle = begin(final_name, tmp_name)          # once
    write_file(handle, name, pieces, executor)    # once per file, never "manifest.json"
    commit(handle, final_name, manifest_name, manifest)   # or, on any failure:
    abort(handle)

``begin`` returns the *handle*: the name, relative to the root, under which the files of
this save are written (``tmp_name`` on a POSIX disk, ``final_name`` on an object store).
``commit`` of a handle that this store's ``begin`` did not return, or that was already
committed or aborted, is refused with :class:`SaveNotBegunError` and changes nothing; a
failed ``commit`` leaves the handle open for a retry or an ``abort``. ``abort`` is always
allowed (it runs on error paths, and must not hide the error that led there). A handle is
used by one thread at a time; two saves run at once only under different names.

**Removal has two phases**: ``retire(name, trash_name)`` makes a committed checkpoint
invisible at once (the returned name is no longer listed by ``listdir_committed``), and
``remove`` of that name deletes its bytes later, possibly on another thread. A crash
between the two leaves a leftover that the next writer removes, never half a ``step-N/``.

**What is atomic** (the commit point, see :class:`CommitStrategy`):

* POSIX (:class:`~spotsafe._storage.AtomicRenameCommit`): ``rename(2)`` of the fsynced temp
  dir to ``step-N/``; a reader sees no ``step-N/`` or a complete one.
* Object stores (:class:`~spotsafe._storage.ManifestLastCommit`): one PUT of the manifest,
  after every file; a reader (``listdir_committed``) sees a step only once its manifest
  exists. Deleting that one object is likewise the atomic un-commit of ``retire``.
* ``put_bytes`` replaces a small file whole (rename on POSIX, one PUT on object stores).

Nothing else is atomic: a ``write_file`` cut short leaves a partial file under an
uncommitted handle, which readers never list and the next writer removes.

**Which thread calls what** (the engine, :mod:`spotsafe._engine`; every store is shared by
these threads, so each method must be safe to call while another runs on a different name):

* The caller's thread (``CheckpointManager(...)``, ``save``, ``restore``, ``checkpoints``,
  the CLI): ``make_root`` and the cleaning of leftovers (``listdir``, ``listdir_committed``,
  ``remove``) when a writer opens the root; in ``save``, reads (``size``, ``read_bytes``,
  ``digest``) of a step saved again, and its ``retire`` + ``remove`` when it is invalid;
  restore's ``read_files``, whose pieces run on the manager's I/O executor (``spotsafe-io``,
  4 threads) while the caller hashes them; and the repair of a local copy after a restore
  from the remote (``begin`` ... ``commit``, ``retire``).
* The persist thread (``spotsafe-persist``; the caller's thread when ``async_save=False``):
  ``begin``, ``write_file`` (hashing on ``spotsafe-hash``, one worker, in order),
  ``commit`` or ``abort``; then retention's reads and ``retire`` of old steps.
* The gc thread (``spotsafe-gc``): ``remove(name, strict=True)`` of what was retired.
* The upload thread (``spotsafe-upload``, :mod:`spotsafe._engine._replicate`): on the local
  root, reads only (``listdir_committed``, ``open_member``); on the remote, every phase
  (``listdir``, ``size``, ``read_bytes``, ``retire``, ``remove``, ``begin``,
  ``upload_file``, ``commit``, ``abort_incomplete_uploads``).
* The lease heartbeat (``spotsafe-lease``) talks to the object store on its own; a store's
  write guard, set by the writer, may be called from any of the writing threads above.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import SpotsafeError

# The handle of a save in progress: the name, relative to the root, that begin() returned and
# that write_file(), commit() and abort() are given back.
Handle = str


class SaveNotBegunError(SpotsafeError, RuntimeError):
    """``commit`` of a handle that ``begin`` did not return, or that was already committed or aborted."""


@runtime_checkable
class Storage(Protocol):
    """A run root: bytes at names, a write in phases, an atomic commit. See the module docstring."""

    commit_strategy: CommitStrategy  # how commit() publishes a save (chosen with the store's commit=)

    @property
    def url(self) -> str:
        """Where the root is, as a user would write it (an absolute path or a URL); never credentials."""
        ...

    # -- reading (any thread) ----------------------------------------------------------
    def exists(self) -> bool:
        """Whether the root holds anything (a local directory that exists, a non-empty prefix)."""
        ...

    def listdir(self, rel: str = "") -> list[str]:
        """Sorted names directly under ``rel``, committed or not; [] when there are none."""
        ...

    def listdir_committed(self, marker: str) -> list[str]:
        """Sorted names under the root that are committed (``marker``: the manifest's name)."""
        ...

    def size(self, rel: str) -> int | None:
        """Size of the file ``rel`` in bytes, or None when it is missing."""
        ...

    def read_bytes(self, rel: str) -> bytes:
        """The whole file ``rel``; FileNotFoundError when missing."""
        ...

    def digest(self, rel: str, size: int | None = None) -> tuple[int, str]:
        """(bytes read, xxh3 digest) of the file ``rel``, streamed (``size``: expected, a hint)."""
        ...

    def read_files(self, items: list[tuple[str, memoryview]], io_executor: Executor) -> list[tuple[int, str]]:
        """Fill each ``(rel, buf)`` from its file in parallel on ``io_executor``; (bytes read, digest) each."""
        ...

    # -- writing (see the phases in the module docstring) -----------------------------
    def make_root(self) -> None:
        """Create the root where that means something (a local directory); idempotent."""
        ...

    def begin(self, final_name: str, tmp_name: str) -> Handle:
        """Start a save to be published as ``final_name``; returns its handle (see :data:`Handle`)."""
        ...

    def write_file(self, handle: Handle, name: str, pieces: Iterable[memoryview], hash_executor: Executor, *,
                   direct: bool = False) -> tuple[int, str]:
        """Write ``pieces`` as the new file ``name`` of the save; (size, xxh3 digest). Durable on return
        on a POSIX disk (fsync); ``direct``: the pieces are page-aligned, a store may bypass its cache."""
        ...

    def commit(self, handle: Handle, final_name: str, manifest_name: str, manifest: bytes) -> None:
        """Publish the save as ``final_name`` with ``manifest`` written last, through the store's
        :class:`CommitStrategy`; the atomic step. Raises :class:`SaveNotBegunError` without a begin."""
        ...

    def abort(self, handle: Handle) -> None:
        """Throw away an uncommitted save: nothing of it stays listed. Missing is fine."""
        ...

    def retire(self, name: str, trash_name: str) -> str:
        """Un-commit the checkpoint ``name`` at once; returns the name to :meth:`remove` later."""
        ...

    def put_bytes(self, rel: str, data: bytes) -> None:
        """Replace the small file ``rel`` whole, atomically (a reader sees the old bytes or the new)."""
        ...

    def remove(self, rel: str, *, strict: bool = False) -> None:
        """Delete ``rel`` and everything under it; missing is fine. ``strict``: raise other errors."""
        ...


@runtime_checkable
class LocalFiles(Storage, Protocol):
    """A store on a POSIX file system: members as descriptors and paths (the upload thread reads
    the local root through :meth:`open_member`, and :class:`AtomicRenameCommit` needs :meth:`path`)."""

    def open_member(self, rel: str) -> int:
        """A read-only descriptor of the regular file ``rel``, never through a link; the caller closes it."""
        ...

    def path(self, *parts: str) -> Path:
        """The absolute path of ``parts`` below the root."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` below the root, durably (the directory is fsynced)."""
        ...


@runtime_checkable
class Uploadable(Storage, Protocol):
    """A remote store the replicator uploads local files to (an object store)."""

    def upload_file(self, fd: int, rel: str, *, size: int, checksum: str) -> None:
        """Upload ``size`` bytes of the open local file ``fd`` to ``rel``, hashed as they are read;
        CorruptCheckpointError (and nothing left at ``rel``) unless they match ``checksum``."""
        ...

    def abort_incomplete_uploads(self, rel: str = "") -> int:
        """Abort the unfinished multipart uploads under ``rel`` left by killed writers; how many."""
        ...


class PreconditionFailedError(Exception):
    """A conditional write was refused: the object exists (create-only) or changed since (If-Match)."""


@runtime_checkable
class ConditionalObjects(Protocol):
    """A store whose single-object writes can be conditional: a compare-and-swap on one object.

    The writer lease (:mod:`._lease`) keeps its document with these, and a global commit
    can. They bypass the store's write guard (they are the guard's own requests). A
    *version* is an opaque dict (ETag and/or generation) returned by a read or a write.
    """

    def read_object(self, rel: str, limit: int) -> tuple[bytes | None, dict]:
        """(content, or None when larger than ``limit`` bytes; its version); FileNotFoundError when missing."""
        ...

    def put_object(self, rel: str, data: bytes, *, create_only: bool = False,
                   expect: dict | None = None) -> dict:
        """Write ``rel`` whole; only if it is missing (``create_only``) or still at version ``expect``.

        Returns the new version. Raises :class:`PreconditionFailedError` when the store refuses the
        condition, NotImplementedError when it cannot make conditional writes.
        """
        ...

    def delete_object(self, rel: str) -> None:
        """Delete the one object ``rel``; missing is fine."""
        ...


@runtime_checkable
class CommitStrategy(Protocol):
    """How a store publishes a save: the one atomic step of a write (Orbax's ``TemporaryPath`` family).

    Called as ``strategy.commit(storage, handle, final_name, manifest_name, manifest)`` by
    ``storage.commit``, on the thread that wrote the files (see the module docstring), after
    the store checked that ``handle`` was begun and not yet ended.

    Before the call, every file of the save is written under ``handle`` (durably, on a
    POSIX disk), its size and digest are in ``manifest``, and no file named
    ``manifest_name`` exists there. On return, ``final_name`` is committed: listed by
    ``storage.listdir_committed(manifest_name)``, its manifest readable at
    ``f"{final_name}/{manifest_name}"``. A crash or an exception at any point before the
    atomic step leaves ``final_name`` uncommitted (never listed, removed by the next writer),
    and after it, committed and complete: there is no third state. A strategy must not
    retry on its own (the caller's retries wrap the whole step), and raises
    FileExistsError rather than overwrite a committed ``final_name``.

    A caller chooses one with ``open_storage(root, commit=...)`` (or a store's ``commit=``),
    e.g. to observe commits, or to publish with a store's conditional PUT.
    """

    def commit(self, storage: Storage, handle: Handle, final_name: str, manifest_name: str,
               manifest: bytes) -> None:
        """Write ``manifest`` as the save's last file and publish ``handle`` as ``final_name``."""
        ...


class OpenSaves:
    """The handles a store has begun and not yet committed or aborted: enforces the call order.

    Thread-safe: the persist thread and the caller's thread (a repair after restore) may hold
    saves of different names at once.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._open: set[str] = set()
        self._lock = threading.Lock()

    def begun(self, handle: Handle) -> Handle:
        with self._lock:
            self._open.add(handle)
        return handle

    def check(self, handle: Handle) -> None:
        """Raise SaveNotBegunError unless ``handle`` is open (before a commit)."""
        with self._lock:
            if handle in self._open:
                return
        raise SaveNotBegunError(f"Cannot commit {handle!r} in {self._url}: no save was begun under that name, or it "
                                "was already committed or aborted; call begin(), then write_file() per file, then "
                                "commit() or abort() once.")

    def end(self, handle: Handle) -> None:
        with self._lock:
            self._open.discard(handle)
