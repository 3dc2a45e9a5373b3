"""One verified checkpoint for a whole ``torchrun`` job, written by DCP's planners under spotsafe's commit.

``torch.distributed.checkpoint`` (DCP) decides who writes what: a replicated tensor (DDP) is
written once by one rank, a sharded one (FSDP2, DTensor) by each rank for its shard, and a
later load reshards. What DCP lacks is spotsafe's trust: its commit point is ``.metadata``,
written in place, and nothing carries a checksum. So every rank writes through
:class:`_ManifestWriter`, a ``FileSystemWriter`` whose streams hash each file with xxh3 as it
is written; the (size, checksum) of each file travels to the coordinator inside DCP's own
``WriteResult``\\s, and the coordinator's ``finish()`` lets DCP write ``.metadata``, then
writes ``manifest.json`` last into ``step-N.tmp-<id>/`` and renames that to ``step-N/``
(spotsafe's :class:`~spotsafe._storage._local.AtomicRenameCommit`). The manifest is
spotsafe's own schema (world size, every rank's files with their rank, size and checksum),
so ``spotsafe verify`` judges these directories too.

Call order, on every rank, like ``dcp.save`` / ``dcp.load`` (each is a set of collectives):
``save_global`` (rank 0 picks the temp name and broadcasts it; one all-gather of the digests
of plain values for the shared-key guard; then ``dcp.save``), ``load_global`` (rank 0 lists
the steps and broadcasts them; for each step, newest first, every rank verifies its share of
the files and one all-gather agrees on the verdict; then ``dcp.load``). A rank that raises
inside ``dcp.save`` makes DCP raise ``CheckpointException`` (a BaseException, not an
Exception) on every rank; nothing is committed and the temp directory stays for cleanup.

Per-rank values: DCP keeps one copy of each key, taken from one rank, so two ranks' values
under one key collapse silently. :func:`rank_local` puts them under ``ranks/<rank>/<key>``;
:func:`save_global` refuses a shared key whose plain value differs across ranks.

Private names of torch (``_StorageInfo``, ``_traverse.set_element``, ``CURRENT_DCP_VERSION``
and the layout of ``FileSystemWriter.write_data`` / ``finish``) are used in this module only;
checked against torch 2.13.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._traverse import set_element  # private (torch 2.13)
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import (  # private names (torch 2.13)
    CURRENT_DCP_VERSION,
    FileSystem,
    _StorageInfo,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .._format import (
    MANIFEST,
    FileEntry,
    Manifest,
    ManifestError,
    committed_steps,
    content_problem,
    default_versions,
    digest_bytes,
    digest_file,
    new_hasher,
    read_manifest,
    size_problem,
    step_dir,
    tmp_dir,
)
from .._format._layout import DCP_METADATA
from .._storage._local import AtomicRenameCommit, LocalStorage
from ..errors import CheckpointNotFoundError, CheckpointSkippedWarning, CorruptCheckpointError, UnsupportedStateError

logger = logging.getLogger(__name__)

RANKS = "ranks"
"""Top-level keys ``ranks/<rank>/<key>`` hold one rank's own values (see :func:`rank_local`)."""
GUARD_TENSOR_BYTES = 64 << 10
"""Plain (not sharded) CPU tensors up to this size at shared keys are compared across ranks too."""


# -- per-rank values -----------------------------------------------------------------
def _rank(process_group: Any) -> int:
    return dist.get_rank(process_group)


def rank_local(values: Mapping[str, Any], *, rank: int | None = None, process_group: Any = None) -> dict[str, Any]:
    """``values`` keyed ``ranks/<rank>/<key>``: merge into the state dict so each rank keeps its own.

    Example: ``sd = {**get_state_dict_as_dict, **rank_local({"rng": rng, "seen": n})}``. Load
    with the same call (the values as templates), then :func:`own_rank_values`.
    """
    r = _rank(process_group) if rank is None else rank
    return {f"{RANKS}/{r}/{k}": v for k, v in values.items()}


def own_rank_values(state_dict: Mapping[str, Any], *, rank: int | None = None,
                    process_group: Any = None) -> dict[str, Any]:
    """This rank's values in ``state_dict`` (the ``ranks/<rank>/`` entries), keyed as given to :func:`rank_local`."""
    prefix = f"{RANKS}/{_rank(process_group) if rank is None else rank}/"
    return {k[len(prefix):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(prefix)}


def _leaves(tree: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple, torch.Tensor)) for v in tree):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{path}.{i}")
    else:
        yield path, tree


