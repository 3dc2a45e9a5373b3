"""One verified checkpoint for a whole ``torchrun`` job: :class:`GlobalCheckpointManager`.

Every rank runs the same code (``Run`` makes one of these on every rank when
``torch.distributed`` is initialised with more than one rank) on the same root, a directory
every rank sees (one node's disk for the ranks of one node, or a shared file system).

What is saved, and by whom:

* modules and optimizers go through DCP's planners (``get_model_state_dict`` /
  ``get_optimizer_state_dict``, then ``DefaultSavePlanner``): a replicated tensor (DDP) is
  written once in total, by rank 0 (``dedup_save_to_lowest_rank``: DDP broadcasts rank 0's
  buffers, so rank 0's copy is the one the job goes on with), and a sharded one (FSDP2,
  DTensor) by each rank for its shard; a later load reshards;
* everything else in the state (schedulers, scalers, data position, plain values) and the
  RNGs is per rank: component ``<name>@<rank>`` in the rank's own file, restored to that
  rank only. No per-rank value ever goes through DCP, so DCP's silent collapse of per-rank
  values under one key cannot happen.

The save, in two phases:

1. On the training thread of every rank (the only place spotsafe issues collectives): one
   all-gather carries each rank's readiness and plan signature and rank 0's temp directory
   (the global plan is computed again only when a signature changes: a second all-gather);
   then the rank's shards and components are copied into reusable host buffers and
   ``save()`` returns.
2. On the persist thread: the rank writes its files into rank 0's ``step-N.tmp-<id>/``
   (xxh3 while writing, fsync) and publishes its part (files, sizes, checksums, where each
   shard lies) in the job's store (:mod:`._store`), never in a collective. Rank 0's thread
   waits for every part, checks that every shard of the global plan is there, writes
   ``manifest.json`` (every rank's files with their rank, size and checksum, the world
   size, the shard index) and renames the directory: the global commit. It then announces
   the outcome in the store; every rank's save is durable when that says committed.

A rank that dies or fails in either phase leaves no manifest: the temp directory is never
loaded and the previous checkpoint stands. Rank 0 replicates the committed step to the
remote and applies retention, as a single process does; it alone holds the root's lock and
the remote's lease, so a second job on the same root is refused on every rank.

Restore: rank 0 lists the committed steps of both tiers and broadcasts them; for each step,
newest first, every rank reads and verifies the files it needs (its own components, and the
files holding the shards its load plan overlaps) and one all-gather agrees on the verdict;
only then does DCP load (no collective: ``no_dist``) from the verified bytes. The shard
index lives in the manifest as JSON: no pickle is read, and nothing outside the root. The
checkpoint may come from another world size: DCP's load planner reshards, and per-rank state
follows the rules of ``spotsafe._state._sharded`` (which holds the read side, and the
private torch names it needs). A node's partial cache (node-local roots at a larger size)
defers to the remote's copy.

Saves after the first read the flattened state dicts from the live objects while nothing
changed (``._live``), instead of asking torch each time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import WriteItemType
from torch.distributed.checkpoint.utils import find_state_dict_object

from .._backoff import retry
from .._engine import CheckpointManager, SaveStats
from .._engine._options import ManagerSettings, options_from
from .._engine._pipeline import plan_components, read_verified, skip_reason, stage
from .._engine._replicate import is_transient
from .._engine._restore_stats import RestoreStats
from .._engine._retention import StoreRetention, Verdict
from .._engine._staging import ALIGN
from .._env import CHAOS_KILL_ENV
from .._format import (
    MANIFEST,
    CheckpointInfo,
    ComponentEntry,
    FileEntry,
    Manifest,
    ManifestError,
    TensorEntry,
    committed_steps,
    decode_metadata,
    default_versions,
    encode_metadata,
    is_leftover,
    parse_manifest,
    parse_step_dir,
    read_manifest_bytes,
    step_dir,
    trash_dir,
)
from .._format._hash import digest_bytes
from .._names import Tier
from .._state import apply_checkpoint, dtype_name, partial_names
from .._state._sharded import (
    ShardRead,
    dcp_state,
    derived_seed,
    load_shards,
    plan_shard_read,
    seed_rngs,
    split_kinds,
)
from .._storage import Storage, is_url, open_storage
from ..errors import (
    CheckpointNotFoundError,
    CheckpointSkippedWarning,
    CorruptCheckpointError,
    RemoteUnavailableError,
    RemoteUnavailableWarning,
    RootLockedError,
    SaveFailedError,
    SpotsafeWarning,
    StateMismatchError,
    UnsafeFileError,
    UnsupportedStateError,
)
from ._live import LiveState, ObjectBytes, local_tensor
from ._store import StoreAddress

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_TIMEOUT = 300.0
"""Seconds rank 0 waits for every rank's files of one save (and each rank for the commit)."""
SHARDS_FILE = "__shards.rank-{rank:05d}.bin"
"""Each rank's file of DCP-planned shards (user components cannot start with ``__``)."""


def shards_file(rank: int) -> str:
    return SHARDS_FILE.format(rank=rank)


def _fingerprint(flat: dict[str, Any]) -> str:
    """What this rank's local save plan depends on, read cheaply from the flattened state: every
    key and, for a tensor, its type, dtype and global shape, and a DTensor's mesh and placements
    (which fix its local shard). Equal fingerprints on every rank: the cached global plan holds."""
    parts = []
    for k, v in flat.items():
        if isinstance(v, torch.Tensor):
            mesh = getattr(v, "device_mesh", None)
            parts.append((k, type(v).__name__, str(v.dtype), tuple(v.shape), str(getattr(v, "placements", "")),
                          None if mesh is None else (tuple(mesh.shape), str(mesh.device_type))))
        else:
            parts.append((k, "bytes"))
    return digest_bytes(repr(parts).encode())


@dataclasses.dataclass
class _Plan:
    sigs: tuple[str, ...]  # every rank's fingerprint when the plan was made
    sig: str  # this rank's
    items: list[Any]  # this rank's write items (after dedup)
    expected: dict[str, set[tuple[int, ...]] | None]  # every key of the global plan: its chunk offsets, None for bytes


@dataclasses.dataclass(kw_only=True)
class _Snapshot:
    """One rank's save, staged: handed from the training thread to the persist thread."""

    step: int
    tmp: str
    staged: Any  # the per-rank components (a Staged)
    shard_pieces: list[memoryview]
    shard_entries: list[dict[str, Any]]  # [{"key", "offset", "length", and dtype/size/offsets/sizes or bytes}]
    shard_keep: list[Any]
    expected: dict[str, set[tuple[int, ...]] | None]
    kinds: dict[str, str]
    epoch: int | None
    metadata: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return self.staged.nbytes + sum(len(p) for p in self.shard_pieces)


