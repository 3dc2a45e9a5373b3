"""Benchmark: spotsafe.hf against the Hugging Face Trainer's own checkpointing, and what the stock Trainer does.

1. ``overhead``: one Trainer run (GPT-2 built from a config of ``--n-embd`` x ``--n-layer``,
   AdamW, CPU, generated data) of ``--steps`` optimizer steps with ``save_steps=--every``, in a
   fresh process per run, the methods in rotating order, ``--repeats`` times:
   - ``trainer``: the stock Trainer saving ``checkpoint-N/`` itself (in place: no checksums,
     no fsync, nothing committed, nothing uploaded);
   - ``spotsafe``: the same Trainer inside ``spotsafe.Run(root, None)`` with
     ``spotsafe.hf.attach``: ``run.step_done`` every step, each ``checkpoint-N/`` hard-linked
     into ``step-N.tmp`` (in ``on_save``), then checksummed, fsynced and committed (manifest
     last) in the background.
   A callback stamps each ``on_step_begin``: a step's time runs to the next step's start, so it
   holds the step's save and its callbacks; the last step and the wait for the last commit are
   outside it for both, and so is the first step (warm-up). The stall is the median time of a
   saving step minus the median of the others.
2. ``stock``: what stock transformers 5.24 does on the interruptions the tests drill, beside
   what spotsafe.hf does (tests/integration/test_hf.py asserts the spotsafe side):
   - ``enable_jit_checkpoint=True`` and a SIGTERM at step 3: the exit status, the checkpoint
     written and the step training reached;
   - a half-written newest ``checkpoint-N/`` (only ``config.json``, as after a SIGKILL in
     ``_save_checkpoint``) beside good ones: ``train(resume_from_checkpoint=True)``;
   - one flipped bit in the newest ``optimizer.pt``: ``train(resume_from_checkpoint=True)``.

    .venv/bin/python bench/bench_hf.py [--n-embd 256] [--n-layer 4] [--steps 40] [--every 10] [--repeats 3]

About two minutes on a 2-core VM with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _common import REPO, med, print_table

SETUP = r'''
import json, os, signal, sys, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
torch.set_num_threads(1)

class Data(torch.utils.data.Dataset):
    def __init__(self, n, length, vocab):
        self.x = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}

def make(out, steps, every, n_embd=32, n_layer=2, **kw):
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_head=4 if n_embd % 4 == 0 else 2, n_embd=n_embd, vocab_size=1024,
                     n_positions=64, bos_token_id=0, eos_token_id=0)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, max_steps=steps, save_steps=every,
                             learning_rate=1e-4, logging_steps=10**6, report_to=[], disable_tqdm=True, seed=0,
                             use_cpu=True, dataloader_num_workers=0, **kw)
    t = Trainer(model=GPT2LMHeadModel(cfg), args=args, train_dataset=Data(8 * steps, 64, 1024))
    t.remove_callback(PrinterCallback)
    return t
'''

WORKER = SETUP + r'''
method, steps, every, n_embd, n_layer, where = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                                int(sys.argv[5]), sys.argv[6])
starts = []

class Stamp(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        starts.append(time.perf_counter())

out = os.path.join(where, "out")
if method == "trainer":
    trainer = make(out, steps, every, n_embd, n_layer)
    trainer.add_callback(Stamp())
    trainer.train()
else:
    import spotsafe, spotsafe.hf
    with spotsafe.Run(os.path.join(where, "run"), None, notices=None) as run:
        trainer = make(out, steps, every, n_embd, n_layer)
        trainer.add_callback(Stamp())
        spotsafe.hf.attach(trainer, run)
        trainer.train(resume_from_checkpoint=run.resume_path())
times = [b - a for a, b in zip(starts, starts[1:])]  # steps 1 .. steps-1, each with what followed it
size = sum(os.path.getsize(os.path.join(out, f"checkpoint-{every}", f))
           for f in os.listdir(os.path.join(out, f"checkpoint-{every}")))
print(json.dumps({"times": times, "saving": list(range(every, steps, every)), "bytes": size}))
'''

STOCK_JIT = SETUP + r'''
class Term(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        time.sleep(0.3)
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
t = make(sys.argv[1], 40, 100, enable_jit_checkpoint=True)
t.add_callback(Term())
t.train()
print(json.dumps({"reached": t.state.global_step, "saved": sorted(os.listdir(sys.argv[1]))}))
'''

STOCK_RESUME = SETUP + r'''
case, where = sys.argv[1], sys.argv[2]
make(where, 10, 5).train()
if case == "half":
    os.makedirs(os.path.join(where, "checkpoint-15"))
    open(os.path.join(where, "checkpoint-15", "config.json"), "w").write("{}")
else:
    path = os.path.join(where, "checkpoint-10", "optimizer.pt")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(data)
t = make(where, 20, 5)
try:
    t.train(resume_from_checkpoint=True)
    print(f"resumed from it without a word, trained to step {t.state.global_step}")
except Exception as e:
    print(f"{type(e).__name__}: {str(e)[:70]}")
'''


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), e.get("PYTHONPATH", "")])
    return e


def run_worker(method: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as d:
        out = subprocess.run([sys.executable, "-c", WORKER, method, str(args.steps), str(args.every), str(args.n_embd),
                              str(args.n_layer), d], env=env(), capture_output=True, text=True, timeout=900)
        if out.returncode:
            raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stall(r: dict) -> float:
    saving = set(r["saving"])
    t_save = [t for i, t in enumerate(r["times"], 1) if i in saving]
    t_plain = [t for i, t in enumerate(r["times"], 1) if i not in saving and i > 1]
    return med(t_save) - med(t_plain)


def overhead(args: argparse.Namespace) -> None:
    methods = ["trainer", "spotsafe"]
    per_step: dict[str, list[float]] = {m: [] for m in methods}
    stalls: dict[str, list[float]] = {m: [] for m in methods}
    nbytes = 0
    for rep in range(args.repeats):
        for m in methods[rep % 2:] + methods[:rep % 2]:
            r = run_worker(m, args)
            times = r["times"][1:]  # the first step warms up (allocations, the first batch)
            per_step[m].append(med(times))
            per_step.setdefault(f"{m} (mean, saves in)", []).append(sum(times) / len(times))
            stalls[m].append(stall(r))
            nbytes = r["bytes"]
    rows = {k: per_step[k] for k in ("trainer", "spotsafe", "trainer (mean, saves in)", "spotsafe (mean, saves in)")}
    ckpt = f"checkpoint-N {nbytes / 2**20:.1f} MiB (GPT-2 {args.n_embd}x{args.n_layer}, AdamW)"
    print_table(f"Per-step time (median step; mean with the saves), save_steps={args.every} of {args.steps} steps, "
                f"{ckpt} (ms)", rows, peers=["trainer", "trainer (mean, saves in)"], unit=("ms", 1e3, 1))
    print_table("Save stall: a saving step's time over a plain step's (ms)", stalls, peers=["trainer"],
                unit=("ms", 1e3, 1))


def stock() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hf-stock-") as d:
        p = subprocess.run([sys.executable, "-c", STOCK_JIT, os.path.join(d, "jit")], env=env(), capture_output=True,
                           text=True, timeout=300)
        got = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {}
        rows.append(("enable_jit_checkpoint=True, SIGTERM at step 3",
                     f"exit {p.returncode}; saved {got.get('saved')}, trained to step {got.get('reached')}",
                     "exit 75 after the step the notice came in, that step committed (and uploaded)"))
        for case, what in (("half", "a half-written newest checkpoint-15 (config.json only) beside good ones"),
                           ("flip", "one flipped bit in the newest optimizer.pt")):
            p = subprocess.run([sys.executable, "-c", STOCK_RESUME, case, os.path.join(d, case)], env=env(),
                               capture_output=True, text=True, timeout=300)
            said = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr.strip()[-100:]
            rows.append((f"{what}: train(resume_from_checkpoint=True)", said,
                         "never handed over: not a checkpoint" if case == "half"
                         else "checksum mismatch: skipped with a warning, the previous one resumed"))
    print("\nStock transformers 5.24 Trainer on the same interruptions")
    print("| case | stock Trainer | spotsafe.hf |")
    print("| --- | --- | --- |")
    for case, what, ours in rows:
        print(f"| {case} | {what} | {ours} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="overhead,stock")
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
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
