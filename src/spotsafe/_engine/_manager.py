"""CheckpointManager: save, restore, list and prune the checkpoints of one run root.

One manager writes to a root at a time, and construction makes sure of it before anything
is written: it takes the local root's ``flock`` and the remote's lease (:mod:`._writer`),
or raises :class:`RootLockedError` naming the holder. Only then does it clean the leftovers of
interrupted saves (``*.tmp-*``) so they never accumulate; they are never loaded in any
case. ``read_only=True`` takes no lock and writes nothing, for readers.

Saves are asynchronous by default: ``save()`` copies the state into reusable host
buffers and returns; writing, checksumming, committing and pruning run on a background
thread, and replication to a remote store on another (:mod:`._replicate`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Unpack

from .._format import (
    MANIFEST,
    CheckpointInfo,
    ManifestError,
    check_checkpoint,
    committed_steps,
    content_problem,
    decode_metadata,
    encode_metadata,
    is_leftover,
    list_checkpoints,
    parse_manifest,
    parse_step_dir,
    read_manifest,
    read_manifest_bytes,
    step_dir,
    tmp_dir,
    trash_dir,
)
from .._names import Tier
from .._state import Partial, apply_checkpoint, partial_names
from .._storage import LocalFiles, Owner, Storage, Uploadable, open_storage
from ..errors import (
    CheckpointNotFoundError,
    CheckpointSkippedWarning,
    CorruptCheckpointError,
    DeletionFailedError,
    LeaseLostError,
    RemoteUnavailableError,
    RemoteUnavailableWarning,
    SaveFailedError,
    StateMismatchError,
    UnsafeFileError,
)
from ._framework import FrameworkReads
from ._options import CheckpointOptions, ManagerSettings, options_from
from ._pipeline import persist, plan_components, read_verified, skip_reason, stage
from ._replicate import Replicator, UploadStats, is_transient
from ._restore_stats import RestoreStats
from ._retention import StoreRetention, Verdict
from ._staging import StagingBuffers
from ._threads import BackgroundErrors, lower_thread_priority
from ._writer import RootHold

logger = logging.getLogger(__name__)


def _remedy(e: BaseException) -> str:
    """The way out of a failed background save, from what actually failed."""
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "the storage is full: free space there, then save again"
        if e.errno in (errno.EACCES, errno.EPERM) or isinstance(e, PermissionError):
            return "this process may not write there: fix the permissions of the run root, then save again"
        if e.errno == errno.EROFS:
            return "the storage is read-only: use a writable run root"
        return "fix that storage error, then save again"
    return "fix that cause, then save again"


@dataclass(frozen=True, kw_only=True)
class SaveStats:
    """Timings and size of one save, in seconds and bytes.

    ``stall_s`` is how long ``save()`` blocked the caller (``waited_s`` of it waiting for
    the previous save, ``stage_s`` copying the state). ``persist_s`` (write, checksum,
    commit) and ``total_s`` (from the call to durable on local storage) are None until the
    checkpoint is durable: read them from :meth:`CheckpointManager.wait` or ``last_save``.
    """

    step: int
    bytes: int
    stage_s: float
    persist_s: float | None
    total_s: float | None
    skipped: bool = False
    stall_s: float = 0.0
    waited_s: float = 0.0

    @property
    def durable(self) -> bool:
        return self.total_s is not None and not self.skipped


class CheckpointManager(FrameworkReads):
    """Save and restore the full training state under ``root``, optionally replicated to ``remote``.

    Args:
        root: A local directory (created when missing) holding one ``step-N/`` per
            checkpoint, or a URL (``s3://bucket/run``) to write to directly; or a store
            already open, e.g. ``open_storage(path, commit=strategy)`` to choose how saves
            are committed (the storage protocol, ``spotsafe._storage._protocol``).
        remote: A URL (``s3://``, ``gs://``, ``az://``, ...), or an open object store, to
            replicate every committed checkpoint to, in the background. Restore looks at both tiers.
        storage_options: Options for the fsspec file system(s) (endpoint, credentials);
            by default each store reads its usual environment variables and config files.
        keep: What to keep, on both tiers: a number ``n`` (the ``n`` newest, default 3) or a
            retention policy: ``KeepLast(n)``, ``KeepEvery(k)``, ``KeepEveryDuration("1h")`` (the
            oldest checkpoint of each hour), combined with ``|``. Whatever it says, the newest
            checkpoint, the one just saved and any newer step are kept. ``keep_last=n`` and
            ``keep_every=k`` still work (deprecated: ``keep=n``, ``keep=KeepLast(n) | KeepEvery(k)``).
        rng, async_save, when_busy, max_pending_uploads, upload_backoff, lease: The other
            settings, described on :class:`~spotsafe.CheckpointOptions`.
        options: All the settings above as one :class:`~spotsafe.CheckpointOptions`, instead
            of keyword arguments (not both).
        read_only: Open the checkpoints for reading only: no writer lock or lease, no
            directory created, no leftovers cleaned, no uploads; :meth:`restore`,
            :meth:`checkpoints` and :meth:`latest_step` work on a root this process cannot
            write (a read-only mount, a bucket with read-only credentials), and
            :meth:`save` raises :class:`ReadOnlyRootError`.
        run_id: The run this writer belongs to, recorded in the lock and the lease (default
            ``$SPOTSAFE_RUN_ID``); see "One writer per root" in the README.
        attempt: The attempt of the run, recorded likewise (default ``$SPOTSAFE_ATTEMPT``).

    One process writes a root at a time: a second writer is refused with
    :class:`RootLockedError` naming the holder (a local root is locked with ``flock``, which
    the kernel releases when the holder dies; a remote one holds a lease with a heartbeat).
    Readers need no lock: pass ``read_only=True``.

    Call it from one thread (the training loop), never from a signal handler; the threads it
    runs, how their failures are raised (once, by the next ``save``, ``wait`` or ``close``:
    :class:`SaveFailedError`, :class:`DeletionFailedError`, :class:`RemoteError`) and what
    other threads may read are listed in :mod:`spotsafe._engine`'s docstring.

    ``state`` arguments are dicts of name -> object with ``state_dict()`` /
    ``load_state_dict()`` (model, optimizer, scheduler, scaler, data loader, ...) or a plain
    value (numbers, strings, tensors, nested dicts and lists of them).

    Example::

        mgr = CheckpointManager("runs/exp1", remote="s3://bucket/exp1", keep=3)
        state = {"model": model, "optimizer": opt, "scheduler": sched, "data": loader}
        start = (mgr.restore(state) or 0) + 1
        for step in range(start, total + 1):
            ...
            if step % 500 == 0:
                mgr.save(step, state)   # returns after a memory copy
        mgr.close()                     # waits until everything is durable
    """

    def __init__(self, root: str | os.PathLike | Storage, *, options: CheckpointOptions | None = None,
                 run_id: str | None = None, attempt: int | None = None, **settings: Unpack[ManagerSettings]) -> None:
        self.options = opts = options_from(options, settings, caller="CheckpointManager")
        self.keep = opts.retention
        remote, storage_options = opts.remote, opts.storage_options
        self.storage: Storage = open_storage(root, None if isinstance(root, Storage) else storage_options)
        self.remote: Uploadable | None = None
        if remote is not None:
            if not isinstance(self.storage, LocalFiles):  # the replicator reads a local root's files
                raise ValueError(f"root {self.storage.url} is already remote; pass a local directory as root "
                                 "and the URL as remote, or drop remote.")
            rs = open_storage(remote, None if isinstance(remote, Storage) else storage_options)
            if not isinstance(rs, Uploadable):
                raise ValueError(f"remote={remote!r} is a local path; pass a URL such as s3://bucket/run.")
            self.remote = rs
        self.rng = opts.rng
        self.async_save = opts.async_save
        self.when_busy = opts.when_busy
        self.restored: CheckpointInfo | None = None
        self.restored_tier: Tier | None = None
        self.restore_skipped: list[str] = []
        self.last_save: SaveStats | None = None
        self.last_restore: RestoreStats | None = None
        self.durable_saves: deque[SaveStats] = deque(maxlen=100)
        self.skipped_saves = 0
        self._buffers = StagingBuffers()
        self._hash_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotsafe-hash",
                                                 initializer=lower_thread_priority)
        self._io_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spotsafe-io")
        self._gc_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotsafe-gc")
        self._persist_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotsafe-persist",
                                                    initializer=lower_thread_priority)
        self._errors = BackgroundErrors()  # the persist and gc threads' failures, raised by the next call
        self._inflight: tuple[int, Future] | None = None  # its future never raises: failures go to _errors
        self._closed = False
        self.read_only = read_only = opts.read_only
        self._retention = StoreRetention(self.storage, self.keep)
        self._replicator = None
        stores = [self.storage, self.remote]
        if read_only:
            self._hold = RootHold.reader(repr(self), stores)
            return
        self._hold = RootHold.take(repr(self), stores, run_id=run_id, attempt=attempt, options=opts.lease)  # first
        try:
            try:
                self._clean_leftovers()
            except Exception as e:
                if isinstance(self.storage, LocalFiles) or not is_transient(e):
                    raise
                raise RemoteUnavailableError(f"Cannot reach the run root {self.root} ({type(e).__name__}: {e}); check "
                                             "the URL, the endpoint and the network, then start again.") from None
            if self.remote is not None and self._replicates:
                self._replicator = Replicator(self.storage, self.remote, retention=self.keep,
                                              max_pending=opts.max_pending_uploads, backoff=opts.upload_backoff,
                                              local_retention=self._retention)
        except BaseException:
            self._hold.release()
            raise

    _replicates = True
    """Whether committed steps are copied to the remote by a :class:`Replicator` (a subclass
    whose ranks upload their own files sets it False)."""

    @property
    def owner(self) -> Owner | None:
        """Who this writer is, as a second writer's error names it (None: read-only)."""
        return self._hold.owner

    @property
    def root(self) -> str:
        return self.storage.url

    @property
    def remote_watermark(self) -> int | None:
        """The newest step this manager confirmed on the remote (None: none yet, or no remote).

        Confirmed means: its files and then its manifest were uploaded by this manager; or the
        remote already held a byte-identical manifest of that step with every file of the
        listed size (a previous attempt uploaded it); or restore downloaded and verified every
        byte of it. A step on the remote that this manager did not confirm (a garbage
        manifest, an older and longer run in the same prefix) never counts, whatever its name.
        """
        return self._replicator.watermark if self._replicator else None

    @property
    def dropped_uploads(self) -> int:
        """Steps whose upload was dropped because newer ones were queued."""
        return self._replicator.dropped if self._replicator else 0

    @property
    def uploads(self) -> list[UploadStats]:
        """The most recent uploads to the remote, oldest first."""
        return list(self._replicator.uploads) if self._replicator else []

    def wait_uploaded(self, step: int, timeout: float | None = None) -> bool:
        """Block until ``step`` is confirmed on the remote (see :attr:`remote_watermark`); False on timeout
        or when it will not be (dropped, its local copy failed verification, or no remote). Raises the
        error that stopped the uploads."""
        if self._replicator is None:
            return False
        return self._replicator.wait(step, timeout)

    def upload_pending(self, step: int) -> bool:
        """Whether ``step`` is still on its way to the remote (queued, in flight, uploader starting)."""
        return self._replicator.expects(step) if self._replicator else False

    def upload_backlog(self, step: int) -> list[int]:
        """Older steps that still upload before ``step`` (the one in flight first); [] without a remote."""
        return self._replicator.ahead_of(step) if self._replicator else []

    def prioritize_upload(self, step: int) -> int:
        """Drop the uploads waiting behind an older step than ``step``, which supersedes them."""
        return self._replicator.supersede(step) if self._replicator else 0

    @property
    def staging_bytes(self) -> int:
        """Host memory held by the reusable staging buffers of asynchronous saves."""
        return self._buffers.capacity

    def __repr__(self) -> str:
        remote = f", remote={self.remote.url!r}" if self.remote else ""
        return f"CheckpointManager({self.root!r}{remote}, keep={self.keep!r})"

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- save ----------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], *, epoch: int | None = None,
             metadata: dict[str, Any] | None = None) -> SaveStats:
        """Checkpoint ``state`` at ``step``.

        Asynchronous (the default): returns as soon as the state is copied into host
        buffers, so the caller may change it at once; :meth:`wait` makes it durable. While
        the previous save still persists, ``when_busy`` decides: wait for it, or skip this
        one (``skipped=True``). Synchronous: returns once the checkpoint is durable.

        Saving a step that already has a valid checkpoint keeps that one and returns
        ``skipped=True``; an invalid one at that step is moved aside and replaced. The oldest
        background failure not raised yet is raised here, once (:class:`SaveFailedError`,
        :class:`DeletionFailedError`, :class:`RemoteError`); call again to go on.
        """
        self._check_open()
        self._hold.check_writer()
        # one checked copy, made before any wait: a value a manifest cannot hold raises here, naming its key,
        # and the caller may change its dict as soon as save() returns
        metadata = decode_metadata(encode_metadata(metadata or {}))
        t0 = time.perf_counter()
        ready = self._ready_to_save(step, t0)
        if isinstance(ready, SaveStats):
            return ready
        staged = stage(step, state, rng=self.rng, epoch=epoch, metadata=metadata,
                       buffers=self._buffers if self.async_save else None)
        return self._submit(staged, t0, ready)

    def save_files(self, step: int, directory: str | os.PathLike, *, kind: str, epoch: int | None = None,
                   metadata: dict[str, Any] | None = None) -> SaveStats:
        """Commit the flat folder of files a framework wrote as its checkpoint (``checkpoint-N/``) as ``step``.

        Its files are hard-linked into the save before this returns (copied when the folder is
        on another file system than the root), so the framework may delete or rotate its folder
        at once; the checksums, the ``fsync`` and the commit run in the background as for
        :meth:`save` (see :mod:`spotsafe._engine._files`), then the upload and retention. The
        checkpoint holds one component of kind ``"files"`` named ``kind``; resume it by handing
        the framework the folder :meth:`local_copy` returns. Needs a local root.
        """
        from ._files import link_files

        self._check_open()
        self._hold.check_writer()
        if not isinstance(self.storage, LocalFiles):
            raise ValueError(f"save_files links the framework's files into a local root, and {self.root} is remote; "
                             "pass a local directory as root and the URL as remote.")
        metadata = decode_metadata(encode_metadata(metadata or {}))
        t0 = time.perf_counter()
        ready = self._ready_to_save(step, t0)
        if isinstance(ready, SaveStats):
            return ready
        linked = link_files(self.storage, step, directory, kind=kind, epoch=epoch, metadata=metadata)
        return self._submit(linked, t0, ready)

    def _ready_to_save(self, step: int, t0: float) -> SaveStats | float:
        """Before staging ``step``: wait for (or skip behind) the save in flight, raise a stored failure, keep a
        valid checkpoint of that step. The stats of a save that is not made, else the seconds waited."""
        waited = 0.0
        if self._inflight is not None and not self._inflight[1].done():
            if self.when_busy == "skip":
                self.skipped_saves += 1
                logger.info("Skipping the save of step %d: step %d is still persisting", step, self._inflight[0])
                return SaveStats(step=step, bytes=0, stage_s=0.0, persist_s=None, total_s=None, skipped=True,
                                 stall_s=time.perf_counter() - t0)
            self._finish_inflight()
            waited = time.perf_counter() - t0
        self._finish_inflight()
        self._raise_background_errors()
        name = step_dir(step)
        if step in committed_steps(self.storage):
            existing = check_checkpoint(self.storage, step, deep=True)
            if existing.valid:
                logger.info("Checkpoint %s already committed in %s; keeping it", name, self.root)
                elapsed = time.perf_counter() - t0
                return SaveStats(step=step, bytes=0, stage_s=0.0, persist_s=0.0, total_s=elapsed, skipped=True,
                                 stall_s=elapsed, waited_s=waited)
            logger.warning("Replacing invalid checkpoint %s in %s (%s)", name, self.root, existing.reason)
            self.storage.remove(self.storage.retire(name, trash_dir(step)))
        return waited

    def _submit(self, staged, t0: float, waited: float) -> SaveStats:
        """Persist a staged checkpoint: now (synchronous saves) or on the persist thread."""
        if not self.async_save:
            return self._persist(staged, t0, waited)
        stall = time.perf_counter() - t0
        fut = self._persist_executor.submit(self._persist_in_background, staged, t0, waited, stall)
        self._inflight = (staged.step, fut)
        return SaveStats(step=staged.step, bytes=staged.nbytes, stage_s=staged.stage_s, persist_s=None, total_s=None,
                         stall_s=stall, waited_s=waited)

    def _persist(self, staged, t0: float, waited: float, stall: float | None = None) -> SaveStats:
        """Write, commit, prune and queue the upload of a staged checkpoint (any thread)."""
        from ._files import LinkedFiles, persist_files

        name = step_dir(staged.step)
        linked = isinstance(staged, LinkedFiles)
        handle = staged.handle if linked else self.storage.begin(name, tmp_dir(staged.step))
        try:
            t1 = time.perf_counter()
            if linked:
                manifest = persist_files(staged, self.storage)  # type: ignore[arg-type]  # save_files checked it
            else:
                manifest = persist(staged, self.storage, handle, self._hash_executor)
            raw = manifest.to_json_bytes()
            self.storage.commit(handle, name, MANIFEST, raw)
            persist_s = time.perf_counter() - t1
        except BaseException:
            self.storage.abort(handle)
            raise
        total = time.perf_counter() - t0  # durable here; what follows is housekeeping
        self._retention.vouch(staged.step, manifest, raw)  # hashed as it was written: valid without a read
        self._prune(staged.step)
        if self._replicator is not None:
            self._replicator.submit(staged.step)
        stats = SaveStats(step=staged.step, bytes=manifest.total_bytes, stage_s=staged.stage_s, persist_s=persist_s,
                          total_s=total, stall_s=total if stall is None else stall, waited_s=waited)
        self.durable_saves.append(stats)
        self.last_save = stats
        logger.debug("Saved %s (%d bytes) in %.3fs", name, manifest.total_bytes, total)
        return stats

    def _persist_in_background(self, staged, t0: float, waited: float, stall: float) -> SaveStats | None:
        """:meth:`_persist` on the persist thread: a failure is stored for the caller's next call, never raised here."""
        try:
            return self._persist(staged, t0, waited, stall)
        except LeaseLostError as e:
            self._errors.put(e)  # already one sentence with the way out; "save again" would be wrong
        except BaseException as e:
            try:
                newest = committed_steps(self.storage)
                there = f"the newest checkpoint there is {step_dir(newest[-1]) if newest else 'none'}"
            except Exception as listing:
                there = f"the root cannot be listed either ({type(listing).__name__})"
            self._errors.put(SaveFailedError(f"Background save of {step_dir(staged.step)} to {self.root} failed "
                                             f"({type(e).__name__}: {e}); {there}; {_remedy(e)}."), e)
        return None

    def _finish_inflight(self, timeout: float | None = None) -> SaveStats | None:
        """Wait for the background save (its failure, if any, is in ``_errors``); its stats, or None."""
        if self._inflight is None:
            return None
        step, fut = self._inflight
        try:
            stats = fut.result(timeout)
        except (FutureTimeout, TimeoutError):
            raise TimeoutError(f"The save of {step_dir(step)} to {self.root} is not durable after {timeout}s.") from None
        self._inflight = None
        return stats

    def wait(self, timeout: float | None = None, *, remote: bool = False) -> SaveStats | None:
        """Block until the last save is durable locally (and on the remote with ``remote=True``).

        Returns the last durable save's stats (None when nothing was saved). Raises
        TimeoutError after ``timeout`` seconds, and (once) the oldest failure of a background
        save, deletion or upload not raised yet.
        """
        self._check_open()
        self._hold.check_leases()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._finish_inflight(timeout)
        self._raise_background_errors()
        if remote and self._replicator is not None and self.last_save is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._replicator.wait(self.last_save.step, left):
                rejected = self._replicator.rejected.get(self.last_save.step)
                if rejected is not None:
                    raise CorruptCheckpointError(
                        f"{step_dir(self.last_save.step)} was not uploaded to {self.remote.url}: its local copy in "
                        f"{self.root} fails verification ({rejected}); check the disk, then save again.")
                mark = self.remote_watermark
                newest = step_dir(mark) if mark is not None else "none"
                why = (f"after {timeout}s" if self._replicator.expects(self.last_save.step)
                       else "and will not be (its upload was dropped)")
                raise TimeoutError(f"{step_dir(self.last_save.step)} is not confirmed on {self.remote.url} {why}; "
                                   f"the newest step confirmed there is {newest}.")
        return self.last_save

    def _prune(self, committed: int) -> None:
        """Apply retention after ``committed`` was committed. A failure here is a failed deletion,
        raised on the next call like one, never a failure of the save that is already durable."""
        pinned = self._replicator.pinned() if self._replicator else set()
        try:
            doomed = self._retention.deletions(committed)
        except Exception as e:
            self._deletion_failed(f"old checkpoints before {step_dir(committed)}", e)
            return
        for s in doomed:
            if s in pinned:
                continue  # still to be uploaded; a later prune removes it
            try:
                gone = self.storage.retire(step_dir(s), trash_dir(s))
            except Exception as e:
                self._deletion_failed(f"old checkpoint {step_dir(s)}", e)
                continue
            self._retention.forget(s)
            self._gc_executor.submit(self._delete, gone)

    def _delete(self, gone: str) -> None:
        """Remove a retired checkpoint (on the gc thread); a failure is stored for the caller's next call."""
        try:
            self.storage.remove(gone, strict=True)
        except BaseException as e:
            self._deletion_failed(f"old checkpoint {gone}", e)

    def _deletion_failed(self, what: str, e: BaseException) -> None:
        self._errors.put(DeletionFailedError(f"Deleting {what} in {self.root} failed ({e}); check the permissions "
                                             "and free space of the run root."), e)

    def _raise_background_errors(self) -> None:
        """Raise (once) the oldest stored failure of a background save or deletion, then of an upload."""
        self._errors.raise_next()
        if self._replicator is not None:
            self._replicator.check()

    def _clean_leftovers(self) -> None:
        committed = set(self.storage.listdir_committed(MANIFEST))
        for n in self.storage.listdir():
            if is_leftover(n) or (parse_step_dir(n) is not None and n not in committed):
                logger.info("Removing leftover %s from an interrupted save in %s", n, self.root)
                self.storage.remove(n)

    # -- restore -------------------------------------------------------------------
    def restore(self, state: dict[str, Any], step: int | None = None, *, fresh_if_invalid: bool = False,
                fresh_if_unreachable: bool = False, partial: Partial = False) -> int | None:
        """Load the newest valid checkpoint (or ``step``) into ``state`` in place; return its step.

        Both tiers are searched: the newest step wins, read from local storage when it is
        valid there, else downloaded from the remote. Every file is read and checked against
        its size and checksum before any object is touched. An invalid checkpoint is
        skipped with a :class:`CheckpointSkippedWarning` naming it and the reason, and the
        next candidate is tried; so is one whose trees are malformed (an optimizer state
        with ``param_groups: [1]``, an RNG state no generator takes). A checkpoint that
        does not fit the objects raises :class:`StateMismatchError`. Either way, and when
        an object's ``load_state_dict`` raises, every object (modules, optimizers, plain
        values, the RNGs) is left exactly as it was.

        ``partial`` resumes with components added to or removed from ``state`` since the
        checkpoint: True allows any, or pass the names that may differ. One
        :class:`SpotsafeWarning` lists them; added ones keep their current values, removed
        ones are ignored.

        Returns None when neither tier holds a checkpoint. When checkpoints exist but none
        is valid, raises :class:`CorruptCheckpointError` unless ``fresh_if_invalid``. When
        the remote cannot be reached, valid local checkpoints are used with a
        :class:`RemoteUnavailableWarning`; with none, raises :class:`RemoteUnavailableError`
        unless ``fresh_if_unreachable`` (never a silent restart from step 0). Asking for a
        ``step`` that is missing or invalid raises instead of falling back.
        """
        self._check_open()
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of name -> object, got {type(state).__name__}.")
        partial_names(partial)  # a wrong type raises here, not as a reason to skip a checkpoint
        t0 = time.perf_counter()
        self._finish_inflight()
        t_list = time.perf_counter()
        tiers, unreachable, every = self._tiers(step)
        skipped: list[str] = []
        rejected: list[int] = []  # local steps whose copy failed verification
        for s in every:
            name = step_dir(s)
            for tier, storage, steps in tiers:
                if s not in steps:
                    continue
                t_read = time.perf_counter()
                try:
                    manifest = read_manifest(storage, name)
                    sharded = None
                    if manifest.shards is not None:  # a torchrun job's: its modules resharded, rank 0's other state
                        from .._state._sharded import plan_shard_read, split_kinds  # imports DCP: only here

                        kinds, owners = split_kinds(state)
                        sharded = plan_shard_read(name, manifest, state, kinds, owners, 0, partial)
                        read = dataclasses.replace(manifest, components=sharded.components, files={
                            f: manifest.files[f] for f in sorted(sharded.files)})
                        others = {n: o for n, o in state.items() if n not in kinds}
                    else:
                        read, others = manifest, state
                    bufs = read_verified(storage, name, read, self._io_executor)
                    t_load = time.perf_counter()
                    plan, rng = plan_components(name, read, bufs, others, rng=self.rng, partial=partial)
                except StateMismatchError:
                    raise  # a valid checkpoint that does not fit the objects: only the caller can decide
                except Exception as e:
                    invalid = isinstance(e, (ManifestError, CorruptCheckpointError))
                    transient = tier is Tier.REMOTE and not invalid and is_transient(e)
                    where = f"{name} in {storage.url}"
                    reason = skip_reason(e)
                    if step is not None:
                        raise CorruptCheckpointError(f"Checkpoint {where} is invalid: {reason}; restore another step "
                                                     "or none to take the newest valid one.") from None
                    if transient:
                        unreachable = f"{type(e).__name__}: {e}"
                        warnings.warn(f"Cannot read {where} ({unreachable}); trying an older checkpoint.",
                                      RemoteUnavailableWarning, stacklevel=2)
                        continue
                    if not invalid:  # malformed in a way no check named (or a bug): keep the trace for a report
                        logger.debug("Reading %s failed", where, exc_info=True)
                    if tier is Tier.ROOT and (invalid or isinstance(e, UnsafeFileError)):
                        rejected.append(s)  # its bytes or its files are bad, not just unreadable now
                    skipped.append(f"{where} ({reason})")
                    warnings.warn(f"Checkpoint {where} is invalid: {reason}. Skipping it and falling back to another "
                                  "copy or an older one.", CheckpointSkippedWarning, stacklevel=2)
                    continue
                if self.rng and rng is None:
                    warnings.warn(f"Checkpoint {name} holds no RNG state; randomness will not replay exactly.",
                                  CheckpointSkippedWarning, stacklevel=2)
                if sharded is not None:
                    from .._state._sharded import load_shards

                    load_shards(sharded, bufs, state, kinds, owners)  # verified bytes: only a torch bug fails here
                apply_checkpoint(plan)  # all or nothing: on failure every object is as it was
                if sharded is not None:
                    state.update(plan.state)  # plain values, planned in a dict of their own
                t_loaded = time.perf_counter()
                self.restored = CheckpointInfo(step=s, name=name, location=f"{storage.url}/{name}", valid=True,
                                               manifest=manifest)
                self.restored_tier = tier
                self.restore_skipped = skipped
                self._after_restore(s, tier, manifest, bufs, rejected)
                self.last_restore = RestoreStats(step=s, tier=tier, bytes=manifest.total_bytes, fallbacks=len(skipped),
                                                 select_s=t_read - t_list, read_s=t_load - t_read,
                                                 load_s=t_loaded - t_load, total_s=time.perf_counter() - t0)
                if skipped:
                    logger.warning("Restored %s from %s after skipping %d invalid checkpoint(s): %s", name, tier,
                                   len(skipped), "; ".join(skipped))
                else:
                    logger.info("Restored %s from %s (%s)", name, tier, storage.url)
                return s
        self.restore_skipped = skipped
        self.last_restore = RestoreStats(step=None, tier=None, bytes=0, fallbacks=len(skipped),
                                         select_s=time.perf_counter() - t_list, read_s=0.0, load_s=0.0,
                                         total_s=time.perf_counter() - t0)
        if unreachable is not None and not fresh_if_unreachable:
            raise RemoteUnavailableError(
                f"No valid checkpoint could be read: the remote {self.remote.url} is unreachable ({unreachable}) and "
                f"{self.root} holds {'no valid' if skipped or committed_steps(self.storage) else 'no'} checkpoint; "
                "retry when the store is back, or pass fresh_if_unreachable=True to start from scratch.")
        if skipped and not fresh_if_invalid:
            raise CorruptCheckpointError(
                f"No valid checkpoint in {self.root}{' or ' + self.remote.url if self.remote else ''}: all "
                f"{len(skipped)} failed verification ({'; '.join(skipped)}); repair or remove them, or pass "
                "fresh_if_invalid=True to start over.")
        return None

    def _tiers(self, step: int | None) -> tuple[list[tuple[Tier, Storage, list[int]]], str | None, list[int]]:
        """For a restore: each tier with its committed steps, why the remote is unreachable (None: it is not,
        or there is none) and the steps to try, newest first (``step`` alone when given; raises when missing)."""
        tiers: list[tuple[Tier, Storage, list[int]]] = [(Tier.ROOT, self.storage, committed_steps(self.storage))]
        unreachable: str | None = None
        if self.remote is not None:
            try:
                down = self._hold.unreachable(self.remote)  # seen at start: not waited on a second time
                if down is not None:
                    raise down
                tiers.append((Tier.REMOTE, self.remote, committed_steps(self.remote)))
            except Exception as e:
                if not is_transient(e):
                    raise
                unreachable = f"{type(e).__name__}: {e}"
                warnings.warn(f"Cannot reach the remote {self.remote.url} ({unreachable}); restoring from the local "
                              f"checkpoints in {self.root} only.", RemoteUnavailableWarning, stacklevel=3)
        every = sorted({s for _, _, steps in tiers for s in steps}, reverse=True)
        if step is not None:
            if step not in every:
                where = " or ".join(st.url for _, st, _ in tiers)
                raise CheckpointNotFoundError(
                    f"Checkpoint {step_dir(step)} does not exist in {where}; run `spotsafe ls {self.root}` "
                    "to see the steps that do.")
            every = [step]
        return tiers, unreachable, every

    def _after_restore(self, step: int, tier: Tier, manifest, bufs: dict[str, Any], rejected: list[int]) -> None:
        """Keep what restore learned by reading every byte: verdicts for retention (``rejected``: the
        local copies that failed verification), the remote copy as confirmed, and a local copy
        repaired from a verified remote one. Never fails the restore."""
        if self.read_only:
            return
        for s in rejected:
            self._retention.record(s, Verdict(valid=False, reason="it failed verification when restore read it"))
        if tier is Tier.ROOT:
            self._retention.record(step, Verdict(valid=True, created=manifest.created))
        elif tier is Tier.REMOTE and self._replicator is not None:
            self._replicator.confirm_restored(step, manifest)
            if manifest.shards is None:  # a torchrun job's: this process read only its share of the files
                self._repair_local(step, manifest, bufs)

    def _repair_local(self, step: int, manifest, bufs: dict[str, Any]) -> None:
        """Write the verified bytes of ``step``, just downloaded, into the local root as that step.

        An invalid local copy is moved aside (retired) only once the new one is written and
        checked, just before it is committed. A failure is logged, never raised: the restore
        has succeeded, and the next save writes a fresh local checkpoint anyway.
        """
        name = step_dir(step)
        try:
            raw = read_manifest_bytes(self.remote, name)  # the exact bytes, so both tiers hold one copy
            if parse_manifest(raw).files != manifest.files:
                raise CorruptCheckpointError("its manifest on the remote changed during the restore")
            handle = self.storage.begin(name, tmp_dir(step))
            try:
                for fname, entry in manifest.files.items():
                    size, digest = self.storage.write_file(handle, fname, [memoryview(bufs[fname].numpy())],
                                                           self._hash_executor)
                    problem = content_problem(fname, entry, size, digest)
                    if problem is not None:
                        raise CorruptCheckpointError(problem)
                if name in self.storage.listdir():
                    self.storage.remove(self.storage.retire(name, trash_dir(step)))
                self.storage.commit(handle, name, MANIFEST, raw)
            except BaseException:
                self.storage.abort(handle)
                raise
        except Exception as e:
            logger.warning("Could not repair %s in %s from its verified copy on %s (%s: %s); the restore stands, "
                           "and the next save writes a new local checkpoint.", name, self.root, self.remote.url,
                           type(e).__name__, e)
            return
        self._retention.vouch(step, manifest, raw)
        logger.info("Repaired %s in %s with its verified copy from %s", name, self.root, self.remote.url)

    # -- listing -------------------------------------------------------------------
    def checkpoints(self, *, deep: bool = True, remote: bool = False) -> list[CheckpointInfo]:
        """Every checkpoint under the root (or the remote), oldest first, with validity and reason."""
        if remote:
            if self.remote is None:
                raise ValueError(f"{self!r} has no remote; pass remote= when creating it.")
            return list_checkpoints(self.remote, deep=deep)
        return list_checkpoints(self.storage, deep=deep)

    def latest_step(self) -> int | None:
        """The newest valid local step (content checksums included), or None."""
        for s in reversed(committed_steps(self.storage)):
            if check_checkpoint(self.storage, s).valid:
                return s
        return None

    def close(self, *, wait_remote: bool = True, timeout: float | None = None) -> None:
        """Finish the background save, deletions and (``wait_remote``) uploads; idempotent.

        Raises the failure of any background work not raised yet (the first; the others are
        added to it as notes), and TimeoutError naming the steps that did not reach the remote
        within ``timeout`` seconds. The save in flight is always finished first (the root stays
        locked while it writes), and its time counts against ``timeout``. After a failed save
        the uploads are not waited for.
        """
        if self._closed:
            return
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        errors: list[BaseException] = []
        try:
            try:
                self._finish_inflight()  # no timeout: the lock is not released while it writes anyway
            except BaseException as e:
                errors.append(e)
            self._persist_executor.shutdown(wait=True)
            errors.extend(self._errors.drain())
            save_failed = any(isinstance(e, (SaveFailedError, LeaseLostError)) for e in errors)
            if self._replicator is not None:
                try:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    self._replicator.close(wait=wait_remote and not save_failed, timeout=left)
                except BaseException as e:
                    errors.append(e)
                errors.extend(self._replicator.errors.drain())
            self._gc_executor.shutdown(wait=True)
            self._hash_executor.shutdown(wait=True)
            self._io_executor.shutdown(wait=True)
            self._buffers.release()
            errors.extend(self._errors.drain())  # deletions that finished meanwhile
            try:
                self._hold.check_leases()
            except LeaseLostError as e:
                errors.insert(0, e)  # the cause of any upload failure above
        finally:
            self._hold.release(hurry=not wait_remote)  # last: nothing of ours writes there any more
        if errors:
            for other in errors[1:]:
                if (type(other), str(other)) != (type(errors[0]), str(errors[0])):  # a lost lease, seen twice
                    errors[0].add_note(f"Also failed in the background: {type(other).__name__}: {other}")
            raise errors[0]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new CheckpointManager.")
