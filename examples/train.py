"""A real training run that survives being killed: resume is bit-exact.

A small classifier with dropout, Adam, a one-cycle LR schedule, shuffled mini-batches
from a ResumableDataLoader with per-sample random augmentation (python, numpy and torch
randomness), and numpy randomness in the loop itself. Data are generated from a fixed
seed, so nothing is downloaded.

    python examples/train.py --root runs/demo --steps 200 --save-every 10 --workers 2

It runs under ``spotsafe.Run``: a notice (SIGTERM, SIGINT, SIGUSR1, a cloud's metadata
endpoint, ``$SPOTSAFE_NOTICE_FILE``) makes it finish the step, checkpoint it and exit 75.
Kill it at any moment (even with SIGKILL) and run the same command again: it continues
from the newest valid checkpoint and ends with exactly the parameters of a run that was
never interrupted. ``--out FILE`` writes the final model and optimizer state for checking.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import spotsafe
from spotsafe.data import ResumableDataLoader

FEATURES, CLASSES = 16, 4


class AugmentedPoints(torch.utils.data.Dataset):
    """Gaussian clusters, generated from a fixed seed; every item is randomly augmented."""

    def __init__(self, n: int = 512, seed: int = 1234) -> None:
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(CLASSES, FEATURES, generator=g) * 2
        self.y = torch.randint(0, CLASSES, (n,), generator=g)
        self.x = centers[self.y] + torch.randn(n, FEATURES, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i] + 0.1 * torch.randn(FEATURES)          # torch randomness
        x = x * float(np.random.uniform(0.9, 1.1))            # numpy randomness
        if random.random() < 0.5:                             # python randomness: mask a feature
            x[random.randrange(FEATURES)] = 0.0
        return x, self.y[i]


def build(args: argparse.Namespace):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(64, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=args.steps)
    loader = ResumableDataLoader(AugmentedPoints(), batch_size=args.batch_size, seed=args.seed,
                                 num_workers=args.workers, drop_last=True)
    return model, opt, sched, loader


def batches(loader: ResumableDataLoader):
    """Batches forever, epoch after epoch, continuing where the restored loader stands."""
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("SPOTSAFE_ROOT"),
                   help="checkpoint root (a local directory; default $SPOTSAFE_ROOT, set by spotsafe run --root)")
    p.add_argument("--remote", help="object store URL to replicate checkpoints to (s3://bucket/run)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--save-every", help="steps (10, '10steps') or a duration ('15m', '30s'); "
                   "default $SPOTSAFE_SAVE_EVERY (a spotsafe run profile's), else 10 steps")
    p.add_argument("--notices", default="auto", help="'auto', 'off', or source names (signals,aws,gcp,...)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--ballast-mib", type=float, default=0.0,
                   help="add a buffer of this size to the model (big checkpoints for drills and benchmarks)")
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (makes notices land mid-run)")
    p.add_argument("--out", help="write the final model and optimizer state here (torch.save)")
    args = p.parse_args(argv)
    if not args.root:
        p.error("--root is required (or run under spotsafe run --root DIR)")
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    model, opt, sched, loader = build(args)
    if args.ballast_mib:
        model.register_buffer("ballast", torch.zeros(int(args.ballast_mib * 2**20) // 4))
    state = {"model": model, "optimizer": opt, "scheduler": sched, "data": loader}
    if args.save_every is None:  # None: Run takes $SPOTSAFE_SAVE_EVERY
        save_every = None if os.environ.get("SPOTSAFE_SAVE_EVERY") else 10
    else:
        save_every = int(args.save_every) if args.save_every.isdigit() else args.save_every
    try:
        with spotsafe.Run(args.root, state, save_every=save_every, notices=args.notices, remote=args.remote,
                          keep=args.keep_last) as run:
            print(f"resumed {run.step} epoch {loader.epoch} position {loader.position}", flush=True)
            durable = run.step
            model.train()
            data = batches(loader)
            for step in run.steps(args.steps):
                x, y = next(data)
                smoothing = float(np.random.uniform(0.0, 0.1))   # numpy randomness in the loop
                loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if args.ballast_mib:
                    model.ballast.add_(1.0)
                run.log(loss=loss.item())
                print(f"step {step} epoch {loader.epoch} loss {loss.item():.6f}", flush=True)
                last = run.manager.last_save
                if last is not None and last.step > durable:    # persisted in the background
                    durable = last.step
                    print(f"durable {durable}", flush=True)
                if args.step_delay:
                    time.sleep(args.step_delay)
            step = run.step
    except spotsafe.Preempted as stop:
        print(f"preempted {stop.step} source {stop.notice.source} tier {stop.tier}", flush=True)
        raise  # exits 75: spotsafe.EXIT_PREEMPTED
    if args.out:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, args.out)
    print(f"done {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
