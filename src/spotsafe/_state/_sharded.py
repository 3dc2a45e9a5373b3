"""Multi-rank checkpoints, read back: the modules and optimizers a job saved through DCP's
planners (the shards index in the manifest), loaded into this process's objects, at any
world size, without a process group and without pickle.

A multi-rank checkpoint holds three kinds of state (see ``spotsafe._dist._global``): modules
and optimizers as DCP chunks (``__shards.rank-0000R.bin`` and the manifest's ``shards``
index), and every other component per rank (``<name>@<rank>``). This module is the read
side, shared by a rank of a job (any world size: DCP's load planner reshards) and by a single
process (which takes rank 0's per-rank components):

* :func:`plan_shard_read`: which files this process needs (the chunks its load plan
  overlaps, and the per-rank components it takes), before any byte is read;
* :func:`load_shards`: DCP loads from bytes spotsafe already read and verified
  (:class:`_VerifiedReader`; ``no_dist``), then ``set_model_state_dict`` /
  ``set_optimizer_state_dict``.

A rank that did not exist when the checkpoint was written takes rank 0's per-rank
components except its RNG, whose streams are seeded from (the checkpoint's rank-0 RNG file,
the step, the rank): deterministic, and different on every rank.

Private torch names: ``torch.distributed.checkpoint._traverse.set_element`` (the
weights-only planner's ``load_bytes``) and, on torch < 2.7 only,
``state_dict_loader._load_state_dict`` (what ``dcp.load`` calls; its ``no_dist`` is public
from 2.7). Checked on torch 2.4.1, 2.5.1, 2.6.0, 2.7.1 and 2.13.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import random
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from .._format import ComponentEntry, Manifest, digest_bytes
from ..errors import CorruptCheckpointError, StateMismatchError, UnsupportedStateError
from ._apply import RNG_COMPONENT
from ._tree import torch_dtype


def split_kinds(state: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The state names DCP saves: {name: "module" | "optimizer"}, and each optimizer's module."""
    kinds: dict[str, str] = {}
    owners: dict[str, str] = {}
    modules = {n: o for n, o in state.items() if isinstance(o, torch.nn.Module)}
    for n in modules:
        kinds[n] = "module"
    for n, o in state.items():
        if not isinstance(o, torch.optim.Optimizer):
            continue
        params = {id(p) for g in o.param_groups for p in g["params"]}
        owner = next((m for m, mod in modules.items() if params <= {id(p) for p in mod.parameters()}), None)
        if owner is None:
            raise UnsupportedStateError(
                f"state[{n!r}] optimizes parameters of no module in the state, and a multi-rank checkpoint saves an "
                "optimizer by its module's parameter names; add the model to the state (e.g. state['model'] = model).")
        kinds[n], owners[n] = "optimizer", owner
    return kinds, owners


