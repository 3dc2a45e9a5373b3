"""Benchmark: spotsafe's asynchronous save - how long it stalls training, how soon it is durable,
and how much it slows the training steps that run while it persists in the background.

The state is a model plus its Adam state (params + exp_avg + exp_avg_sq, about 3x the parameter
bytes), a stack of ``nn.Linear`` float32 layers sized to ``--size`` (default 1G; one optimizer
step is run so the Adam state exists). Everything runs on CPU with ``torch.set_num_threads(2)``
(``--threads``), in one process, in three parts:

1. Stall: the time the caller is blocked, median of ``--repeats`` warm measurements after
   ``--warmup`` untimed rounds (so every method's buffers are allocated and touched). Within a
   repeat the methods run one after the other, in an order rotated every repeat, except that
   spotsafe always runs right after the per-tensor memcpy, so that every spotsafe stall has a
   memcpy of the same moment to be paired with (memory bandwidth on a shared VM drifts a lot):

   * ``memcpy`` - the floor: ``dst.copy_(src)`` for every model and Adam tensor into
     preallocated destination tensors touched beforehand; ``memcpy flat`` - one ``copy_`` of a
     flat buffer of the same size (reference only).
   * ``spotsafe`` - ``mgr.save(step, {"model": model, "optimizer": opt})`` of an
     ``async_save=True`` manager (RNG capture on, the default): the wall-clock around ``save()``
     and its own ``stats.stall_s``; then ``mgr.wait()``, untimed.
   * ``dcp.async_save`` - ``torch.distributed.checkpoint.async_save({"model": model.state_dict(),
     "optimizer": opt.state_dict()}, checkpoint_id=dir, no_dist=True)`` (no process group is
     needed in this torch), timed until it returns its Future; the Future is waited on untimed.
     As called plainly, DCP stages into fresh memory at every call; ``dcp.async_save (warm
     stager)`` passes one ``DefaultStager`` kept across calls, which reuses its staging storages.
   * ``torch.save`` - ``torch.save`` of the same state dict into a new file, timed until the
     file is closed (no fsync: only the blocking part; ``os.sync`` runs untimed afterwards).

2. Time to durable: ``mgr.save()`` + ``mgr.wait()`` (``stats.total_s``: from the save() call until
   the checkpoint is committed and fsynced) against a raw write+fsync of the same bytes (every
   tensor's bytes written with ``os.write`` from a memoryview of the tensor, in 64 MiB chunks,
   into one new file in the same directory, then fsync of the file and of the directory),
   alternating raw, spotsafe, spotsafe, raw, ... Before each: ``sync``, a page cache drop when
   ``/proc/sys/vm/drop_caches`` is writable, ``--settle`` seconds of sleep (a virtual disk with a
   write-back cache on the host needs time to drain the previous write) and the pre-fault below.

3. Training-step slowdown: forward + backward + Adam step on a batch of 64 (``--batch``) of the
   same model (``--train-model auto`` switches to a separate 4 x Linear(2048, 2048) MLP when a step
   of the big model takes over 1 s; the big model's state is what is saved either way). The
   median step time with no save running (half of ``--steps`` before the saves, half after, and
   3 steps right before each save) against the median time of the steps that *started* while a
   save persisted in the background (``save()`` is called between steps; the stall itself is in
   no step), over ``--saves`` saves; also paired per save against the 3 steps just before it.

Goals are judged on the paired estimate (the median over repeats of per-repeat ratios, which
cancels drifts that move whole repeats); where the ratio of medians disagrees, the verdict is
marked with ``?``: too noisy to call, rerun with more ``--repeats``.

Checkpoints go under ``--dir`` (default ``bench/results/tmp-async-<pid>``, on the repository's file
system, removed at the end). The manager is built with a large ``keep`` and the benchmark
deletes every checkpoint itself, untimed, so no pruning or background deletion overlaps a
measurement.

Pre-faulting (default on, ``--no-prefault`` to skip), as in ``bench_save_restore.py``: on this kind
of VM (free page reporting) the first touch of memory the host took back costs a host page fault,
which makes fresh allocations and page-cache writes randomly several times slower. Before every
measurement that allocates or writes through the page cache (dcp.async_save with its fresh
staging memory and torch.save in part 1, everything in parts 2 and 3) the benchmark touches and
frees about 2.5x the state size (untimed) so those land on host-backed pages, as on an ordinary
machine. The warm buffers of memcpy, spotsafe and the warm DCP stager need none.

Run it from the repository root::

    .venv/bin/python bench/bench_async.py
    .venv/bin/python bench/bench_async.py --size 128M --repeats 2
    .venv/bin/python bench/bench_async.py --json bench/results/async.json

This is a benchmark, not a test. It needs about 8x ``--size`` of free memory and 3x on disk; the
default (1 GiB) run takes about 5 minutes on a 2-core VM.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from _common import (
    Model,
    build_model,
    byte_view,
    dir_arg,
    med,
    paired,
    parse_size,
    peak_rss,
    prefault,
    prefault_budget,
    print_goals,
    print_table,
    remove,
    scratch_dir,
    settle_s,
    setup_torch,
    try_drop_caches,
    write_fsync,
    write_json,
)
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

import spotsafe

STALL_METHODS = ["memcpy", "memcpy_flat", "spotsafe", "dcp", "dcp_warm", "torch"]
LABELS = {
    "memcpy": "memcpy (per tensor, warm dst)",
    "memcpy_flat": "memcpy flat (one copy_)",
    "spotsafe": "spotsafe save() (async)",
    "dcp": "dcp.async_save",
    "dcp_warm": "dcp.async_save (warm stager)",
    "torch": "torch.save (to close, no fsync)",
}
STALL_FACTOR, STALL_SLACK = 1.2, 0.005
TORCH_FACTOR = 5.0
DURABLE_GOAL = 1.10
SLOWDOWN_GOAL = 0.10
STEP_LIMIT_S = 1.0


class Bench:
    """State shared by the three parts: the model, its tensors, the manager and the scratch dir."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.dir = workdir
        t0 = time.perf_counter()
        self.m: Model = build_model(args.size, lr=1e-4)
        self.width, self.layers, self.state = self.m.width, self.m.layers, self.m.state
        self.bytes, self.n_tensors = self.m.nbytes, len(self.m.tensors())
        self.build_s = time.perf_counter() - t0
        self.pf_bytes = prefault_budget(self.bytes) if args.prefault else 0
        self.settle = args.settle if args.settle is not None else settle_s(self.bytes)
        self.root = workdir / "spotsafe"
        # keep large: the benchmark deletes checkpoints itself, outside every timing
        self.mgr = spotsafe.CheckpointManager(self.root, keep=1_000_000, async_save=True)
        self.step = 0
        self.prefault_s: list[float] = []

    def prepare(self, settle: float, fresh_memory: bool = True) -> None:
        """Untimed: flush, let the disk drain, pre-fault (for methods that need fresh memory)."""
        gc.collect()
        os.sync()
        if settle > 0:
            time.sleep(settle)
        if fresh_memory:
            self.prefault_s.append(prefault(self.pf_bytes))

    def next_step(self) -> int:
        self.step += 1
        return self.step

    def drop_checkpoints(self) -> None:
        for p in self.root.iterdir():
            if p.name.startswith("step-"):
                remove(p)

    def close(self) -> None:
        self.mgr.close()


