"""Storage layer: bytes at a location and the commit strategy for it.

The contract every store keeps (phases of a write, call order, threads, what is atomic) is
:mod:`._protocol`'s :class:`Storage`.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import UnsupportedURLError
from ._fsspec import FsspecStorage, check_url, is_url
from ._lease import LeaseNotHeldError, LeaseOptions, RemoteLease
from ._local import AtomicRenameCommit, LocalStorage
from ._lock import WriterLock
from ._objects import ManifestLastCommit, ObjectStore
from ._obstore import SCHEMES as _OBSTORE_SCHEMES
from ._obstore import ObstoreStorage
from ._obstore import check_url as _check_obstore_url
from ._owner import Owner
from ._protocol import (
    CommitStrategy,
    ConditionalObjects,
    Handle,
    LocalFiles,
    PreconditionFailedError,
    SaveNotBegunError,
    Storage,
    Uploadable,
)

_ONE_SLASH = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")
_URL_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "http", "https", "hdfs"}


def check_root(root: str | os.PathLike) -> None:
    """Raise as :func:`open_storage` would for a root no storage can open; no request is sent.

    For a command that hands the root to another process (``spotsafe run --root``, ``--remote``)
    and should refuse a typo before starting it.
    """
    s = os.fspath(root)
    if is_url(s):
        if s.split("://", 1)[0] in _OBSTORE_SCHEMES:
            _check_obstore_url(s)
        else:
            check_url(s)
        return
    typo = _ONE_SLASH.match(s)
    if typo and typo.group(1).lower() in _URL_SCHEMES:
        raise UnsupportedURLError(f"Storage root {s!r} looks like a URL with one slash; write "
                                  f"{typo.group(1)}://{s[typo.end():]} (or ./{s} for a local directory).")


def open_storage(root: str | os.PathLike | Storage, storage_options: dict[str, Any] | None = None, *,
                 commit: CommitStrategy | None = None) -> Storage:
    """LocalStorage for a path (or ``file://``), ObstoreStorage for ``s3://``, FsspecStorage for any other URL.

    ``commit``: how the store publishes a save (a :class:`CommitStrategy`); by default
    :class:`AtomicRenameCommit` on a local path, :class:`ManifestLastCommit` at a URL.
    A store that is already open (any :class:`Storage`, e.g. one opened here with a chosen
    ``commit``) is returned as it is, so that a manager can be handed one.

    Raises :class:`~spotsafe.errors.UnsupportedURLError` for an unknown scheme, or a URL with
    one slash (``s3:/bucket``) that would otherwise become a local directory named ``s3:``;
    :class:`~spotsafe.errors.MissingDependencyError` when the scheme's package is missing.
    """
    if isinstance(root, Storage):
        if storage_options or commit is not None:
            raise ValueError(f"{root!r} is an open store; give storage_options and commit when opening it, "
                             "not again here.")
        return root
    check_root(root)
    if is_url(root):
        if os.fspath(root).split("://", 1)[0] in _OBSTORE_SCHEMES:
            return ObstoreStorage(os.fspath(root), storage_options, commit=commit)
        return FsspecStorage(os.fspath(root), storage_options, commit=commit)
    s = os.fspath(root)
    return LocalStorage(s[len("file://"):] if s.startswith("file://") else s, commit=commit)


__all__ = ["AtomicRenameCommit", "CommitStrategy", "ConditionalObjects", "FsspecStorage", "Handle",
           "LeaseNotHeldError", "LeaseOptions", "LocalFiles", "LocalStorage", "ManifestLastCommit", "ObjectStore",
           "ObstoreStorage", "Owner", "PreconditionFailedError", "RemoteLease", "SaveNotBegunError", "Storage",
           "Uploadable", "WriterLock", "check_root", "is_url", "open_storage"]
