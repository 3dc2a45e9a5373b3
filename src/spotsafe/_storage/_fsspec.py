"""Object stores and other remote file systems, through fsspec (s3://, gs://, az://, memory://).

Why fsspec: one maintained interface to every object store (s3fs, gcsfs, adlfs), with the
stores' own credential chains, endpoints and multipart uploads, instead of three SDKs.

Commit strategy (:class:`ManifestLastCommit`): object stores have no rename, so a save
writes its files straight to their final keys under ``step-N/`` and publishes them by
writing ``manifest.json`` last. A single PUT is atomic, so a reader sees the whole
manifest or none; a ``step-N/`` without a manifest is an upload in flight or abandoned,
invisible to readers (:meth:`FsspecStorage.listdir_committed`), and removed later by the
next writer. Retiring a checkpoint deletes its manifest first, for the same reason.

Settings come from where the store's own library reads them: for S3, ``AWS_ENDPOINT_URL``
/ ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, AWS config
files, or explicit ``storage_options``. Options are never shown in ``repr`` or logs.

Every network wait is bounded (S3): a connection gets :data:`CONNECT_TIMEOUT`, an answer
:data:`READ_TIMEOUT` of silence, and a request :data:`REQUEST_ATTEMPTS` tries in all
(botocore's; s3fs's own retry loop is turned off), so an endpoint that accepts
connections but never answers costs a request about 2 x 5 s, not minutes; spotsafe's own
retries, with backoff, wrap whole files in the background. ``storage_options``
``config_kwargs`` given by the caller win. Opening an S3 root checks, without a request,
that credentials were found, and says how to give them when none were.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import threading
from collections.abc import Callable, Iterable
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
from ._protocol import CommitStrategy, Handle, OpenSaves, Storage
from ._reads import hash_in_order

logger = logging.getLogger(__name__)

_READ_PIECE = 16 << 20  # ranged GETs in flight at once during a restore
_PART = 16 << 20  # multipart upload part size
_SMALL = 32 << 20  # files below this go up in a single PUT
UPLOAD_CONCURRENCY = 8
# Longest one request with a body may take. aiohttp has no timeout on writing a body: a
# server that stops reading (a frozen VM) would hang the upload forever once the socket
# buffer is full. 120 s lets a 16 MiB part go at 140 KB/s.
REQUEST_TIMEOUT = 120.0
CONNECT_TIMEOUT = 5.0  # seconds to open a connection (S3)
# Seconds of silence allowed while waiting for an answer (S3). aiohttp starts this clock
# once a request's body is sent, so it bounds the server's silence, not a slow upload or
# download that is still moving bytes.
READ_TIMEOUT = 5.0
REQUEST_ATTEMPTS = 2  # tries of one request, the first included (botocore's total_max_attempts)
# Which extra installs the file system of a scheme.
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
           "adl": "azure"}


def is_url(root: str | os.PathLike) -> bool:
    """True for ``scheme://...`` other than ``file://``."""
    s = os.fspath(root)
    return "://" in s and not s.startswith("file://")


def _drop_expect_header(request: Any, **_: Any) -> None:
    request.headers.pop("Expect", None)


def _s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with spotsafe's timeouts and retries in ``config_kwargs``, where the caller set none."""
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("connect_timeout", CONNECT_TIMEOUT)
    config.setdefault("read_timeout", READ_TIMEOUT)
    config.setdefault("retries", {"total_max_attempts": REQUEST_ATTEMPTS, "mode": "standard"})
    return {**options, "config_kwargs": config}


_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials, or "
                     "run on a machine with an instance role), or pass storage_options={'key': ..., 'secret': ...}, "
                     "or {'anon': True} for a public bucket")


