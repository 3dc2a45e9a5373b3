"""Storage layer: bytes at a location and the commit strategy for it."""

from ._local import AtomicRenameCommit, LocalStorage

__all__ = ["AtomicRenameCommit", "LocalStorage"]
