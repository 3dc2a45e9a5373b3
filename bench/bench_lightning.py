"""Benchmark: spotsafe.lightning against stock Lightning - per-step overhead, save stall, and what a
notice does to each.

Everything runs on CPU (``torch.set_num_threads(1)``), Lightning 2.6 as installed.

1. Per-step overhead, in this process: examples/lightning_train.py's module (a 16-64-4 MLP with
   dropout, Adam, a per-step one-cycle LR; batch 4) trains ``--steps`` steps (default 400) in
   each configuration, ``--repeats`` times (default 3) in an order rotated every repeat:

   * ``stock``: no checkpoints (the floor; a plain shuffled ``DataLoader``);
   * ``stock + ModelCheckpoint``: Lightning's own ``ModelCheckpoint(every_n_train_steps=K,
     save_top_k=-1)`` through its ``TorchCheckpointIO`` (``torch.save``), ``K = --save-every``;
   * ``spotsafe``: ``spotsafe.Run(root, None, save_every=K)`` + ``SpotSafe`` (the callback and its
     CheckpointIO), the same plain ``DataLoader``: what the integration itself costs;
   * ``spotsafe + ResumableDataLoader``: the same with ``spotsafe.lightning.ResumableDataLoader``
     (exact mid-epoch resume: per-sample seeding of python, numpy and torch, which costs time
     per sample, not per step).

   A callback first in the list stamps every ``on_train_batch_start``: a step's time runs from
   its start to the next one's (its training, every end-of-batch hook, the save when there is
   one, the next fetch). Shown: the median step without a save (the per-step overhead) and the
   mean over all steps (saves included), against ``stock + ModelCheckpoint``.

2. Save stall, in this process: a stack of ``Linear`` layers sized to ``--size`` (default 256M of
   parameters + Adam state) in a LightningModule, batch 8, ``--saves`` saves (default 4) every
   5 steps, ``--repeats`` times: the time a save step takes beyond the median step without a
   save. Stock: ``ModelCheckpoint`` (``torch.save`` of the whole dict, synchronous). spotsafe:
   a memory copy into staging buffers; the write, checksums and commit run in the background
   (the time until durable is shown beside it: the manager's ``total_s``).

3. The same notice, three ways (child processes of examples/lightning_train.py, 2 epochs of 16
   steps, validation at each epoch's end, checkpoints every 5 steps): a real SIGTERM during step
   7 (``--stop-at 7``), then the same command again, against an uninterrupted run:

   * stock: Lightning's own SIGTERM handling, ``ModelCheckpoint(every_n_train_steps=5,
     save_last=True)`` and a shuffled ``DataLoader``, resumed with ``ckpt_path="last"``;
   * stock, graceful stop: the same, but the notice sets ``trainer.should_stop = True`` (what a
     callback that stops "gracefully" does; Lightning's SIGTERM handler off);
   * spotsafe: the example as it is.

   Shown: the exit code, validation batches run after the notice, the samples of epoch 0 the
   resumed run trained on twice or never, and whether the end equals the uninterrupted run.

    python bench/bench_lightning.py [--steps 400] [--save-every 50] [--size 256M] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

from _common import REPO, med, parse_size, plan_layers, print_table, scratch_dir, setup_torch

EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES))
CONFIGS = ["stock", "stock + ModelCheckpoint", "spotsafe", "spotsafe + ResumableDataLoader"]


def quiet() -> None:
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


class StepTimer:
    """Stamps every training batch's start; ``steps`` = (global step run, seconds until the next start)."""

    def __new__(cls):
        from lightning.pytorch.callbacks import Callback

        class _Timer(Callback):
            def __init__(self) -> None:
                self.last: tuple[int, float] | None = None
                self.steps: list[tuple[int, float]] = []

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                now = time.perf_counter()
                if self.last is not None:
                    self.steps.append((self.last[0], now - self.last[1]))
                self.last = (trainer.global_step + 1, now)

        return _Timer()


def trainer_for(callbacks: list, steps: int, root: Path, **kw):
    import lightning as L

    return L.Trainer(max_steps=steps, callbacks=callbacks, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu",
                     default_root_dir=str(root), **kw)