def _tune_s3(fs: Any, url: str) -> None:
    """Check that credentials were found, and make a hung S3 endpoint fail instead of hanging forever.

    The client is made here (no request is sent), so missing credentials are one
    sentence now instead of a botocore traceback at the first read.

    botocore sends uploads with ``Expect: 100-continue``, and aiohttp waits for the
    ``100 Continue`` with no timeout: a server that accepts connections but never
    answers (a stopped VM, a wedged gateway) then hangs the upload thread for good.
    Without the header the body is sent at once and the read timeout applies. The
    header only saves bandwidth on requests the server would reject, which ours are not.
    """
    from fsspec.asyn import sync

    fs.retries = 1  # s3fs's retry loop (5 tries by default) around botocore's: see REQUEST_ATTEMPTS
    try:
        client = sync(fs.loop, fs.set_session)
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("botocore", "aiobotocore"):
            raise RemoteAccessError(f"Cannot set up the S3 client for {url} ({type(e).__name__}: {e}); check the "
                                    f"AWS settings: {_CREDENTIALS_HINT}.") from None
        logger.debug("Could not set up the S3 client at open", exc_info=True)
        return
    signer = getattr(client, "_request_signer", None)
    if not getattr(fs, "anon", False) and signer is not None and getattr(signer, "_credentials", True) is None:
        raise RemoteAccessError(f"No AWS credentials found for {url}; {_CREDENTIALS_HINT}.")
    try:
        client.meta.events.register("before-send.s3", _drop_expect_header, unique_id="spotsafe-no-expect")
    except Exception:
        logger.debug("Could not tune the S3 client", exc_info=True)


