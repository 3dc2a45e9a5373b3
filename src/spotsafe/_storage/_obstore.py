"""S3 run roots through obstore (Rust's ``object_store``): ``s3://bucket/prefix``.

Why obstore and not s3fs (measured in ``bench/bench_client.py``, table in the README's design
notes): uploads as fast as boto3 or faster and restores faster; one wheel with no Python
dependencies instead of s3fs + aiobotocore + botocore + aiohttp, whose pinned botocore
breaks a current boto3 installed beside it; conditional PUTs (``If-None-Match``,
``If-Match``) as part of its API, which the writer lease and a global commit need, where
s3fs only had its private ``_call_s3``; and every wait bounded by its own settings, where
aiohttp needed ``Expect: 100-continue`` removed and a timeout wrapped around each body.

Commit strategy: :class:`~spotsafe._storage._objects.ManifestLastCommit`, the same as every
object store (files under ``step-N/`` first, the manifest PUT last; see ``_fsspec``).

Settings (``storage_options``, the environment, and with boto3 installed botocore's whole
credential chain) and the timeouts are :mod:`._s3`'s. Every network wait is bounded
(connect, silence, a whole request, two tries); spotsafe's retries, with backoff, wrap whole files in the background. An endpoint
that does not answer is :class:`~spotsafe.errors.RemoteUnavailableError` naming the URL;
a refused signature or access, or no credentials anywhere, is
:class:`~spotsafe.errors.RemoteAccessError` (:func:`_mapped`). Options are never shown in
``repr`` or logs.

What obstore does not do: list the multipart uploads a killed writer left behind; that is
:class:`~._s3.S3Admin`'s, through boto3 when it is installed.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from .._format._hash import digest_bytes, new_hasher
from ..errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    RemoteAccessError,
    RemoteUnavailableError,
    UnsupportedURLError,
)
from ._objects import ObjectStore, check_upload
from ._objects import pread_exact as _pread_exact  # a module global, so that tests can fail a read
from ._protocol import CommitStrategy, Handle, PreconditionFailedError
from ._s3 import CREDENTIALS_HINT, LIFECYCLE_HINT, S3Admin, settings

logger = logging.getLogger(__name__)

_PIECE = 16 << 20  # multipart part size, and the ranged GETs of a digest
_SMALL = 32 << 20  # files below this go up in a single PUT
UPLOAD_CONCURRENCY = 8  # parts in flight per upload
SCHEMES = ("s3", "s3a")

Version = dict  # obstore's UpdateVersion: {"e_tag": ..., "version": ...}


def check_url(url: str) -> None:
    """Raise unless ``url`` can be opened here: obstore installed, a bucket named; no request."""
    import importlib.util

    if importlib.util.find_spec("obstore") is None:
        raise MissingDependencyError(f"Storage URL {url} needs obstore, which is not installed; run "
                                     "`pip install spotsafe[s3]`.")
    if not url.split("://", 1)[1].split("/", 1)[0]:
        raise UnsupportedURLError(f"Storage URL {url} names no bucket; write s3://bucket/prefix.")


# -- errors ---------------------------------------------------------------------------------

_STATUS = re.compile(r"status code: (\d{3})")
_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")
_OS_MESSAGE = re.compile(r'message: "([^"]+)"')
_CODE = re.compile(r"<Code>(\w+)</Code>")
_WHERE = re.compile(r"Error performing \w+ (https?://\S+)")
_RETRIES = re.compile(r"after (\d+) retries")


def _reason(text: str) -> str:
    """A short reason from obstore's error text (its first line, or what its debug part names)."""
    kind = _KIND.search(text)
    if kind and kind.group(1) in ("Timeout", "Connect"):
        where = _WHERE.search(text)
        retries = _RETRIES.search(text)
        host = f" from {urllib.parse.urlsplit(where.group(1)).netloc}" if where else ""
        tries = f", {int(retries.group(1)) + 1} tries" if retries else ""
        os_message = _OS_MESSAGE.search(text)
        if kind.group(1) == "Timeout":
            return f"timeout: no answer{host}{tries}"
        return f"{os_message.group(1).lower() if os_message else 'cannot connect'}{host.replace(' from', ' at')}{tries}"
    status = _STATUS.search(text)
    if status:
        code = _CODE.search(text)
        return f"HTTP {status.group(1)}" + (f" {code.group(1)}" if code else "")
    os_message = _OS_MESSAGE.search(text)
    if os_message:
        return os_message.group(1).lower()
    first = text.split("\n", 1)[0]
    return first.rsplit(" - ", 1)[-1].strip()[:200] or first[:200]


