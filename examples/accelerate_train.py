"""examples/train.py's job written for Hugging Face Accelerate, spot-safe through spotsafe.accelerate.

    python examples/accelerate_train.py --root runs/acc --steps 40
    torchrun --nproc-per-node 2 examples/accelerate_train.py --root runs/acc2 --steps 40   # two ranks, gloo

The Accelerator prepares the model, optimizer and scheduler as usual; the data position is
spotsafe's ResumableDataLoader, registered with ``register_for_checkpointing``. Inside
``spotsafe.Run(root, None)``, ``spotsafe.accelerate.load_state`` resumes from the newest valid
checkpoint and makes every checkpoint an ``accelerator.save_state`` named by step, committed
and verified. A notice: the step finishes, is checkpointed, and the process exits 75. Prints
``step N epoch E loss L`` per step (rank 0) and ``--out`` the final weights and optimizer.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from train import CLASSES, FEATURES, AugmentedPoints  # examples/train.py: the same data and model

import spotsafe
import spotsafe.accelerate
from spotsafe.data import ResumableDataLoader


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("SPOTSAFE_ROOT"))
    p.add_argument("--remote", help="object store URL to replicate checkpoints to")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples", type=int, default=192, help="dataset size (an epoch is samples / global batch steps)")
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (makes notices land mid-run)")
    p.add_argument("--notices", default="signals")
    p.add_argument("--stop-at", type=int, help="send this process a real SIGTERM during step N (a notice drill)")
    p.add_argument("--stop-rank", type=int, default=0, help="the rank that gets --stop-at's SIGTERM")
    p.add_argument("--out", help="write the final model and optimizer state here (torch.save, rank 0)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    acc = Accelerator(cpu=True)
    set_seed(0)  # python, numpy and torch
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(64, CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=args.steps)
    model, opt, sched = acc.prepare(model, opt, sched)
    loader = ResumableDataLoader(AugmentedPoints(n=args.samples), batch_size=args.batch_size, seed=0, drop_last=True,
                                 num_replicas=acc.num_processes, rank=acc.process_index)
    acc.register_for_checkpointing(loader)
    say = print if acc.is_main_process else (lambda *a, **k: None)
    try:
        with spotsafe.Run(args.root, None, save_every=args.save_every, notices=args.notices,
                          remote=args.remote) as run:
            spotsafe.accelerate.load_state(acc, run)
            say(f"resumed {run.step} epoch {loader.epoch} position {loader.position}", flush=True)
            model.train()

            def batches():
                while True:
                    yield from loader

            data = batches()
            for step in run.steps(args.steps):
                x, y = next(data)
                smoothing = float(np.random.uniform(0.0, 0.1))   # numpy randomness in the loop
                loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
                opt.zero_grad()
                acc.backward(loss)
                opt.step()
                sched.step()
                say(f"step {step} epoch {loader.epoch} loss {loss.item().hex()}", flush=True)
                if step == args.stop_at and acc.process_index == args.stop_rank:
                    os.kill(os.getpid(), signal.SIGTERM)
                if args.step_delay:
                    time.sleep(args.step_delay)
            step = run.step
    except spotsafe.Preempted as stop:
        sys.stdout.flush()  # every rank prints this: one write each, so two ranks' lines never interleave
        os.write(1, f"preempted {stop.step} rank {acc.process_index} source {stop.notice.source}\n".encode())
        raise
    if args.out and acc.is_main_process:
        torch.save({"model": acc.unwrap_model(model).state_dict(), "optimizer": opt.optimizer.state_dict(),
                    "step": step}, args.out)
    say(f"done {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
