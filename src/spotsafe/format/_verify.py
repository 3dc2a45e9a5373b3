"""Deciding whether a checkpoint can be trusted, without torch.

A checkpoint is valid only when its manifest parses and passes its own checksum, names
the step of its directory, and every listed file exists with the listed size and
checksum. ``deep=False`` skips the content checksums (sizes only) for a fast listing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._layout import MANIFEST, parse_step_dir, step_dir
from ._manifest import FileEntry, Manifest, ManifestError, parse_manifest


@dataclass(frozen=True)
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


def read_manifest(storage, name: str) -> Manifest:
    """Read and parse the manifest of checkpoint dir ``name``; raises ManifestError with the reason."""
    rel = f"{name}/{MANIFEST}"
    if storage.size(rel) is None:
        raise ManifestError("manifest.json is missing (the save never committed)")
    manifest = parse_manifest(storage.read_bytes(rel))
    step = parse_step_dir(name)
    if step is not None and manifest.step != step:
        raise ManifestError(f"manifest.json says step {manifest.step}, the directory says {step}")
    return manifest


def check_checkpoint(storage, step: int, *, deep: bool = True) -> CheckpointInfo:
    """Verify the checkpoint of ``step`` in ``storage``."""
    name = step_dir(step)
    location = f"{storage.url}/{name}"
    try:
        manifest = read_manifest(storage, name)
    except ManifestError as e:
        return CheckpointInfo(step, name, location, False, str(e))
    for fname, entry in manifest.files.items():
        rel = f"{name}/{fname}"
        size = storage.size(rel)
        problem = size_problem(fname, entry, size)
        if problem is None and deep:
            problem = content_problem(fname, entry, *storage.digest(rel, size))
        if problem is not None:
            return CheckpointInfo(step, name, location, False, problem, manifest)
    return CheckpointInfo(step, name, location, True, None, manifest)


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


def committed_steps(storage) -> list[int]:
    """Steps with a committed-looking directory (``step-N``), ascending; not yet verified."""
    return sorted(s for s in (parse_step_dir(n) for n in storage.listdir_committed(MANIFEST)) if s is not None)


def list_checkpoints(storage, *, deep: bool = True) -> list[CheckpointInfo]:
    """Every checkpoint directory under the root with its verdict, oldest first."""
    return [check_checkpoint(storage, s, deep=deep) for s in committed_steps(storage)]