# -- part 1: stall ------------------------------------------------------------------------
def part_stall(b: Bench) -> dict:
    args = b.args
    src = b.m.tensors()
    dst = [torch.empty_like(t) for t in src]
    for d in dst:
        d.fill_(0)  # warm: touched before
    flat_src = torch.empty(b.bytes, dtype=torch.uint8)
    flat_dst = torch.empty(b.bytes, dtype=torch.uint8)
    flat_src.fill_(1)
    flat_dst.fill_(0)
    stager = DefaultStager(StagingOptions(False, False, False, False))  # kept across calls: warm
    settle = min(1.0, b.settle)
    res: dict = {m: [] for m in STALL_METHODS}
    res.update({"spotsafe_stall_s": [], "spotsafe_stage_s": [], "spotsafe_total_s": [], "dcp_done_s": [],
                "dcp_warm_done_s": [], "spotsafe_first_stall_s": None, "spotsafe_staging_allocations": 0})

    def run(m: str, record: bool) -> None:
        if m != "spotsafe":  # spotsafe runs right after memcpy, in the same conditions
            b.prepare(settle, fresh_memory=m in ("dcp", "torch"))
        if m == "memcpy":
            t0 = time.perf_counter()
            for d, s in zip(dst, src):
                d.copy_(s)
            dt = time.perf_counter() - t0
        elif m == "memcpy_flat":
            t0 = time.perf_counter()
            flat_dst.copy_(flat_src)
            dt = time.perf_counter() - t0
        elif m == "spotsafe":
            t0 = time.perf_counter()
            stats = b.mgr.save(b.next_step(), b.state)
            dt = time.perf_counter() - t0
            final = b.mgr.wait()
            if res["spotsafe_first_stall_s"] is None:
                res["spotsafe_first_stall_s"] = dt  # the first (cold) save: buffers allocated and faulted in
            if record:
                res["spotsafe_stall_s"].append(stats.stall_s)
                res["spotsafe_stage_s"].append(stats.stage_s)
                res["spotsafe_total_s"].append(final.total_s)
            b.drop_checkpoints()
        elif m in ("dcp", "dcp_warm"):
            path = b.dir / "dcp"
            t0 = time.perf_counter()
            fut = dcp.async_save(b.m.state_dicts(), checkpoint_id=str(path), no_dist=True,
                                 **({"async_stager": stager} if m == "dcp_warm" else {}))
            dt = time.perf_counter() - t0
            fut.result()
            if record:
                res[f"{m}_done_s"].append(time.perf_counter() - t0)
            remove(path)
        else:
            path = b.dir / "torch.pt"
            t0 = time.perf_counter()
            with open(path, "wb") as f:
                torch.save(b.m.state_dicts(), f)
            dt = time.perf_counter() - t0
            os.sync()
            remove(path)
        if record:
            res[m].append(dt)

    # memcpy and spotsafe run back to back as one unit, so each spotsafe stall has a memcpy
    # measured a moment before it to be paired with (this VM's memory bandwidth drifts a lot)
    units = [["memcpy", "spotsafe"], ["memcpy_flat"], ["dcp"], ["dcp_warm"], ["torch"]]
    for _ in range(args.warmup):
        for unit in units:
            for m in unit:
                run(m, record=False)
    for r in range(args.repeats):
        rot = r % len(units)
        for unit in units[rot:] + units[:rot]:
            for m in unit:
                run(m, record=True)
        print(f"  stall repeat {r + 1}/{args.repeats}: " + ", ".join(f"{m} {res[m][-1]:.3f}" for m in STALL_METHODS),
              flush=True)
    res["spotsafe_staging_allocations"] = b.mgr._buffers.allocations
    res["spotsafe_staging_bytes"] = b.mgr.staging_bytes
    stager.close()
    return res  # the buffers above are freed here; Bench.prepare collects before the next measurement


