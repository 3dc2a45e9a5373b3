"""Storage layer: bytes at a location and the commit strategy for it."""

from __future__ import annotations

import os
from typing import Any

from ._fsspec import FsspecStorage, ManifestLastCommit, is_url
from ._lease import LeaseNotHeldError, LeaseOptions, RemoteLease
from ._local import AtomicRenameCommit, LocalStorage
from ._lock import WriterLock
from ._owner import Owner


def open_storage(root: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> LocalStorage | FsspecStorage:
    """LocalStorage for a path (or ``file://``), FsspecStorage for any other URL."""
    if is_url(root):
        return FsspecStorage(os.fspath(root), storage_options)
    s = os.fspath(root)
    return LocalStorage(s[len("file://"):] if s.startswith("file://") else s)


__all__ = ["AtomicRenameCommit", "FsspecStorage", "LeaseNotHeldError", "LeaseOptions", "LocalStorage",
           "ManifestLastCommit", "Owner", "RemoteLease", "WriterLock", "is_url", "open_storage"]
