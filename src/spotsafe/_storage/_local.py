"""Local POSIX storage and its commit strategy: temp dir, fsync, rename.

Why rename: on a POSIX file system ``rename(2)`` of a directory is atomic, so a reader
sees either no ``step-N/`` or a complete one. The sequence is: write every file into
``step-N.tmp-<id>/`` and fsync it; write ``manifest.json`` and fsync it; fsync the temp
dir; rename it to ``step-N/``; fsync the root so the rename itself is durable. A crash
at any instant leaves the old set of checkpoints, or the old set plus the new one; the
temp dir left by a crash is never loaded and is removed by the next writer.

All file-system calls go through the ``os`` module (``os.pwrite``, ``os.fsync``,
``os.rename``) so crash tests can kill the process at any one of them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from .._format._hash import digest_fd, new_hasher
from ..errors import ReadOnlyRootError, UnsafeFileError
from ._protocol import CommitStrategy, Handle, LocalFiles, OpenSaves, Storage
from ._reads import hash_in_order

_PIECE = 32 << 20  # write granularity: small enough to overlap hashing, large enough to stream
_READ_PIECE = 8 << 20  # read granularity: several reads in flight even for small files
_HASH_BATCH = 8 << 20  # small pieces are hashed together, one helper-thread job per batch
_PAGE = 4096  # O_DIRECT granularity: offsets, lengths and memory addresses in whole pages


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(root: Path, rel: str) -> int:
    """A read-only descriptor of the regular file ``root/rel``, never through a link.

    Every component below ``root`` is opened with ``O_NOFOLLOW`` relative to the one above
    it, so a ``step-*`` directory or a file that is a symbolic link is refused rather than
    followed out of the root. ``O_NONBLOCK`` keeps a FIFO from blocking the open; anything
    that is not a regular file (FIFO, device, socket) is then refused. The caller closes
    the descriptor. Raises :class:`UnsafeFileError` (an OSError) or FileNotFoundError.
    """
    head, _, name = rel.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise UnsafeFileError(errno.EINVAL, f"{rel!r} is not a path inside the run root")
    dfd = _open_dir(root, head)
    try:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeFileError(e.errno, f"{rel} is a symbolic link; checkpoints are never read through "
                                               "links") from None
            raise
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFileError(errno.EINVAL, f"{rel} is not a regular file (a directory, FIFO, device or socket)")
    if getattr(os, "O_NONBLOCK", 0):
        os.set_blocking(fd, True)
    return fd


def _open_dir(root: Path, rel: str) -> int:
    """A descriptor of the directory ``root/rel``, never through a link below ``root``."""
    parts = [p for p in rel.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UnsafeFileError(errno.EINVAL, f"{rel!r} is not a path inside the run root")
    dfd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    for part in parts:
        try:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=dfd)
        except OSError as e:
            os.close(dfd)
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeFileError(e.errno, f"{part} is a link or not a directory; checkpoints are never "
                                               "read through links") from None
            raise
        os.close(dfd)
        dfd = nfd
    return dfd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` until it is full or the file ends; bytes read."""
    total = 0
    while total < len(view):
        n = os.preadv(fd, [view[total:]], offset + total)
        if not n:
            break
        total += n
    return total


def _update_all(hasher: Any, views: list[memoryview]) -> None:
    for v in views:
        hasher.update(v)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _open_direct(path: Path) -> int | None:
    """A second descriptor of ``path`` with O_DIRECT, or None where that is not possible."""
    if not hasattr(os, "O_DIRECT"):
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError:
        return None


class AtomicRenameCommit:
    """Commit strategy for POSIX directories: manifest into the temp dir, fsync, then rename.

    Needs a store with paths (:class:`~spotsafe._storage._protocol.LocalFiles`) whose
    ``begin`` returned a temp directory. The atomic step is ``rename(2)``. What a crash
    leaves, by where it strikes: before the rename, ``<handle>/`` with or without a
    manifest (not a step name: never listed, removed by the next writer); between the
    rename and the fsync of the root, a complete ``final_name/`` (after a power loss, the
    rename may be undone: the old set, never half a step); after that fsync, the step,
    complete and durable.
    """

    def commit(self, storage: Storage, handle: Handle, final_name: str, manifest_name: str,
               manifest: bytes) -> None:
        """Write the manifest, make everything durable and publish ``handle`` as ``final_name``.

        Raises FileExistsError when ``final_name`` exists; the caller decides what to do.
        """
        if not isinstance(storage, LocalFiles):
            raise TypeError(f"AtomicRenameCommit needs a store on a POSIX file system, and {storage.url} is not one; "
                            "use ManifestLastCommit for an object store.")
        tmp, final = storage.path(handle), storage.path(final_name)
        fd = os.open(tmp / manifest_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, memoryview(manifest))
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(tmp)
        if final.exists():
            raise FileExistsError(final)
        os.rename(tmp, final)
        _fsync_dir(final.parent)


