"""The reads a framework integration needs from a :class:`~spotsafe.CheckpointManager`.

A framework loads its checkpoint itself: the HF Trainer and Accelerate from a folder of
their own files, Lightning from the dict its ``CheckpointIO`` returns. So instead of
:meth:`CheckpointManager.restore <spotsafe.CheckpointManager.restore>` (which loads into live
objects) they get the same tier search and verification, ending in a verified local folder
(:meth:`FrameworkReads.local_copy`) or verified plain values (:meth:`FrameworkReads.read_values`).
A mixin of the manager, kept apart to keep the manager's module readable.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

from .._format import CheckpointInfo, ManifestError, check_checkpoint, read_manifest, step_dir
from .._names import Tier
from ..errors import (
    CheckpointSkippedWarning,
    CorruptCheckpointError,
    RemoteUnavailableError,
    RemoteUnavailableWarning,
    SaveFailedError,
    StateMismatchError,
    UnsafeFileError,
)
from ._pipeline import decode_components, read_verified, skip_reason
from ._replicate import is_transient
from ._restore_stats import RestoreStats
from ._retention import Verdict

if TYPE_CHECKING:
    from ._manager import CheckpointManager

logger = logging.getLogger("spotsafe._engine._manager")


class FrameworkReads:
    """``local_copy`` and ``read_values``: mixed into :class:`~spotsafe.CheckpointManager` only."""

    def read_values(self: CheckpointManager, step: int) -> dict[str, Any]:
        """Checkpoint ``step`` as plain values, verified: each component's saved value or state dict.

        For a framework's own restore (``spotsafe.lightning``): every byte is checked against the
        manifest before anything is decoded, from the local copy when it is valid, else from the
        remote. Raises :class:`CorruptCheckpointError` when no copy verifies.
        """
        self._check_open()
        self._finish_inflight()
        tiers, _, _ = self._tiers(step)
        name = step_dir(step)
        problems = []
        for tier, storage, steps in tiers:
            if step not in steps:
                continue
            try:
                manifest = read_manifest(storage, name)
                if any(c.kind == "files" for c in manifest.components.values()):
                    raise StateMismatchError(f"Checkpoint {name} in {storage.url} holds a framework's files, not "
                                             "values; hand the framework its folder (local_copy) instead.")
                bufs = read_verified(storage, name, manifest, self._io_executor)
                return dict(decode_components(manifest, bufs))
            except StateMismatchError:
                raise
            except Exception as e:
                if tier is Tier.REMOTE and not isinstance(e, (ManifestError, CorruptCheckpointError)) \
                        and not is_transient(e):
                    raise
                problems.append(f"{storage.url}: {skip_reason(e)}")
        raise CorruptCheckpointError(f"Checkpoint {name} cannot be read from {' or '.join(problems)}; resume from "
                                     "another step (or none: the newest valid one).")

    def local_copy(self: CheckpointManager, step: int | None = None) -> CheckpointInfo | None:
        """The newest valid checkpoint (or ``step``) as a verified folder on local disk; None when there is none.

        For frameworks that load a checkpoint folder themselves (``spotsafe.hf``,
        ``spotsafe.accelerate``) and for :meth:`Run.resume_path <spotsafe.Run.resume_path>`.
        Both tiers are searched as :meth:`restore` does: the newest step wins; its local copy
        is read in full and checked against every checksum; when it is missing or invalid,
        the remote copy is downloaded, verified and written into the root (the folder a new
        machine resumes from). Invalid copies are skipped with a
        :class:`CheckpointSkippedWarning`; errors as for :meth:`restore`. Read-only: nothing
        is written, and the returned ``location`` is that of the copy that verified.
        """
        self._check_open()
        t0 = time.perf_counter()
        self._finish_inflight()
        tiers, unreachable, every = self._tiers(step)
        t_list = time.perf_counter()
        skipped: list[str] = []
        rejected: list[int] = []
        for s in every:
            name = step_dir(s)
            for tier, storage, steps in tiers:
                if s not in steps:
                    continue
                t_read = time.perf_counter()
                try:
                    manifest = read_manifest(storage, name)
                    bufs: dict[str, Any] = {}
                    if tier is Tier.REMOTE and not self.read_only:
                        bufs = read_verified(storage, name, manifest, self._io_executor)
                    else:
                        info = check_checkpoint(storage, s, deep=True)
                        if not info.valid:
                            raise CorruptCheckpointError(info.reason or "it fails verification")
                except Exception as e:
                    invalid = isinstance(e, (ManifestError, CorruptCheckpointError))
                    if step is not None:
                        raise CorruptCheckpointError(f"Checkpoint {name} in {storage.url} is invalid: {skip_reason(e)}; "
                                                     "resume from another step or none.") from None
                    if tier is Tier.REMOTE and not invalid and is_transient(e):
                        unreachable = f"{type(e).__name__}: {e}"
                        warnings.warn(f"Cannot read {name} in {storage.url} ({unreachable}); trying an older "
                                      "checkpoint.", RemoteUnavailableWarning, stacklevel=2)
                        continue
                    if tier is Tier.ROOT and (invalid or isinstance(e, UnsafeFileError)):
                        rejected.append(s)
                    skipped.append(f"{name} in {storage.url} ({skip_reason(e)})")
                    warnings.warn(f"Checkpoint {name} in {storage.url} is invalid: {skip_reason(e)}. Skipping it and "
                                  "falling back to another copy or an older one.", CheckpointSkippedWarning,
                                  stacklevel=2)
                    continue
                t_load = time.perf_counter()
                location = f"{storage.url}/{name}"
                if bufs:  # downloaded and verified: the local folder the framework reads
                    self._repair_local(s, manifest, bufs)
                    if not check_checkpoint(self.storage, s, deep=False).valid:
                        raise SaveFailedError(f"{name} was downloaded from {storage.url} and verified, but could not "
                                              f"be written into {self.root} (see the warning above); free space "
                                              "there, then start again.")
                    location = f"{self.storage.url}/{name}"
                    if self._replicator is not None:
                        self._replicator.confirm_restored(s, manifest)
                elif not self.read_only and tier is Tier.ROOT:
                    for r in rejected:
                        self._retention.record(r, Verdict(valid=False, reason="it failed verification when read"))
                    self._retention.record(s, Verdict(valid=True, created=manifest.created))
                self.restored = CheckpointInfo(step=s, name=name, location=location, valid=True, manifest=manifest)
                self.restored_tier = tier
                self.restore_skipped = skipped
                self.last_restore = RestoreStats(step=s, tier=tier, bytes=manifest.total_bytes, fallbacks=len(skipped),
                                                 select_s=t_read - t_list, read_s=t_load - t_read, load_s=0.0,
                                                 total_s=time.perf_counter() - t0)
                if skipped:
                    logger.warning("Resuming from %s (%s) after skipping %d invalid checkpoint(s): %s", name, tier,
                                   len(skipped), "; ".join(skipped))
                return self.restored
        self.restore_skipped = skipped
        self.last_restore = RestoreStats(step=None, tier=None, bytes=0, fallbacks=len(skipped),
                                         select_s=time.perf_counter() - t_list, read_s=0.0, load_s=0.0,
                                         total_s=time.perf_counter() - t0)
        if unreachable is not None:
            raise RemoteUnavailableError(
                f"No valid checkpoint could be read: the remote {self.remote.url} is unreachable ({unreachable}) and "
                f"{self.root} holds no valid checkpoint; retry when the store is back.")
        if skipped:
            raise CorruptCheckpointError(
                f"No valid checkpoint in {self.root}{' or ' + self.remote.url if self.remote else ''}: all "
                f"{len(skipped)} failed verification ({'; '.join(skipped)}); repair or remove them to start over.")
        return None
