"""CheckpointManager: save, restore, list and prune the checkpoints of one run root.

One manager writes to a root at a time. Construction cleans the leftovers of interrupted
saves (``*.tmp-*``) so they never accumulate; they are never loaded in any case.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointNotFoundError, CheckpointSkippedWarning, CorruptCheckpointError, SpotsafeError
from ..format import (
    MANIFEST,
    CheckpointInfo,
    ManifestError,
    check_checkpoint,
    committed_steps,
    is_leftover,
    list_checkpoints,
    read_manifest,
    step_dir,
    tmp_dir,
    trash_dir,
)
from ..state import RNG_COMPONENT, apply_checkpoint, check_components
from ..storage import LocalStorage
from ._pipeline import decode_components, persist, read_verified, stage
from ._retention import select_deletions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaveStats:
    """Timings and size of one save, in seconds and bytes."""

    step: int
    bytes: int
    stage_s: float
    persist_s: float
    total_s: float
    skipped: bool = False


class CheckpointManager:
    """Save and restore the full training state under ``root``.

    Args:
        root: A local directory (created when missing) holding one ``step-N/`` per checkpoint.
        keep_last: How many of the newest checkpoints to keep (at least 1).
        keep_every: Also keep every checkpoint whose step is a multiple of this.
        rng: Capture and restore the python, numpy, torch CPU and CUDA RNGs (default True).

    ``state`` arguments are dicts of name -> object with ``state_dict()`` /
    ``load_state_dict()`` (model, optimizer, scheduler, scaler, data loader, ...) or a plain
    value (numbers, strings, tensors, nested dicts and lists of them).

    Example::

        mgr = CheckpointManager("runs/exp1", keep_last=3)
        state = {"model": model, "optimizer": opt, "scheduler": sched, "data": loader}
        start = (mgr.restore(state) or 0) + 1
        for step in range(start, total + 1):
            ...
            if step % 500 == 0:
                mgr.save(step, state)
        mgr.close()
    """

    def __init__(self, root: str | os.PathLike, *, keep_last: int = 3, keep_every: int | None = None,
                 rng: bool = True) -> None:
        select_deletions([], committed=0, keep_last=keep_last, keep_every=keep_every)  # validates
        self.storage = LocalStorage(root)
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.rng = rng
        self.restored: CheckpointInfo | None = None
        self.last_save: SaveStats | None = None
        self._hash_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotsafe-hash")
        self._io_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spotsafe-io")
        self._gc_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotsafe-gc")
        self._deletions: list[tuple[str, Future]] = []
        self._closed = False
        self.storage.make_root()
        self._clean_leftovers()

    @property
    def root(self) -> str:
        return self.storage.url

    def __repr__(self) -> str:
        return f"CheckpointManager({self.root!r}, keep_last={self.keep_last}, keep_every={self.keep_every})"

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- save ----------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], *, epoch: int | None = None,
             metadata: dict[str, Any] | None = None) -> SaveStats:
        """Commit a checkpoint of ``state`` at ``step``; returns when it is durable on disk.

        Saving a step that already has a valid checkpoint keeps that one and returns
        ``skipped=True``; an invalid one at that step is moved aside and replaced.
        """
        self._check_open()
        self._raise_background_errors()
        t0 = time.perf_counter()
        name = step_dir(step)
        if step in committed_steps(self.storage):
            existing = check_checkpoint(self.storage, step, deep=True)
            if existing.valid:
                logger.info("Checkpoint %s already committed in %s; keeping it", name, self.root)
                self.last_save = SaveStats(step, 0, 0.0, 0.0, time.perf_counter() - t0, skipped=True)
                return self.last_save
            logger.warning("Replacing invalid checkpoint %s in %s (%s)", name, self.root, existing.reason)
            trash = trash_dir(step)
            self.storage.rename(name, trash)
            self.storage.remove(trash)
        staged = stage(step, state, rng=self.rng, epoch=epoch, metadata=metadata)
        tmp_name = tmp_dir(step)
        tmp = self.storage.begin(tmp_name)
        try:
            t1 = time.perf_counter()
            manifest = persist(staged, self.storage, tmp, self._hash_executor)
            self.storage.commit(tmp, name, MANIFEST, manifest.to_json_bytes())
            persist_s = time.perf_counter() - t1
        except BaseException:
            self.storage.remove(tmp_name)
            raise
        self._prune(step)
        self.last_save = SaveStats(step, manifest.total_bytes, staged.stage_s, persist_s, time.perf_counter() - t0)
        logger.debug("Saved %s (%d bytes) in %.3fs", name, manifest.total_bytes, self.last_save.total_s)
        return self.last_save

    def _prune(self, committed: int) -> None:
        doomed = select_deletions(committed_steps(self.storage), committed=committed,
                                  keep_last=self.keep_last, keep_every=self.keep_every)
        for s in doomed:
            # Rename first (fast, durable) so a crash mid-delete leaves a leftover that the next
            # writer removes, never a half-deleted step-N/; the slow delete runs in the background.
            trash = trash_dir(s)
            self.storage.rename(step_dir(s), trash)
            self._deletions.append((trash, self._gc_executor.submit(self.storage.remove, trash, strict=True)))

    def _raise_background_errors(self, wait: bool = False) -> None:
        """Re-raise the first failure of a background deletion (called from save and close)."""
        pending = []
        for trash, fut in self._deletions:
            if not wait and not fut.done():
                pending.append((trash, fut))
                continue
            err = fut.exception()
            if err is not None:
                self._deletions = pending
                raise SpotsafeError(f"Deleting old checkpoint {trash} in {self.root} failed ({err}); check "
                                    "the permissions and free space of the run root.") from err
        self._deletions = pending

    def _clean_leftovers(self) -> None:
        for n in self.storage.listdir():
            if is_leftover(n):
                logger.info("Removing leftover %s from an interrupted save in %s", n, self.root)
                self.storage.remove(n)

    # -- restore -------------------------------------------------------------------
    def restore(self, state: dict[str, Any], step: int | None = None, *, fresh_if_invalid: bool = False) -> int | None:
        """Load the newest valid checkpoint (or ``step``) into ``state`` in place; return its step.

        Every file is read and checked against its size and checksum before any object is
        touched. An invalid checkpoint is skipped with a :class:`CheckpointSkippedWarning`
        naming it and the reason, and the next older one is tried. A checkpoint that does
        not fit the objects raises :class:`StateMismatchError` and leaves them unchanged.

        Returns None when the root holds no checkpoint. When checkpoints exist but none is
        valid, raises :class:`CorruptCheckpointError` unless ``fresh_if_invalid`` is True.
        Asking for a ``step`` that is missing or invalid raises instead of falling back.
        """
        self._check_open()
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of name -> object, got {type(state).__name__}.")
        steps = committed_steps(self.storage)
        if step is not None:
            if step not in steps:
                raise CheckpointNotFoundError(
                    f"Checkpoint {step_dir(step)} does not exist in {self.root}; run `spotsafe ls {self.root}` "
                    "to see the steps that do.")
            candidates = [step]
        else:
            candidates = list(reversed(steps))
        skipped = []
        for s in candidates:
            name = step_dir(s)
            try:
                manifest = read_manifest(self.storage, name)
                bufs = read_verified(self.storage, name, manifest, self._io_executor)
                loaded = dict(decode_components(manifest, bufs))
            except (ManifestError, CorruptCheckpointError, OSError) as e:
                if step is not None:
                    raise CorruptCheckpointError(f"Checkpoint {name} in {self.root} is invalid: {e}; "
                                                 "restore another step or none to take the newest valid one.") from None
                skipped.append(f"{name} ({e})")
                warnings.warn(f"Checkpoint {name} in {self.root} is invalid: {e}. Skipping it and falling back "
                              "to an older one.", CheckpointSkippedWarning, stacklevel=2)
                continue
            rng = loaded.pop(RNG_COMPONENT, None)
            check_components(name, {n: c.kind for n, c in manifest.components.items() if n != RNG_COMPONENT}, state)
            if self.rng and rng is None:
                warnings.warn(f"Checkpoint {name} holds no RNG state; randomness will not replay exactly.",
                              CheckpointSkippedWarning, stacklevel=2)
            apply_checkpoint(name, state, loaded, rng if self.rng else None)
            self.restored = CheckpointInfo(s, name, f"{self.root}/{name}", True, None, manifest)
            if skipped:
                logger.warning("Restored %s after skipping %d invalid checkpoint(s): %s", name, len(skipped),
                               "; ".join(skipped))
            return s
        if skipped and not fresh_if_invalid:
            raise CorruptCheckpointError(
                f"No valid checkpoint in {self.root}: all {len(skipped)} failed verification "
                f"({'; '.join(skipped)}); repair or remove them, or pass fresh_if_invalid=True to start over.")
        return None

    # -- listing -------------------------------------------------------------------
    def checkpoints(self, *, deep: bool = True) -> list[CheckpointInfo]:
        """Every checkpoint under the root, oldest first, with validity and reason."""
        return list_checkpoints(self.storage, deep=deep)

    def latest_step(self) -> int | None:
        """The newest valid step (content checksums included), or None."""
        for s in reversed(committed_steps(self.storage)):
            if check_checkpoint(self.storage, s).valid:
                return s
        return None

    def close(self) -> None:
        """Finish background deletions, release the helper threads; idempotent.

        Raises the failure of a background deletion, if any.
        """
        if not self._closed:
            self._closed = True
            self._gc_executor.shutdown(wait=True)
            self._hash_executor.shutdown(wait=True)
            self._io_executor.shutdown(wait=True)
            self._raise_background_errors(wait=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new CheckpointManager.")