def _plain_digest(value: Any) -> str | None:
    """A digest of a value DCP saves from one rank only, or None for one it shards or skips."""
    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            return None  # DTensor and other subclasses: sharded by DCP, never collapsed
        if value.device.type != "cpu" or value.numel() * value.element_size() > GUARD_TENSOR_BYTES:
            return None  # taken as replicated (DDP's parameters are); a GPU tensor is not copied to look
        data = value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return digest_bytes(f"{value.dtype}{tuple(value.shape)}".encode() + data)
    if type(value).__name__ == "ShardedTensor":
        return None
    return digest_bytes(pickle.dumps(value, protocol=4))


def _check_shared_values(state_dict: Mapping[str, Any], rank: int, world: int, pg: Any) -> None:
    """Refuse a shared key whose plain value differs across ranks (one all-gather of digests)."""
    digests: dict[str, str] = {}
    error = None
    try:
        for top, value in state_dict.items():
            if isinstance(top, str) and top.startswith(f"{RANKS}/"):
                if not top.startswith(f"{RANKS}/{rank}/"):
                    error = (f"State key {top!r} on rank {rank} names another rank's values; build per-rank "
                             "entries with rank_local(...), which uses this rank's number.")
                    break
                continue
            for key, leaf in _leaves(value, str(top)):
                d = _plain_digest(leaf)
                if d is not None:
                    digests[key] = d
    except Exception as e:  # never raise before the collective: the other ranks would wait for this one
        error = f"State on rank {rank} cannot be checked before saving ({type(e).__name__}: {e}); keep plain values picklable."
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (digests, error), group=pg)
    for _, err in gathered:
        if err:
            raise UnsupportedStateError(err)
    keys = sorted(set().union(*(d for d, _ in gathered)))
    for key in keys:
        seen = {r: d[key] for r, (d, _) in enumerate(gathered) if key in d}
        if len(set(seen.values())) > 1:
            a, b = sorted(seen)[0], next(r for r in sorted(seen) if seen[r] != seen[sorted(seen)[0]])
            raise UnsupportedStateError(
                f"State key {key!r} holds a different value on rank {a} and rank {b}, and DCP saves a shared key "
                f"from one rank only; put per-rank values under rank_local(...) (ranks/<rank>/{key}).")


# -- writing -------------------------------------------------------------------------
class _HashingStream:
    """A file opened for writing that hashes what goes through it; reports (size, digest) on close."""

    def __init__(self, raw: Any, on_close: Callable[[int, str], None]) -> None:
        self._raw, self._on_close = raw, on_close
        self._hasher = new_hasher()
        self._size = 0
        self._closed = False

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = self._raw.write(view)
        if n is not None and n != view.nbytes:
            raise OSError(f"short write: {n} of {view.nbytes} bytes")
        self._hasher.update(view)
        self._size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._raw.flush()
            self._on_close(self._size, self._hasher.hexdigest())
            self._raw.close()


class _HashingFileSystem(FileSystem):
    """DCP's local ``FileSystem`` whose write streams hash every byte (``record(name, size, digest)``)."""

    def __init__(self, record: Callable[[str, int, str], None]) -> None:
        super().__init__()
        self._record = record

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[Any]:
        if "w" not in mode:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        name = os.path.basename(os.fspath(path))
        with super().create_stream(path, mode) as raw:
            stream = _HashingStream(raw, lambda size, digest: self._record(name, size, digest))
            yield stream
            stream.close()  # only when the body did not raise: a failed file reports nothing


@dataclasses.dataclass
class _CheckedStorageInfo(_StorageInfo):
    """DCP's per-item location plus the (size, xxh3, rank) of the file holding it; gathered to the coordinator."""

    file_size: int = 0
    file_checksum: str = ""
    rank: int = 0


