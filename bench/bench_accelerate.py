"""Benchmark: spotsafe.accelerate against Accelerate's own checkpointing, and what stock Accelerate does.

1. ``overhead``: one training loop (an MLP of ``--size`` parameters + AdamW state, CPU,
   Accelerate-prepared) of ``--steps`` steps with a checkpoint every ``--every`` steps, in a fresh
   process per run, the methods in rotating order, ``--repeats`` times:
   - ``accelerate``: ``accelerator.save_state(f"ckpt/checkpoint-{step}")`` in the loop (its own
     checkpointing: synchronous, no checksums, nothing committed);
   - ``spotsafe``: ``spotsafe.Run(root, None, save_every=N)`` + ``spotsafe.accelerate.load_state``:
     the same ``save_state``, into a staging folder, linked into ``step-N.tmp``, then checksummed,
     fsynced and committed (manifest last) in the background.
   Per-step time is the loop's wall time over its steps (saves included, the final checkpoint
   and the wait for it excluded for both); the stall is the median time of a saving step minus
   the median of the others.
2. ``stock``: what stock Accelerate 1.15 does on the interruptions the tests drill:
   - accelerate#3306: ``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=2)``,
     two saves, a restart that calls ``load_state()`` then saves once, a second restart that
     calls ``load_state()``: which save it resumes from;
   - a SIGTERM in the loop: the exit status, and whether anything was saved;
   - a checkpoint with one flipped byte in ``optimizer.bin``: whether ``load_state`` loads it.

    .venv/bin/python bench/bench_accelerate.py [--size 32M] [--steps 40] [--every 10] [--repeats 3]

About a minute on a 2-core VM with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, med, parse_size, print_table

WORKER = r'''
import json, os, sys, time
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
method, size, steps, every, where = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(1)
acc = Accelerator(cpu=True)
set_seed(0)
width = 1024
layers = max(1, size // (width * width * 4))
model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
model, opt = acc.prepare(model, opt)
x = torch.randn(32, width)
times, saving = [], []

def step_once():
    loss = model(x).square().mean()
    opt.zero_grad()
    acc.backward(loss)
    opt.step()

if method == "accelerate":
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        step_once()
        if step % every == 0:
            acc.save_state(os.path.join(where, f"checkpoint-{step}"))
            saving.append(step)
        times.append(time.perf_counter() - t0)
    total = sum(times)
else:
    import spotsafe, spotsafe.accelerate
    with spotsafe.Run(where, None, save_every=every, notices=None) as run:
        spotsafe.accelerate.load_state(acc, run)
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            step_once()
            run.step_done(step)  # the policy's save happens here, inside the step's time
            times.append(time.perf_counter() - t0)
            if step % every == 0:
                saving.append(step)
        total = sum(times)  # the wait at the end (the last save made durable) is outside the loop
print(json.dumps({"per_step": total / steps, "times": times, "saving": saving}))
'''

STOCK_3306 = r'''
import os, sys, torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
acc = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=sys.argv[1],
                  automatic_checkpoint_naming=True, total_limit=2))
m = acc.prepare(torch.nn.Linear(2, 2, bias=False))
mode = sys.argv[2]
if mode == "fresh":
    print("INIT", float(m.weight.flatten()[0]))
else:
    acc.load_state()
    print("LOADED", float(m.weight.flatten()[0]))
saves = {"fresh": 2, "restart": 1, "check": 0}[mode]
for i in range(saves):
    with torch.no_grad():
        m.weight.add_(1.0)  # each save holds a newer state: weight[0] grows by 1 per save
    acc.save_state()
'''

STOCK_SIGTERM = r'''
import os, signal, sys, torch
from accelerate import Accelerator
acc = Accelerator(cpu=True)
m = acc.prepare(torch.nn.Linear(2, 2))
for step in range(1, 100):
    if step == 5:
        os.kill(os.getpid(), signal.SIGTERM)
    if step % 10 == 0:
        acc.save_state(os.path.join(sys.argv[1], f"checkpoint-{step}"))
'''

STOCK_CORRUPT = r'''
import os, sys, torch
from accelerate import Accelerator
acc = Accelerator(cpu=True)
m = torch.nn.Linear(64, 64)
opt = torch.optim.AdamW(m.parameters())
m, opt = acc.prepare(m, opt)
m(torch.randn(4, 64)).sum().backward(); opt.step()
acc.save_state(sys.argv[1])
path = os.path.join(sys.argv[1], "optimizer.bin")
data = bytearray(open(path, "rb").read())
data[len(data) // 2] ^= 0xFF
open(path, "wb").write(data)
try:
    acc.load_state(sys.argv[1])
    print("LOADED without complaint")
except Exception as e:
    print("REFUSED", type(e).__name__)
'''


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), e.get("PYTHONPATH", "")])
    return e


def run_worker(method: str, size: int, steps: int, every: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-acc-") as d:
        out = subprocess.run([sys.executable, "-c", WORKER, method, str(size), str(steps), str(every), d],
                             env=env(), capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def stall(r: dict) -> float:
    saving = set(r["saving"])
    t_save = [t for i, t in enumerate(r["times"], 1) if i in saving]
    t_plain = [t for i, t in enumerate(r["times"], 1) if i not in saving and i > 1]
    return med(t_save) - med(t_plain)


def overhead(args: argparse.Namespace) -> None:
    size = parse_size(args.size)
    methods = ["accelerate", "spotsafe"]
    per_step: dict[str, list[float]] = {m: [] for m in methods}
    stalls: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(args.repeats):
        for m in methods[rep % 2:] + methods[:rep % 2]:
            r = run_worker(m, size, args.steps, args.every)
            per_step[m].append(r["per_step"])
            stalls[m].append(stall(r))
    ckpt = f"{size * 3 / 2**20:.0f} MiB checkpoint (weights + AdamW)"
    print_table(f"Per-step time, a checkpoint every {args.every} of {args.steps} steps, {ckpt} (ms)",
                per_step, peers=["accelerate"], unit=("ms", 1e3, 1))
    print_table("Save stall: a saving step's time over a plain step's (ms)", stalls, peers=["accelerate"],
                unit=("ms", 1e3, 1))


def stock() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-acc-stock-") as d:
        said = {}
        for mode in ("fresh", "restart", "check"):  # saves +1, +2; resumes +2, saves +3; resumes ?
            out = subprocess.run([sys.executable, "-c", STOCK_3306, d, mode], env=env(), capture_output=True,
                                 text=True, timeout=120, check=True).stdout
            said[mode] = float(out.split("INIT" if mode == "fresh" else "LOADED")[-1].split()[0])
        folders = sorted(os.listdir(Path(d) / "checkpoints"))
        rows.append(("accelerate#3306: automatic naming, 2 saves; restart, 1 save; restart",
                     f"resumed save #{said['check'] - said['fresh']:.0f} of {folders}; the newest is save #3"))
        p = subprocess.run([sys.executable, "-c", STOCK_SIGTERM, d], env=env(), capture_output=True, text=True,
                           timeout=120)
        saved = [n for n in os.listdir(d) if n.startswith("checkpoint-")]
        sig = -p.returncode if p.returncode < 0 else None
        rows.append(("SIGTERM at step 5 of a stock loop", f"exit {'signal ' + signal.Signals(sig).name if sig else p.returncode}"
                     f", checkpoints saved: {len(saved)} (spotsafe: exit 75, step 5 durable)"))
        out = subprocess.run([sys.executable, "-c", STOCK_CORRUPT, str(Path(d) / "corrupt")], env=env(),
                             capture_output=True, text=True, timeout=120).stdout.strip().splitlines()
        rows.append(("one flipped byte in optimizer.bin", f"{out[-1] if out else '?'} (spotsafe: skipped, named)"))
    print("\nStock Accelerate 1.15 on the same interruptions")
    print("| case | what happened |")
    print("| --- | --- |")
    for case, what in rows:
        print(f"| {case} | {what} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="overhead,stock")
    ap.add_argument("--size", default="32M", help="parameter bytes (AdamW adds twice that)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.time()
    parts = args.parts.split(",")
    if "overhead" in parts:
        overhead(args)
    if "stock" in parts:
        stock()
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