def _mapped(e: BaseException, url: str) -> BaseException | None:
    """spotsafe's error for an obstore error (None: raise it as it is)."""
    if isinstance(e, (FileNotFoundError, RemoteAccessError, RemoteUnavailableError, CorruptCheckpointError)):
        return None
    if not type(e).__module__.startswith("obstore"):
        return None
    name, text = type(e).__name__, str(e)
    status = _STATUS.search(text.split("\n\nDebug source", 1)[0])
    if name in ("PermissionDeniedError", "UnauthenticatedError") or (status and status.group(1) in ("401", "403")):
        return RemoteAccessError(f"{url} refused access ({_reason(text)}); check that the credentials are right and "
                                 f"may read this bucket: {CREDENTIALS_HINT}.")
    if "/latest/api/token" in text or "/latest/meta-data" in text:  # the instance role was asked, not S3
        return RemoteAccessError(f"No AWS credentials found for {url} (the instance metadata service did not "
                                 f"give any: {_reason(text)}); {CREDENTIALS_HINT}.")
    if "credential" in text.lower() and not status:
        return RemoteAccessError(f"No usable credentials for {url} ({_reason(text)}); {CREDENTIALS_HINT}.")
    if _KIND.search(text) or "error sending request" in text:
        return RemoteUnavailableError(f"{url} did not answer ({_reason(text)}); check the endpoint "
                                      "(AWS_ENDPOINT_URL for S3) and the network, then retry.")
    if name in ("InvalidPathError", "UnknownConfigurationKeyError"):
        return ValueError(f"{url}: {_reason(text)}")
    if name == "NotSupportedError":
        return NotImplementedError(f"{url}: {_reason(text)}")
    return None


