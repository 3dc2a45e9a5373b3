"""Object stores and other remote file systems, through fsspec (gs://, az://, memory://, ...).

Why fsspec: one maintained interface to every file system (gcsfs, adlfs, the in-memory
one, HDFS, HTTP), with each one's own credential chain and endpoints. S3 goes through
obstore instead (:mod:`._obstore`), which has no private API to call and nothing to work
around; this module serves the URLs only fsspec serves.

The commit strategy (the manifest PUT last), the save's phases and a restore's parallel
ranged reads are the shared :class:`~._objects.ObjectStore`'s; this module makes the requests.

Settings come from where the file system's own library reads them, or from explicit
``storage_options``. Options are never shown in ``repr`` or logs.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any

from .._format._hash import new_hasher
from ..errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    RemoteAccessError,
    RemoteUnavailableError,
    UnsupportedURLError,
)
from ._objects import READ_PIECE, ObjectStore, check_upload, pread_exact
from ._protocol import CommitStrategy, Handle

logger = logging.getLogger(__name__)

_PART = 16 << 20  # block size of a streamed write
_SMALL = 32 << 20  # files below this are written in one call
# Which extra installs the file system of a scheme.
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
           "adl": "azure"}


def is_url(root: str | os.PathLike) -> bool:
    """True for ``scheme://...`` other than ``file://``."""
    s = os.fspath(root)
    return "://" in s and not s.startswith("file://")


