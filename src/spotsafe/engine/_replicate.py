"""Background replication of committed local checkpoints to a remote store.

One daemon thread uploads steps in order. For each step every file goes up (large ones in
parallel multipart parts), its remote size is confirmed, and only then the manifest is
uploaded: the remote commit point. The *watermark* is the newest step committed on the
remote. Transient errors (connection refused, timeouts, throttling) are retried with
exponential backoff and jitter; when the retries run out the error is kept and raised by
the manager's next ``save()``, ``wait()`` or ``close()``.

The queue is bounded: when saves come faster than uploads, the oldest step still waiting
is dropped (a newer one supersedes it) and counted in :attr:`Replicator.dropped`. Steps
waiting or in flight are *pinned*: local retention keeps them until they are up.

When it starts, the thread reads the remote watermark, removes uploads that a killed
writer abandoned (``step-N/`` with no manifest, incomplete multipart uploads) and queues
the newest local checkpoint if the remote lacks it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .._backoff import Backoff, retry
from ..errors import RemoteError
from ..format import MANIFEST, committed_steps, is_leftover, parse_manifest, parse_step_dir, step_dir, trash_dir
from ..policy._retention import RetentionPolicy
from ._retention import StoreRetention
from ._threads import lower_thread_priority

logger = logging.getLogger(__name__)

_PERMANENT = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError, NotImplementedError,
              ValueError, TypeError, KeyError, AttributeError)
_TRANSIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "azure", "gcsfs", "adlfs",
                      "s3fs")


def is_transient(e: BaseException) -> bool:
    """Whether an error from a remote store is worth retrying (network, timeouts, 5xx, throttling)."""
    if isinstance(e, _PERMANENT):
        return False
    if isinstance(e, (OSError, TimeoutError, ConnectionError)):
        return True
    return type(e).__module__.split(".")[0] in _TRANSIENT_MODULES


@dataclass(frozen=True)
class UploadStats:
    """One step replicated to the remote."""

    step: int
    bytes: int
    upload_s: float
    retries: int


class Replicator:
    """Uploads committed checkpoints from ``local`` to ``remote`` on a daemon thread.

    After each upload the remote is pruned under ``retention``, the same policy as the
    local root's.
    """

    def __init__(self, local, remote, *, retention: RetentionPolicy, max_pending: int = 2,
                 backoff: Backoff = Backoff()) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending_uploads must be at least 1, got {max_pending}.")
        self.local, self.remote = local, remote
        self._retention = StoreRetention(remote, retention)
        self.max_pending = max_pending
        self.backoff = backoff
        self.watermark: int | None = None
        self.dropped = 0
        self.uploads: list[UploadStats] = []
        self._cond = threading.Condition()
        self._pending: list[int] = []
        self._inflight: int | None = None
        self._error: BaseException | None = None
        self._ready = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="spotsafe-upload", daemon=True)
        self._thread.start()

    # -- called from the training thread -------------------------------------------
    def submit(self, step: int) -> None:
        with self._cond:
            if step in self._pending or step == self._inflight:
                return
            self._pending.append(step)
            self._pending.sort()
            while len(self._pending) > self.max_pending:
                old = self._pending.pop(0)
                self.dropped += 1
                logger.warning("Upload of %s to %s skipped: %d newer checkpoint(s) are queued behind it",
                               step_dir(old), self.remote.url, len(self._pending))
            self._cond.notify_all()

    def pinned(self) -> set[int]:
        """Steps waiting for upload or being uploaded: local retention must keep them."""
        with self._cond:
            return set(self._pending) | ({self._inflight} if self._inflight is not None else set())

    def ahead_of(self, step: int) -> list[int]:
        """Older steps still to upload before ``step`` (in flight first)."""
        with self._cond:
            older = [s for s in self._pending if s < step]
            if self._inflight is not None and self._inflight < step:
                older.insert(0, self._inflight)
            return older

    def expects(self, step: int) -> bool:
        """Whether ``step`` may still reach the remote: queued, in flight, or not started yet."""
        with self._cond:
            return not self._ready or step in self._pending or step == self._inflight

    def supersede(self, step: int) -> int:
        """Drop the waiting uploads older than ``step`` (it replaces them); returns how many."""
        with self._cond:
            older = [s for s in self._pending if s < step]
            self._pending = [s for s in self._pending if s >= step]
            self.dropped += len(older)
            self._cond.notify_all()
        for s in older:
            logger.info("Upload of %s to %s dropped: %s supersedes it", step_dir(s), self.remote.url, step_dir(step))
        return len(older)

    def wait(self, step: int | None = None, timeout: float | None = None) -> bool:
        """Until ``step`` (default: everything queued) is committed on the remote; False on timeout.

        Raises the error that stopped the uploads, if any.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._error is not None:
                    break
                if step is None and self._ready and not self._pending and self._inflight is None:
                    break
                if step is not None and self.watermark is not None and self.watermark >= step:
                    break
                if step is not None and self._ready and step not in self._pending and step != self._inflight:
                    break  # dropped or never queued: nothing more will come
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
        self.check()
        return step is None or (self.watermark is not None and self.watermark >= step)

    def check(self) -> None:
        """Raise (once) the error that stopped an upload."""
        with self._cond:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def close(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the thread; ``wait`` first for everything queued. Without ``wait``, an upload in
        flight is abandoned after a few seconds (the daemon thread dies with the process; the
        next writer cleans the partial upload)."""
        if wait:
            try:
                self.wait(timeout=timeout)
            finally:
                self._shutdown(60.0)
        else:
            self._shutdown(2.0)
        self.check()

    def _shutdown(self, join_timeout: float) -> None:
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(timeout=join_timeout)

    # -- the upload thread -----------------------------------------------------------
    def _retry(self, fn, what: str):
        def on_retry(attempt: int, e: BaseException, pause: float) -> None:
            self._retries += 1
            logger.warning("%s failed (%s: %s); retry %d in %.1fs", what, type(e).__name__, e, attempt + 1, pause)

        return retry(fn, policy=self.backoff, transient=is_transient, what=what, stop=self._stop, on_retry=on_retry)

    def _loop(self) -> None:
        lower_thread_priority()
        self._retries = 0
        try:
            self._start()
        except BaseException as e:  # noqa: BLE001 - handed to the training thread
            self._fail(RemoteError(f"Cannot reach the remote {self.remote.url} ({type(e).__name__}: {e}); "
                                   "check the URL, the credentials and the network."), e)
        with self._cond:
            self._ready = True
            self._cond.notify_all()
        while True:
            with self._cond:
                while not self._pending and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set() or not self._pending:
                    return
                step = self._pending.pop(0)
                self._inflight = step
            try:
                self._upload(step)
            except BaseException as e:  # noqa: BLE001
                self._fail(RemoteError(f"Uploading {step_dir(step)} to {self.remote.url} failed after "
                                       f"{self._retries} retries ({type(e).__name__}: {e}); the newest checkpoint on "
                                       f"the remote is still {self._watermark_name()}."), e)
            finally:
                with self._cond:
                    self._inflight = None
                    self._cond.notify_all()

    def _fail(self, err: RemoteError, cause: BaseException) -> None:
        err.__cause__ = cause
        logger.error("%s", err)
        with self._cond:
            if self._error is None:
                self._error = err
            self._cond.notify_all()

    def _watermark_name(self) -> str:
        return step_dir(self.watermark) if self.watermark is not None else "none"

    def _start(self) -> None:
        steps = self._retry(lambda: committed_steps(self.remote), f"Listing {self.remote.url}")
        with self._cond:
            self.watermark = steps[-1] if steps else None
        committed = {step_dir(s) for s in steps}
        for name in self._retry(lambda: self.remote.listdir(), f"Listing {self.remote.url}"):
            if name in committed or not (is_leftover(name) or parse_step_dir(name) is not None):
                continue
            step = parse_step_dir(name)
            if step is not None and step in self.pinned():
                continue
            logger.info("Removing abandoned upload %s from %s", name, self.remote.url)
            self._retry(lambda n=name: self.remote.remove(n, strict=True), f"Removing {name}")
        n = self._retry(lambda: self.remote.abort_incomplete_uploads(), f"Listing uploads in {self.remote.url}")
        if n:
            logger.info("Aborted %d incomplete multipart upload(s) in %s", n, self.remote.url)
        local = committed_steps(self.local)
        if local and (self.watermark is None or local[-1] > self.watermark):
            self.submit(local[-1])

    def _upload(self, step: int) -> None:
        self._retries = 0
        name = step_dir(step)
        t0 = time.perf_counter()
        if step in self._retry(lambda: committed_steps(self.remote), f"Listing {self.remote.url}"):
            logger.info("%s is already on %s", name, self.remote.url)
            self._committed(step)
            return
        try:
            raw = self.local.read_bytes(f"{name}/{MANIFEST}")
        except FileNotFoundError:
            logger.warning("Not uploading %s: it is no longer in %s", name, self.local.url)
            return
        manifest = parse_manifest(raw)
        self._retry(lambda: self.remote.begin(name, name), f"Preparing {name}")
        for fname, entry in sorted(manifest.files.items(), key=lambda kv: -kv[1].size):
            rel = f"{name}/{fname}"

            def put(rel: str = rel, fname: str = fname, size: int = entry.size) -> None:
                self.remote.upload_file(self.local.path(name, fname), rel)
                got = self.remote.size(rel)
                if got != size:
                    raise ConnectionError(f"{rel} is {got} bytes on the remote after upload, expected {size}")

            self._retry(put, f"Uploading {rel}")
        self._retry(lambda: self.remote.commit(name, name, MANIFEST, raw), f"Committing {name}")
        if self._retries:
            try:  # a failed attempt may have left an incomplete multipart upload behind
                self.remote.abort_incomplete_uploads(name)
            except Exception as e:  # noqa: BLE001 - the next writer cleans it up at start
                logger.info("Could not list incomplete uploads of %s in %s (%s)", name, self.remote.url, e)
        self.uploads.append(UploadStats(step, manifest.total_bytes, time.perf_counter() - t0, self._retries))
        del self.uploads[:-100]
        logger.info("Uploaded %s to %s (%d bytes, %.2fs)", name, self.remote.url, manifest.total_bytes,
                    time.perf_counter() - t0)
        self._committed(step)

    def _committed(self, step: int) -> None:
        """Prune the remote, then publish ``step`` as the watermark and unpin it, in one go."""
        newest = step if self.watermark is None else max(step, self.watermark)
        try:
            for s in self._retention.deletions(newest):
                gone = self.remote.retire(step_dir(s), trash_dir(s))
                self.remote.remove(gone, strict=True)
        except Exception as e:  # noqa: BLE001 - an old remote checkpoint left is not data loss
            logger.warning("Pruning old checkpoints in %s failed (%s); will retry after the next upload",
                           self.remote.url, e)
        with self._cond:
            self.watermark = newest
            if self._inflight == step:
                self._inflight = None
            self._cond.notify_all()