def _errors(method: Callable) -> Callable:
    """A method whose obstore errors become spotsafe's (see :func:`_mapped`)."""

    @functools.wraps(method)
    def wrapper(self: ObstoreStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            mapped = _mapped(e, self.url)
            if mapped is None:
                raise
            raise mapped from e

    return wrapper


# -- the store ------------------------------------------------------------------------------


class ObstoreStorage(ObjectStore):
    """A run root at ``s3://bucket/prefix``, through obstore.

    Implements :class:`~spotsafe._storage._protocol.Storage` and
    :class:`~spotsafe._storage._protocol.Uploadable` (the protocol's module docstring gives
    the call order and which engine thread calls what), and the lease's conditional requests
    (:meth:`read_object`, :meth:`put_object`, :meth:`delete_object`), which bypass the write
    guard: they are the guard's own.

    Args:
        url: The root, ``s3://bucket/prefix``.
        storage_options: Endpoint, credentials and client settings (see the module docstring).
        commit: How a save is published (:class:`~spotsafe._storage._protocol.CommitStrategy`);
            default :class:`~spotsafe._storage._objects.ManifestLastCommit`.
    """

    protocol = "s3"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *,
                 commit: CommitStrategy | None = None) -> None:
        try:
            from obstore.store import S3Store
        except ImportError as e:
            raise MissingDependencyError(f"Storage URL {url} needs obstore, which is not installed ({e}); run "
                                         "`pip install spotsafe[s3]`.") from None
        super().__init__(url, commit)
        bucket, _, prefix = self._url.split("://", 1)[1].partition("/")
        self.root = prefix.strip("/")  # the key prefix of the root in its bucket ("" for the bucket itself)
        self._settings, config, client, retry, provider = settings(self._url, bucket, dict(storage_options or {}))
        self._skip_said = False  # the "cleanup skipped" line is said once per store
        try:
            self.store = S3Store(bucket, prefix=self.root or None, config=config, client_options=client,
                                 retry_config=retry, credential_provider=provider)
        except Exception as e:
            mapped = _mapped(e, self._url)
            if mapped is None:
                raise ValueError(f"Cannot set up the S3 client for {self._url} ({_reason(str(e))}); check "
                                 f"storage_options and the AWS settings: {CREDENTIALS_HINT}.") from None
            raise mapped from None

    # -- reading -------------------------------------------------------------------
    @_errors
    def exists(self) -> bool:
        return bool(self.listdir())

    @_errors
    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under ``root/rel``; an empty list when there are none."""
        import obstore

        out = obstore.list_with_delimiter(self.store, rel.strip("/") or None)
        names = [posixpath.basename(p.rstrip("/")) for p in out["common_prefixes"]]
        names += [posixpath.basename(o["path"]) for o in out["objects"]]
        return sorted(set(names) - {""})

    @_errors
    def listdir_committed(self, marker: str) -> list[str]:
        """Directory names under the root that hold ``marker`` (their commit point)."""
        import obstore

        names = set()
        for batch in obstore.list(self.store, None, chunk_size=1000):
            for meta in batch:
                parts = meta["path"].split("/")
                if len(parts) == 2 and parts[1] == marker:
                    names.add(parts[0])
        return sorted(names)

    @_errors
    def size(self, rel: str) -> int | None:
        """Size of an object in bytes, or None when missing."""
        import obstore

        try:
            return int(obstore.head(self.store, rel)["size"])
        except FileNotFoundError:
            return None

    @_errors
    def read_bytes(self, rel: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.store, rel).bytes())

    def _get_range(self, rel: str, start: int, end: int) -> bytes:
        import obstore

        try:
            return obstore.get_range(self.store, rel, start=start, end=end)
        except Exception as e:
            if type(e).__module__.startswith("obstore") and " 416 " in str(e).split("\n", 1)[0]:
                return b""  # starts at or after the end: the object is shorter than expected
            raise

    @_errors
    def digest(self, rel: str, size: int | None = None) -> tuple[int, str]:
        """(bytes read, xxh3 digest) of an object, in ranged GETs (each bounded by REQUEST_TIMEOUT)."""
        import obstore

        total = int(obstore.head(self.store, rel)["size"])
        h, n = new_hasher(), 0
        while n < total:
            chunk = self._get_range(rel, n, min(n + _PIECE, total))
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        return n, h.hexdigest()

    @_errors
    def read_files(self, items: list[tuple[str, memoryview]], io_executor: Executor) -> list[tuple[int, str]]:
        return super().read_files(items, io_executor)

    # -- writing -------------------------------------------------------------------

    @_errors
    def put_bytes(self, rel: str, data: bytes) -> None:
        """One PUT: a reader sees the old object or the new one."""
        import obstore

        self._guard(strict=True)
        obstore.put(self.store, rel, bytes(data), use_multipart=False)

    @_errors
    def write_file(self, handle: Handle, name: str, pieces: Iterable[memoryview],
                   hash_executor: Executor, *, direct: bool = False) -> tuple[int, str]:
        """Upload ``pieces`` as one object (multipart past 32 MiB); (size, digest)."""
        import obstore

        self._guard()
        pieces = [p if p.format == "B" and p.ndim == 1 else p.cast("B") for p in map(memoryview, pieces)]
        hasher, size = new_hasher(), 0
        for p in pieces:
            hasher.update(p)
            size += len(p)
        rel = f"{handle}/{name}"
        if size < _SMALL:
            obstore.put(self.store, rel, b"".join(pieces), use_multipart=False)
        else:
            parts = (p[start:start + _PIECE] for p in pieces for start in range(0, len(p), _PIECE))
            obstore.put(self.store, rel, parts, chunk_size=_PIECE, max_concurrency=UPLOAD_CONCURRENCY)
        return size, hasher.hexdigest()

    @_errors
    def upload_file(self, fd: int, rel: str, *, size: int, checksum: str) -> None:
        """Upload the first ``size`` bytes of the open local file ``fd`` to ``rel``, verifying them on the way.

        The bytes are hashed (xxh3) as they are read for the upload, never read twice, and
        must be ``size`` bytes hashing to ``checksum`` (the manifest's entry); the check
        comes before the object exists. A small file is read, checked, then sent in one PUT.
        A large one goes in multipart parts (16 MiB, 8 in flight) read from a generator
        that raises after its last part when the bytes do not match: obstore then aborts
        the multipart upload instead of completing it, and so on any other error. The
        caller keeps ``fd`` open until this returns (nothing reads it afterwards).

        Raises:
            CorruptCheckpointError: The bytes read do not match ``size`` and ``checksum``;
                nothing is left at ``rel``.
        """
        import obstore

        self._guard()
        if size < _SMALL:
            data = _pread_exact(fd, size, 0)
            check_upload(len(data), digest_bytes(data), size, checksum, rel)
            obstore.put(self.store, rel, data, use_multipart=False)
            return
        obstore.put(self.store, rel, _verified_parts(fd, size, checksum, rel), chunk_size=_PIECE,
                    max_concurrency=UPLOAD_CONCURRENCY)

    @_errors
    def retire(self, name: str, trash_name: str) -> str:
        """Uncommit ``name`` at once by deleting its manifest; returns what to :meth:`remove` later."""
        import obstore

        from .._format import MANIFEST

        self._guard(strict=True)
        obstore.delete(self.store, f"{name}/{MANIFEST}")
        return name

    def remove(self, rel: str, *, strict: bool = False) -> None:
        """Remove ``rel`` and everything under it; missing is fine. ``strict`` raises other errors."""
        import obstore

        self._guard(strict=True)
        rel = rel.strip("/")
        try:
            paths = [m["path"] for batch in obstore.list(self.store, rel or None, chunk_size=1000) for m in batch]
            if rel:
                # Some S3-compatible stores (SeaweedFS) keep an emptied prefix listed as a directory
                # until the key of that name is deleted; on AWS this is a no-op.
                paths.append(rel)
            for start in range(0, len(paths), 1000):
                obstore.delete(self.store, paths[start:start + 1000])
        except FileNotFoundError:
            pass
        except Exception as e:
            mapped = _mapped(e, self.url)
            if strict:
                raise (mapped or e) from e
            logger.warning("Could not remove %s/%s (%s)", self._url, rel, mapped or e)

    def abort_incomplete_uploads(self, rel: str = "") -> int:
        """Abort multipart uploads left under ``root/rel`` by killed writers; how many.

        obstore aborts its own failed uploads, but cannot list what a killed process left;
        :class:`~._s3.S3Admin` does, through boto3 with the store's credentials. Without boto3
        (or with anonymous access) nothing is listed: 0, and a lifecycle rule is named once.
        """
        self._guard()
        if self._settings.session is None:
            why = "anonymous access" if self._settings.anonymous else "boto3 is not installed"
            (logger.debug if self._skip_said else logger.info)(
                "Not aborting incomplete multipart uploads in %s (%s): %s.", self._url, why, LIFECYCLE_HINT)
            self._skip_said = True
            return 0
        prefix = "/".join(p for p in (self.root, rel.strip("/")) if p)
        admin = S3Admin(self._settings, self._url)
        uploads = admin.list_uploads(prefix + "/" if prefix else "")
        for key, upload_id in uploads:
            admin.abort(key, upload_id)
        return len(uploads)

    # -- the lease's conditional requests (no write guard: they are the guard's) -----------
    @_errors
    def read_object(self, rel: str, limit: int) -> tuple[bytes | None, Version]:
        """(content, or None when larger than ``limit``; its version); FileNotFoundError when missing."""
        import obstore

        result = obstore.get(self.store, rel)
        meta = result.meta
        version = {"e_tag": meta.get("e_tag"), "version": meta.get("version")}
        if int(meta["size"]) > limit:
            return None, version
        return bytes(result.bytes()), version

    @_errors
    def put_object(self, rel: str, data: bytes, *, create_only: bool = False, expect: Version | None = None) -> Version:
        """Write ``rel`` whole in one PUT; only if it is missing (``create_only``: ``If-None-Match: *``)
        or still at version ``expect`` (``If-Match``). Returns the new version.

        Raises :class:`PreconditionFailedError` when the store refuses the condition.
        """
        import obstore

        if create_only:
            mode: Any = "create"
        elif expect is not None:
            mode = {k: v for k, v in expect.items() if v is not None}
        else:
            mode = "overwrite"
        try:
            out = obstore.put(self.store, rel, bytes(data), mode=mode, use_multipart=False)
        except Exception as e:
            name = type(e).__name__
            if name in ("AlreadyExistsError", "PreconditionError") or (
                    type(e).__module__.startswith("obstore") and " 409 " in str(e).split("\n", 1)[0]):
                raise PreconditionFailedError(f"{self._url}/{rel} changed ({_reason(str(e))})") from e
            if mode != "overwrite" and re.search(r" 501 |<Code>(NotImplemented|InvalidArgument|InvalidRequest)<",
                                                 str(e)):
                raise NotImplementedError(f"{self._url} cannot make conditional PUTs ({_reason(str(e))})") from e
            raise
        return {"e_tag": out.get("e_tag"), "version": out.get("version")}

    @_errors
    def delete_object(self, rel: str) -> None:
        """Delete the one object ``rel`` (missing is fine)."""
        import obstore

        obstore.delete(self.store, rel)


def _verified_parts(fd: int, size: int, checksum: str, rel: str) -> Iterator[bytes]:
    """The parts of ``fd`` in file order, hashed as they are read; raises after the last one
    unless they are ``size`` bytes hashing to ``checksum`` (so the upload is never completed)."""
    hasher, sent = new_hasher(), 0
    while sent < size:
        data = _pread_exact(fd, min(_PIECE, size - sent), sent)
        if not data:
            break
        hasher.update(data)
        sent += len(data)
        yield data
    check_upload(sent, hasher.hexdigest(), size, checksum, rel)


