"""Benchmark: what watching for a stop costs each training step of a 2-rank job, how long the
ranks take to agree on the stop step, and what a whole-job checkpoint costs against a memcpy,
the ranks' own writes and DCP (gloo on CPU, 127.0.0.1).

1. Per-step cost. Each of 2 ranks (processes, ``init_process_group("gloo")``) runs ``--steps``
   steps of a small fixed CPU job (a 64x64 matmul), timed per repeat, in rotating order:
   - ``no watch``: the job alone, the baseline every other row is measured against;
   - ``spotsafe stop watch``: ``StopAgreement.should_stop(step)`` after every step, its
     thread polling the job's TCPStore every 50 ms (spotsafe's way);
   - ``all-reduce every step``: a blocking 1-int all-reduce after every step, then ``.item()``
     (Lightning's way, PR #20825);
   - ``all-reduce every 16th step``: the same every 16th step.
   The table shows the added cost per step (µs) of each row over ``no watch`` in the same
   repeat. Goal (issue 13): spotsafe's watch <= 10 µs per step.
2. Agreement. Rank 1 asks for a stop at a random step; the time from its request until every
   rank has returned True from ``should_stop`` (the stop step agreed and reached), and the
   spread of the stop steps (must be 0).
3. Saves (``--parts save``), for a DDP job and an FSDP2 job (``fully_shard`` per layer on a CPU
   mesh) of the same model: a stack of ``Linear(512, 512)`` whose parameters + Adam state come
   to ``--size`` (default 32M) in total, plus an LR scheduler (per rank). The methods run one
   after the other on both ranks, in an order rotated every repeat, after ``--warmup`` untimed
   rounds (every buffer allocated and touched); each writes into a new directory under
   ``--dir`` (default a new ``/tmp/spotsafe-bench-dist-*``), deleted untimed after it:
   - ``memcpy``: ``dst.copy_(src)`` into warm tensors of the bytes this rank stages: the
     tensors DCP's plan gives this rank (``dedup_save_to_lowest_rank``, as spotsafe plans:
     DDP's replicated model + Adam on rank 0 only; FSDP2's shards on each rank), and one flat
     copy of the rest of ``SaveStats.bytes`` (RNG, scheduler, alignment). It runs right
     before spotsafe, so each stall is paired with a memcpy of the same moment;
   - ``spotsafe``: ``GlobalCheckpointManager.save()`` (async, the default): its
     ``SaveStats.stall_s`` per rank; then ``wait()``: each rank's ``persist_s`` (its files
     written and fsynced) and rank 0's ``total_s`` (from ``save()`` to the global commit:
     manifest written and renamed);
   - ``dcp.save``: ``get_model_state_dict`` + ``get_optimizer_state_dict``, then
     ``torch.distributed.checkpoint.save`` (FileSystemWriter, fsync on): the time to return;
   - ``dcp.async_save`` (the same state dicts, thread mode): the time to return (its stall)
     and to the Future's completion; ``dcp.async_save (warm stager)`` passes one
     ``DefaultStager`` kept across calls, which reuses its staging memory.
   Two rows locate DCP's fixed costs: ``planning`` (the state dicts and DCP's local plan, as
   every dcp.save starts; spotsafe builds the state dicts too, then reuses the job's plan while
   a cheap fingerprint of the state is unchanged) and ``all_gather_object`` (one small tuple;
   dcp.save makes several, spotsafe's save() none once the plan is made).
   Goals (issue 13): stall <= 1.2x the rank's memcpy + 5 ms; save() to global commit <= 1.1x
   the slowest rank's stall + persist (its files cannot be written before its stall ends; the
   ratio to the persist alone is printed too). Goals are judged on the paired estimate (per-repeat ratios);
   ``?`` where the ratio of medians disagrees.

    .venv/bin/python bench/bench_dist.py [--parts watch,save] [--steps 2000] [--repeats 5] [--size 32M]

About 1.5 minutes on a 2-core VM with the defaults; the save part needs about 10x ``--size`` of
memory per rank and 3x on disk.
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (the harness's set-up: spotsafe importable, endpoints off)
from _common import build_model, med, paired, parse_size, plan_layers, print_goals, print_table, scratch_dir

METHODS = ("no watch", "spotsafe stop watch", "all-reduce every step", "all-reduce every 16th step")
KINDS = ("ddp", "fsdp2")
KIND_LABEL = {"ddp": "DDP", "fsdp2": "FSDP2"}
STALL_FACTOR, STALL_SLACK = 1.2, 0.005
COMMIT_GOAL = 1.10
PG_TIMEOUT = timedelta(seconds=60)  # every collective of a worker; a dead peer ends the other within it
WAIT_S = 120.0  # the longest one save may take to complete (spotsafe's wait, a DCP Future)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, steps: int, repeats: int, q) -> None:
    import torch
    import torch.distributed as dist

    from spotsafe._dist import StopAgreement

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=PG_TIMEOUT)
    a = torch.randn(64, 64)
    flag = torch.zeros(1, dtype=torch.int32)
    results: dict[str, list[float]] = {m: [] for m in METHODS}
    for rep in range(repeats):
        order = METHODS[rep % len(METHODS):] + METHODS[:rep % len(METHODS)]
        for method in order:
            ag = None
            if method == "spotsafe stop watch":
                ag = StopAgreement.from_env()
                assert ag is not None
                ag.prefix += f"cost/{rep}/"
                ag.start()
            dist.barrier()
            t0 = time.perf_counter()
            for step in range(1, steps + 1):
                (a @ a).sum()
                if ag is not None:
                    ag.should_stop(step)
                elif method == "all-reduce every step" or (method == "all-reduce every 16th step" and step % 16 == 0):
                    dist.all_reduce(flag)
                    flag.item()
            results[method].append(time.perf_counter() - t0)
            if ag is not None:
                ag.close()
    # 2. agreement latency: rank 1 asks at a random step
    agree: list[tuple[float, int]] = []
    for rep in range(repeats):
        ag = StopAgreement.from_env(poll=0.05)
        assert ag is not None
        ag.prefix += f"agree/{rep}/"
        ag.start()
        ask = random.Random(rep).randint(20, 60)
        dist.barrier()
        t_ask = None
        for step in range(1, 10_000):
            (a @ a).sum()
            time.sleep(0.002)
            if rank == 1 and step == ask:
                t_ask = time.time()
                ag.request("signal", "bench", None)
            if ag.should_stop(step):
                break
        stopped = time.time()
        ag.close()
        t_list = [None, None]
        dist.all_gather_object(t_list, (t_ask, stopped, step))
        if rank == 0:
            asked = t_list[1][0]
            agree.append((max(t for _, t, _ in t_list) - asked, max(s for _, _, s in t_list) - min(s for _, _, s in t_list)))
    dist.barrier()
    dist.destroy_process_group()
    q.put((rank, (results, agree), None))


# -- part 3: saves --------------------------------------------------------------------------
def _build(kind: str, size: int, world: int) -> tuple[Any, Any, dict[str, Any]]:
    """The same model on every rank (same seed), wrapped for ``kind``, with Adam state; its save state."""
    import torch

    width, layers = plan_layers(size, 512 if size < (256 << 20) else None)
    m = build_model(width=width, layers=layers, seed=0)  # one Adam step already taken
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        module, opt = DistributedDataParallel(m.module), m.opt
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        module = m.module
        for layer in module:
            fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        module(torch.randn(8, width)).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100)
    return module, opt, {"model": module, "optimizer": opt, "scheduler": sched}


def _state_dicts(module: Any, opt: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(module), "optimizer": get_optimizer_state_dict(module, opt)}


def _planned(module: Any, opt: Any, rank: int, world: int) -> tuple[list, float]:
    """The tensors DCP's global plan gives this rank (as spotsafe plans them); the seconds of the local plan."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    t0 = time.perf_counter()
    planner = DefaultSavePlanner(dedup_save_to_lowest_rank=True)
    planner.set_up_planner(_state_dicts(module, opt), is_coordinator=rank == 0)
    local = planner.create_local_plan()
    plan_s = time.perf_counter() - t0
    plans: list[Any] = [None] * world
    dist.all_gather_object(plans, local)
    global_plans, _ = planner.create_global_plan(plans)
    mine = planner.finish_plan(global_plans[rank])
    tensors = [planner.resolve_data(it).detach() for it in mine.items if it.type != WriteItemType.BYTE_IO]
    return tensors, plan_s