# -- part 2: time to durable ----------------------------------------------------------------
def save_raw(b: Bench) -> float:
    path = b.dir / "raw.bin"
    dt = write_fsync(path, (byte_view(t) for t in b.m.tensors()))
    remove(path)
    return dt


def part_durable(b: Bench, can_drop: bool) -> dict:
    res: dict = {"raw": [], "spotsafe": [], "spotsafe_wall_s": [], "spotsafe_stall_s": [], "spotsafe_persist_s": []}
    for r in range(b.args.repeats):
        order = ["raw", "spotsafe"] if r % 2 == 0 else ["spotsafe", "raw"]
        for m in order:
            if can_drop:
                try_drop_caches()
            b.prepare(b.settle)
            if m == "raw":
                res["raw"].append(save_raw(b))
            else:
                t0 = time.perf_counter()
                stats = b.mgr.save(b.next_step(), b.state)
                final = b.mgr.wait()
                res["spotsafe_wall_s"].append(time.perf_counter() - t0)
                res["spotsafe"].append(final.total_s)
                res["spotsafe_stall_s"].append(stats.stall_s)
                res["spotsafe_persist_s"].append(final.persist_s)
                b.drop_checkpoints()
        print(f"  durable repeat {r + 1}/{b.args.repeats}: raw {res['raw'][-1]:.3f}, "
              f"spotsafe {res['spotsafe'][-1]:.3f}", flush=True)
    return res


