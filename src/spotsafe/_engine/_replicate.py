"""Background replication of committed local checkpoints to a remote store.

One daemon thread uploads steps in order. For each step every file goes up (large ones in
parallel multipart parts), hashed as it is read for the upload and checked against the
local manifest's size and checksum before the object is completed; its remote size is
confirmed, and only then the manifest is uploaded: the remote commit point. Nothing is
uploaded unless its bytes verify: a local copy that fails (a flipped byte, a short file, a
garbage manifest) is not committed, its partial upload is removed, the local tier's
retention is told that copy is invalid, and it is not retried (saving that step again
replaces it).

A step counts as *confirmed* on the remote only when this replicator saw it land: its own
files and then its manifest, or, for a step that is already there (uploaded by a previous
attempt), a remote manifest byte-identical to the local one with every listed file of the
listed size; or the manager's restore downloaded and verified every byte of it. The
*watermark* is the newest confirmed step. Names alone never count: a higher step on the
remote that this replicator did not confirm (a garbage manifest, an older and longer run in
the same prefix) neither raises the watermark nor ends a wait. A remote copy of a step that
differs from the local one is uncommitted (its manifest deleted first) and uploaded again,
so an invalid remote copy is repaired from a valid local one; when that remote copy looks
valid, the local one is read and verified first, so a good remote copy is never traded for
a bad local one.

Transient errors (connection refused, timeouts, throttling) are retried with exponential
backoff and jitter; when the retries run out the error is stored in :attr:`Replicator.errors`
(:class:`~._threads.BackgroundErrors`) and raised, once, by the manager's next ``save()``,
``wait()`` or ``close()`` as a :class:`RemoteError`. The remote's retention runs after each
confirmed upload and is not retried in place: a deletion that fails is tried again after the
next upload, and one that fails for good (access denied) is stored as a
:class:`DeletionFailedError`.

The queue is bounded: when saves come faster than uploads, the oldest step still waiting
is dropped (a newer one supersedes it) and counted in :attr:`Replicator.dropped`. Steps
waiting or in flight are *pinned*: local retention keeps them until they are up.

When it starts, the thread removes uploads that a killed writer abandoned (``step-N/``
with no manifest, incomplete multipart uploads) and queues the newest local checkpoint,
which is confirmed without an upload when the remote already holds the same copy.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass

from .._backoff import Backoff, retry
from .._format import (
    MANIFEST,
    Manifest,
    ManifestError,
    committed_steps,
    content_problem,
    digest_bytes,
    is_leftover,
    new_hasher,
    parse_manifest,
    parse_step_dir,
    read_manifest_bytes,
    size_problem,
    step_dir,
    trash_dir,
)
from .._format._schema import MAX_MANIFEST_BYTES
from .._storage import LocalFiles, Uploadable
from .._storage._local import UnsafeFileError
from ..errors import CorruptCheckpointError, DeletionFailedError, RemoteError
from ..policy._retention import RetentionPolicy
from ._retention import StoreRetention, Verdict
from ._threads import BackgroundErrors, lower_thread_priority

logger = logging.getLogger(__name__)

_PERMANENT = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError, NotImplementedError,
              ValueError, TypeError, KeyError, AttributeError)
_TRANSIENT_MODULES = ("obstore", "aiohttp", "urllib3", "requests", "google", "azure", "gcsfs", "adlfs")


def is_transient(e: BaseException) -> bool:
    """Whether an error from a remote store is worth retrying (network, timeouts, 5xx, throttling)."""
    if isinstance(e, _PERMANENT):
        return False
    if isinstance(e, (OSError, TimeoutError, ConnectionError)):
        return True
    return type(e).__module__.split(".")[0] in _TRANSIENT_MODULES


class _LocalInvalid(Exception):
    """The local copy of a step fails verification (never retried; the message says why)."""


@dataclass(frozen=True, kw_only=True)
class UploadStats:
    """One step replicated to the remote."""

    step: int
    bytes: int
    upload_s: float
    retries: int


class Replicator:
    """Uploads committed checkpoints from ``local`` to ``remote`` on a daemon thread.

    After each upload the remote is pruned under ``retention``, the same policy as the
    local root's, by validity (:class:`~spotsafe._engine._retention.StoreRetention`).
    ``local_retention``, the local root's, is told when a local copy fails verification.
    Every call this thread makes to either store is listed in :mod:`spotsafe._storage._protocol`.
    """

    def __init__(self, local: LocalFiles, remote: Uploadable, *, retention: RetentionPolicy, max_pending: int = 2,
                 backoff: Backoff = Backoff(), local_retention: StoreRetention | None = None) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending_uploads must be at least 1, got {max_pending}.")
        self.local, self.remote = local, remote
        self._retention = StoreRetention(remote, retention)
        self._local_retention = local_retention
        self.max_pending = max_pending
        self.backoff = backoff
        self.dropped = 0
        self.uploads: list[UploadStats] = []
        self.rejected: dict[int, str] = {}
        self._confirmed: set[int] = set()
        self._again: set[int] = set()
        self._cond = threading.Condition()
        self._pending: list[int] = []
        self._inflight: int | None = None
        self.errors = BackgroundErrors()  # the upload thread's failures, raised by the caller's next call
        self._ready = False
        # Abandoned multipart parts of dead writers are aborted once the queue is first idle, never
        # ahead of an upload: they cost storage, not correctness (and boto3 takes a second to load).
        self._sweep_due = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="spotsafe-upload", daemon=True)
        self._thread.start()

    @property
    def watermark(self) -> int | None:
        """The newest step confirmed on the remote (see the module docstring), or None."""
        with self._cond:
            return max(self._confirmed) if self._confirmed else None

    def confirmed(self, step: int) -> bool:
        """Whether ``step`` is confirmed on the remote (and not pruned since)."""
        with self._cond:
            return step in self._confirmed

    # -- called from the training thread -------------------------------------------
    def submit(self, step: int) -> None:
        with self._cond:
            self.rejected.pop(step, None)  # saved again: a fresh local copy, which the remote does not hold yet
            self._confirmed.discard(step)
            if step == self._inflight:
                self._again.add(step)  # the copy in flight is being replaced: upload the new one after it
                return
            if step in self._pending:
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

    def confirm_restored(self, step: int, manifest: Manifest) -> None:
        """Restore downloaded every byte of ``step`` from the remote and verified it: it is confirmed there."""
        self._retention.record(step, Verdict(valid=True, created=manifest.created))
        with self._cond:
            self._confirmed.add(step)
            self._cond.notify_all()

    def wait(self, step: int | None = None, timeout: float | None = None) -> bool:
        """Until ``step`` (default: everything queued) is confirmed on the remote; False on timeout, or
        when ``step`` will not be (dropped, never queued, or its local copy failed verification).

        Raises the error that stopped the uploads, if any.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self.errors.pending:  # (a leaf lock: taking it under _cond cannot deadlock)
                    break
                if step is None and self._ready and not self._pending and self._inflight is None \
                        and not self._sweep_due:
                    break
                if step is not None and step in self._confirmed:
                    break
                if step is not None and self._ready and step not in self._pending and step != self._inflight:
                    break  # dropped, rejected or never queued: nothing more will come
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
        self.check()
        return step is None or self.confirmed(step)

    def check(self) -> None:
        """Raise (once) the oldest stored failure of an upload or a remote deletion."""
        self.errors.raise_next()

    def close(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the thread; ``wait`` first for everything queued. Without ``wait``, an upload in
        flight is abandoned after a few seconds (the daemon thread dies with the process; the
        next writer cleans the partial upload).

        Raises the error that stopped the uploads, or TimeoutError naming the steps that did not
        reach the remote within ``timeout``: returning means everything queued is confirmed there.
        """
        done = None
        if wait:
            try:
                done = self.wait(timeout=timeout)
            finally:
                self._shutdown(2.0 if done is False else 60.0)  # timed out: the caller asked for a bound
        else:
            self._shutdown(2.0)
        self.check()
        if done is False:
            with self._cond:
                left = sorted(set(self._pending) | ({self._inflight} if self._inflight is not None else set()))
            if left:
                raise TimeoutError(
                    f"Uploads to {self.remote.url} did not finish within {timeout:.1f}s: "
                    f"{', '.join(map(step_dir, left))} {'is' if len(left) == 1 else 'are'} not on it; the newest step "
                    f"confirmed there is {self._watermark_name()}; close with a longer timeout, or start the next "
                    "writer from this root, which uploads its newest checkpoint.")

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
        except BaseException as e:
            self._fail(RemoteError(f"Cannot reach the remote {self.remote.url} ({type(e).__name__}: {e}); "
                                   "check the URL, the credentials and the network."), e)
        with self._cond:
            self._ready = True
            self._cond.notify_all()
        while True:
            with self._cond:
                while not self._pending and not self._sweep_due and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                if not self._pending:
                    sweep = True
                else:
                    sweep, step = False, self._pending.pop(0)
                    self._inflight = step
            if sweep:
                self._sweep()
                continue
            try:
                self._upload(step)
            except BaseException as e:
                self._fail(RemoteError(f"Uploading {step_dir(step)} to {self.remote.url} failed after "
                                       f"{self._retries} retries ({type(e).__name__}: {e}); the newest step "
                                       f"confirmed on the remote is still {self._watermark_name()}."), e)
            finally:
                with self._cond:
                    self._inflight = None
                    if step in self._again:
                        self._again.discard(step)
                        if step not in self._pending:
                            self._pending.append(step)
                            self._pending.sort()
                    self._cond.notify_all()

    def _fail(self, err: RemoteError, cause: BaseException) -> None:
        self.errors.put(err, cause)
        with self._cond:
            self._cond.notify_all()

    def _watermark_name(self) -> str:
        mark = self.watermark
        return step_dir(mark) if mark is not None else "none"

    def _start(self) -> None:
        committed = set(self._retry(lambda: self.remote.listdir_committed(MANIFEST), f"Listing {self.remote.url}"))
        for name in self._retry(lambda: self.remote.listdir(), f"Listing {self.remote.url}"):
            if name in committed or not (is_leftover(name) or parse_step_dir(name) is not None):
                continue
            step = parse_step_dir(name)
            if step is not None and step in self.pinned():
                continue
            logger.info("Removing abandoned upload %s from %s", name, self.remote.url)
            self._retry(lambda n=name: self.remote.remove(n, strict=True), f"Removing {name}")
        local = committed_steps(self.local)
        if local:
            self.submit(local[-1])  # confirmed without an upload when the remote holds the same copy

    def _sweep(self) -> None:
        """Abort the multipart uploads dead writers left under the remote (the first time the queue
        is idle). Housekeeping: a failure is logged, and uploads go on."""
        try:
            n = self._retry(lambda: self.remote.abort_incomplete_uploads(), f"Listing uploads in {self.remote.url}")
            if n:
                logger.info("Aborted %d incomplete multipart upload(s) in %s", n, self.remote.url)
        except Exception as e:
            logger.warning("Could not abort the incomplete multipart uploads in %s (%s: %s); their parts are billed "
                           "until a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them.",
                           self.remote.url, type(e).__name__, e)
        finally:
            with self._cond:
                self._sweep_due = False
                self._cond.notify_all()

    def _upload(self, step: int) -> None:
        self._retries = 0
        name = step_dir(step)
        t0 = time.perf_counter()
        known = self._local_retention.verdict(step) if self._local_retention else None
        if known is not None and not known.valid:
            self._reject(step, known.reason or "it failed verification")
            return
        raw = None
        try:
            raw = self._read_local(f"{name}/{MANIFEST}", MAX_MANIFEST_BYTES)
            manifest = parse_manifest(raw)
            if manifest.step != step:
                raise ManifestError(f"manifest.json says step {manifest.step}, the directory says {step}")
        except FileNotFoundError:
            logger.warning("Not uploading %s: it is no longer in %s", name, self.local.url)
            return
        except (_LocalInvalid, ManifestError) as e:
            self._reject(step, str(e), raw)
            return
        theirs = self._retry(lambda: self._remote_copy(name, raw, manifest), f"Reading {name} on {self.remote.url}")
        if theirs == "same":
            logger.info("%s is already on %s (the same manifest, every file of its size); not uploading it again",
                        name, self.remote.url)
            self._confirm(step, manifest, raw)
            return
        if theirs is not None:
            if theirs == "differs":
                # A copy that looks valid is about to go: make sure the local one is valid before it does
                # (the one case where the local bytes are read twice).
                try:
                    self._verify_local(name, manifest)
                except _LocalInvalid as e:
                    self._reject(step, str(e), raw)
                    return
            logger.warning("Replacing the copy of %s on %s (%s) with the local one", name, self.remote.url,
                           "a different checkpoint" if theirs == "differs" else theirs)
            # Manifest first, so no reader ever sees that step half-deleted; begin() removes the rest.
            self._retry(lambda: self.remote.retire(name, trash_dir(step)), f"Uncommitting {name}")
        self._retry(lambda: self.remote.begin(name, name), f"Preparing {name}")
        try:
            for fname, entry in sorted(manifest.files.items(), key=lambda kv: -kv[1].size):
                rel = f"{name}/{fname}"
                self._retry(lambda rel=rel, fname=fname, entry=entry: self._put(rel, fname, entry), f"Uploading {rel}")
        except (_LocalInvalid, CorruptCheckpointError) as e:
            self._discard(name)
            self._reject(step, str(e), raw)
            return
        self._retry(lambda: self.remote.commit(name, name, MANIFEST, raw), f"Committing {name}")
        if self._retries:
            try:  # a failed attempt may have left an incomplete multipart upload behind
                self.remote.abort_incomplete_uploads(name)
            except Exception as e:
                logger.info("Could not list incomplete uploads of %s in %s (%s)", name, self.remote.url, e)
        self.uploads.append(UploadStats(step=step, bytes=manifest.total_bytes, upload_s=time.perf_counter() - t0,
                                        retries=self._retries))
        del self.uploads[:-100]
        logger.info("Uploaded %s to %s (%d bytes, %.2fs)", name, self.remote.url, manifest.total_bytes,
                    time.perf_counter() - t0)
        self._confirm(step, manifest, raw)

    def _read_local(self, rel: str, limit: int) -> bytes:
        """A small local file, opened as a checkpoint member (no links, FIFOs or devices)."""
        fd = self._open_local(rel)
        try:
            chunks, got = [], 0
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return b"".join(chunks)
                got += len(chunk)
                if got > limit:
                    raise _LocalInvalid(f"{rel} is larger than {limit} bytes")
                chunks.append(chunk)
        finally:
            os.close(fd)

    def _open_local(self, rel: str) -> int:
        try:
            return self.local.open_member(rel)
        except UnsafeFileError as e:
            raise _LocalInvalid(str(e)) from None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                raise _LocalInvalid(f"{rel} cannot be opened as a checkpoint file ({e})") from None
            raise

    def _put(self, rel: str, fname: str, entry) -> None:
        """Upload one local file, verified against its manifest entry as it is read; confirm its remote size."""
        try:
            fd = self._open_local(rel)
        except FileNotFoundError:
            raise _LocalInvalid(f"{fname} is missing") from None
        try:
            problem = size_problem(fname, entry, os.fstat(fd).st_size)
            if problem is not None:
                raise _LocalInvalid(problem)
            self.remote.upload_file(fd, rel, size=entry.size, checksum=entry.checksum)
        finally:
            os.close(fd)
        got = self.remote.size(rel)
        if got != entry.size:
            raise ConnectionError(f"{rel} is {got} bytes on the remote after upload, expected {entry.size}")

    def _remote_copy(self, name: str, raw: bytes, manifest: Manifest) -> str | None:
        """What the remote holds of ``name``: None (no committed copy), "same" (this very copy: the same
        manifest bytes, every file of its size), "differs" (another copy that looks valid), or why its
        copy is invalid."""
        try:
            theirs = read_manifest_bytes(self.remote, name)
        except FileNotFoundError:
            return None
        except ManifestError as e:
            if self.remote.size(f"{name}/{MANIFEST}") is None:
                return None
            return f"invalid there: {e}"
        if theirs != raw:
            try:
                other = parse_manifest(theirs)
            except ManifestError as e:
                return f"invalid there: {e}"
            if other.step != manifest.step:
                return f"invalid there: its manifest says step {other.step}"
            entries = other.files
        else:
            entries = manifest.files
        for fname, entry in entries.items():
            problem = size_problem(fname, entry, self.remote.size(f"{name}/{fname}"))
            if problem is not None:
                return f"invalid there: {problem}"
        return "same" if theirs == raw else "differs"

    def _verify_local(self, name: str, manifest: Manifest) -> None:
        """Read and hash every local file of ``name``; raise _LocalInvalid naming the first that fails."""
        for fname, entry in manifest.files.items():
            try:
                fd = self._open_local(f"{name}/{fname}")
            except FileNotFoundError:
                raise _LocalInvalid(f"{fname} is missing") from None
            try:
                hasher, n = new_hasher(), 0
                while True:
                    chunk = os.pread(fd, 16 << 20, n)
                    if not chunk:
                        break
                    hasher.update(chunk)
                    n += len(chunk)
            finally:
                os.close(fd)
            problem = content_problem(fname, entry, n, hasher.hexdigest())
            if problem is not None:
                raise _LocalInvalid(problem)

    def _discard(self, name: str) -> None:
        """Abort the save of ``name`` (never committed); the next writer cleans what this misses."""
        self.remote.abort(name)
        try:
            self.remote.abort_incomplete_uploads(name)
        except Exception as e:
            logger.info("Could not list incomplete uploads of %s in %s (%s)", name, self.remote.url, e)

    def _reject(self, step: int, reason: str, raw: bytes | None = None) -> None:
        """The local copy of ``step`` (whose manifest is ``raw``) fails verification: never uploaded, never
        retried, and local retention knows."""
        with self._cond:
            if step in self._again:  # that copy was replaced while it went up: the new one goes next
                logger.info("%s was saved again while it was uploading; uploading the new copy", step_dir(step))
                return
        logger.error("Not uploading %s to %s: its local copy in %s fails verification (%s); the remote keeps what "
                     "it holds, and saving that step again replaces the local copy.", step_dir(step), self.remote.url,
                     self.local.url, reason)
        if self._local_retention is not None:
            self._local_retention.record(step, Verdict(valid=False, digest=digest_bytes(raw) if raw else None,
                                                       reason=reason))
        with self._cond:
            self.rejected[step] = reason
            self._cond.notify_all()

    def _confirm(self, step: int, manifest: Manifest, raw: bytes) -> None:
        """Prune the remote, then publish ``step`` as confirmed (and unpin it), in one go."""
        self._retention.vouch(step, manifest, raw)
        what = f"old checkpoints before {step_dir(step)}"
        try:
            for s in self._retention.deletions(step):
                what = f"old checkpoint {step_dir(s)}"
                gone = self.remote.retire(step_dir(s), trash_dir(s))
                self._retention.forget(s)
                with self._cond:
                    self._confirmed.discard(s)
                self.remote.remove(gone, strict=True)
        except Exception as e:
            # Tried again after the next upload (retention looks at the whole remote each time), so a
            # transient error is only a retry, not waited out here: the step is confirmed without delay.
            if is_transient(e):
                logger.warning("Deleting %s in %s failed (%s: %s); it is tried again after the next upload",
                               what, self.remote.url, type(e).__name__, e)
            else:
                self.errors.put(DeletionFailedError(f"Deleting {what} in {self.remote.url} failed ({type(e).__name__}: "
                                                    f"{e}); check the permissions on the remote (it is tried again "
                                                    "after the next upload)."), e)
        with self._cond:
            if step not in self._again:  # else a newer local copy replaced this one while it went up
                self._confirmed.add(step)
                if self._inflight == step:
                    self._inflight = None
            # a replaced step stays in flight (pinned) until the loop re-queues it under this same lock
            self.rejected.pop(step, None)
            self._cond.notify_all()