class _ManifestWriter(FileSystemWriter):
    """A ``FileSystemWriter`` into ``root/tmp_name`` that checksums its files and commits ``step-N`` with a manifest.

    DCP calls (see the module docstring): every rank ``write_data``; the coordinator
    ``finish``. ``finish`` hands DCP back plain ``_StorageInfo`` entries, so that ``.metadata``
    names only torch's classes and the stock ``FileSystemReader`` reads it.
    """

    def __init__(self, root: Path, tmp_name: str, step: int, world_size: int, rank: int) -> None:
        super().__init__(root / tmp_name, single_file_per_rank=True, sync_files=True, thread_count=1,
                         overwrite=False)
        self._root, self._tmp_name, self._step, self._world, self._my_rank = root, tmp_name, step, world_size, rank
        self._files: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self.fs = _HashingFileSystem(self._record)

    def _record(self, name: str, size: int, digest: str) -> None:
        with self._lock:
            self._files[name] = (size, digest)

    def write_data(self, plan: Any, planner: Any) -> Future[list[WriteResult]]:
        results = super().write_data(plan, planner).wait()
        used: set[str] = set()
        out = []
        for wr in results:
            info = wr.storage_data
            size, checksum = self._files[info.relative_path]
            used.add(info.relative_path)
            out.append(dataclasses.replace(wr, storage_data=_CheckedStorageInfo(
                info.relative_path, info.offset, info.length, info.transform_descriptors,
                file_size=size, file_checksum=checksum, rank=self._my_rank)))
        for name, (size, _) in list(self._files.items()):
            if name not in used and size == 0:  # a file DCP opened for an empty plan: it holds nothing
                os.remove(self.path / name)
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(out)
        return fut

    def finish(self, metadata: Any, results: list[list[WriteResult]]) -> None:
        files: dict[str, FileEntry] = {}
        plain: list[list[WriteResult]] = []
        for wr_list in results:
            plain.append([])
            for wr in wr_list:
                i = wr.storage_data
                files[i.relative_path] = FileEntry(size=i.file_size, checksum=i.file_checksum, rank=i.rank)
                plain[-1].append(dataclasses.replace(wr, storage_data=_StorageInfo(
                    i.relative_path, i.offset, i.length, i.transform_descriptors)))
        super().finish(metadata, plain)
        # DCP's .metadata is a pickle that DCP unpickles on load: its checksum in the manifest is
        # verified before dcp.load reads it (load_global). Read back here: DCP names its temp file.
        size, checksum = digest_file(self.path / DCP_METADATA)
        files[DCP_METADATA] = FileEntry(size=size, checksum=checksum, rank=self._my_rank)
        manifest = Manifest(step=self._step, files=files, components={}, world_size=self._world,
                            versions=default_versions(torch=torch.__version__, dcp=CURRENT_DCP_VERSION))
        AtomicRenameCommit().commit(LocalStorage(self._root), self._tmp_name, step_dir(self._step), MANIFEST,
                                    manifest.to_json_bytes())
        logger.info("Committed %s in %s: %d files from %d ranks", step_dir(self._step), self._root, len(files),
                    self._world)


def _need_dist(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{what} needs torch.distributed initialised on every rank; call "
                           "torch.distributed.init_process_group() first (under torchrun).")


def save_global(state_dict: dict[str, Any], root_dir: str | os.PathLike, step: int, *,
                process_group: Any = None) -> str:
    """Save one checkpoint of ``step`` for the whole job into ``root_dir/step-N/``; call on every rank.

    Args:
        state_dict: This rank's state: ``get_state_dict(model, optimizers)`` (as a dict, e.g.
            ``{"model": m, "optim": o}``) plus :func:`rank_local` values. Plain (non-tensor)
            values at shared keys must be equal on every rank.
        root_dir: The run root, one directory every rank sees (a shared file system).
        step: The step saved; ``step-N/`` must not exist yet.
        process_group: The group of ranks saving (default: the whole job).

    Returns:
        The committed directory. Raises ``CheckpointException`` (a BaseException) on every rank
        when one rank fails inside DCP; then nothing is committed.
    """
    _need_dist("save_global")
    rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
    root = Path(root_dir).expanduser().absolute()
    final = step_dir(step)
    answer: list[Any] = [tmp_dir(step), (root / final).exists()] if rank == 0 else [None, None]
    dist.broadcast_object_list(answer, group=process_group, group_src=0)
    tmp_name, exists = answer
    if exists:
        raise FileExistsError(f"Checkpoint {final} already exists in {root}; save a later step, or remove that "
                              "directory first.")
    _check_shared_values(state_dict, rank, world, process_group)
    dcp.save(state_dict, storage_writer=_ManifestWriter(root, tmp_name, step, world, rank),
             process_group=process_group)
    return str(root / final)