# -- part 3: training-step slowdown ------------------------------------------------------------
def part_steps(b: Bench) -> dict:
    args = b.args
    big_step = b.m.step_fn(args.batch)
    probe = []
    if args.train_model in ("auto", "big"):
        big_step()  # warm-up
        for _ in range(3):
            t0 = time.perf_counter()
            big_step()
            probe.append(time.perf_counter() - t0)
    use_big = args.train_model == "big" or (args.train_model == "auto" and med(probe) <= STEP_LIMIT_S)
    if use_big:
        step, train_desc = big_step, (f"the saved model itself ({b.layers} x Linear({b.width},{b.width}), "
                                      f"batch {args.batch})")
    else:
        step = build_model(dims=[2048] * 5, relu=True, seed=1, lr=1e-4).step_fn(args.batch)
        train_desc = (f"a separate 4 x Linear(2048,2048)+ReLU MLP, batch {args.batch} (a step of the saved model "
                      f"took {med(probe):.2f}s > {STEP_LIMIT_S:.0f}s)")
    for _ in range(3):
        step()

    def timed_steps(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            out.append(time.perf_counter() - t0)
        return out

    half = max(1, args.steps // 2)
    base = timed_steps(half)
    during: list[float] = []
    per_save = []
    for i in range(args.saves):
        b.prepare(b.settle)
        step()  # untimed: the first step after the pre-fault
        pre = timed_steps(3)  # a baseline right before this save, to pair with (the VM drifts)
        base += pre
        step_no = b.next_step()
        stats = b.mgr.save(step_no, b.state)
        t_start = time.perf_counter()
        mine = []
        while b.mgr.last_save is None or b.mgr.last_save.step < step_no:  # set once the save is durable
            t0 = time.perf_counter()
            step()
            mine.append(time.perf_counter() - t0)
        persist_wall = time.perf_counter() - t_start
        final = b.mgr.wait()
        during += mine
        per_save.append({"steps": len(mine), "median_step_s": med(mine), "pre_median_step_s": med(pre),
                         "stall_s": stats.stall_s,
                         "total_s": final.total_s, "persist_wall_s": persist_wall})
        b.drop_checkpoints()
        print(f"  save {i + 1}/{args.saves}: {len(mine)} steps while persisting, median {med(mine):.3f}s, "
              f"just before {med(pre):.3f}s "
              f"(durable after {final.total_s:.2f}s)", flush=True)
    os.sync()
    time.sleep(min(1.0, b.settle))
    base += timed_steps(args.steps - half)
    return {"train_model": "big" if use_big else "small", "train_desc": train_desc, "probe_big_step_s": probe,
            "baseline_s": base, "during_s": during, "per_save": per_save}


# -- report ---------------------------------------------------------------------------------------
def goal(name: str, of_medians: float, paired_: float, limit: float, detail: str) -> dict:
    """A goal as 'x <= limit', judged on the paired estimate; both estimates are kept."""
    return {"goal": name, "of_medians": of_medians, "paired": paired_, "limit": limit, "met": paired_ <= limit,
            "estimates_agree": (paired_ <= limit) == (of_medians <= limit), "detail": detail}


def report(b: Bench, st: dict, du: dict | None, sp: dict | None, threads: int) -> list[dict]:
    gib = b.bytes / 2**30
    print(f"\n== Async save, {gib:.2f} GiB state ({b.layers} x Linear({b.width},{b.width}) + Adam, {b.n_tensors} "
          f"tensors; CPU, {threads} threads), median of {b.args.repeats} ==")
    print_table(f"Stall: time the caller is blocked (warm, after {b.args.warmup} warm-up rounds)",
                {LABELS[k]: st[k] for k in STALL_METHODS}, peers=[LABELS["memcpy"], LABELS["spotsafe"]],
                nbytes=b.bytes, unit=("s", 1.0, 4))
    print(f"  spotsafe: stats.stall_s median {med(st['spotsafe_stall_s']):.4f}s (stage_s {med(st['spotsafe_stage_s']):.4f}); "
          f"first (cold) save stalled {st['spotsafe_first_stall_s']:.3f}s; staging buffers allocated "
          f"{st['spotsafe_staging_allocations']} times, {st['spotsafe_staging_bytes'] / 2**30:.2f} GiB held")
    print(f"  until durable/done (untimed above, median s): spotsafe {med(st['spotsafe_total_s']):.3f}, "
          f"dcp.async_save {med(st['dcp_done_s']):.3f}, dcp warm stager {med(st['dcp_warm_done_s']):.3f}")

    sstall, mc = med(st["spotsafe"]), med(st["memcpy"])
    lines = [f"stall (median s): memcpy {mc:.3f} (flat {med(st['memcpy_flat']):.3f}), spotsafe {sstall:.3f} "
             f"({sstall / mc:.2f}x memcpy, paired {paired(st['spotsafe'], st['memcpy']):.2f}x), dcp.async_save "
             f"{med(st['dcp']):.3f} (warm stager {med(st['dcp_warm']):.3f}), torch.save {med(st['torch']):.3f} "
             f"({med(st['torch']) / sstall:.1f}x spotsafe)"]
    limit = STALL_FACTOR * mc + STALL_SLACK
    pair_mc = med([x / (STALL_FACTOR * y + STALL_SLACK) for x, y in zip(st["spotsafe"], st["memcpy"])])
    dc, pair_dc = med(st["dcp"]), paired(st["spotsafe"], st["dcp"])
    tr, pair_tr = med(st["torch"]) / sstall, med([y / x for x, y in zip(st["spotsafe"], st["torch"])])
    goals = [
        goal(f"stall <= {STALL_FACTOR}x memcpy + {STALL_SLACK * 1e3:.0f} ms", sstall / limit, pair_mc, 1.0,
             f"{sstall * 1e3:.1f} ms vs limit {limit * 1e3:.1f} ms; spotsafe / limit {sstall / limit:.2f} of medians, "
             f"{pair_mc:.2f} paired with the memcpy run just before"),
        goal("stall <= dcp.async_save blocking", sstall / dc, pair_dc, 1.0,
             f"{sstall * 1e3:.1f} ms vs {dc * 1e3:.1f} ms, {pair_dc:.2f}x paired; vs the warm stager "
             f"{med(st['dcp_warm']) * 1e3:.1f} ms: {paired(st['spotsafe'], st['dcp_warm']):.2f}x paired"),
        goal(f"stall >= {TORCH_FACTOR:.0f}x lower than torch.save", TORCH_FACTOR / tr, TORCH_FACTOR / pair_tr, 1.0,
             f"{tr:.1f}x of medians, {pair_tr:.1f}x paired"),
    ]
    if du:
        print_table("Time to durable (save() to committed and fsynced; raw: write+fsync of file and dir)",
                    {"raw write+fsync": du["raw"], "spotsafe save()+wait() total_s": du["spotsafe"]},
                    peers=["raw write+fsync"], nbytes=b.bytes)
        print(f"  spotsafe: stall {med(du['spotsafe_stall_s']):.3f}, persist {med(du['spotsafe_persist_s']):.3f}, "
              f"wall until wait() returned {med(du['spotsafe_wall_s']):.3f}")
        r_med, r_pair = med(du["spotsafe"]) / med(du["raw"]), paired(du["spotsafe"], du["raw"])
        lines.append(f"durable (median s): raw write+fsync {med(du['raw']):.2f}, spotsafe {med(du['spotsafe']):.2f} "
                     f"({r_med:.2f}x, paired {r_pair:.2f}x)")
        goals.append(goal(f"durable <= {DURABLE_GOAL}x raw write+fsync", r_med / DURABLE_GOAL, r_pair / DURABLE_GOAL,
                          1.0, f"{r_pair:.2f}x paired, {r_med:.2f}x of medians"))
    if sp:
        bs, ds = med(sp["baseline_s"]), med(sp["during_s"])
        slow = ds / bs - 1 if sp["during_s"] else float("nan")
        pairs = [p["median_step_s"] / p["pre_median_step_s"] - 1 for p in sp["per_save"] if p["steps"]]
        slow_pair = med(pairs)
        print(f"\nTraining steps ({sp['train_desc']})")
        print(f"  no save running: {len(sp['baseline_s'])} steps (before, between and after the saves), "
              f"median {bs:.4f}s, min..max {min(sp['baseline_s']):.4f}..{max(sp['baseline_s']):.4f}")
        print(f"  while persisting: {len(sp['during_s'])} steps over {len(sp['per_save'])} saves, median {ds:.4f}s, "
              f"max {max(sp['during_s'], default=float('nan')):.4f}s; per save, against the 3 steps just before "
              f"it: {', '.join(f'{x * 100:+.0f}%' for x in pairs)} (median {slow_pair * 100:+.1f}%)")
        print(f"  persisting under training took (median) {med([p['total_s'] for p in sp['per_save']]):.2f}s to "
              f"durable, against {med(du['spotsafe']) if du else float('nan'):.2f}s with no training (part 2)")
        lines.append(f"step slowdown while persisting: baseline {bs:.3f} s/step, during {ds:.3f} ({slow * 100:+.1f}%, "
                     f"paired per save {slow_pair * 100:+.1f}%)")
        goals.append(goal(f"step slowdown while persisting <= {SLOWDOWN_GOAL * 100:.0f}%", slow / SLOWDOWN_GOAL,
                          slow_pair / SLOWDOWN_GOAL, 1.0, f"{slow * 100:+.1f}% of medians, {slow_pair * 100:+.1f}% paired"))
    print(f"\n== Async save, {gib:.2f} GiB state (CPU, {threads} threads) ==")
    for line in lines:
        print(line)
    print_goals(goals)
    return goals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default="1G", help="state size (default 1G)")
    ap.add_argument("--repeats", type=int, default=5, help="measured repeats of parts 1 and 2 (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up rounds of part 1 (default 2)")
    ap.add_argument("--steps", type=int, default=30, help="baseline training steps of part 3 (default 30)")
    ap.add_argument("--saves", type=int, default=4, help="saves persisting under training in part 3 (default 4)")
    ap.add_argument("--batch", type=int, default=64, help="training batch size (default 64)")
    ap.add_argument("--train-model", choices=["auto", "big", "small"], default="auto",
                    help="train the saved model (big), a 4-layer MLP (small), or big unless a step takes > 1 s")
    ap.add_argument("--parts", default="stall,durable,steps", help="which parts to run (default all three)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    dir_arg(ap, "async")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds to sleep before each durable save (default: size / 0.4 GB/s, at most 5; "
                         "part 1 sleeps at most 1)")
    ap.add_argument("--no-prefault", dest="prefault", action="store_false",
                    help="do not touch fresh memory before each measurement (see the module docstring)")
    ap.add_argument("--json", type=Path, default=None, help="also write all raw numbers to this JSON file")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= {"stall", "durable", "steps"} or "stall" not in parts:
        ap.error("--parts: a subset of stall,durable,steps that includes stall")

    print(setup_torch(args.threads))
    can_drop = try_drop_caches()
    t_start = time.perf_counter()
    threads_before = set(threading.enumerate())
    b = None
    st = du = sp = None
    with scratch_dir("async", args.dir) as workdir:
        print(f"scratch dir {workdir} ({shutil.disk_usage(workdir).free / 1e9:.1f} GB free); "
              f"drop_caches permitted: {can_drop}")
        try:
            b = Bench(args, workdir)
            print(f"state: {b.m.describe()} = {b.bytes / 2**30:.3f} GiB in {b.n_tensors} tensors, built in "
                  f"{b.build_s:.1f}s; prefault {b.pf_bytes / 2**30:.2f} GiB; settle {b.settle:.1f}s", flush=True)
            print("part 1: stall", flush=True)
            st = part_stall(b)
            if "durable" in parts:
                print("part 2: time to durable", flush=True)
                du = part_durable(b, can_drop)
            if "steps" in parts:
                print("part 3: training steps while persisting", flush=True)
                sp = part_steps(b)
        finally:
            if b is not None:
                b.close()
    goals = report(b, st, du, sp, args.threads)
    left = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    elapsed = time.perf_counter() - t_start
    print(f"\npeak RSS {peak_rss() / 2**30:.2f} GiB; prefault median {med(b.prefault_s):.2f}s (untimed); "
          f"threads left running: {left or 'none'}; total benchmark time {elapsed:.0f}s")
    write_json(args.json, {"env": {"threads": args.threads, "drop_caches": can_drop, "prefault_bytes": b.pf_bytes,
                                   "settle_s": b.settle},
                           "state": {"bytes": b.bytes, "width": b.width, "layers": b.layers, "tensors": b.n_tensors},
                           "args": vars(args), "stall": st, "durable": du, "steps": sp, "goals": goals,
                           "prefault_s": b.prefault_s, "peak_rss_bytes": peak_rss(), "elapsed_s": elapsed,
                           "threads_left": left})
    return 0


if __name__ == "__main__":
    sys.exit(main())