def _access_errors(method: Callable) -> Callable:
    """A reading method whose refused access or missing credentials raise :class:`RemoteAccessError`.

    File systems turn a refused request into a bare PermissionError that names neither the
    store nor the way out. It is permanent: never retried, never "unreachable".
    """

    @functools.wraps(method)
    def wrapper(self: FsspecStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RemoteAccessError:
            raise
        except PermissionError as e:
            raise RemoteAccessError(f"{self.url} refused access ({e}); check that the credentials are right and may "
                                    "read this bucket (see the file system's documentation).") from e
        except Exception as e:
            if _no_answer(e):  # still a ConnectionError, so still transient for the callers that retry
                raise RemoteUnavailableError(f"{self.url} did not answer ({type(e).__name__}: {e}); check the "
                                             "endpoint and the network, then retry.") from e
            raise

    return wrapper


def _no_answer(e: BaseException) -> bool:
    """A timeout or a refused or dropped connection, from the standard library or the HTTP stack."""
    if isinstance(e, (RemoteUnavailableError, FileNotFoundError, PermissionError)):
        return False
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    name = type(e).__name__
    return type(e).__module__.split(".")[0] in ("aiohttp", "urllib3", "requests") and (
        "Timeout" in name or "Connect" in name)


def _unknown(url: str, scheme: str) -> UnsupportedURLError:
    return UnsupportedURLError(f"Storage URL {url} has the unknown scheme {scheme!r}; use a local path, or a URL of "
                               "an fsspec file system: s3:// (spotsafe[s3]), gs:// (spotsafe[gcs]), az:// "
                               "(spotsafe[azure]), memory://.")


def _missing(url: str, scheme: str, e: ImportError) -> MissingDependencyError:
    extra = _EXTRAS.get(scheme)
    how = f"`pip install spotsafe[{extra}]`" if extra else "install the package fsspec names"
    return MissingDependencyError(f"Storage URL {url} needs a file-system package that is not installed ({e}); "
                                  f"run {how}.")


def check_url(url: str) -> None:
    """Raise unless an installed file system handles ``url``: no request, no credentials needed.

    Raises :class:`UnsupportedURLError` for an unknown scheme and :class:`MissingDependencyError`
    when its package is missing. Chained URLs (``simplecache::s3://...``) check every part.
    """
    import fsspec

    for part in url.split("::"):
        scheme = part.split("://", 1)[0]
        if scheme not in fsspec.available_protocols():
            raise _unknown(url, scheme)
        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError as e:
            raise _missing(url, scheme, e) from None


def _open_fs(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """fsspec's file system and path for ``url``; an unknown scheme or a missing package is one sentence."""
    import fsspec

    check_url(url)
    scheme = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        raise _missing(url, scheme, e) from None




class FsspecStorage(ObjectStore):
    """A run root at an fsspec URL.

    Implements :class:`~spotsafe._storage._protocol.Storage` and
    :class:`~spotsafe._storage._protocol.Uploadable`; the protocol's module docstring gives the
    call order and which engine thread calls what.

    Args:
        url: The root, ``scheme://bucket/prefix``.
        storage_options: Options for the fsspec file system (endpoint, credentials).
        commit: How a save is published (:class:`~spotsafe._storage._protocol.CommitStrategy`);
            default :class:`ManifestLastCommit`.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *,
                 commit: CommitStrategy | None = None) -> None:
        super().__init__(url, commit)
        self.fs, path = _open_fs(self._url, dict(storage_options or {}))
        self.root = path.rstrip("/")
        protocol = self.fs.protocol
        self.protocol = protocol if isinstance(protocol, str) else protocol[0]

    def _p(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    # -- reading -------------------------------------------------------------------
    @_access_errors
    def exists(self) -> bool:
        return bool(self.listdir())

    @_access_errors
    def listdir(self, rel: str = "") -> list[str]:
        """Names under ``root/rel``; an empty list when there are none."""
        path = self._p(rel)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        own = path.rstrip("/")
        return sorted({posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != own} - {""})

    @_access_errors
    def listdir_committed(self, marker: str) -> list[str]:
        """Directory names under the root that hold ``marker`` (their commit point)."""
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        prefix = self.root + "/"
        names = set()
        for p in found:
            rel = p[len(prefix):] if p.startswith(prefix) else None
            if rel and rel.count("/") == 1 and rel.endswith("/" + marker):
                names.add(rel.split("/", 1)[0])
        return sorted(names)

    @_access_errors
    def size(self, rel: str) -> int | None:
        """Size of an object in bytes, or None when missing."""
        try:
            info = self.fs.info(self._p(rel))
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type", "file") == "file" else None

    @_access_errors
    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._p(rel))

    @_access_errors
    def digest(self, rel: str, size: int | None = None) -> tuple[int, str]:
        """(bytes read, xxh3 digest) of an object, streamed."""
        h, n = new_hasher(), 0
        with self.fs.open(self._p(rel), "rb", block_size=READ_PIECE, cache_type="none") as f:
            while True:
                chunk = f.read(READ_PIECE)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
        return n, h.hexdigest()

    def _get_range(self, rel: str, start: int, end: int) -> bytes:
        return self.fs.cat_file(self._p(rel), start=start, end=end)

    @_access_errors
    def read_files(self, items: list[tuple[str, memoryview]], io_executor: Executor) -> list[tuple[int, str]]:
        return super().read_files(items, io_executor)

    # -- writing -------------------------------------------------------------------
    def put_bytes(self, rel: str, data: bytes) -> None:
        self._guard(strict=True)
        self.fs.pipe_file(self._p(rel), bytes(data))

    def write_file(self, handle: Handle, name: str, pieces: Iterable[memoryview],
                   hash_executor: Executor, *, direct: bool = False) -> tuple[int, str]:
        """Upload ``pieces`` as one object; (size, digest)."""
        self._guard()
        hasher, size = new_hasher(), 0
        pieces = list(pieces)
        for p in pieces:
            hasher.update(p)
            size += len(p)
        path = self._p(f"{handle}/{name}")
        if size < _SMALL:
            self.fs.pipe_file(path, b"".join(pieces))
        else:
            with self.fs.open(path, "wb", block_size=_PART) as f:
                for p in pieces:
                    for start in range(0, len(p), _PART):
                        f.write(p[start:start + _PART])
        return size, hasher.hexdigest()

    def upload_file(self, fd: int, rel: str, *, size: int, checksum: str) -> None:
        """Upload the first ``size`` bytes of the open local file ``fd`` to ``rel``, verifying them on the way.

        The bytes are hashed (xxh3) as they are read for the upload, never read twice, and
        must be ``size`` bytes hashing to ``checksum`` (the manifest's entry). The object is
        written as a stream and removed again on a mismatch (fsspec has no upload to abort;
        S3, where the check comes before the object exists, goes through obstore). The
        caller keeps ``fd`` open until this returns.

        Raises:
            CorruptCheckpointError: The bytes read do not match ``size`` and ``checksum``;
                nothing is left at ``rel``.
        """
        self._guard()
        path = self._p(rel)
        hasher, sent = new_hasher(), 0
        try:
            with self.fs.open(path, "wb", block_size=_PART) as f:
                while sent < size:
                    data = pread_exact(fd, min(_PART, size - sent), sent)
                    if not data:
                        break
                    hasher.update(data)
                    f.write(data)
                    sent += len(data)
            check_upload(sent, hasher.hexdigest(), size, checksum, path)
        except CorruptCheckpointError:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
            raise
        finally:
            self.fs.invalidate_cache(posixpath.dirname(path))

    def retire(self, name: str, trash_name: str) -> str:
        """Uncommit ``name`` at once by deleting its manifest; returns what to :meth:`remove` later."""
        from .._format import MANIFEST

        self._guard(strict=True)
        try:
            self.fs.rm_file(self._p(f"{name}/{MANIFEST}"))
        except FileNotFoundError:
            pass
        return name

    def remove(self, rel: str, *, strict: bool = False) -> None:
        """Remove everything under ``rel``; missing is fine. ``strict`` raises other errors."""
        self._guard(strict=True)
        path = self._p(rel)
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except Exception:
            if strict:
                raise
            logger.warning("Could not remove %s/%s", self._url, rel, exc_info=True)
        finally:
            self.fs.invalidate_cache(self.root)

    def abort_incomplete_uploads(self, rel: str = "") -> int:
        """Nothing to list here (gcsfs's resumable uploads and Azure's uncommitted blocks expire by themselves); 0."""
        return 0