# -- reading -------------------------------------------------------------------------
def _metadata_globals() -> frozenset[tuple[str, str]]:
    """What DCP's ``.metadata`` pickle may name (torch 2.13): its own records, torch's dtypes,
    ``torch.Size``, the layout helper and ``PosixPath``; nothing that runs code."""
    from torch.distributed.checkpoint import metadata as md

    names = {(c.__module__, c.__qualname__) for c in (
        md.Metadata, md.MetadataIndex, md.BytesStorageMetadata, md.ChunkStorageMetadata, md.StorageMeta,
        md.TensorProperties, md.TensorStorageMetadata, md._MEM_FORMAT_ENCODING, _StorageInfo)}
    names |= {("torch", n) for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}
    names |= {("torch", "Size"), ("torch._utils", "_get_layout"), ("torch.serialization", "_get_layout"),
              ("pathlib", "PosixPath"),
              ("collections", "OrderedDict")}
    return frozenset(names)


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` naming only :func:`_metadata_globals` (stock DCP calls
    ``pickle.load``, which would run whatever a crafted file names)."""

    allowed = _metadata_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f".metadata names {module}.{name}, which a DCP index never holds; "
                                         "refusing to load it")
        return super().find_class(module, name)


class _SafeReader(FileSystemReader):
    """The stock reader, but ``.metadata`` is read by :class:`_MetadataUnpickler`: loading a
    checkpoint never executes code from it (its checksum is checked first as well)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        with open(Path(self.path) / DCP_METADATA, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, but plain values are read with ``torch.load(weights_only=True)``: no arbitrary unpickling."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _verify_share(storage: LocalStorage, step: int, rank: int, world: int) -> str | None:
    """Why this rank's share of the files of ``step`` fails (every ``world``-th one), or None."""
    name = step_dir(step)
    try:
        manifest = read_manifest(storage, name)
        if "dcp" not in manifest.versions or DCP_METADATA not in manifest.files:
            return "manifest.json does not describe a multi-rank (DCP) checkpoint"
        for i, fname in enumerate(sorted(manifest.files)):
            if i % world != rank:
                continue
            entry = manifest.files[fname]
            rel = f"{name}/{fname}"
            size = storage.size(rel)
            problem = size_problem(fname, entry, size) or content_problem(fname, entry, *storage.digest(rel, size))
            if problem:
                return problem
    except ManifestError as e:
        return str(e)
    except Exception as e:  # never raise before the collective: the other ranks would wait for this one
        return f"it cannot be read ({type(e).__name__}: {e})"
    return None


def load_global(state_dict: dict[str, Any], root_dir: str | os.PathLike, step: int | None = None, *,
                process_group: Any = None) -> int:
    """Load the newest verified checkpoint (or ``step``) of ``root_dir`` into ``state_dict``; call on every rank.

    Every file listed in the manifest is checked (size, then xxh3) before DCP reads any,
    ``.metadata`` included; the ranks split the files between them (rank r checks every
    W-th, in name order) and agree on the verdict with one all-gather, so every rank loads
    the same step. A step that fails is skipped with a :class:`CheckpointSkippedWarning`
    and the previous one is tried.

    Returns:
        The step loaded. Raises :class:`CheckpointNotFoundError` when there is none (or no
        ``step``), :class:`CorruptCheckpointError` when none verifies (or ``step`` does not).
    """
    _need_dist("load_global")
    rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
    root = Path(root_dir).expanduser().absolute()
    storage = LocalStorage(root)
    listed: list[Any] = [committed_steps(storage)] if rank == 0 else [None]
    dist.broadcast_object_list(listed, group=process_group, group_src=0)
    steps: list[int] = listed[0]
    if step is not None:
        if step not in steps:
            raise CheckpointNotFoundError(f"Checkpoint {step_dir(step)} does not exist in {root}; pass step=None "
                                          "for the newest valid one.")
        steps = [step]
    if not steps:
        raise CheckpointNotFoundError(f"No checkpoint exists in {root}; start from scratch or point at the run root.")
    candidates = sorted(steps, reverse=True)
    for n, s in enumerate(candidates):
        verdicts: list[Any] = [None] * world
        dist.all_gather_object(verdicts, _verify_share(storage, s, rank, world), group=process_group)
        problem = next((v for v in verdicts if v), None)
        if problem is None:
            dcp.load(state_dict, storage_reader=_SafeReader(root / step_dir(s)),
                     planner=_WeightsOnlyLoadPlanner(), process_group=process_group)
            return s
        if step is not None:
            raise CorruptCheckpointError(f"Checkpoint {step_dir(s)} in {root} is corrupt: {problem}; load another "
                                         "step, or pass step=None for the newest valid one.")
        if n + 1 < len(candidates):
            warnings.warn(f"Checkpoint {step_dir(s)} in {root} is corrupt: {problem}. Falling back to "
                          f"{step_dir(candidates[n + 1])}.", CheckpointSkippedWarning, stacklevel=2)
        else:
            raise CorruptCheckpointError(f"Checkpoint {step_dir(s)} in {root} is corrupt: {problem}, and no older "
                                         "checkpoint verifies; start from scratch or restore the files.")
    raise AssertionError("unreachable")