def _measure(kind: str, rank: int, world: int, size: int, repeats: int, warmup: int, base: Path) -> dict[str, Any]:
    """Every save method of one job kind on this rank: {row: [seconds per repeat]} plus sizes."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    from spotsafe._dist._global import GlobalCheckpointManager

    module, opt, state = _build(kind, size, world)
    root = base / kind / "spotsafe"
    mgr = GlobalCheckpointManager(root, keep=1_000_000)  # the benchmark deletes every checkpoint itself, untimed
    assert mgr.async_save
    stager = DefaultStager(StagingOptions(False, False, False, False))  # kept across calls: warm
    res: dict[str, Any] = {k: [] for k in ("memcpy", "stall", "stage", "waited", "persist", "total", "planning",
                                           "all_gather", "dcp_save", "dcp_async", "dcp_async_done",
                                           "dcp_warm", "dcp_warm_done")}
    step = 0
    first = mgr.save(step := step + 1, state)  # cold: buffers allocated; tells how many bytes this rank stages
    mgr.wait(timeout=WAIT_S)
    src, _ = _planned(module, opt, rank, world)
    planned = sum(t.numel() * t.element_size() for t in src)
    rest = max(0, first.bytes - planned)
    src.append(torch.ones(rest, dtype=torch.uint8))
    dst = [torch.zeros_like(t) for t in src]  # touched: warm
    res.update(bytes=first.bytes, planned_bytes=planned, first_stall=first.stall_s)
    counter = [0]

    def fresh(name: str) -> Path:
        counter[0] += 1
        return base / kind / f"{name}-{counter[0]}"

    def clean() -> None:  # untimed, between methods: files removed and flushed on both ranks
        dist.barrier()
        if rank == 0:
            for p in (base / kind).iterdir():
                if p.name.startswith("dcp-"):
                    shutil.rmtree(p, ignore_errors=True)
            for p in root.iterdir():
                if p.name.startswith("step-"):
                    shutil.rmtree(p, ignore_errors=True)
        gc.collect()
        os.sync()
        dist.barrier()

    def run(method: str, record: bool) -> None:
        nonlocal step
        got: dict[str, float] = {}
        if method == "memcpy":
            t0 = time.perf_counter()
            for d, s in zip(dst, src):
                d.copy_(s)
            got["memcpy"] = time.perf_counter() - t0
        elif method == "spotsafe":
            st = mgr.save(step := step + 1, state)
            final = mgr.wait(timeout=WAIT_S)
            assert final is not None and final.step == step and final.total_s is not None
            got.update(stall=st.stall_s, stage=st.stage_s, waited=st.waited_s, persist=final.persist_s,
                       total=final.total_s)
        elif method == "planning":
            got["planning"] = _planned(module, opt, rank, world)[1]
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_gather_object([None] * world, (None, "0" * 32, ("step-000000000001.tmp-0", False)))
            got["all_gather"] = time.perf_counter() - t0
        elif method == "dcp_save":
            path = fresh("dcp-save")
            t0 = time.perf_counter()
            dcp.save(_state_dicts(module, opt), checkpoint_id=str(path))
            got["dcp_save"] = time.perf_counter() - t0
        else:  # dcp_async, dcp_warm
            path = fresh("dcp-async")
            t0 = time.perf_counter()
            fut = dcp.async_save(_state_dicts(module, opt), checkpoint_id=str(path),
                                 **({"async_stager": stager} if method == "dcp_warm" else {}))
            got[method] = time.perf_counter() - t0
            fut.result(timeout=WAIT_S)
            got[f"{method}_done"] = time.perf_counter() - t0
        if record:
            for k, v in got.items():
                res[k].append(v)
        clean()

    # memcpy runs right before spotsafe, so that each stall has a memcpy of the same moment to pair with
    units = [["memcpy", "spotsafe"], ["dcp_save"], ["dcp_async"], ["dcp_warm"], ["planning"]]
    clean()
    for _ in range(warmup):
        for unit in units:
            for m in unit:
                run(m, record=False)
    for r in range(repeats):
        rot = r % len(units)
        for unit in units[rot:] + units[:rot]:
            for m in unit:
                run(m, record=True)
    mgr.close()
    stager.close()
    return res


def _save_worker(rank: int, world: int, port: int, size: int, repeats: int, warmup: int, kinds: list[str],
                 base: str, q) -> None:
    import torch
    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=PG_TIMEOUT)
        out = {kind: _measure(kind, rank, world, size, repeats, warmup, Path(base)) for kind in kinds}
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        q.put((rank, None, traceback.format_exc()))
        os._exit(1)
    q.put((rank, out, None))


def _spawn(target: Any, args: tuple, world: int, timeout: float) -> dict[int, Any]:
    """Run ``target(rank, world, port, *args, q)`` in ``world`` processes; each rank's result, by rank.

    Bounded: gives up after ``timeout`` seconds or as soon as a rank fails or dies without a
    result; every process is killed on the way out.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, *args, q)) for r in range(world)]
    got: dict[int, Any] = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while len(got) < world:
            if time.monotonic() > deadline:
                raise SystemExit(f"the ranks did not finish within {timeout:.0f}s; rerun with fewer --repeats or --steps")
            try:
                item = q.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if p.exitcode is not None and i not in got]
                if dead:
                    raise SystemExit(f"rank(s) {dead} exited ({[procs[i].exitcode for i in dead]}) without a result") from None
                continue
            rank, result, error = item
            if error is not None:
                raise SystemExit(f"rank {rank} failed:\n{error}")
            got[rank] = result
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    return got


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _goal(goal: str, paired_: float, of_medians: float, detail: str) -> dict:
    return {"goal": goal, "met": paired_ <= 1.0, "estimates_agree": (paired_ <= 1.0) == (of_medians <= 1.0),
            "detail": detail}