class LocalStorage:
    """A run root on a local (or network-mounted POSIX) file system.

    Implements :class:`~spotsafe._storage._protocol.Storage` and
    :class:`~spotsafe._storage._protocol.LocalFiles`; the protocol's module docstring gives
    the call order and which engine thread calls what (writes on the persist thread,
    removals on the gc thread, reads on the upload thread and, for restore, the caller's
    thread with the I/O executor). Single writer per root: the process that saves is the
    one that cleans leftovers.

    Args:
        root: The run root directory (``~`` is expanded; made absolute).
        commit: How a save is published (:class:`~spotsafe._storage._protocol.CommitStrategy`);
            default :class:`AtomicRenameCommit`.
    """

    def __init__(self, root: str | os.PathLike, *, commit: CommitStrategy | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.commit_strategy: CommitStrategy = commit if commit is not None else AtomicRenameCommit()
        self._saves = OpenSaves(str(self.root))

    @property
    def url(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"

    # -- reading -------------------------------------------------------------------
    def exists(self) -> bool:
        return self.root.is_dir()

    def listdir(self, rel: str = "") -> list[str]:
        """Names in ``root/rel``; an empty list when it does not exist.

        ``rel`` is opened below the root without following links (a link there raises
        :class:`UnsafeFileError`); the names listed may be anything, links included, and
        every later read of one goes through :func:`open_regular`.
        """
        try:
            fd = _open_dir(self.root, rel)
        except FileNotFoundError:
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def listdir_committed(self, marker: str) -> list[str]:
        """Names under the root; a rename is the commit, so every ``step-N`` is committed."""
        return self.listdir()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def size(self, rel: str) -> int | None:
        """Size of a regular file in bytes, or None when missing.

        Raises :class:`UnsafeFileError` when it, or a directory on the way, is a link, a
        FIFO, a device or a socket: such a member is never read.
        """
        try:
            fd = open_regular(self.root, rel)
        except FileNotFoundError:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read_bytes(self, rel: str) -> bytes:
        """The whole regular file ``rel`` (through :func:`open_regular`: never a link, FIFO or device)."""
        fd = open_regular(self.root, rel)
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    def open_member(self, rel: str) -> int:
        """A read-only descriptor of the checkpoint file ``rel`` (see :func:`open_regular`); the caller closes it."""
        return open_regular(self.root, rel)

    def digest(self, rel: str, size: int | None = None) -> tuple[int, str]:
        """(bytes read, xxh3 digest) of a regular file (``size``: the expected size, a buffer hint)."""
        fd = open_regular(self.root, rel)
        try:
            return digest_fd(fd, size)
        finally:
            os.close(fd)

    def read_files(self, items: list[tuple[str, memoryview]], io_executor: Executor) -> list[tuple[int, str]]:
        """Fill each ``(rel, buf)`` from its file and hash it; (bytes read, digest) per item.

        Every piece of every file is queued up front as an ``os.preadv`` on
        ``io_executor`` (a cold read from a virtual disk goes faster with a deeper queue),
        and the calling thread hashes each file's pieces in order as they arrive. A read
        stops at the end of its buffer or of its file.
        """
        fds: list[int] = []
        jobs: list[list[tuple[int, int, Any]]] = []
        try:
            for rel, buf in items:
                fd = open_regular(self.root, rel)
                fds.append(fd)
                n = min(os.fstat(fd).st_size, len(buf))
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, n, os.POSIX_FADV_SEQUENTIAL)
                jobs.append([(start, min(start + _READ_PIECE, n),
                              io_executor.submit(_pread_full, fd, buf[start:min(start + _READ_PIECE, n)], start))
                             for start in range(0, n, _READ_PIECE)])
            return hash_in_order([buf for _, buf in items], jobs)
        finally:
            for pieces in jobs:
                for _, _, fut in pieces:
                    fut.exception()  # wait: every fd must outlive its reads
            for fd in fds:
                os.close(fd)

    # -- writing -------------------------------------------------------------------
    def make_root(self) -> None:
        """Create the root (and its parents); an error names the root and what to do instead."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next((p for p in (self.root, *self.root.parents) if p.exists() and not p.is_dir()), self.root)
            raise NotADirectoryError(f"Run root {self.root} cannot be created: {blocker} is a file, not a directory; "
                                     "use a directory path as the root.") from None
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            raise ReadOnlyRootError(f"Run root {self.root} cannot be created here ({e.strerror}); use a writable "
                                    "directory as the root.") from None

    def begin(self, final_name: str, tmp_name: str) -> Handle:
        """Start a save that will be published as ``final_name``: create its temp directory ``tmp_name``."""
        (self.root / tmp_name).mkdir()
        return self._saves.begun(tmp_name)

    def join(self, tmp_name: str, *, create: bool = False) -> Handle:
        """Write into a save another process began in this root (the ranks of one job on a shared
        file system): its temp directory must exist (``create``: made when it does not, by
        whichever rank comes first). The process that owns it commits it; this one only writes
        files, and ends its part with :meth:`leave`."""
        if create:
            (self.root / tmp_name).mkdir(exist_ok=True)
        if not (self.root / tmp_name).is_dir():
            raise FileNotFoundError(f"{self.root / tmp_name} does not exist: the save it belongs to was not begun "
                                    "there, or was already committed or aborted")
        return self._saves.begun(tmp_name)

    def leave(self, handle: Handle) -> None:
        """End this process's part in a save it joined, leaving the directory to its owner."""
        self._saves.end(handle)

    def abort(self, handle: Handle) -> None:
        """Throw away an uncommitted save: its temp directory goes."""
        self._saves.end(handle)
        self.remove(handle)

    def write_file(self, handle: Handle, name: str, pieces: Iterable[memoryview],
                   hash_executor: Executor, *, direct: bool = False) -> tuple[int, str]:
        """Write ``pieces`` to a new file of the save, hash them on ``hash_executor``, fsync; (size, digest).

        The executor must run tasks in submission order (one worker), because the hash
        is a stream. Writing and hashing overlap, and hashing also hides under fsync.

        ``direct``: the pieces start page-aligned in memory (a staging buffer), so whole
        pages go out with ``O_DIRECT``, straight from the buffer to the device, and only
        an unaligned tail through the page cache. Writing through the page cache costs a
        kernel copy of every byte, CPU that a background save takes from the training
        loop. Where the file system refuses ``O_DIRECT`` (tmpfs, some network file
        systems) the write falls back to the page cache. The fsync is the same either way.
        """
        hasher = new_hasher()
        futures = []
        batch: list[memoryview] = []
        batched = size = 0
        path = self.root / handle / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        dfd = _open_direct(path) if direct else None
        try:
            for piece in pieces:
                for start in range(0, len(piece), _PIECE):
                    chunk = piece[start:start + _PIECE]
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= _HASH_BATCH:
                        futures.append(hash_executor.submit(_update_all, hasher, batch))
                        batch, batched = [], 0
                    whole = len(chunk) - len(chunk) % _PAGE if dfd is not None and size % _PAGE == 0 else 0
                    if whole:
                        try:
                            _pwrite_all(dfd, chunk[:whole], size)
                        except OSError as e:
                            if e.errno != errno.EINVAL:
                                raise
                            os.close(dfd)  # this file system takes no O_DIRECT here: page cache from now on
                            dfd, whole = None, 0
                    _pwrite_all(fd, chunk[whole:], size + whole)
                    size += len(chunk)
            if batch:
                futures.append(hash_executor.submit(_update_all, hasher, batch))
            os.fsync(fd)
        finally:
            if dfd is not None:
                os.close(dfd)
            os.close(fd)
            for f in futures:
                f.result()
        return size, hasher.hexdigest()

    def commit(self, handle: Handle, final_name: str, manifest_name: str, manifest: bytes) -> None:
        """Publish the save ``handle`` as ``final_name`` through :attr:`commit_strategy`."""
        self._saves.check(handle)
        self.commit_strategy.commit(self, handle, final_name, manifest_name, manifest)
        self._saves.end(handle)

    def retire(self, name: str, trash_name: str) -> str:
        """Make committed ``name`` invisible at once; returns what to :meth:`remove` later.

        A rename is fast and durable, so a crash mid-delete leaves a leftover that the next
        writer removes, never a half-deleted ``step-N/``.
        """
        self.rename(name, trash_name)
        return trash_name

    def put_bytes(self, rel: str, data: bytes) -> None:
        """Replace the small file ``rel`` whole: written beside it, then renamed over it."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, path)

    def rename(self, src: str, dst: str) -> None:
        os.rename(self.root / src, self.root / dst)
        _fsync_dir(self.root)

    def remove(self, rel: str, *, strict: bool = False) -> None:
        """Remove a directory tree (or file); missing is fine. ``strict`` raises other errors."""
        p = self.root / rel
        if p.is_dir() and not p.is_symlink():  # a link is removed itself, never what it points to
            shutil.rmtree(p, ignore_errors=not strict)
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