def dcp_state(state: dict[str, Any], kinds: dict[str, str], owners: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, kind in kinds.items():
        if kind == "module":
            out[n] = get_model_state_dict(state[n])
        else:
            out[n] = get_optimizer_state_dict(state[owners[n]], state[n])
    return out


class _VerifiedReader(StorageReader):
    """DCP's reader over bytes spotsafe already read and verified: shards are raw C-order
    elements (no pickle); plain values are read by the planner with ``weights_only``."""

    def __init__(self, metadata: Metadata, where: dict[Any, tuple[str, int, int, list[int] | None]],
                 bufs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._metadata, self._where, self._bufs = metadata, where, bufs

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self._metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: Any) -> Any:
        return plan

    def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
        return plans

    def read_data(self, plan: Any, planner: Any) -> Future[None]:
        for req in plan.items:
            fname, offset, length, sizes = self._where[(req.storage_index.fqn, _offsets(req.storage_index.offset))]
            raw = self._bufs[fname][offset:offset + length]
            if req.type == LoadItemType.BYTE_IO:
                planner.load_bytes(req, io.BytesIO(raw.numpy().tobytes()))
                continue
            md = self._metadata.state_dict_metadata[req.storage_index.fqn]
            assert isinstance(md, TensorStorageMetadata) and sizes is not None
            t = raw.view(md.properties.dtype).reshape(sizes)
            for dim, (start, length) in enumerate(zip(req.storage_offsets, req.lengths, strict=True)):
                t = t.narrow(dim, start, length)
            target = planner.resolve_tensor(req).detach()
            if target.size() != t.size():
                raise CorruptCheckpointError(f"shard {req.storage_index.fqn!r} is {tuple(t.size())} where "
                                             f"{tuple(target.size())} was planned")
            target.copy_(t)
            planner.commit_tensor(req, target)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False


def _offsets(o: Any) -> tuple[int, ...] | None:
    return None if o is None else tuple(int(x) for x in o)


class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, but plain values are read with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        from torch.distributed.checkpoint._traverse import set_element  # private (torch 2.13)

        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def shard_index(shards: dict[str, Any]) -> tuple[Metadata, dict[Any, tuple[str, int, int, list[int] | None]]]:
    """DCP's Metadata and the location of every chunk, from a manifest's (validated) shard index."""
    sdm: dict[str, Any] = {}
    where: dict[Any, tuple[str, int, int, list[int] | None]] = {}
    storage: dict[MetadataIndex, Any] = {}
    for key, e in shards["entries"].items():
        if "bytes" in e:
            b = e["bytes"]
            sdm[key] = BytesStorageMetadata()
            where[(key, None)] = (b["file"], b["offset"], b["length"], None)
            storage[MetadataIndex(key)] = None
            continue
        chunks = [ChunkStorageMetadata(offsets=torch.Size(c["offsets"]), sizes=torch.Size(c["sizes"]))
                  for c in e["chunks"]]
        sdm[key] = TensorStorageMetadata(properties=TensorProperties(dtype=torch_dtype(e["dtype"])),
                                         size=torch.Size(e["size"]), chunks=chunks)
        for c in e["chunks"]:
            where[(key, tuple(c["offsets"]))] = (c["file"], c["offset"], c["length"], list(c["sizes"]))
    return Metadata(state_dict_metadata=sdm, planner_data=None, storage_data=None), where




@dataclasses.dataclass
class ShardRead:
    """What one process takes of a multi-rank checkpoint, planned before any byte is read."""

    metadata: Metadata
    where: dict[Any, tuple[str, int, int, list[int] | None]]
    dcp_sd: dict[str, Any]  # the state dicts DCP loads into (this process's own objects)
    files: set[str]  # the files holding the chunks its load plan overlaps, and its components
    components: dict[str, ComponentEntry]  # its per-rank components, by their names in the state
    source_rank: int  # whose per-rank components those are
    new_rank: bool  # this rank did not exist in the checkpoint: its RNG is derived, not restored


def rank_components(manifest: Manifest, rank: int) -> tuple[dict[str, ComponentEntry], int]:
    """The per-rank components ``rank`` takes, by their names in the state, and whose they are:
    its own, or rank 0's without the RNG for a rank the checkpoint does not have."""
    source = rank if rank < manifest.world_size else 0
    own: dict[str, ComponentEntry] = {}
    for n, c in manifest.components.items():
        base, at, r = n.rpartition("@")
        if at and r == str(source) and not (source != rank and base == RNG_COMPONENT):
            own[base] = c
    return own, source


def plan_shard_read(name: str, manifest: Manifest, state: dict[str, Any], kinds: dict[str, str],
                    owners: dict[str, str], rank: int, partial: Any) -> ShardRead:
    """Plan this process's read of multi-rank checkpoint ``name`` into ``state``; raises
    :class:`StateMismatchError` when its modules and optimizers are not the state's."""
    assert manifest.shards is not None
    saved_kinds = manifest.shards["components"]
    if saved_kinds != kinds and not partial:
        raise StateMismatchError(f"Checkpoint {name} holds modules and optimizers {sorted(saved_kinds)}, and "
                                 f"the state has {sorted(kinds)}; make the state match.")
    metadata, where = shard_index(manifest.shards)
    sd = dcp_state(state, kinds, owners)
    planner = _WeightsOnlyLoadPlanner()
    planner.set_up_planner(sd, metadata, True)
    reads = planner.create_local_plan().items
    components, source = rank_components(manifest, rank)
    files = {where[(r.storage_index.fqn, _offsets(r.storage_index.offset))][0] for r in reads}
    files |= {t.file for c in components.values() for t in c.tensors}
    return ShardRead(metadata=metadata, where=where, dcp_sd=sd, files=files, components=components,
                     source_rank=source, new_rank=source != rank)


def load_shards(read: ShardRead, bufs: dict[str, torch.Tensor], state: dict[str, Any], kinds: dict[str, str],
                owners: dict[str, str]) -> None:
    """Load the verified bytes ``bufs`` into the state's modules and optimizers (no collective)."""
    sd = read.dcp_sd
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is, per rank
        warnings.simplefilter("ignore", UserWarning)
        reader = _VerifiedReader(read.metadata, read.where, bufs)
        if "no_dist" in inspect.signature(dcp.load).parameters:
            dcp.load(sd, storage_reader=reader, planner=_WeightsOnlyLoadPlanner(), no_dist=True)
        else:  # torch < 2.7: dcp.load has no no_dist; the function it calls has
            from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # private (torch 2.4-2.6)

            _load_state_dict(sd, storage_reader=reader, planner=_WeightsOnlyLoadPlanner(), no_dist=True)
    for n, kind in kinds.items():
        if kind == "module":
            set_model_state_dict(state[n], sd[n])
    for n, kind in kinds.items():
        if kind == "optimizer":
            set_optimizer_state_dict(state[owners[n]], state[n], sd[n])


def derived_seed(manifest: Manifest, rank: int) -> int:
    """A seed for a rank the checkpoint does not have: from the checksum of the file holding
    rank 0's RNG, the step and the rank (the same on every restart, different on every rank)."""
    rng = manifest.components.get(f"{RNG_COMPONENT}@0")
    base = "" if rng is None or not rng.tensors else manifest.files[rng.tensors[0].file].checksum
    return int(digest_bytes(f"spotsafe-rng:{base}:{manifest.step}:{rank}".encode()), 16) % (2**63)


def seed_rngs(seed: int) -> None:
    """Seed every global RNG a step draws from: python, numpy, torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
