"""What every object store shares: :class:`ObjectStore`, the base of
:class:`~._obstore.ObstoreStorage` (S3) and :class:`~._fsspec.FsspecStorage` (every other URL).

Commit strategy (:class:`ManifestLastCommit`, shared by every object store): object
stores have no rename, so a save writes its files straight to their final keys under
``step-N/`` and publishes them by writing ``manifest.json`` last. A single PUT is atomic,
so a reader sees the whole manifest or none; a ``step-N/`` without a manifest is an upload
in flight or abandoned, invisible to readers (``listdir_committed``), and removed later by
the next writer. Retiring a checkpoint deletes its manifest first, for the same reason.

The base holds the parts whose logic is the same whatever the client: the save's phases
(``begin`` -> ``write_file`` -> ``commit`` | ``abort``, checked by
:class:`~._protocol.OpenSaves`), the write guard of the writer lease, and a restore's
parallel ranged reads hashed in file order. A subclass supplies the requests: ``_get_range``,
``put_bytes``, ``remove`` and the rest of :class:`~._protocol.Storage`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from concurrent.futures import Executor

from ..errors import CorruptCheckpointError
from ._protocol import CommitStrategy, Handle, OpenSaves, Storage
from ._reads import hash_in_order

READ_PIECE = 16 << 20  # ranged GETs in flight at once during a restore

class ManifestLastCommit:
    """Commit strategy for object stores: every file first, the manifest PUT last.

    Needs a store whose ``begin`` returned ``final_name`` itself (files written in place)
    and whose ``listdir_committed`` lists only names holding the manifest. The atomic step
    is the one PUT. A crash before it leaves ``final_name/`` without a manifest, perhaps
    with an incomplete multipart upload (never listed; the next writer removes both);
    after it, the step committed and complete.
    """

    def commit(self, storage: Storage, handle: Handle, final_name: str, manifest_name: str,
               manifest: bytes) -> None:
        """PUT ``manifest`` as ``final_name/manifest_name``: the commit point."""
        if handle != final_name:
            raise ValueError(f"ManifestLastCommit publishes files written in place, but {storage.url} wrote this "
                             f"save under {handle!r}, not {final_name!r}; use AtomicRenameCommit on that store.")
        storage.put_bytes(f"{final_name}/{manifest_name}", manifest)


class ObjectStore:
    """The shared half of an object store; see the module docstring. Not used on its own."""

    def __init__(self, url: str, commit: CommitStrategy | None) -> None:
        self._url = url.rstrip("/")
        self.commit_strategy: CommitStrategy = commit if commit is not None else ManifestLastCommit()
        self._saves = OpenSaves(self._url)
        # Called before every write: the writer lease's check (one writer per root), or None;
        # strict=True (before a commit or a deletion) asks the store itself, not the last heartbeat.
        self.write_guard: Callable[[bool], None] | None = None

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url!r})"

    def _guard(self, strict: bool = False) -> None:
        if self.write_guard is not None:
            self.write_guard(strict)

    # -- reading -------------------------------------------------------------------
    def _get_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``rel``; fewer, or none, where the object ends before ``end``."""
        raise NotImplementedError

    def read_files(self, items: list[tuple[str, memoryview]], io_executor: Executor) -> list[tuple[int, str]]:
        """Fill each ``(rel, buf)`` with ranged GETs in parallel; (bytes read, digest) per item."""

        def fetch(rel: str, view: memoryview, start: int) -> int:
            data = self._get_range(rel, start, start + len(view))
            view[:len(data)] = data
            return len(data)

        jobs = [[(start, min(start + READ_PIECE, len(buf)),
                  io_executor.submit(fetch, rel, buf[start:min(start + READ_PIECE, len(buf))], start))
                 for start in range(0, len(buf), READ_PIECE)] for rel, buf in items]
        try:
            return hash_in_order([buf for _, buf in items], jobs)
        finally:
            for pieces in jobs:
                for _, _, fut in pieces:
                    fut.cancel()

    # -- writing -------------------------------------------------------------------
    def make_root(self) -> None:
        """Nothing to create: object stores make prefixes implicitly (the bucket must exist)."""

    def remove(self, rel: str, *, strict: bool = False) -> None:
        raise NotImplementedError

    def begin(self, final_name: str, tmp_name: str) -> Handle:
        """Uploads go straight to ``final_name``; a stale uncommitted one there is removed first."""
        self.remove(final_name)
        return self._saves.begun(final_name)

    def abort(self, handle: Handle) -> None:
        """Throw away an uncommitted save: everything under ``handle`` goes."""
        self._saves.end(handle)
        self.remove(handle)

    def commit(self, handle: Handle, final_name: str, manifest_name: str, manifest: bytes) -> None:
        """Publish the save ``handle`` as ``final_name`` through :attr:`commit_strategy`."""
        self._saves.check(handle)
        self.commit_strategy.commit(self, handle, final_name, manifest_name, manifest)  # type: ignore[arg-type]
        self._saves.end(handle)


def pread_exact(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes of ``fd`` from ``offset``, fewer only at the end of the file."""
    data = os.pread(fd, n, offset)
    if len(data) == n or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def check_upload(sent: int, digest: str, size: int, checksum: str, path: str) -> None:
    """Raise CorruptCheckpointError unless the bytes read for ``path`` are the manifest's."""
    name = posixpath.basename(path)
    if sent != size:
        raise CorruptCheckpointError(f"{name} ended after {sent} bytes while uploading, manifest says {size}")
    if digest != checksum:
        raise CorruptCheckpointError(f"{name} fails its checksum while uploading ({digest}, manifest says {checksum})")
