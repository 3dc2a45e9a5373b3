"""The save pipeline in stages: stage -> persist -> commit, and the verified read for restore.

* stage: ask every component for its state dict, encode it (:mod:`spotsafe._state._tree`),
  and bring each tensor to host memory. Asynchronous saves copy every tensor into reusable
  staging buffers (:mod:`._staging`), the one copy that stalls training. Synchronous saves
  reference CPU tensors in place (the caller is blocked until the bytes are on disk); CUDA
  tensors are copied to the host.
* persist: write one raw-bytes file per component, 64-byte aligned so a restore can view
  the bytes as tensors in place, hashing on a helper thread while writing and fsyncing.
* commit: the storage's commit strategy publishes the directory with the manifest last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._format import (
    ComponentEntry,
    FileEntry,
    Manifest,
    ManifestError,
    TensorEntry,
    component_file,
    content_problem,
    default_versions,
    size_problem,
    unreadable_reason,
)
from .._state import (
    RNG_COMPONENT,
    RestorePlan,
    capture_rng,
    decode,
    dtype_name,
    encode,
    is_stateful,
    numpy_dtype,
    plan_restore,
    torch_dtype,
)
from .._storage import Handle, Storage
from ..errors import CorruptCheckpointError, StateMismatchError, UnsupportedStateError
from ._staging import ALIGN, StagingBuffers, aligned_offsets, array_nbytes, synchronize

_ZEROS = memoryview(bytes(ALIGN))


@dataclass(kw_only=True)
class StagedComponent:
    """One component after staging: its encoded tree, tensor table and file bytes in pieces."""

    name: str
    kind: str
    type: str
    tree: Any
    entries: list[TensorEntry]
    pieces: list[memoryview]  # the component file's bytes, in order (empty: no file)
    keep: list = field(default_factory=list)  # owners of the memory the pieces view
    file: str = ""  # the file holding its tensors (none when ``entries`` is empty)
    direct: bool = False  # the pieces are one page-aligned staging buffer: O_DIRECT may write it

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.pieces)


@dataclass(kw_only=True)
class Staged:
    """A whole checkpoint held in host memory, ready to persist."""

    step: int
    components: list[StagedComponent]
    epoch: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    stage_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.components)


def _to_host(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    return t.resolve_conj().resolve_neg().contiguous()


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _byte_view(a: Any) -> memoryview:
    if isinstance(a, torch.Tensor):
        return memoryview(a.reshape(-1).view(torch.uint8).numpy())
    return memoryview(a.reshape(-1).view(np.uint8))


def _entries(arrays: list, devices: list[str], offsets: list[int], file: str) -> list[TensorEntry]:
    entries = []
    for a, dev, off in zip(arrays, devices, offsets, strict=True):
        n = array_nbytes(a)
        if isinstance(a, torch.Tensor):
            entries.append(TensorEntry(dtype=dtype_name(a.dtype), shape=tuple(a.shape), offset=off, nbytes=n,
                                       file=file, kind="tensor", device=dev))
        else:
            entries.append(TensorEntry(dtype=a.dtype.str, shape=tuple(a.shape), offset=off, nbytes=n, file=file,
                                       kind="ndarray"))
    return entries


def _zero_copy_pieces(arrays: list, offsets: list[int]) -> list[memoryview]:
    pieces, pos = [], 0
    for a, off in zip(arrays, offsets, strict=True):
        if off > pos:
            pieces.append(_ZEROS[:off - pos])
        view = _byte_view(a)
        pieces.append(view)
        pos = off + len(view)
    return pieces


def stage(step: int, state: dict[str, Any], *, rng: bool, epoch: int | None = None,
          metadata: dict[str, Any] | None = None, buffers: StagingBuffers | None = None,
          rank: int | None = None, world_size: int = 1) -> Staged:
    """Snapshot ``state`` (and the RNGs) into host memory.

    With ``buffers`` every tensor is copied into the reusable staging buffers, so the
    caller may change the state as soon as this returns (asynchronous saves). Without,
    CPU tensors are referenced in place (the caller waits until they are written) and
    only CUDA tensors are copied to the host.

    ``rank`` (one rank of ``world_size``, a multi-rank checkpoint): the components are
    this rank's own, named ``<name>@<rank>`` in files ``component_file(name, rank, world_size)``.
    """
    t0 = time.perf_counter()
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of name -> object, got {type(state).__name__}; "
                        "wrap it as {'model': model, ...}.")
    meta = dict(metadata or {})  # the manager hands a checked copy (format.encode_metadata), made in save()
    items = list(state.items())
    for name, _ in items:
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"State key {name!r} is not allowed; use a non-empty string that does not start with '__'.")
    if rng:
        items.append((RNG_COMPONENT, capture_rng()))
    comps, files, cuda_devices = [], set(), set()
    for name, obj in items:
        stateful = name != RNG_COMPONENT and is_stateful(obj)
        sd = obj.state_dict() if stateful else obj
        if stateful and not isinstance(sd, dict):  # the reader loads only a dict into load_state_dict
            raise UnsupportedStateError(f"state[{name!r}].state_dict() returned a {type(sd).__name__}; return a dict "
                                        "(e.g. {'value': ...}), or store the value itself without the object.")
        arrays: list = []
        try:
            tree = encode(sd, arrays, (name,))
        except UnsupportedStateError as e:
            raise UnsupportedStateError(f"state[{name!r}]: {e}") from None
        fname = component_file(name) if rank is None else component_file(name, rank, world_size)
        if arrays and fname in files:
            raise ValueError(f"State keys map to the same file {fname!r}; rename one of them.")
        files.add(fname)
        devices = [str(a.device) if isinstance(a, torch.Tensor) else "cpu" for a in arrays]
        cuda_devices.update(d for d in devices if d.startswith("cuda"))
        if buffers is not None:
            arrays = [a if isinstance(a, torch.Tensor) else np.asarray(a) for a in arrays]
            flat, offsets = buffers.copy_in(name, arrays) if arrays else (None, [])
            pieces = [_byte_view(flat)] if arrays else []
            keep = [flat]
        else:
            arrays = [_to_host(a) if isinstance(a, torch.Tensor) else np.ascontiguousarray(a) for a in arrays]
            offsets, _ = aligned_offsets([array_nbytes(a) for a in arrays])
            pieces = _zero_copy_pieces(arrays, offsets)
            keep = arrays
        entries = _entries(arrays, devices, offsets, fname)
        comps.append(StagedComponent(name=name if rank is None else f"{name}@{rank}",
                                     kind="stateful" if stateful else "value", type=_type_name(obj), tree=tree,
                                     entries=entries, pieces=pieces, keep=keep, file=fname,
                                     direct=buffers is not None))
    if buffers is not None:
        synchronize(cuda_devices)
    return Staged(step=step, components=comps, epoch=epoch, metadata=meta, stage_s=time.perf_counter() - t0)


def persist(staged: Staged, storage: Storage, tmp: Handle, hash_executor: Executor) -> Manifest:
    """Write every component file into the save ``tmp`` (begun, not committed) and return the manifest describing them."""
    files: dict[str, FileEntry] = {}
    components: dict[str, ComponentEntry] = {}
    for comp in staged.components:
        if comp.entries:
            size, digest = storage.write_file(tmp, comp.file, comp.pieces, hash_executor, direct=comp.direct)
            files[comp.file] = FileEntry(size=size, checksum=digest)
        components[comp.name] = ComponentEntry(kind=comp.kind, type=comp.type, tree=comp.tree, tensors=tuple(comp.entries))
    return Manifest(step=staged.step, files=files, components=components, epoch=staged.epoch,
                    versions=default_versions(torch=torch.__version__), metadata=staged.metadata)


def skip_reason(e: BaseException) -> str:
    """One line saying why a checkpoint copy could not be read, from whatever its reading raised."""
    if isinstance(e, (ManifestError, CorruptCheckpointError, MemoryError)) and str(e):
        text = str(e)
    elif isinstance(e, OSError):
        text = unreadable_reason(e)
    else:
        text = f"{type(e).__name__}: {e}"
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def available_memory() -> int | None:
    """Bytes this process may still fill: MemAvailable plus free swap, within its cgroup's limit.

    None where the platform does not say (then nothing is refused up front, and a failed
    allocation is still reported as a skip).
    """
    avail = None
    try:
        with open("/proc/meminfo", "rb") as f:
            info = dict(line.split(b":", 1) for line in f if b":" in line)
        avail = (int(info[b"MemAvailable"].split()[0]) + int(info.get(b"SwapFree", b"0").split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def read_verified(storage: Storage, name: str, manifest: Manifest, io_executor: Executor) -> dict[str, torch.Tensor]:
    """Read every file of a checkpoint into memory and check its size and checksum.

    Raises CorruptCheckpointError naming the first file that fails, and MemoryError when
    the files would not fit in the memory left (checked before anything is allocated, so
    a manifest cannot make a restore exhaust memory). Nothing is decoded before every
    file has passed.
    """
    names, bufs = [], {}
    for fname, entry in manifest.files.items():
        problem = size_problem(fname, entry, storage.size(f"{name}/{fname}"))
        if problem is not None:
            raise CorruptCheckpointError(problem)
        names.append(fname)
    need, avail = manifest.total_bytes, available_memory()
    if avail is not None and need > avail:
        raise MemoryError(f"its files take {_gib(need)} and only {_gib(avail)} of memory is available; free memory "
                          "or restore on a larger machine")
    for fname in names:
        size = manifest.files[fname].size
        try:
            bufs[fname] = torch.empty(size, dtype=torch.uint8)
        except (RuntimeError, MemoryError):
            raise MemoryError(f"{fname} ({_gib(size)}) could not be allocated; free memory or restore on a larger "
                              "machine") from None
    results = storage.read_files([(f"{name}/{f}", memoryview(bufs[f].numpy())) for f in names], io_executor)
    for fname, (n, digest) in zip(names, results, strict=True):
        problem = content_problem(fname, manifest.files[fname], n, digest)
        if problem is not None:
            raise CorruptCheckpointError(problem)
    return bufs


def plan_components(name: str, manifest: Manifest, bufs: dict[str, torch.Tensor], state: dict[str, Any], *,
                    rng: bool, partial: Any) -> tuple[RestorePlan, Any]:
    """Decode ``manifest``'s components from the verified ``bufs`` and plan their restore into
    ``state`` (touching nothing; a malformed tree raises, so its checkpoint is skipped): the plan,
    and the saved RNG state (None when it holds none; planned only when ``rng``)."""
    framework = next((c.type for c in manifest.components.values() if c.kind == "files"), None)
    if framework is not None:
        raise StateMismatchError(f"Checkpoint {name} holds the files of a {framework} checkpoint, which its framework "
                                 "loads itself; resume it through that integration (trainer.train(resume_from_"
                                 "checkpoint=run.resume_path()) and the like), not with restore().")
    loaded = dict(decode_components(manifest, bufs))
    saved_rng = loaded.pop(RNG_COMPONENT, None)
    kinds = {n: c.kind for n, c in manifest.components.items() if n != RNG_COMPONENT}
    return plan_restore(name, kinds, state, loaded, saved_rng if rng else None, partial=partial), saved_rng


def decode_components(manifest: Manifest, bufs: dict[str, torch.Tensor]) -> Iterator[tuple[str, Any]]:
    """(name, decoded state dict or value) for every component; tensors are views of ``bufs``."""
    for cname, comp in manifest.components.items():
        def array(kind: str, i: int, comp: ComponentEntry = comp) -> Any:
            e = comp.tensors[i]
            if e.kind != kind:
                raise ValueError(f"entry {i} is a {e.kind}, the tree expects a {kind}")
            raw = bufs[e.file][e.offset:e.offset + e.nbytes]
            if kind == "ndarray":
                return np.frombuffer(raw.numpy(), dtype=numpy_dtype(e.dtype)).reshape(e.shape).copy()
            return raw.view(torch_dtype(e.dtype)).reshape(e.shape)
        try:  # cannot fail on a manifest that passed the format's validator; kept as a second line of defence
            yield cname, decode(comp.tree, array)
        except (ValueError, TypeError, IndexError, RuntimeError, KeyError, AttributeError, OverflowError,
                RecursionError) as e:
            raise CorruptCheckpointError(f"component {cname!r} does not match its bytes ({e})") from None
