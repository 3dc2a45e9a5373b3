"""Deciding whether a checkpoint can be trusted, without torch.

A checkpoint is valid only when its manifest parses, passes its own checksum and the
validator (:mod:`._validate`: bounds, dtypes, tensor tables, state trees), names the step
of its directory, and every listed file is a regular file (no link, FIFO or device) with
the listed size and checksum. ``deep=False`` skips the content checksums (sizes only) for
a fast listing. Restore applies exactly these checks, so ``spotsafe verify`` says "ok"
exactly when restore would load the checkpoint (whether it fits the objects aside).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import RemoteError, UnsafeFileError
from ._layout import MANIFEST, parse_step_dir, step_dir
from ._manifest import FileEntry, Manifest, ManifestError, parse_manifest
from ._schema import MAX_MANIFEST_BYTES

if TYPE_CHECKING:  # the storage layer imports this one at run time
    from .._storage import Storage

# Errors that make one checkpoint unreadable here: a member that is a link / FIFO / device,
# or a local file this process may not read. Anything else (a network error, a store that
# refuses these credentials: RemoteError) is not a verdict on the checkpoint and propagates.
_UNREADABLE = (UnsafeFileError, PermissionError, IsADirectoryError)


@dataclass(frozen=True, kw_only=True)
class CheckpointInfo:
    """One checkpoint directory and the verdict on it."""

    step: int
    name: str
    location: str
    valid: bool
    reason: str | None = None
    manifest: Manifest | None = None

    @property
    def size(self) -> int | None:
        return self.manifest.total_bytes if self.manifest else None

    @property
    def created(self) -> float | None:
        return self.manifest.created if self.manifest else None


def read_manifest_bytes(storage: Storage, name: str) -> bytes:
    """The raw manifest of checkpoint dir ``name``, refused unread when it is too large to be one.

    Raises ManifestError when it is missing or too large; the storage's own errors otherwise.
    """
    rel = f"{name}/{MANIFEST}"
    size = storage.size(rel)
    if size is None:
        raise ManifestError("manifest.json is missing (the save never committed)")
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest.json is {size} bytes; at most {MAX_MANIFEST_BYTES} are read")
    return storage.read_bytes(rel)


def read_manifest(storage: Storage, name: str) -> Manifest:
    """Read and parse the manifest of checkpoint dir ``name``; raises ManifestError with the reason."""
    manifest = parse_manifest(read_manifest_bytes(storage, name))
    step = parse_step_dir(name)
    if step is not None and manifest.step != step:
        raise ManifestError(f"manifest.json says step {manifest.step}, the directory says {step}")
    return manifest


def check_checkpoint(storage: Storage, step: int, *, deep: bool = True) -> CheckpointInfo:
    """Verify the checkpoint of ``step`` in ``storage``."""
    name = step_dir(step)
    location = f"{storage.url}/{name}"
    try:
        manifest = read_manifest(storage, name)
    except ManifestError as e:
        return CheckpointInfo(step=step, name=name, location=location, valid=False, reason=str(e))
    except _UNREADABLE as e:
        if isinstance(e, RemoteError):
            raise
        return CheckpointInfo(step=step, name=name, location=location, valid=False, reason=unreadable_reason(e))
    for fname, entry in manifest.files.items():
        rel = f"{name}/{fname}"
        try:
            size = storage.size(rel)
            problem = size_problem(fname, entry, size)
            if problem is None and deep:
                problem = content_problem(fname, entry, *storage.digest(rel, size))
        except _UNREADABLE as e:
            if isinstance(e, RemoteError):
                raise
            problem = unreadable_reason(e)
        if problem is not None:
            return CheckpointInfo(step=step, name=name, location=location, valid=False, reason=problem,
                                  manifest=manifest)
    return CheckpointInfo(step=step, name=name, location=location, valid=True, manifest=manifest)


def unreadable_reason(e: OSError) -> str:
    """One phrase for a member that cannot be read: a link, FIFO or device, or no permission."""
    if isinstance(e, UnsafeFileError):
        return str(e.strerror or e)
    what = f"{e.filename!r}" if e.filename else "a file of it"
    return f"{what} cannot be read ({e.strerror or type(e).__name__})"


def size_problem(fname: str, entry: FileEntry, size: int | None) -> str | None:
    """Why a file of ``size`` bytes (None: missing) does not match its entry, or None."""
    if size is None:
        return f"{fname} is missing"
    if size != entry.size:
        return f"{fname} is {size} bytes, manifest says {entry.size}"
    return None


def content_problem(fname: str, entry: FileEntry, nread: int, digest: str) -> str | None:
    """Why ``nread`` bytes hashing to ``digest`` do not match the entry, or None."""
    if nread != entry.size:
        return f"{fname} ended after {nread} bytes, manifest says {entry.size}"
    if digest != entry.checksum:
        return f"{fname} fails its checksum ({digest}, manifest says {entry.checksum})"
    return None


def committed_steps(storage: Storage) -> list[int]:
    """Steps with a committed-looking directory (``step-N``), ascending; not yet verified."""
    return sorted(s for s in (parse_step_dir(n) for n in storage.listdir_committed(MANIFEST)) if s is not None)


def list_checkpoints(storage: Storage, *, deep: bool = True) -> list[CheckpointInfo]:
    """Every checkpoint directory under the root with its verdict, oldest first."""
    return [check_checkpoint(storage, s, deep=deep) for s in committed_steps(storage)]