class GlobalCheckpointManager(CheckpointManager):
    """The :class:`CheckpointManager` of one rank of a multi-rank job; see the module docstring.

    Made on every rank, after ``torch.distributed.init_process_group()``, with the same
    arguments; its constructor, :meth:`save` and :meth:`restore` are collectives (call them
    on every rank, in the same order, from the training thread). Settings as for
    :class:`CheckpointManager`; ``when_busy`` is always "wait" here (a save skipped on one
    rank and taken on another could never commit).

    Args:
        process_group: The ranks that checkpoint together (default: the whole job).
        commit_timeout: Seconds rank 0 waits for every rank's files of one save, and each rank
            for the commit, before the save fails (the previous checkpoint stands).
    """

    def __init__(self, root: str | os.PathLike, *, options: Any = None, run_id: str | None = None,
                 attempt: int | None = None, process_group: Any = None,
                 commit_timeout: float = DEFAULT_COMMIT_TIMEOUT, store: StoreAddress | None = None,
                 **settings: ManagerSettings) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("GlobalCheckpointManager needs torch.distributed initialised on every rank; call "
                               "torch.distributed.init_process_group() first (under torchrun).")
        opts = options_from(options, settings, caller="GlobalCheckpointManager")  # type: ignore[arg-type]
        self.group = process_group
        self.rank, self.world_size = dist.get_rank(process_group), dist.get_world_size(process_group)
        self.commit_timeout = commit_timeout
        self._store_address = store or StoreAddress.from_env()
        if self._store_address is None:
            raise RuntimeError("A multi-rank checkpoint needs the job's store; run under torchrun, or set MASTER_ADDR "
                               "and MASTER_PORT as for init_process_group('env://').")
        self._stores: dict[str, Any] = {}  # one client per thread name
        self._plan: _Plan | None = None
        self._committed: set[int] = set()  # steps this job knows are globally committed
        self._remote_retention: StoreRetention | None = None
        self._keys_of: int | None = None  # the step whose store keys rank 0 deletes at the next save
        self._replan = False  # a rank's state changed shape: the next save makes the plan again, together
        self._live: LiveState | None = None  # where the last state dict's values live (see _live.py)
        self._object_bytes = ObjectBytes()
        self._saves = 0  # save() calls, alike on every rank: with the job's token, the temp directory's name
        if isinstance(root, Storage) or is_url(os.fspath(root)):
            raise ValueError(f"A multi-rank job writes its files to a local root first; pass a directory as root "
                             f"(one node's disk, or a shared file system) and the URL as remote=, not root={root!r}.")
        # Which ranks share a directory, before anything is locked or written there.
        views = self._probe(Path(root).expanduser())
        mine = views[self.rank]
        self.node_ranks = sorted(mine)
        self.leader = self.node_ranks[0]  # commits, cleans and prunes this node's copy of the root
        self.shared = len(mine) == self.world_size
        if not self.shared and opts.remote is None:
            raise ValueError(
                f"The ranks of this job see {len({frozenset(v) for v in views})} different directories at {root} "
                "(node-local disks), so no one of them can hold the job's checkpoint; pass remote= (an object store "
                "every node reaches: the commit point), or put the root on a file system every node mounts.")
        self._replicates = self.shared  # node-local: every rank uploads its own files, rank 0 commits the remote
        error: BaseException | None = None
        try:
            if self.rank == 0:  # the local lock of its node and the remote's lease: the job's one writer
                super().__init__(root, options=opts, run_id=run_id, attempt=attempt)
            else:  # another node's leader holds that node's lock (a second job there is refused too)
                local = dataclasses.replace(opts, read_only=self.rank != self.leader,
                                            remote=opts.remote if self.shared else None)
                super().__init__(root, options=local, run_id=run_id, attempt=attempt)
                if not self.shared:  # node-local: every rank uploads its own files (rank 0's lease guards the job)
                    self.remote = open_storage(opts.remote, None if isinstance(opts.remote, Storage)
                                               else opts.storage_options)  # type: ignore[assignment]
        except BaseException as e:
            error = e
        answers: list[Any] = [None] * self.world_size
        listed = committed_steps(self.storage) if self.rank == 0 and error is None and self.shared else []
        dist.all_gather_object(answers, (_describe(error), uuid.uuid4().hex[:8], listed), group=self.group)
        self._token = answers[0][1]  # rank 0's: with a save's number, the name of its temp directory everywhere
        self._committed.update(answers[0][2])  # a step already there is kept, not saved again
        try:
            self._opened(error, [a[0] for a in answers])
            if self.rank == 0 and not self.shared:
                self._clean_remote()
        except BaseException:
            if error is None:
                self._close_quietly()
            raise
        if self.rank != 0:
            self.read_only = False  # every rank saves; rank 0 commits
        self.when_busy = "wait"
        logger.info("Rank %d of %d checkpoints to %s (%s; node of ranks %s)", self.rank, self.world_size, self.root,
                    "shared by every rank" if self.shared else f"node-local, committed on {self._remote_url()}",
                    self.node_ranks)

    def _remote_url(self) -> str:
        return self.remote.url if self.remote is not None else "none"

    def _probe(self, root: Path) -> list[set[int]]:
        """For each rank, the ranks that see the same directory at ``root`` (two all-gathers)."""
        token, problem = f".spotsafe-probe-{uuid.uuid4().hex}", None
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / token).write_bytes(b"")
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
        tokens: list[Any] = [None] * self.world_size
        dist.all_gather_object(tokens, (token, problem), group=self.group)
        bad = next(((r, p) for r, (_, p) in enumerate(tokens) if p is not None), None)
        if bad is not None:
            raise RuntimeError(f"Rank {bad[0]} cannot write its run root {root} ({bad[1]}); fix the path or its "
                               "permissions on that node, then start the job again.")
        seen = {r for r, (t, _) in enumerate(tokens) if (root / t).exists()}
        views: list[Any] = [None] * self.world_size
        dist.all_gather_object(views, seen, group=self.group)
        try:
            (root / token).unlink()
        except OSError:
            pass
        return views

    def _opened(self, error: BaseException | None, answers: list[Any]) -> None:
        """Raise on every rank when any rank could not open the root (the same error on every rank)."""
        if error is not None:
            raise error
        failed = next(((r, a) for r, a in enumerate(answers) if a is not None), None)
        if failed is not None:
            r, (kind, msg) = failed
            if kind == "RootLockedError":
                raise RootLockedError(msg)
            raise RuntimeError(f"Rank {r} could not open the run root {self.root}: {msg}; fix that, then start the "
                               "job again.")

    def _clean_remote(self) -> None:
        """Remove what killed jobs left on the remote: step directories with no manifest (rank 0, at start)."""
        assert self.remote is not None
        committed = set(self._retry(lambda: self.remote.listdir_committed(MANIFEST), f"Listing {self.remote.url}"))
        for name in self._retry(lambda: self.remote.listdir(), f"Listing {self.remote.url}"):
            if name not in committed and (is_leftover(name) or parse_step_dir(name) is not None):
                logger.info("Removing abandoned upload %s from %s", name, self.remote.url)
                self._retry(lambda n=name: self.remote.remove(n, strict=True), f"Removing {name}")

    def _retry(self, fn: Any, what: str) -> Any:
        def on_retry(attempt: int, e: BaseException, pause: float) -> None:
            logger.warning("%s failed (%s: %s); retry %d in %.1fs", what, type(e).__name__, e, attempt + 1, pause)

        return retry(fn, policy=self.options.upload_backoff, transient=is_transient, what=what, on_retry=on_retry)

    def _close_quietly(self) -> None:
        try:
            CheckpointManager.close(self, wait_remote=False)
        except BaseException:
            pass

    def __repr__(self) -> str:
        return f"GlobalCheckpointManager({self.root!r}, rank={self.rank}, world_size={self.world_size})"

    def _store(self) -> Any:
        import threading

        name = threading.current_thread().name
        s = self._stores.get(name)
        if s is None:
            assert self._store_address is not None
            s = self._stores[name] = self._store_address.connect(self.commit_timeout, "ckpt/")
        return s

    # -- save ----------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], *, epoch: int | None = None,
             metadata: dict[str, Any] | None = None) -> SaveStats:
        """Checkpoint ``state`` at ``step`` for the whole job; call on every rank at the same step.

        Returns once this rank's state is copied into host buffers (``async_save``, the
        default) or once the job's checkpoint is committed. No collective once the job's plan
        is known (the first save, or the first after a rank's state changed shape, makes it
        with two all-gathers). A failure on any rank fails the save on every rank, and nothing
        is committed (the previous checkpoint stands): the rank at fault raises it (at once, or
        by its next call when it failed in the background, as a single process does); the
        others log a warning naming that rank and go on. A rank whose state changed shape
        skips that save (a warning), and the next save makes the job's plan again, together.
        """
        self._check_open()
        t0 = time.perf_counter()
        self._saves += 1
        tmp = f"{step_dir(step)}.tmp-{self._token}{self._saves % 0x10000:04x}"  # the same name on every rank
        problem: BaseException | None = None
        kinds: dict[str, str] = {}
        planner = None
        flat: dict[str, Any] | None = None
        sig = ""
        try:
            if self.rank == 0:
                self._hold.check_writer()
            metadata = decode_metadata(encode_metadata(metadata or {}))
            self._finish_inflight()
            self._raise_background_errors()
            kinds, owners = split_kinds(state)
            live = self._live
            flat = None if live is None or self._plan is None or self._replan else live.flat(state, kinds)
            if flat is None:  # ask torch (and note where each value lives, for the next save)
                planner = DefaultSavePlanner(dedup_save_to_lowest_rank=True)
                planner.set_up_planner(dcp_state(state, kinds, owners), is_coordinator=self.rank == 0)
                flat = planner.state_dict
                sig = _fingerprint(flat)
                self._live = LiveState(state, kinds, flat, sig)
            else:
                sig = live.sig
        except BaseException as e:
            problem = e
        waited = time.perf_counter() - t0
        if self._plan is None or self._replan:  # the same on every rank: a collective is safe here
            self._agree_plan(step, problem, sig, planner)
        elif problem is not None or sig != self._plan.sig:
            why = (f"{type(problem).__name__}: {problem}" if problem is not None
                   else "its state changed shape since the job's plan was made (the next save makes a new plan)")
            self._fail_everywhere(step, why, replan=problem is None)
            if problem is not None:
                raise problem
            self._replan = True
            logger.warning("Rank %d: %s is not saved: %s", self.rank, step_dir(step), why)
            elapsed = time.perf_counter() - t0
            return SaveStats(step=step, bytes=0, stage_s=0.0, persist_s=0.0, total_s=elapsed, skipped=True,
                             stall_s=elapsed, waited_s=waited)
        if step in self._committed:  # known alike on every rank (restore's listing, and every commit)
            elapsed = time.perf_counter() - t0
            logger.info("Checkpoint %s already committed in %s; keeping it", step_dir(step), self.root)
            return SaveStats(step=step, bytes=0, stage_s=0.0, persist_s=0.0, total_s=elapsed, skipped=True,
                             stall_s=elapsed, waited_s=waited)
        assert flat is not None and self._plan is not None
        self.storage.join(tmp, create=True)  # whichever rank of the directory comes first makes it
        try:
            snap = self._stage(step, tmp, state, kinds, flat, self._plan, epoch, metadata)
        except BaseException as e:
            self.storage.leave(tmp)
            self._fail_everywhere(step, f"{type(e).__name__}: {e}")
            raise
        stall = time.perf_counter() - t0
        if not self.async_save:
            return self._persist_global(snap, t0, waited, stall)
        fut = self._persist_executor.submit(self._persist_global_in_background, snap, t0, waited, stall)
        self._inflight = (step, fut)
        return SaveStats(step=step, bytes=snap.nbytes, stage_s=snap.staged.stage_s, persist_s=None, total_s=None,
                         stall_s=stall, waited_s=waited)

    def _fail_everywhere(self, step: int, why: str, *, replan: bool = False) -> None:
        """This rank cannot take part in the save of ``step``: rank 0 ends it for every rank at once;
        another rank tells rank 0 in its part (``replan``: every rank makes the plan again next time)."""
        if self.rank == 0:
            self._replan = self._replan or replan
            self._announce(step, f"{'replan: ' if replan else ''}rank 0 could not save ({why})", [])
        else:
            self._publish_part(step, {"error": why, "replan": replan})

    def _agree_plan(self, step: int, problem: BaseException | None, sig: str, planner: Any) -> None:
        """The job's plan, made together (every rank is here at the same save): raises on every rank when
        one cannot save, naming it."""
        answers: list[Any] = [None] * self.world_size
        dist.all_gather_object(answers, (_describe(problem), sig), group=self.group)
        failed = next(((r, a[0]) for r, a in enumerate(answers) if a[0] is not None), None)
        if failed is not None:
            if problem is not None:
                raise problem
            raise SaveFailedError(f"Rank {failed[0]} could not save {step_dir(step)} ({failed[1][0]}: {failed[1][1]}), "
                                  f"so no rank did; the previous checkpoint stands; fix that rank's cause, then save "
                                  "again.")
        self._plan = self._plan_for(tuple(a[1] for a in answers), planner, sig)
        self._replan = False

    def _plan_for(self, sigs: tuple[str, ...], planner: DefaultSavePlanner, sig: str) -> _Plan:
        """This rank's write items of the global plan: the cached ones while no rank's local plan changed."""
        if self._plan is not None and self._plan.sigs == sigs:
            return self._plan
        local = planner.create_local_plan()
        plans: list[Any] = [None] * self.world_size
        dist.all_gather_object(plans, local, group=self.group)
        global_plans, _ = planner.create_global_plan(plans)  # deterministic: every rank computes the same
        mine = planner.finish_plan(global_plans[self.rank])
        expected: dict[str, set[tuple[int, ...]] | None] = {}
        for p in global_plans:
            for it in p.items:
                if it.type == WriteItemType.BYTE_IO:
                    expected[it.index.fqn] = None
                else:
                    got = expected.setdefault(it.index.fqn, set())
                    assert got is not None
                    got.add(tuple(it.tensor_data.chunk.offsets))
        return _Plan(sigs=sigs, sig=sig, items=list(mine.items), expected=expected)

    def _stage(self, step: int, tmp: str, state: dict[str, Any], kinds: dict[str, str], flat: dict[str, Any],
               plan: _Plan, epoch: int | None, metadata: dict[str, Any]) -> _Snapshot:
        """Copy this rank's shards and components into host buffers (the training thread's only copy)."""
        others = {n: o for n, o in state.items() if n not in kinds}
        staged = stage(step, others, rng=self.rng, epoch=epoch, metadata=metadata,
                       buffers=self._buffers if self.async_save else None, rank=self.rank,
                       world_size=self.world_size)
        tensors, tensor_items, blobs, blob_items = [], [], [], []
        for it in plan.items:
            if it.type == WriteItemType.BYTE_IO:
                blobs.append(self._object_bytes(find_state_dict_object(flat, it.index)))  # DCP's torch.save
                blob_items.append(it)
                continue
            data = local_tensor(flat[it.index.fqn])  # a DTensor: its one local shard (FSDP2)
            if tuple(data.shape) != tuple(it.tensor_data.chunk.sizes):
                data = find_state_dict_object(flat, it.index)  # several chunks per rank: DCP finds the one
            t = data.detach()
            if tuple(t.shape) != tuple(it.tensor_data.chunk.sizes):
                raise UnsupportedStateError(f"{it.index.fqn!r} is {tuple(t.shape)} on rank {self.rank}, where the "
                                            f"job's plan has {tuple(it.tensor_data.chunk.sizes)}")
            tensors.append(t)
            tensor_items.append(it)
        pieces: list[memoryview] = []
        keep: list[Any] = []
        entries: list[dict[str, Any]] = []
        end = 0
        if tensors:
            if self.async_save:
                flat, offsets = self._buffers.copy_in("__shards__", tensors)
            else:
                from .._engine._staging import aligned_offsets

                hosts = [t.to("cpu").contiguous() for t in tensors]
                offsets, total = aligned_offsets([t.numel() * t.element_size() for t in hosts])
                flat = torch.zeros(total, dtype=torch.uint8)
                for t, off in zip(hosts, offsets, strict=True):
                    n = t.numel() * t.element_size()
                    if n:
                        flat[off:off + n].copy_(t.reshape(-1).view(torch.uint8))
            if any(t.device.type == "cuda" for t in tensors):
                torch.cuda.synchronize()
            pieces.append(memoryview(flat.numpy()))
            keep.append(flat)
            end = len(pieces[0])
            for t, it, off in zip(tensors, tensor_items, offsets, strict=True):
                td = it.tensor_data
                entries.append({"key": it.index.fqn, "dtype": dtype_name(td.properties.dtype),
                                "size": list(td.size), "offsets": list(td.chunk.offsets),
                                "sizes": list(td.chunk.sizes), "offset": off,
                                "length": t.numel() * t.element_size()})
        for blob, it in zip(blobs, blob_items, strict=True):
            pad = -end % ALIGN
            if pad:
                pieces.append(memoryview(bytes(pad)))
                end += pad
            pieces.append(memoryview(blob))
            entries.append({"key": it.index.fqn, "bytes": True, "offset": end, "length": len(blob)})
            end += len(blob)
        return _Snapshot(step=step, tmp=tmp, staged=staged, shard_pieces=pieces, shard_entries=entries,
                         shard_keep=keep, expected=plan.expected, kinds=dict(kinds), epoch=epoch, metadata=metadata)

    def _publish_part(self, step: int, part: dict[str, Any]) -> None:
        if self.rank == 0:
            return  # rank 0 keeps its own part
        try:
            self._store().set(f"{step}/part/{self.rank}", json.dumps(part))
        except Exception as e:
            logger.warning("Rank %d could not tell rank 0 about step %d (%s: %s)", self.rank, step, type(e).__name__, e)

    def _write_part(self, snap: _Snapshot) -> dict[str, Any]:
        """Phase 1 on this rank: write and fsync its files; its part of the manifest."""
        files: dict[str, Any] = {}
        if snap.shard_pieces:
            fname = shards_file(self.rank)
            size, digest = self.storage.write_file(snap.tmp, fname, snap.shard_pieces, self._hash_executor,
                                                   direct=self.async_save)
            files[fname] = [size, digest]
        components: dict[str, Any] = {}
        if os.environ.get(CHAOS_KILL_ENV) == f"write:{self.rank}":
            _chaos_kill(f"rank {self.rank} mid-write of {step_dir(snap.step)}")
        for comp in snap.staged.components:
            if comp.entries:
                size, digest = self.storage.write_file(snap.tmp, comp.file, comp.pieces, self._hash_executor,
                                                       direct=comp.direct)
                files[comp.file] = [size, digest]
            components[comp.name] = {"kind": comp.kind, "type": comp.type, "tree": comp.tree,
                                     "tensors": [t.to_json() for t in comp.entries]}
        entries = [dict(e, file=shards_file(self.rank)) for e in snap.shard_entries]
        return {"files": files, "components": components, "entries": entries}

    def _persist_global(self, snap: _Snapshot, t0: float, waited: float, stall: float) -> SaveStats:
        """Phase 1 on every rank, phase 2 on rank 0; see the module docstring."""
        name = step_dir(snap.step)
        t1 = time.perf_counter()
        store_keys: list[str] = []
        committed_at: float | None = None
        own_tmp = self.rank == self.leader  # this node's temp directory is committed or removed by its leader
        self._forget_keys(snap.step)
        try:
            try:
                part = self._write_part(snap)
                if not self.shared:
                    self._upload_part(snap, part)
            except BaseException as e:
                self._publish_part(snap.step, {"error": f"{type(e).__name__}: {e}"})
                raise
            persist_s = time.perf_counter() - t1
            if self.rank != 0:
                self._publish_part(snap.step, part)
                outcome = self._await(f"{snap.step}/done", f"rank 0 to commit {name}")
                if outcome != "ok":
                    if outcome.startswith("replan: "):
                        self._replan = True
                        raise _Replan(outcome)
                    raise _OtherRankFailed(f"rank 0 did not commit {name}: {outcome}")
                self._committed.add(snap.step)
                nbytes = sum(f[0] for f in part["files"].values())
                if own_tmp and not self.shared:  # this node's copy: a cache of the global checkpoint
                    raw = self._store().get(f"{snap.step}/manifest")
                    self._commit_local(snap, raw)
                else:
                    self.storage.leave(snap.tmp)
            else:
                parts = {0: part}
                for r in range(1, self.world_size):
                    key = f"{snap.step}/part/{r}"
                    parts[r] = json.loads(self._await(key, f"rank {r}'s files of {name}"))
                    store_keys.append(key)
                    if "error" in parts[r]:
                        self._replan = self._replan or bool(parts[r].get("replan"))
                        raise _OtherRankFailed(f"rank {r} failed to write its files ({parts[r]['error']})")
                manifest = self._manifest(snap, parts)
                raw = manifest.to_json_bytes()
                if os.environ.get(CHAOS_KILL_ENV) == "commit":
                    _chaos_kill(f"rank 0 between every rank's files and the manifest of {name}")
                if self.shared:
                    self.storage.commit(snap.tmp, name, MANIFEST, raw)  # the global commit: a rename
                else:
                    assert self.remote is not None
                    self._retry(lambda: self.remote.commit(name, name, MANIFEST, raw), f"Committing {name}")
                    self._store().set(f"{snap.step}/manifest", raw)
                self._announce(snap.step, "ok", store_keys)
                committed_at = time.perf_counter()  # the job's checkpoint is durable; what follows is housekeeping
                self._committed.add(snap.step)
                nbytes = manifest.total_bytes
                if self.shared:
                    self._retention.vouch(snap.step, manifest, raw)
                    self._prune(snap.step)
                    if self._replicator is not None:
                        self._replicator.submit(snap.step)
                else:
                    self._commit_local(snap, raw)
                    self._prune_remote(snap.step, manifest, raw)
                logger.info("Committed %s for %d ranks in %s (%d files, %d bytes)", name, self.world_size,
                            self.root if self.shared else self._remote_url(), len(manifest.files), nbytes)
        except BaseException as e:
            if self.rank == 0:
                self._announce(snap.step, f"{'replan: ' if self._replan else ''}{type(e).__name__}: {e}", store_keys)
                if not self.shared and self.remote is not None:
                    try:
                        self.remote.abort(name)
                    except Exception:
                        pass
            if own_tmp:
                try:
                    self.storage.abort(snap.tmp)
                except Exception:
                    pass
            else:
                self.storage.leave(snap.tmp)
            raise
        total = (committed_at or time.perf_counter()) - t0
        stats = SaveStats(step=snap.step, bytes=nbytes, stage_s=snap.staged.stage_s, persist_s=persist_s,
                          total_s=total, stall_s=stall, waited_s=waited)
        self.durable_saves.append(stats)
        self.last_save = stats
        return stats

    def _upload_part(self, snap: _Snapshot, part: dict[str, Any]) -> None:
        """Node-local roots: upload this rank's files to the remote's ``step-N/`` (rank 0 prepares it first)."""
        assert self.remote is not None
        name = step_dir(snap.step)
        if self.rank == 0:
            self._retry(lambda: self.remote.begin(name, name), f"Preparing {name} on {self.remote.url}")
            self._store().set(f"{snap.step}/begun", "1")
        else:
            self._await(f"{snap.step}/begun", f"rank 0 to prepare {name} on the remote")
        for fname, (size, checksum) in sorted(part["files"].items(), key=lambda kv: -kv[1][0]):
            rel = f"{name}/{fname}"

            def put(rel: str = rel, fname: str = fname, size: int = size, checksum: str = checksum) -> None:
                fd = self.storage.open_member(f"{snap.tmp}/{fname}")
                try:
                    self.remote.upload_file(fd, rel, size=size, checksum=checksum)
                finally:
                    os.close(fd)
                got = self.remote.size(rel)
                if got != size:
                    raise ConnectionError(f"{rel} is {got} bytes on the remote after upload, expected {size}")

            self._retry(put, f"Uploading {rel}")

    def _commit_local(self, snap: _Snapshot, raw: bytes) -> None:
        """Publish this node's files of a globally committed step as ``step-N/`` in its root (a leader's cache).

        Its manifest is the global one, so it lists the other nodes' files too: a restore uses
        a local file only when it verifies against that manifest, and fetches the rest.
        """
        name = step_dir(snap.step)
        try:
            self.storage.commit(snap.tmp, name, MANIFEST, raw)
            self._retention.vouch(snap.step, parse_manifest(raw), raw)
            self._prune(snap.step)
        except Exception as e:
            logger.warning("Rank %d could not keep its node's copy of %s in %s (%s: %s); the checkpoint is committed "
                           "on %s.", self.rank, name, self.root, type(e).__name__, e, self._remote_url())

    def _prune_remote(self, step: int, manifest: Manifest, raw: bytes) -> None:
        """Retention on the remote, after ``step`` was committed there (rank 0, node-local roots)."""
        assert self.remote is not None
        if self._remote_retention is None:
            self._remote_retention = StoreRetention(self.remote, self.keep)
        self._remote_retention.vouch(step, manifest, raw)
        try:
            for s in self._remote_retention.deletions(step):
                gone = self.remote.retire(step_dir(s), trash_dir(s))
                self._remote_retention.forget(s)
                self.remote.remove(gone, strict=True)
        except Exception as e:
            logger.warning("Deleting old checkpoints in %s failed (%s: %s); tried again after the next save",
                           self.remote.url, type(e).__name__, e)

    def _persist_global_in_background(self, snap: _Snapshot, t0: float, waited: float, stall: float) -> SaveStats | None:
        try:
            return self._persist_global(snap, t0, waited, stall)
        except BaseException as e:
            if self._replan:  # a rank's state changed shape: this save is dropped, the next makes a new plan
                logger.warning("Rank %d: %s was not saved (%s); the next save makes the job's plan again",
                               self.rank, step_dir(snap.step), e)
                return None
            if isinstance(e, _OtherRankFailed):  # raised by the rank at fault; here it is only said
                logger.warning("Rank %d: %s was not committed: %s; the previous checkpoint stands.", self.rank,
                               step_dir(snap.step), e)
                return None
            self._errors.put(SaveFailedError(
                f"Background save of {step_dir(snap.step)} to {self.root} failed on rank {self.rank} "
                f"({type(e).__name__}: {e}); the previous checkpoint stands; fix that cause, then save again."), e)
        return None

    def _await(self, key: str, what: str) -> str:
        from datetime import timedelta

        store = self._store()
        try:
            store.wait([key], timedelta(seconds=self.commit_timeout))
        except Exception as e:
            raise TimeoutError(f"waited {self.commit_timeout:.0f}s for {what} ({type(e).__name__}); a rank died or "
                               "hung") from None
        return store.get(key).decode()

    def _forget_keys(self, step: int) -> None:
        """Rank 0 deletes the store keys of the previous save (on the persist thread): every rank
        finished it before this save's all-gather (``save()`` waits for its own save in flight first)."""
        last, self._keys_of = self._keys_of, step
        if self.rank != 0 or last is None:
            return
        try:
            store = self._store()
            for k in ("done", "manifest", "begun"):
                store.delete_key(f"{last}/{k}")
        except Exception as e:
            logger.debug("Could not delete the store keys of step %d (%s)", last, e)

    def _announce(self, step: int, outcome: str, keys: list[str]) -> None:
        try:
            store = self._store()
            store.set(f"{step}/done", outcome)
            for k in keys:
                store.delete_key(k)
        except Exception as e:
            logger.warning("Rank 0 could not announce the outcome of step %d (%s: %s)", step, type(e).__name__, e)

    def _manifest(self, snap: _Snapshot, parts: dict[int, dict[str, Any]]) -> Manifest:
        """The global manifest from every rank's part; raises when a shard of the plan is missing."""
        files: dict[str, FileEntry] = {}
        components: dict[str, ComponentEntry] = {}
        entries: dict[str, Any] = {}
        for r in sorted(parts):
            p = parts[r]
            for fname, (size, digest) in p["files"].items():
                files[fname] = FileEntry(size=size, checksum=digest, rank=r)
            for cname, c in p["components"].items():
                components[cname] = ComponentEntry(kind=c["kind"], type=c["type"], tree=c["tree"], tensors=tuple(
                    TensorEntry(dtype=t["dtype"], shape=tuple(t["shape"]), offset=t["offset"], nbytes=t["nbytes"],
                                file=t["file"], kind=t.get("kind", "tensor"), device=t.get("device", "cpu"))
                    for t in c["tensors"]))
            for e in p["entries"]:
                loc = {"file": e["file"], "offset": e["offset"], "length": e["length"]}
                if e.get("bytes"):
                    entries[e["key"]] = {"bytes": loc}
                    continue
                entry = entries.setdefault(e["key"], {"dtype": e["dtype"], "size": e["size"], "chunks": []})
                entry["chunks"].append({"offsets": e["offsets"], "sizes": e["sizes"], **loc})
        for key, chunks in snap.expected.items():
            have = entries.get(key)
            got = None if have is None or "bytes" in have else {tuple(c["offsets"]) for c in have["chunks"]}
            if have is None or (chunks is not None and got != chunks):
                raise SaveFailedError(f"the job's plan has {key!r}, and no rank wrote {'it' if have is None else 'all of it'}")
        return Manifest(step=snap.step, files=files, components=components, epoch=snap.epoch,
                        world_size=self.world_size, metadata=snap.metadata,
                        versions=default_versions(torch=torch.__version__),
                        shards={"components": snap.kinds, "entries": entries})

    # -- restore ---------------------------------------------------------------------------
    def restore(self, state: dict[str, Any], step: int | None = None, *, fresh_if_invalid: bool = False,
                fresh_if_unreachable: bool = False, partial: Any = False) -> int | None:
        """Load the newest checkpoint every rank verifies (or ``step``) into ``state``; call on every rank.

        As :meth:`CheckpointManager.restore`, for the whole job: every rank loads the same
        step. Modules and optimizers are loaded through DCP from the shards; every other
        component, and the RNGs, from this rank's own copy.
        """
        self._check_open()
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of name -> object, got {type(state).__name__}.")
        partial_names(partial)
        t0 = time.perf_counter()
        self._finish_inflight()
        kinds, owners = split_kinds(state)
        listing: list[Any] = [None]
        if self.rank == 0:
            listing[0] = self._list_tiers()
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)  # group_src: torch >= 2.6 only
        dist.broadcast_object_list(listing, group=self.group, src=src)
        tiers_steps, unreachable = listing[0]
        t_list = time.perf_counter()
        if unreachable is not None and self.remote is not None:
            warnings.warn(f"Cannot reach the remote {self.remote.url} ({unreachable}); restoring from the local "
                          f"checkpoints in {self.root} only.", RemoteUnavailableWarning, stacklevel=2)
        tiers = [(Tier.ROOT, self.storage, tiers_steps[0])] if self.shared else []  # node-local: caches only
        if self.remote is not None and tiers_steps[1] is not None:
            tiers.append((Tier.REMOTE, self.remote, tiers_steps[1]))
            self._committed.update(tiers_steps[1])
        self._committed.update(tiers_steps[0])
        every = sorted({s for _, _, steps in tiers for s in steps}, reverse=True)
        if step is not None:
            if step not in every:
                raise CheckpointNotFoundError(f"Checkpoint {step_dir(step)} does not exist in {self.root}; run "
                                              f"`spotsafe ls {self.root}` to see the steps that do.")
            every = [step]
        skipped: list[str] = []
        for s in every:
            for tier, storage, steps in tiers:
                if s not in steps:
                    continue
                t_read = time.perf_counter()
                elsewhere = tier is Tier.ROOT and any(s in st for t, _, st in tiers if t is Tier.REMOTE)
                ready, verdict = self._read_share(storage, s, state, kinds, owners, partial, elsewhere)
                verdicts: list[Any] = [None] * self.world_size
                dist.all_gather_object(verdicts, verdict, group=self.group)
                bad = next(((r, v) for r, v in enumerate(verdicts) if v is not None), None)
                where = f"{step_dir(s)} in {storage.url}"
                if bad is not None and all(v is None or v[0] == _CACHE for v in verdicts):
                    logger.debug("%s is a node's cache without every file this job needs; reading the remote", where)
                    continue  # the remote's copy, with this cache's verified files (not an invalid checkpoint)
                if bad is None:
                    assert ready is not None
                    t_load = time.perf_counter()
                    manifest = ready["manifest"]
                    self._apply(ready, state, kinds, owners)
                    if ready["read"] is not None:
                        self._tell_resized(manifest, ready["read"])
                    self.restored = CheckpointInfo(step=s, name=step_dir(s), location=f"{storage.url}/{step_dir(s)}",
                                                   valid=True, manifest=manifest)
                    self.restored_tier, self.restore_skipped = tier, skipped
                    if self.rank == 0 and not self.read_only:
                        if tier is Tier.ROOT:
                            self._retention.record(s, Verdict(valid=True, created=manifest.created))
                        elif self._replicator is not None:
                            self._replicator.confirm_restored(s, manifest)
                    now = time.perf_counter()
                    self.last_restore = RestoreStats(step=s, tier=tier, bytes=ready["bytes"], fallbacks=len(skipped),
                                                     select_s=t_read - t_list, read_s=t_load - t_read,
                                                     load_s=now - t_load, total_s=now - t0)
                    logger.info("Rank %d restored %s from %s", self.rank, step_dir(s), storage.url)
                    return s
                r, (kind, text) = bad
                if kind == "StateMismatchError":
                    raise StateMismatchError(text if r == self.rank else f"On rank {r}: {text}")
                reason = text if r == self.rank else f"on rank {r}: {text}"
                if step is not None:
                    raise CorruptCheckpointError(f"Checkpoint {where} is invalid: {reason}; restore another step or "
                                                 "none to take the newest valid one.")
                skipped.append(f"{where} ({reason})")
                warnings.warn(f"Checkpoint {where} is invalid: {reason}. Skipping it and falling back to another copy "
                              "or an older one.", CheckpointSkippedWarning, stacklevel=2)
        self.restore_skipped = skipped
        self.last_restore = RestoreStats(step=None, tier=None, bytes=0, fallbacks=len(skipped),
                                         select_s=time.perf_counter() - t_list, read_s=0.0, load_s=0.0,
                                         total_s=time.perf_counter() - t0)
        if unreachable is not None and not fresh_if_unreachable and self.remote is not None:
            raise RemoteUnavailableError(
                f"No valid checkpoint could be read: the remote {self.remote.url} is unreachable ({unreachable}) and "
                f"{self.root} holds no valid checkpoint; retry when the store is back, or pass "
                "fresh_if_unreachable=True to start from scratch.")
        if skipped and not fresh_if_invalid:
            raise CorruptCheckpointError(
                f"No valid checkpoint in {self.root}: all {len(skipped)} failed verification ({'; '.join(skipped)}); "
                "repair or remove them, or pass fresh_if_invalid=True to start over.")
        return None

    def _list_tiers(self) -> tuple[tuple[list[int], list[int] | None], str | None]:
        local = committed_steps(self.storage)
        if self.remote is None:
            return (local, None), None
        try:
            down = self._hold.unreachable(self.remote)
            if down is not None:
                raise down
            return (local, committed_steps(self.remote)), None
        except Exception as e:
            return (local, None), f"{type(e).__name__}: {e}"

    def _read_share(self, storage: Any, step: int, state: dict[str, Any], kinds: dict[str, str],
                    owners: dict[str, str], partial: Any,
                    elsewhere: bool = False) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        """Read and verify what this rank needs of ``step``: (what to apply, None) or (None, (kind, reason)).
        ``elsewhere``: the remote has the step too, so a local copy without some file this rank needs is a
        node's cache (written when the job had node-local roots): (None, (_CACHE, ...)), not a defect."""
        name = step_dir(step)
        try:
            raw = read_manifest_bytes(storage, name)
            manifest = parse_manifest(raw)
            if manifest.step != step:
                raise ManifestError(f"manifest.json says step {manifest.step}, the directory says {step}")
            if manifest.shards is None:  # a single process's: this job at one rank takes it as it is
                if self.world_size != 1:
                    raise StateMismatchError(f"Checkpoint {name} was written by a single process, and this job has "
                                             f"{self.world_size} ranks; resume it with one rank (torchrun "
                                             "--nproc-per-node 1, or no torchrun) first, or start this job in a new "
                                             "root.")
                bufs = read_verified(storage, name, manifest, self._io_executor)
                plan, _ = plan_components(name, manifest, bufs, state, rng=self.rng, partial=partial)
                return {"manifest": manifest, "read": None, "bufs": bufs, "plan": plan,
                        "bytes": manifest.total_bytes}, None
            read = plan_shard_read(name, manifest, state, kinds, owners, self.rank, partial)
            sub = dataclasses.replace(manifest, files={f: manifest.files[f] for f in sorted(read.files)},
                                      components=read.components)
            if elsewhere and any(storage.size(f"{name}/{f}") is None for f in sub.files):
                return None, (_CACHE, f"{name} in {storage.url} holds another node's files only on the remote")
            bufs = self._read_files(storage, name, sub, raw)
            others = {n: o for n, o in state.items() if n not in kinds}
            plan, _ = plan_components(name, sub, bufs, others, rng=self.rng, partial=partial)
            return {"manifest": manifest, "read": read, "bufs": bufs, "plan": plan,
                    "bytes": sum(manifest.files[f].size for f in read.files)}, None
        except StateMismatchError as e:
            return None, ("StateMismatchError", str(e))
        except Exception as e:
            if not isinstance(e, (ManifestError, CorruptCheckpointError, UnsafeFileError)):
                logger.debug("Reading %s failed", name, exc_info=True)
            return None, (type(e).__name__, skip_reason(e))

    def _read_files(self, storage: Storage, name: str, sub: Manifest, raw: bytes) -> dict[str, torch.Tensor]:
        """Read and verify the files of ``sub``; node-local roots: from this node's copy where it holds the
        same checkpoint (its manifest is the global one, byte for byte) and each file verifies, else
        from ``storage`` (the remote)."""
        bufs: dict[str, torch.Tensor] = {}
        if storage is not self.storage:  # from the remote: this node's verified copies first
            try:
                same = read_manifest_bytes(self.storage, name) == raw
            except Exception:
                same = False
            here = [f for f in sub.files if same and self.storage.size(f"{name}/{f}") is not None]
            for f in here:
                try:
                    one = dataclasses.replace(sub, files={f: sub.files[f]}, components={})
                    bufs.update(read_verified(self.storage, name, one, self._io_executor))
                except (CorruptCheckpointError, OSError) as e:
                    logger.warning("This node's copy of %s/%s does not verify (%s); reading it from %s", name, f,
                                   skip_reason(e), storage.url)
        rest = {f: e for f, e in sub.files.items() if f not in bufs}
        if rest:
            bufs.update(read_verified(storage, name, dataclasses.replace(sub, files=rest, components={}),
                                      self._io_executor))
        return bufs

    def _apply(self, ready: dict[str, Any], state: dict[str, Any], kinds: dict[str, str],
               owners: dict[str, str]) -> None:
        """Load verified bytes: the shards through DCP (no collective), then the rank's own components
        (at another world size: see :meth:`_tell_resized`); a single process's checkpoint as it is."""
        read: ShardRead | None = ready["read"]
        if read is None:
            apply_checkpoint(ready["plan"])  # planned for the state itself (one rank, every component)
            return
        load_shards(read, ready["bufs"], state, kinds, owners)
        plan = ready["plan"]
        apply_checkpoint(plan)
        state.update(plan.state)  # plain values are replaced in the dict the plan was made for
        if read.new_rank and self.rng:
            seed_rngs(derived_seed(ready["manifest"], self.rank))

    def _tell_resized(self, manifest: Manifest, read: ShardRead) -> None:
        """A checkpoint of another world size: one warning on each rank it did not have, one line on rank 0."""
        saved, name = manifest.world_size, step_dir(manifest.step)
        if saved == self.world_size:
            return
        if read.new_rank:
            others = sorted(read.components)
            warnings.warn(
                f"Rank {self.rank} did not exist in {name} (written by {saved} ranks): its RNG streams are seeded from "
                f"(the checkpoint's rank-0 RNG, step {manifest.step}, rank {self.rank})"
                + (f", and its other per-rank components ({', '.join(others)}) are rank 0's" if others else "")
                + ".", SpotsafeWarning, stacklevel=3)
        if self.rank == 0:
            logger.info("Restored %s, written by %d ranks, on %d ranks%s", name, saved, self.world_size,
                        f"; the per-rank components of ranks {self.world_size}..{saved - 1} are dropped"
                        if saved > self.world_size else "")

    # -- the remote, as Run sees it ----------------------------------------------------------
    # Node-local roots: a save is durable only once committed on the remote, so "uploaded" is
    # "committed". A shared root: rank 0 replicates; the other ranks learn the outcome of a step's
    # upload from rank 0 through the store (``uploaded/<step>``: "yes" or "no").
    @property
    def remote_watermark(self) -> int | None:
        if not self.shared:
            return max(self._committed) if self._committed else None
        return super().remote_watermark

    def wait_uploaded(self, step: int, timeout: float | None = None) -> bool:
        if self.remote is None:
            return False
        if not self.shared:
            return step in self._committed
        if self.rank != 0:
            return self._upload_outcome(step, self.commit_timeout if timeout is None else timeout) == "yes"
        try:
            done = super().wait_uploaded(step, timeout)
        except BaseException:
            self._tell_upload(step, "no")
            raise
        if done:
            self._tell_upload(step, "yes")
        return done

    def upload_pending(self, step: int) -> bool:
        if self.remote is None or not self.shared:
            return False
        if self.rank != 0:
            return self._upload_outcome(step, 0.0) is None
        pending = super().upload_pending(step)
        if not pending and not super().wait_uploaded(step, 0):
            self._tell_upload(step, "no")  # dropped or refused: the other ranks stop waiting
        return pending

    def upload_backlog(self, step: int) -> list[int]:
        return super().upload_backlog(step) if self.shared and self.rank == 0 else []

    def prioritize_upload(self, step: int) -> int:
        return super().prioritize_upload(step) if self.shared and self.rank == 0 else 0

    def _tell_upload(self, step: int, outcome: str) -> None:
        try:
            self._store().set(f"uploaded/{step}", outcome)
        except Exception as e:
            logger.debug("Could not tell the other ranks about the upload of step %d (%s)", step, e)

    def _upload_outcome(self, step: int, timeout: float) -> str | None:
        from datetime import timedelta

        store, key = self._store(), f"uploaded/{step}"
        try:
            if timeout > 0:
                store.wait([key], timedelta(seconds=timeout))
            elif not store.check([key]):
                return None
            return store.get(key).decode()
        except Exception:
            return None

    def close(self, *, wait_remote: bool = True, timeout: float | None = None) -> None:
        try:
            super().close(wait_remote=wait_remote, timeout=timeout)
        finally:
            self._stores.clear()


def _chaos_kill(where: str) -> None:
    """SIGKILL this process now (``SPOTSAFE_CHAOS_KILL``): a node lost at that point, for drills and tests."""
    import signal

    logger.warning("%s: killing %s", CHAOS_KILL_ENV, where)
    for h in logging.getLogger().handlers:
        h.flush()
    os.kill(os.getpid(), signal.SIGKILL)


_CACHE = "NodeCache"
"""A restore verdict: this tier's copy is a node's cache without every file (not invalid; the remote has it)."""


class _OtherRankFailed(Exception):
    """Another rank failed the save: that rank raises it; this one logs it and goes on (a failure raised on
    every rank would fail the next save of the others, and so on)."""


class _Replan(_OtherRankFailed):
    """Rank 0 dropped a save because a rank's state changed shape (every rank makes the plan again)."""


def _describe(e: BaseException | None) -> tuple[str, str] | None:
    return None if e is None else (type(e).__name__, str(e))


__all__ = ["DEFAULT_COMMIT_TIMEOUT", "GlobalCheckpointManager", "shards_file"]