def fit_once(config: str, module, data, steps: int, every: int, root: Path) -> tuple[list[tuple[int, float]], float]:
    """Train ``steps`` steps in ``config``; the per-step times and the spotsafe save's time to durable."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    import spotsafe
    import spotsafe.lightning

    timer = StepTimer()
    if config.startswith("stock"):
        cbs = [timer] + ([ModelCheckpoint(dirpath=str(root / "ckpt"), every_n_train_steps=every, save_top_k=-1)]
                         if "ModelCheckpoint" in config else [])
        trainer_for(cbs, steps, root, enable_checkpointing="ModelCheckpoint" in config).fit(module, data)
        return timer.steps, float("nan")
    with spotsafe.Run(str(root / "spotsafe"), None, save_every=every, notices="signals", keep=2) as run:
        spot = spotsafe.lightning.SpotSafe(run)
        trainer_for([timer, spot], steps, root, enable_checkpointing=False).fit(module, data,
                                                                               ckpt_path=spot.resume_path())
        run.manager.wait()
        durable = [s.total_s for s in run.manager.durable_saves if s.total_s is not None]
    return timer.steps, med(durable)


def part1(args, root: Path) -> None:
    import torch
    from lightning_train import Classifier, WithIds

    import spotsafe.lightning

    class Quiet(Classifier):
        def say(self, line: str) -> None:
            pass

    med_step = {c: [] for c in CONFIGS}
    mean_step = {c: [] for c in CONFIGS}
    for r in range(args.repeats):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
        for config in order:
            torch.manual_seed(0)
            module = Quiet(total_steps=args.steps + 1)
            data = (spotsafe.lightning.ResumableDataLoader(WithIds(256), batch_size=4, seed=0)
                    if "Resumable" in config else torch.utils.data.DataLoader(WithIds(256), batch_size=4,
                                                                               shuffle=True))
            with scratch_dir("", root / f"p1-{r}-{config[:5]}") as d:
                times, _ = fit_once(config, module, data, args.steps, args.save_every, d)
            times = times[5:]  # warm-up
            med_step[config].append(med(t for s, t in times if s % args.save_every))
            mean_step[config].append(sum(t for _, t in times) / len(times))
    peers = ["stock", "stock + ModelCheckpoint"]
    print_table(f"Per-step time without a save (tiny MLP, batch 4, {args.steps} steps, a save every "
                f"{args.save_every}; microseconds)", med_step, peers=peers, unit=("us", 1e6, 0), first="configuration")
    print_table("Mean step time, saves included (microseconds)", mean_step, peers=peers, unit=("us", 1e6, 0),
                first="configuration")


def part2(args, root: Path) -> None:
    import lightning as L
    import torch

    width, layers = plan_layers(args.size)

    class Big(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    every, steps = 5, 5 * args.saves + 6
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8 * steps, width)), batch_size=8)
    stalls: dict[str, list[float]] = {"stock + ModelCheckpoint": [], "spotsafe": []}
    durable: list[float] = []
    for r in range(args.repeats):
        for config in (list(stalls) if r % 2 == 0 else list(stalls)[::-1]):
            torch.manual_seed(0)
            with scratch_dir("", root / f"p2-{r}-{config[:5]}") as d:
                times, to_durable = fit_once(config, Big(), data, steps, every, d)
            plain = med(t for s, t in times if s % every)
            stalls[config].append(med(t - plain for s, t in times if s % every == 0))
            if config == "spotsafe":
                durable.append(to_durable)
    state = sum(p.numel() for p in Big().parameters()) * 4 * 3
    print_table(f"Save stall: a save step's time beyond a plain step ({layers} x Linear({width},{width}) + Adam, "
                f"{state / 2**20:.0f} MiB; {args.saves} saves a repeat)", stalls, peers=["stock + ModelCheckpoint"],
                extra={"spotsafe": {"durable after (s)": f"{med(durable):.3f}"}}, first="configuration")


# -- part 3: the same notice, three ways ---------------------------------------------------------
STOCK_CHILD = r'''
import os, signal, sys
sys.path.insert(0, EXAMPLES)
import lightning as L, torch, warnings, logging
warnings.filterwarnings("ignore"); logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning_train import Classifier, WithIds
graceful, root, stop, out = sys.argv[1] == "graceful", sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
model = Classifier(total_steps=32, stop_at=None if graceful else stop)
class Graceful(Callback):  # what a "stop gracefully on a notice" callback does
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == stop:
            trainer.should_stop = True
train = torch.utils.data.DataLoader(WithIds(64), batch_size=4, shuffle=True, drop_last=True)
val = torch.utils.data.DataLoader(WithIds(16), batch_size=8, shuffle=True)
ckpt = ModelCheckpoint(dirpath=root, every_n_train_steps=5, save_last=True, save_top_k=-1)
trainer = L.Trainer(max_epochs=2, callbacks=[ckpt] + ([Graceful()] if graceful else []), logger=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
resume = "last" if os.path.exists(os.path.join(root, "last.ckpt")) else None
print(f"resumed {0 if resume is None else torch.load(os.path.join(root, 'last.ckpt'), weights_only=False)['global_step']}",
      flush=True)
trainer.fit(model, train_dataloaders=train, val_dataloaders=val, ckpt_path=resume)
if out != "-":
    torch.save({"model": model.state_dict(), "optimizer": trainer.optimizers[0].state_dict()}, out)
print(f"done {trainer.global_step}", flush=True)
'''


def drill(kind: str, d: Path, env: dict) -> dict:
    """One notice during step 7 and the resume, as ``kind``; what happened."""
    if kind == "spotsafe":
        base = [sys.executable, str(EXAMPLES / "lightning_train.py"), "--root", str(d / "root"), "--save-every", "5"]
        first = subprocess.run([*base, "--stop-at", "7"], env=env, capture_output=True, text=True, timeout=120)
        second = subprocess.run([*base, "--out", str(d / "end.pt")], env=env, capture_output=True, text=True,
                                timeout=120)
    else:
        code = STOCK_CHILD.replace("EXAMPLES", repr(str(EXAMPLES)))
        base = [sys.executable, "-c", code, kind, str(d / "ckpt")]
        first = subprocess.run([*base, "7", "-"], env=env, capture_output=True, text=True, timeout=120)
        second = subprocess.run([*base, "-1", str(d / "end.pt")], env=env, capture_output=True, text=True,
                                timeout=120)
    lines = first.stdout.splitlines()
    last_step = max((i for i, x in enumerate(lines) if x.startswith("step ")), default=-1)
    resumed = int(re.search(r"resumed (\d+)", second.stdout)[1])
    seen: Counter = Counter()  # epoch 0's samples the job trained on (those of the steps its checkpoint kept)
    for out, upto in ((first.stdout, resumed), (second.stdout, None)):
        for m in re.finditer(r"^step (\d+) epoch 0 .* ids ([\d,]+)$", out, re.M):
            if upto is None or int(m[1]) <= upto:
                seen.update(int(i) for i in m[2].split(","))
    return {"exit": first.returncode, "stopped": max((int(m) for m in re.findall(r"^step (\d+)", first.stdout, re.M)),
                                                       default=0),
            "vals_after": sum(x.startswith("val ") for x in lines[last_step + 1:]), "resumed": resumed,
            "twice": sum(1 for n in seen.values() if n > 1), "never": 64 - len(seen), "end": d / "end.pt",
            "ok": second.returncode == 0}


def part3(args, root: Path) -> None:
    import torch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    ref = root / "ref"
    ref.mkdir()
    subprocess.run([sys.executable, str(EXAMPLES / "lightning_train.py"), "--root", str(ref / "root"), "--save-every",
                    "5", "--out", str(ref / "end.pt")], env=env, capture_output=True, check=True, timeout=120)
    want = torch.load(ref / "end.pt")
    print("\nThe same notice (a SIGTERM during step 7 of 32, validation at each epoch's end, checkpoints every 5 "
          "steps), then the same command again")
    print("| run | exit code | stopped after step | validation batches after the notice | resumed at step "
          "| epoch 0 samples trained twice | never | end equals an uninterrupted run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, label in (("stock", "stock Lightning"), ("graceful", "stock, should_stop on the notice"),
                        ("spotsafe", "spotsafe.lightning")):
        d = root / kind
        d.mkdir()
        r = drill(kind, d, env)
        got = torch.load(r["end"]) if r["ok"] else None
        same = got is not None and all(torch.equal(v, got["model"][k]) for k, v in want["model"].items())
        print(f"| {label} | {r['exit']} | {r['stopped']} | {r['vals_after']} | {r['resumed']} | {r['twice']} "
              f"| {r['never']} | {'yes' if same else 'no'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--size", type=parse_size, default=parse_size("256M"))
    ap.add_argument("--saves", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="1,2,3")
    args = ap.parse_args()
    print(setup_torch(1))
    import lightning

    quiet()
    print(f"lightning {lightning.__version__}")
    parts = set(args.parts.split(","))
    with scratch_dir("lightning") as root:
        if "1" in parts:
            part1(args, root)
        if "2" in parts:
            part2(args, root)
        if "3" in parts:
            part3(args, root)


if __name__ == "__main__":
    main()