def report_saves(got: dict[int, dict[str, Any]], kinds: list[str], size: int, repeats: int) -> list[dict]:
    goals: list[dict] = []
    r0 = got[0]
    width, layers = plan_layers(size, 512 if size < (256 << 20) else None)
    print(f"\nSaves: 2 ranks, gloo on 127.0.0.1, {layers} x Linear({width},{width}) + Adam + StepLR, "
          f"{repeats} repeats; ms")
    for kind in kinds:
        name = KIND_LABEL[kind]
        for rank in sorted(got):
            x = got[rank][kind]
            rows = {"memcpy of its bytes": x["memcpy"], "spotsafe save() stall": x["stall"],
                    "dcp.async_save return": x["dcp_async"], "dcp.async_save (warm stager) return": x["dcp_warm"],
                    "dcp.save (blocking)": x["dcp_save"], "dcp's planning (state dicts + local plan)":
                    x["planning"], "one all_gather_object (DCP makes several a save)": x["all_gather"]}
            print_table(f"{name} rank {rank}: save stall, stages {_mib(x['bytes'])} ({_mib(x['planned_bytes'])} "
                        f"through DCP's plan; first, cold save {x['first_stall'] * 1e3:.1f} ms)", rows,
                        peers=["memcpy of its bytes", "spotsafe save() stall"], unit=("ms", 1e3, 1))
            limit = [STALL_FACTOR * m + STALL_SLACK for m in x["memcpy"]]
            pair = med([s / lim for s, lim in zip(x["stall"], limit)])
            of_medians = med(x["stall"]) / (STALL_FACTOR * med(x["memcpy"]) + STALL_SLACK)
            goals.append(_goal(f"{name} rank {rank}: stall <= {STALL_FACTOR}x memcpy + {STALL_SLACK * 1e3:.0f} ms",
                               pair, of_medians,
                               f"{med(x['stall']) * 1e3:.1f} ms vs limit {med(limit) * 1e3:.1f} ms "
                               f"(memcpy {med(x['memcpy']) * 1e3:.1f} ms); stall / limit {pair:.2f} paired, "
                               f"{of_medians:.2f} of medians"))
        slowest = [max(got[r][kind]["persist"][i] for r in got) for i in range(repeats)]
        # each rank's files are written stall + persist after its save() began (the ranks start together:
        # save() opens with an all-gather); the slowest of those is the earliest a commit could follow
        written = [max(got[r][kind]["stall"][i] + got[r][kind]["persist"][i] for r in got) for i in range(repeats)]
        x = r0[kind]
        rows = {"slowest rank's persist": slowest}
        rows.update({f"rank {r} persist": got[r][kind]["persist"] for r in sorted(got)})
        rows["slowest rank's stall + persist"] = written
        rows.update({"rank 0 stall (inside save->commit)": x["stall"],
                     "spotsafe save() -> global commit": x["total"],
                     "dcp.save (rank 0, to return)": x["dcp_save"],
                     "dcp.async_save to completion": x["dcp_async_done"],
                     "dcp.async_save (warm stager) to completion": x["dcp_warm_done"]})
        print_table(f"{name}: from save() until the whole job's checkpoint is committed (rank 0's clock)", rows,
                    peers=["slowest rank's persist", "spotsafe save() -> global commit"], unit=("ms", 1e3, 1))
        # judged against the earliest a commit can follow (a rank's persist starts when its stall ends);
        # the ratio to the persist alone is in the detail
        pair, of_medians = paired(x["total"], written), med(x["total"]) / med(written)
        extra = med([t - w for t, w in zip(x["total"], written)])
        goals.append(_goal(f"{name}: save() to global commit <= {COMMIT_GOAL}x the slowest rank's stall + persist",
                           pair / COMMIT_GOAL, of_medians / COMMIT_GOAL,
                           f"{pair:.2f}x paired, {of_medians:.2f}x of medians ({extra * 1e3:.1f} ms more; "
                           f"{paired(x['total'], slowest):.2f}x the slowest rank's persist alone); "
                           f"vs dcp.save {paired(x['total'], x['dcp_save']):.2f}x, vs dcp.async_save "
                           f"{paired(x['total'], x['dcp_async_done']):.2f}x"))
    return goals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="watch,save",
                    help="which parts to run: watch (stop-watch cost and agreement), save (default both)")
    ap.add_argument("--steps", type=int, default=2000, help="steps per timed loop of the watch part (default 2000)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of every loop and every save (default 5)")
    ap.add_argument("--size", type=parse_size, default=parse_size("32M"),
                    help="parameters + Adam state of the saved model, in total (default 32M)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds of every save method first (default 1)")
    ap.add_argument("--kinds", default="ddp,fsdp2", help="the jobs of the save part: ddp, fsdp2 (default both)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="scratch directory of the save part (default a new /tmp/spotsafe-bench-dist-*; "
                         "must be new or empty; removed at the end)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not parts or set(parts) - {"watch", "save"}:
        ap.error(f"--parts {args.parts!r}: use watch, save or watch,save")
    if not kinds or set(kinds) - set(KINDS):
        ap.error(f"--kinds {args.kinds!r}: use ddp, fsdp2 or ddp,fsdp2")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    goals: list[dict] = []
    if "watch" in parts:
        goals += run_watch(args)
    if "save" in parts:
        where = args.dir or Path(tempfile.mkdtemp(prefix="spotsafe-bench-dist-"))
        with scratch_dir("dist", where) as base:
            got = _spawn(_save_worker, (args.size, args.repeats, args.warmup, kinds, str(base)), 2, timeout=900)
        goals += report_saves(got, kinds, args.size, args.repeats)
    print_goals(goals)
    return 0


def run_watch(args: argparse.Namespace) -> list[dict]:
    got = _spawn(_worker, (args.steps, args.repeats), 2, timeout=600)
    results, agree = got[0]
    base = results["no watch"]
    added = {m: [max(0.0, (t - b)) / args.steps for t, b in zip(results[m], base)] for m in METHODS[1:]}
    print(f"2 ranks, gloo on 127.0.0.1, {args.steps} steps of a 64x64 matmul, {args.repeats} repeats (rank 0's clock)")
    print(f"baseline step: {statistics.median(base) / args.steps * 1e6:.1f} µs")
    print_table("Added cost per step over no watch (µs)", added, peers=["all-reduce every step"],
                unit=("µs", 1e6, 2))
    print_table("Agreement: from rank 1's request until every rank stopped (ms)", {"spotsafe stop agreement":
                [a for a, _ in agree]}, unit=("ms", 1e3, 1))
    spread = max(s for _, s in agree)
    print(f"stop-step spread between ranks: {spread} (every repeat)")
    watch = statistics.median(added["spotsafe stop watch"]) * 1e6
    return [{"goal": "stop watch <= 10 µs per step", "detail": f"{watch:.2f} µs", "met": watch <= 10},
            {"goal": "every rank stops after the same step", "detail": f"spread {spread}", "met": spread == 0}]


if __name__ == "__main__":
    sys.exit(main())
