"""Which committed checkpoints of one store to delete after a save, under a retention policy.

The rules are pure and live in :mod:`spotsafe.policy._retention`; this module feeds them the
steps committed in a store, which of them are *valid*, and (only when the policy has a
time-based rule) each checkpoint's creation time. Validity, never the name, decides what
takes a keep slot, so an invalid checkpoint can never push the newest valid one out.

Where a verdict comes from, cheapest first:

* Steps this manager committed (local) or confirmed (remote) are valid without a read:
  their bytes were hashed as they were written or uploaded (:meth:`StoreRetention.vouch`).
* Verdicts made elsewhere are handed in (:meth:`StoreRetention.record`): restore reads
  every byte of the candidates it tries (a deep verdict, free here), and an upload whose
  bytes fail their checksum condemns the local copy.
* Any other step at or below the one just committed (a previous attempt's checkpoints) is
  checked *shallowly* once: its manifest parses, passes its own checksum and names its
  step, and every file it lists exists with the listed size. Shallow on both tiers: a deep
  check would read every old checkpoint in full on each restart (on the remote, download
  it), in the thread that makes the next save durable; the newest valid checkpoint is
  never at stake, because the step just committed is valid by construction and a content
  defect in an older one is found by the restore that reads it.

Verdicts are cached per step with the digest of the manifest they were made on, so a
prune reads only steps it has not judged yet; an entry goes when its step leaves the
listing, and is replaced when this manager commits, confirms or restores that step.
A step whose check fails for a reason other than its content (an I/O error, an
unreachable store) has no verdict: it is kept, takes no slot, and is checked again by the
next prune. Steps newer than the one just committed are never deleted, so they are not read.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .._format import (
    Manifest,
    ManifestError,
    committed_steps,
    digest_bytes,
    parse_manifest,
    read_manifest_bytes,
    size_problem,
    step_dir,
)
from .._storage import Storage
from ..policy._retention import RetentionPolicy, select_deletions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Whether one copy of a step is valid, judged on the manifest whose digest is ``digest``."""

    valid: bool
    created: float | None = None
    digest: str | None = None
    reason: str | None = None


class StoreRetention:
    """A retention policy applied to the committed checkpoints of one store, by validity.

    :meth:`deletions` is called from one thread at a time (the manager's persist thread for
    the run root, the upload thread for the remote); :meth:`vouch`, :meth:`record` and
    :meth:`forget` may be called from any thread.
    """

    def __init__(self, storage: Storage, policy: RetentionPolicy) -> None:
        self.storage = storage
        self.policy = policy
        self._lock = threading.Lock()
        self._verdicts: dict[int, Verdict] = {}

    def vouch(self, step: int, manifest: Manifest | None = None, raw: bytes | None = None) -> None:
        """``step`` is valid: this manager wrote (or uploaded) its bytes and hashed them as it did."""
        self.record(step, Verdict(valid=True, created=manifest.created if manifest else None,
                                  digest=digest_bytes(raw) if raw is not None else None))

    def record(self, step: int, verdict: Verdict) -> None:
        """Remember a verdict made elsewhere (restore, an upload) on the current copy of ``step``.

        An invalid verdict on a manifest other than the one vouched for is about a copy that
        has since been replaced (an upload that raced a new save of that step): ignored.
        """
        with self._lock:
            old = self._verdicts.get(step)
            if (not verdict.valid and old is not None and old.valid and verdict.digest and old.digest
                    and verdict.digest != old.digest):
                return
            self._verdicts[step] = verdict

    def forget(self, step: int) -> None:
        """``step`` was deleted or is being replaced: judge it afresh if it comes back."""
        with self._lock:
            self._verdicts.pop(step, None)

    def verdict(self, step: int) -> Verdict | None:
        with self._lock:
            return self._verdicts.get(step)

    def deletions(self, committed: int) -> list[int]:
        """Committed steps to delete, oldest first, now that ``committed`` is committed (and valid)."""
        steps = committed_steps(self.storage)
        listed = set(steps)
        with self._lock:
            self._verdicts = {s: v for s, v in self._verdicts.items() if s in listed}
            known = dict(self._verdicts)
        valid, invalid, created = {committed}, {}, {}
        for s in steps:
            if s > committed:
                continue  # never deleted, never in a slot: not worth a read
            v = known.get(s)
            if s == committed and (v is None or not v.valid):
                v = Verdict(valid=True, created=v.created if v else None)  # valid by definition: it was just committed
            if v is None or (v.valid and v.created is None and self.policy.needs_times):
                v = self._judge(s)
                if v is None:
                    continue  # unknown: kept, no slot, judged again next time
                self.record(s, v)
            if v.valid:
                valid.add(s)
                created[s] = v.created
            else:
                invalid[s] = v.reason
        if created.get(committed) is None:
            created[committed] = time.time()  # its manifest cannot be read now: it was made just now
        checkpoints = [(s, created.get(s) or 0.0) for s in steps]
        doomed = select_deletions(self.policy, checkpoints, committed, valid=valid, invalid=invalid)
        for s in doomed:
            if s in invalid:
                logger.warning("Deleting invalid checkpoint %s from %s under retention: %s", step_dir(s),
                               self.storage.url, invalid[s])
        return doomed

    def _judge(self, step: int) -> Verdict | None:
        """The shallow verdict on ``step`` (manifest, then every file's size); None: cannot tell now."""
        name = step_dir(step)
        try:
            try:
                raw = read_manifest_bytes(self.storage, name)
            except ManifestError as e:
                return Verdict(valid=False, reason=str(e))
            digest = digest_bytes(raw)
            try:
                manifest = parse_manifest(raw)
            except ManifestError as e:
                return Verdict(valid=False, digest=digest, reason=str(e))
            if manifest.step != step:
                return Verdict(valid=False, digest=digest, reason=f"manifest.json says step {manifest.step}, the "
                                                                  f"directory says {step}")
            for fname, entry in manifest.files.items():
                problem = size_problem(fname, entry, self.storage.size(f"{name}/{fname}"))
                if problem is not None:
                    return Verdict(valid=False, created=manifest.created, digest=digest, reason=problem)
            return Verdict(valid=True, created=manifest.created, digest=digest)
        except Exception as e:
            logger.info("Keeping %s in %s for now: it cannot be checked (%s: %s)", name, self.storage.url,
                        type(e).__name__, e)
            return None
