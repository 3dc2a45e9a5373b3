"""A framework's own checkpoint folder, committed as a spotsafe checkpoint.

The Hugging Face Trainer and Accelerate write a checkpoint as a folder of files
(``model.safetensors``, ``optimizer.pt``, ``rng_state_0.pth``, ...) in place, with no checksum
and no commit point: a folder cut short by a SIGKILL looks like any other. Those bytes are
already on disk, so the cheapest way to make them a spotsafe checkpoint is not to re-encode
them but to adopt them:

* stage (the caller's thread, a few milliseconds): hard-link every file into the save's temp
  directory ``step-N.tmp-*`` (a copy where the folder is on another file system). From then
  on the framework may delete its folder (``save_total_limit`` rotation): the links keep the
  bytes.
* persist (the persist thread): read each file once to checksum it, ``fsync`` it (the
  framework wrote it without), check that nobody rewrote it meanwhile (same size and
  modification time as when it was linked), then write the manifest last and rename, exactly
  as for any other save; retention and the upload follow.

The manifest lists each file and one component of kind ``"files"`` naming them, so ``verify``,
``ls``, retention, replication and the verified restore treat the folder like any checkpoint.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._format import ComponentEntry, FileEntry, Manifest, default_versions, safe_file_name, step_dir, tmp_dir
from .._format._hash import digest_fd
from .._storage import Handle, LocalFiles

_COPY_INSTEAD = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


@dataclass(kw_only=True)
class LinkedFiles:
    """A framework's folder after staging: its files linked into the begun save ``handle``."""

    step: int
    kind: str  # what wrote it, e.g. "hf-trainer"; the component's name and type
    source: str
    handle: Handle
    files: list[tuple[str, int, int]]  # (name, size, mtime_ns) when linked
    epoch: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    stage_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(size for _, size, _ in self.files)


def flat_files(directory: str | os.PathLike) -> list[str]:
    """The names of the regular files in ``directory``, sorted; ValueError naming what a checkpoint cannot hold."""
    src = Path(directory)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; pass the folder the framework wrote its checkpoint to.")
    names = []
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            what = "a folder" if entry.is_dir(follow_symlinks=False) else "not a regular file"
            raise ValueError(f"{entry.path} is {what}; spotsafe commits a flat folder of regular files, so save "
                             "the checkpoint without sub-folders (e.g. a full state dict rather than sharded files).")
        if not safe_file_name(entry.name):
            raise ValueError(f"{entry.path} has a name a checkpoint cannot hold (letters, digits and _.,=+- only, "
                             "not manifest.json); rename it before the checkpoint is taken.")
        names.append(entry.name)
    if not names:
        raise ValueError(f"{src} holds no files: there is nothing to checkpoint; let the framework write its "
                         "checkpoint there first.")
    return names


def link_files(storage: LocalFiles, step: int, directory: str | os.PathLike, *, kind: str,
               epoch: int | None = None, metadata: dict[str, Any] | None = None) -> LinkedFiles:
    """Stage ``directory``: begin the save of ``step`` and hard-link (or copy) every file into it."""
    t0 = time.perf_counter()
    names = flat_files(directory)
    src = Path(directory)
    handle = storage.begin(step_dir(step), tmp_dir(step))
    files = []
    try:
        for name in names:
            dst = storage.path(handle, name)
            try:
                os.link(src / name, dst, follow_symlinks=False)
            except OSError as e:
                if e.errno not in _COPY_INSTEAD:
                    raise
                shutil.copyfile(src / name, dst, follow_symlinks=False)  # another file system: one copy
            st = os.stat(dst, follow_symlinks=False)
            files.append((name, st.st_size, st.st_mtime_ns))
    except BaseException:
        storage.abort(handle)
        raise
    return LinkedFiles(step=step, kind=kind, source=str(src), handle=handle, files=files, epoch=epoch,
                       metadata=dict(metadata or {}), stage_s=time.perf_counter() - t0)


def persist_files(linked: LinkedFiles, storage: LocalFiles) -> Manifest:
    """Checksum and fsync every linked file, check none changed since it was linked; the manifest to commit."""
    entries: dict[str, FileEntry] = {}
    for name, size, mtime in linked.files:
        fd = storage.open_member(f"{linked.handle}/{name}")
        try:
            nread, digest = digest_fd(fd, size)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if (nread, st.st_size, st.st_mtime_ns) != (size, size, mtime):
            raise RuntimeError(f"{name} in {linked.source} was written again while {step_dir(linked.step)} was being "
                               "committed (its size or time changed); the framework must not rewrite a checkpoint "
                               "folder it has handed over: save the next step instead")
        entries[name] = FileEntry(size=size, checksum=digest)
    component = ComponentEntry(kind="files", type=linked.kind, tree=[n for n, _, _ in linked.files])
    return Manifest(step=linked.step, files=entries, components={linked.kind: component}, epoch=linked.epoch,
                    world_size=max(1, int(os.environ.get("WORLD_SIZE") or 1)),
                    versions=default_versions(torch=torch.__version__), metadata=linked.metadata)
