"""Benchmark: what watching for a stop costs each training step of a 2-rank job, and how long
the ranks take to agree on the stop step (gloo on CPU, 127.0.0.1).

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

    .venv/bin/python bench/bench_dist.py [--steps 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import sys
import time
from datetime import timedelta

import _common  # noqa: F401  (the harness's set-up: spotsafe importable, endpoints off)
from _common import print_goals, print_table

METHODS = ("no watch", "spotsafe stop watch", "all-reduce every step", "all-reduce every 16th step")


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
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
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
    q.put((rank, results, agree))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000, help="steps per timed loop (default 2000)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of every loop (default 5)")
    args = ap.parse_args(argv)
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, args.steps, args.repeats, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = {}
    deadline = time.monotonic() + 600
    while len(got) < 2 and time.monotonic() < deadline:
        rank, results, agree = q.get(timeout=max(1.0, deadline - time.monotonic()))
        got[rank] = (results, agree)
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
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
    print_goals([{"goal": "stop watch <= 10 µs per step", "detail": f"{watch:.2f} µs", "met": watch <= 10},
                 {"goal": "every rank stops after the same step", "detail": f"spread {spread}", "met": spread == 0}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