def _access_errors(method: Callable) -> Callable:
    """A reading method whose refused access or missing credentials raise :class:`RemoteAccessError`.

    s3fs turns AccessDenied and a wrong key into a bare PermissionError that names
    neither the store nor the way out; botocore raises NoCredentialsError when credentials
    vanish after the open. Both are permanent: never retried, never "unreachable".
    """

    @functools.wraps(method)
    def wrapper(self: FsspecStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RemoteAccessError:
            raise
        except PermissionError as e:
            hint = _CREDENTIALS_HINT if self.protocol in ("s3", "s3a") else "see the file system's documentation"
            raise RemoteAccessError(f"{self.url} refused access ({e}); check that the credentials are right and may "
                                    f"read this bucket: {hint}.") from e
        except Exception as e:
            if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
                raise RemoteAccessError(f"No usable credentials for {self.url} ({e}); {_CREDENTIALS_HINT}.") from e
            if _no_answer(e):  # still a ConnectionError, so still transient for the callers that retry
                raise RemoteUnavailableError(f"{self.url} did not answer ({type(e).__name__}: {e}); check the "
                                             "endpoint (AWS_ENDPOINT_URL for S3) and the network, then retry.") from e
            raise

    return wrapper


def _no_answer(e: BaseException) -> bool:
    """A timeout or a refused or dropped connection, from the standard library or the HTTP stack."""
    if isinstance(e, (RemoteUnavailableError, FileNotFoundError, PermissionError)):
        return False
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    name = type(e).__name__
    return type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3") and (
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
    if scheme in ("s3", "s3a"):
        options = _s3_options(options)
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        raise _missing(url, scheme, e) from None


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


class FsspecStorage:
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
        self._url = url.rstrip("/")
        self.commit_strategy: CommitStrategy = commit if commit is not None else ManifestLastCommit()
        self._saves = OpenSaves(self._url)
        self.fs, path = _open_fs(self._url, dict(storage_options or {}))
        self.root = path.rstrip("/")
        # Called before every write: the writer lease's check (one writer per root), or None;
        # strict=True (before a commit or a deletion) asks the store itself, not the last heartbeat.
        self.write_guard: Callable[[bool], None] | None = None
        protocol = self.fs.protocol
        self.protocol = protocol if isinstance(protocol, str) else protocol[0]
        if self.protocol in ("s3", "s3a"):
            _tune_s3(self.fs, self._url)

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"FsspecStorage({self._url!r})"

    def _p(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _guard(self, strict: bool = False) -> None:
        if self.write_guard is not None:
            self.write_guard(strict)

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
        with self.fs.open(self._p(rel), "rb", block_size=_READ_PIECE, cache_type="none") as f:
            while True:
                chunk = f.read(_READ_PIECE)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
        return n, h.hexdigest()

    @_access_errors
    def read_files(self, items: list[tuple[str, memoryview]], io_executor: Executor) -> list[tuple[int, str]]:
        """Fill each ``(rel, buf)`` with ranged GETs in parallel; (bytes read, digest) per item."""

        def fetch(path: str, view: memoryview, start: int) -> int:
            data = self.fs.cat_file(path, start=start, end=start + len(view))
            view[:len(data)] = data
            return len(data)

        jobs = [[(start, min(start + _READ_PIECE, len(buf)),
                  io_executor.submit(fetch, self._p(rel), buf[start:min(start + _READ_PIECE, len(buf))], start))
                 for start in range(0, len(buf), _READ_PIECE)] for rel, buf in items]
        try:
            return hash_in_order([buf for _, buf in items], jobs)
        finally:
            for pieces in jobs:
                for _, _, fut in pieces:
                    fut.cancel()

    # -- writing -------------------------------------------------------------------
    def make_root(self) -> None:
        """Nothing to create: object stores make prefixes implicitly (the bucket must exist)."""

    def begin(self, final_name: str, tmp_name: str) -> Handle:
        """Uploads go straight to ``final_name``; a stale uncommitted one there is removed first."""
        self.remove(final_name)
        return self._saves.begun(final_name)

    def abort(self, handle: Handle) -> None:
        """Throw away an uncommitted save: everything under ``handle`` goes."""
        self._saves.end(handle)
        self.remove(handle)

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
        must be ``size`` bytes hashing to ``checksum`` (the manifest's entry). On S3 the
        check comes before the object exists: before the single PUT is sent, or before the
        multipart upload is completed (it is aborted instead). Elsewhere the object is
        written as a stream and removed again on a mismatch. Large files go in parallel
        multipart parts on S3. The caller keeps ``fd`` open until this returns.

        Raises:
            CorruptCheckpointError: The bytes read do not match ``size`` and ``checksum``;
                nothing is left at ``rel``.
        """
        self._guard()
        path = self._p(rel)
        try:
            if self.protocol in ("s3", "s3a"):
                from fsspec.asyn import sync

                sync(self.fs.loop, _s3_multipart_upload, self.fs, fd, path, size, checksum)
            else:
                hasher, sent = new_hasher(), 0
                try:
                    with self.fs.open(path, "wb", block_size=_PART) as f:
                        while sent < size:
                            data = _pread_exact(fd, min(_PART, size - sent), sent)
                            if not data:
                                break
                            hasher.update(data)
                            f.write(data)
                            sent += len(data)
                    _check_upload(sent, hasher.hexdigest(), size, checksum, path)
                except CorruptCheckpointError:
                    try:
                        self.fs.rm_file(path)
                    except FileNotFoundError:
                        pass
                    raise
        finally:
            self.fs.invalidate_cache(posixpath.dirname(path))

    def commit(self, handle: Handle, final_name: str, manifest_name: str, manifest: bytes) -> None:
        """Publish the save ``handle`` as ``final_name`` through :attr:`commit_strategy`."""
        self._saves.check(handle)
        self.commit_strategy.commit(self, handle, final_name, manifest_name, manifest)
        self._saves.end(handle)

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
            if self.protocol in ("s3", "s3a"):
                # Some S3-compatible stores (SeaweedFS) keep an emptied prefix as a directory
                # entry until its "key/" marker is deleted; on AWS this is a no-op.
                bucket, _, key = path.partition("/")
                if key:
                    self.fs.call_s3("delete_object", Bucket=bucket, Key=key.rstrip("/") + "/")
        except FileNotFoundError:
            pass
        except Exception:
            if strict:
                raise
            logger.warning("Could not remove %s/%s", self._url, rel, exc_info=True)
        finally:
            self.fs.invalidate_cache(self.root)

    def abort_incomplete_uploads(self, rel: str = "") -> int:
        """Abort multipart uploads left under ``root/rel`` by killed writers (S3 only); how many."""
        if self.protocol not in ("s3", "s3a"):
            return 0
        self._guard()
        bucket, _, key = self._p(rel).partition("/")
        prefix = key + "/" if key and not key.endswith("/") else key
        resp = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        n = 0
        for up in resp.get("Uploads", []) or []:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            n += 1
        return n


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
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


def _check_upload(sent: int, digest: str, size: int, checksum: str, path: str) -> None:
    """Raise CorruptCheckpointError unless the bytes read for ``path`` are the manifest's."""
    name = posixpath.basename(path)
    if sent != size:
        raise CorruptCheckpointError(f"{name} ended after {sent} bytes while uploading, manifest says {size}")
    if digest != checksum:
        raise CorruptCheckpointError(f"{name} fails its checksum while uploading ({digest}, manifest says {checksum})")


class _InOrderHash:
    """Hashes pieces that arrive in any order (parts read concurrently) as one stream, in order.

    A piece that arrives before its predecessors waits here, so at most the pieces of the
    upload window are held; xxh3 releases the GIL, so hashing overlaps the other reads.
    """

    def __init__(self) -> None:
        self.hasher = new_hasher()
        self.nbytes = 0
        self._next = 0
        self._waiting: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def add(self, index: int, data: bytes) -> None:
        with self._lock:
            self._waiting[index] = data
            while self._next in self._waiting:
                piece = self._waiting.pop(self._next)
                self.hasher.update(piece)
                self.nbytes += len(piece)
                self._next += 1


async def _s3_multipart_upload(fs: Any, fd: int, rpath: str, size: int, checksum: str, part: int = _PART,
                               concurrency: int = UPLOAD_CONCURRENCY) -> None:
    """Upload ``size`` bytes of ``fd`` with a sliding window of ``concurrency`` parts in flight.

    s3fs's ``put_file`` sends parts in batches and waits for the slowest of each batch;
    keeping the window full is what lets it match boto3's transfer manager. Each part is
    read (``pread``) just before it is sent and hashed in file order as it is read, so at
    most about ``concurrency`` parts are in memory and no byte is read twice. The upload
    is completed only when every byte read matches ``size`` and ``checksum``; on a
    mismatch or any error the multipart upload is aborted, so no parts are left stored.
    """
    import asyncio

    bucket, key, _ = fs.split_path(rpath)
    loop = asyncio.get_running_loop()
    if size < 2 * part:
        data = await loop.run_in_executor(None, _pread_exact, fd, size, 0)
        _check_upload(len(data), digest_bytes(data), size, checksum, rpath)
        await asyncio.wait_for(fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data), REQUEST_TIMEOUT)
        return
    mpu = await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key)
    upload_id = mpu["UploadId"]
    window = asyncio.Semaphore(concurrency)
    stream = _InOrderHash()

    def read(index: int, offset: int) -> bytes:
        data = _pread_exact(fd, min(part, size - offset), offset)
        stream.add(index, data)
        return data

    reads: set[asyncio.Future] = set()

    async def send(index: int, offset: int) -> dict:
        async with window:
            fut = loop.run_in_executor(None, read, index, offset)
            reads.add(fut)
            data = await asyncio.shield(fut)  # a cancelled send still lets its read finish: see below
            out = await asyncio.wait_for(fs._call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                                                     PartNumber=index + 1, Body=data), REQUEST_TIMEOUT)
            return {"PartNumber": index + 1, "ETag": out["ETag"]}

    sends = [asyncio.ensure_future(send(i, off)) for i, off in enumerate(range(0, size, part))]
    try:
        parts = await asyncio.gather(*sends)
        _check_upload(stream.nbytes, stream.hasher.hexdigest(), size, checksum, rpath)
        await asyncio.wait_for(fs._call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                                            MultipartUpload={"Parts": list(parts)}), REQUEST_TIMEOUT)
    except BaseException:
        # One part failed: stop the others, and wait for the reads already in a thread, so that
        # nothing reads ``fd`` after this returns (the caller closes it) and no part goes on uploading.
        for t in sends:
            t.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        await asyncio.gather(*reads, return_exceptions=True)
        try:
            await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except BaseException:
            logger.debug("Could not abort multipart upload of %s", rpath, exc_info=True)
        raise
