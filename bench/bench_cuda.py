"""Benchmark (GPU machines only): the CUDA path of a save, and notice-to-durable for a GPU state.

The state is a stack of ``nn.Linear`` float32 layers on ``cuda:0`` plus its Adam state (about
3x the parameter bytes), sized to each of ``--sizes``. Measured in the same process, medians
of ``--repeats`` warm rounds (one untimed warm-up round first):

* ``.cpu() (pageable)`` - ``t.cpu()`` of every tensor: what a plain ``torch.save`` of a CUDA
  state pays before it writes anything.
* ``pinned copy (floor)`` - ``dst.copy_(t, non_blocking=True)`` into preallocated pinned
  buffers, one synchronize: the fastest a GPU->host snapshot can be.
* ``spotsafe save() stall`` - ``CheckpointManager.save`` (async, RNG capture on): the time
  the training loop is blocked. The write runs in the background and is waited for untimed.
* ``dcp.async_save`` - ``torch.distributed.checkpoint.async_save(..., no_dist=True)`` stall.
* ``torch.save`` - to a file, until it returns (no fsync).

Then notice-to-durable: ``spotsafe.Run`` gets SIGUSR1 after a step and the emergency
checkpoint's ``notice_to_durable_s`` (from the stop event) is compared with a raw
write+fsync of the same bytes.

Files go under ``--dir`` (default ``bench/results/tmp-cuda-<pid>``), removed at the end.

    .venv/bin/python bench/bench_cuda.py --sizes 1G,4G --repeats 3
    .venv/bin/python bench/bench_cuda.py --sizes 256M --repeats 2      # quick
"""


from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from _common import Model, build_model, dir_arg, med, parse_sizes, print_goals, print_table, scratch_dir, write_fsync

import spotsafe
from spotsafe._telemetry import read_events
from spotsafe.notices import Signals

LABELS = {"cpu": ".cpu() (pageable)", "pinned": "pinned copy (floor)", "spotsafe": "spotsafe save() stall",
          "dcp": "dcp.async_save stall", "torch.save": "torch.save (no fsync)"}


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stalls(m: Model, work: Path, repeats: int) -> dict[str, list[float]]:
    import torch.distributed.checkpoint as dcp

    ts = m.tensors()
    pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in ts]
    res: dict[str, list[float]] = {k: [] for k in LABELS}

    def pinned_copy():
        for d, t in zip(pinned, ts):
            d.copy_(t, non_blocking=True)
        torch.cuda.synchronize()

    with spotsafe.CheckpointManager(work / "spotsafe", keep=1) as mgr:
        for r in range(repeats + 1):
            cpu = timed(lambda: [t.cpu() for t in ts])
            pin = timed(pinned_copy)
            stats = mgr.save(r + 1, m.state)
            mgr.wait()
            t0 = time.perf_counter()
            fut = dcp.async_save(m.state_dicts(), checkpoint_id=str(work / f"dcp{r}"), no_dist=True)
            dcp_s = time.perf_counter() - t0
            fut.result()
            shutil.rmtree(work / f"dcp{r}", ignore_errors=True)
            ts_s = timed(lambda: torch.save(m.state_dicts(), work / "t.pt"))
            os.unlink(work / "t.pt")
            if r:  # the first round warms every path up
                for k, v in zip(res, (cpu, pin, stats.stall_s, dcp_s, ts_s)):
                    res[k].append(v)
    return res


def notice_to_durable(m: Model, work: Path, repeats: int) -> tuple[list[float], list[float], int]:
    n2d, raw, nbytes = [], [], 0
    step_fn = m.step_fn(8)
    for r in range(repeats):
        root = work / f"run{r}"
        try:
            with spotsafe.Run(root, m.state, notices=[Signals(["SIGUSR1"])]) as run:
                for step in run.steps(10**6):
                    step_fn()
                    if step == 2:
                        os.kill(os.getpid(), signal.SIGUSR1)
        except spotsafe.Preempted:
            pass
        ev = read_events(root / "events")
        n2d.append(ev[-1]["notice_to_durable_s"])
        nbytes = [e for e in ev if e["event"] == "checkpoint"][-1]["bytes"]
        shutil.rmtree(root)
        buf = torch.empty(nbytes, dtype=torch.uint8)
        buf.fill_(1)
        raw.append(write_fsync(work / "raw.bin", [memoryview(buf.numpy())]))
        os.unlink(work / "raw.bin")
    return n2d, raw, nbytes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default="1G,4G", help="CUDA state sizes (default 1G,4G)")
    p.add_argument("--repeats", type=int, default=3)
    dir_arg(p, "cuda")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device: nothing to measure.")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs")
    goals = []
    with scratch_dir("cuda", args.dir) as scratch:
        for label, size in args.sizes:
            work = scratch / label
            work.mkdir()
            m = build_model(size, width=4096, bias=False, device="cuda", lr=1e-4)
            total = m.nbytes
            res = stalls(m, work, args.repeats)
            print_table(f"== {label}: {total / 2**30:.2f} GiB of CUDA state ({m.describe()}), GPU -> host, median of "
                        f"{args.repeats} ==", {LABELS[k]: xs for k, xs in res.items()}, peers=[LABELS["pinned"]],
                        nbytes=total)
            n2d, raw, nbytes = notice_to_durable(m, work, args.repeats)
            print_table(f"Notice to durable ({nbytes / 2**30:.2f} GiB checkpoint; SIGUSR1 to the Run)",
                        {"raw write+fsync": raw, "spotsafe notice->durable": n2d}, peers=["raw write+fsync"],
                        nbytes=nbytes)
            limit = 1.2 * med(raw) + 0.1
            goals.append({"goal": f"{label}: notice-to-durable <= 1.2 x raw + 100 ms", "met": med(n2d) <= limit,
                          "detail": f"{med(n2d):.3f} s vs {limit:.3f} s"})
            del m
            torch.cuda.empty_cache()
            shutil.rmtree(work, ignore_errors=True)
    print_goals(goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
