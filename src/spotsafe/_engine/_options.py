"""CheckpointOptions: every setting of a CheckpointManager in one small frozen value.

Why one value: ``Run`` builds its manager itself, and it used to forward seven settings through
a dict, so the other ones (``when_busy``, ``upload_backoff``, ...) could not be set from a
``Run`` at all. Now ``CheckpointManager`` and ``Run`` take the same settings, as keyword
arguments that fill one :class:`CheckpointOptions` or as that object itself (``options=``), and a
setting added here reaches both. The run's identity (``run_id``, ``attempt``) is not a setting:
``Run`` supplies it from its event log.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypedDict

from .._backoff import Backoff
from .._storage import LeaseOptions, Storage
from ..policy._retention import KeepEvery, KeepLast, RetentionPolicy, as_retention

WHEN_BUSY = ("wait", "skip")
"""What ``save()`` may do while the previous save still persists."""


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    """The settings of a :class:`~spotsafe.CheckpointManager`, taken by it and by :class:`~spotsafe.Run`.

    Args:
        remote: A URL (``s3://``, ``gs://``, ``az://``, ...), or an open object store, to
            replicate every committed checkpoint to, in the background. Restore looks at both tiers.
        storage_options: Options for the fsspec file system(s) (endpoint, credentials);
            by default each store reads its usual environment variables and config files.
        keep: What to keep, on both tiers: a number ``n`` (the ``n`` newest, default 3) or a
            retention policy: ``KeepLast(n)``, ``KeepEvery(k)``, ``KeepEveryDuration("1h")``
            (the oldest checkpoint of each hour), combined with ``|``. Whatever it says, the
            newest valid checkpoint, the one just saved and any newer step are kept.
        rng: Capture and restore the python, numpy, torch CPU and CUDA RNGs (default True).
        async_save: ``save()`` returns once the state is copied to host buffers and
            persists in the background (default True). False: ``save()`` returns durable.
        when_busy: What ``save()`` does while the previous save is still persisting:
            ``"wait"`` for it (default), or ``"skip"`` this save (counted in ``skipped_saves``).
        max_pending_uploads: Steps that may wait for upload (default 2); beyond, the oldest
            waiting one is dropped (counted in ``dropped_uploads``).
        upload_backoff: Retry policy for transient remote errors (:class:`~spotsafe.Backoff`).
        read_only: Open the checkpoints for reading only: no writer lock or lease, no
            directory created, no leftovers cleaned, no uploads (a ``Run`` refuses it).
        lease: Timing of the writer lease on a remote root (:class:`~spotsafe.LeaseOptions`:
            ``ttl`` 60 s, ``renew_every`` 15 s).

    Example::

        opts = spotsafe.CheckpointOptions(remote="s3://bucket/exp1", keep=5, when_busy="skip")
        with spotsafe.Run("runs/exp1", state, options=opts) as run:
            ...
    """

    remote: str | Storage | None = None
    storage_options: dict[str, Any] | None = None
    keep: int | RetentionPolicy = 3
    rng: bool = True
    async_save: bool = True
    when_busy: str = "wait"
    max_pending_uploads: int = 2
    upload_backoff: Backoff = Backoff()
    read_only: bool = False
    lease: LeaseOptions = LeaseOptions()

    def __post_init__(self) -> None:
        as_retention(self.keep)  # a bad count or type is named here, before anything is opened
        if self.when_busy not in WHEN_BUSY:
            raise ValueError(f"when_busy={self.when_busy!r} is not one of {WHEN_BUSY}.")
        count = self.max_pending_uploads
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"max_pending_uploads={count!r} is not a whole number of at least 1; use 1 or more.")

    @property
    def retention(self) -> RetentionPolicy:
        """``keep`` as a retention policy (a number ``n`` is ``KeepLast(n)``)."""
        return as_retention(self.keep)


class ManagerSettings(TypedDict, total=False):
    """The keyword arguments that fill a :class:`CheckpointOptions` (its fields, and two deprecated names)."""

    remote: str | Storage | None
    storage_options: dict[str, Any] | None
    keep: int | RetentionPolicy
    keep_last: int  # deprecated: keep=n
    keep_every: int | None  # deprecated: keep=KeepLast(n) | KeepEvery(k)
    rng: bool
    async_save: bool
    when_busy: str
    max_pending_uploads: int
    upload_backoff: Backoff
    read_only: bool
    lease: LeaseOptions


_FIELDS = frozenset(f.name for f in fields(CheckpointOptions))


def options_from(options: CheckpointOptions | None, settings: Mapping[str, Any], *, caller: str,
                 stacklevel: int = 3) -> CheckpointOptions:
    """One :class:`CheckpointOptions` from ``options=`` or from keyword ``settings``, never both.

    ``keep_last=`` and ``keep_every=`` still work and emit one DeprecationWarning naming the
    ``keep=`` spelling; ``stacklevel`` points it at the caller's own line.
    """
    if options is not None and settings:
        raise ValueError(f"{caller} got options= and also {', '.join(f'{k}=' for k in settings)}; put every "
                         "setting in the CheckpointOptions, or pass none of them as keywords.")
    if options is not None:
        if not isinstance(options, CheckpointOptions):
            raise TypeError(f"options={options!r} is not a CheckpointOptions; build one with "
                            "spotsafe.CheckpointOptions(remote=..., keep=...).")
        return options
    unknown = sorted(set(settings) - _FIELDS - {"keep_last", "keep_every"})
    if unknown:
        raise TypeError(f"{caller} got an unexpected keyword argument {unknown[0]!r}; the manager settings are "
                        f"{', '.join(sorted(_FIELDS))}.")
    values = dict(settings)
    legacy = {k: values.pop(k) for k in ("keep_last", "keep_every") if k in values}
    if legacy:
        values["keep"] = _legacy_keep(legacy, values.get("keep"), stacklevel=stacklevel + 1)
    return CheckpointOptions(**values)


def _legacy_keep(legacy: dict[str, Any], keep: int | RetentionPolicy | None, *,
                 stacklevel: int) -> int | RetentionPolicy:
    """``keep_last=`` / ``keep_every=`` as the ``keep=`` they mean, with one DeprecationWarning."""
    given = ", ".join(f"{k}={v!r}" for k, v in legacy.items())
    if keep is not None:
        raise ValueError(f"keep={keep!r} replaces keep_last and keep_every, so {given} would be ignored; drop it, "
                         "or fold it into keep, e.g. keep=KeepLast(3) | KeepEvery(1000).")
    last, every = _whole(legacy.get("keep_last", 3), "keep_last"), legacy.get("keep_every")
    if every is None:
        spelling, value = f"keep={last!r}", last
    else:
        spelling = f"keep=KeepLast({last!r}) | KeepEvery({every!r}) (from spotsafe.policy)"
        value = KeepLast(last) | KeepEvery(_whole(every, "keep_every"))
    verb = "are" if len(legacy) > 1 else "is"
    warnings.warn(f"{given} {verb} deprecated; pass {spelling} instead.", DeprecationWarning, stacklevel=stacklevel)
    return value


def _whole(value: Any, name: str) -> int:
    """``value`` as a count of at least 1, or a ValueError naming the argument the caller wrote."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not a whole number of at least 1; use {name} >= 1.")
    return value
