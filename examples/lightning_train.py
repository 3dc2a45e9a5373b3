"""examples/train.py's job as a PyTorch Lightning module, spot-safe through spotsafe.lightning.

    python examples/lightning_train.py --root runs/pl --epochs 2
    torchrun --nproc-per-node 2 examples/lightning_train.py --root runs/pl2 --epochs 2   # DDP, gloo

A LightningModule with dropout, Adam and a per-step LR schedule, trained on shuffled
mini-batches with random augmentation (python, numpy and torch randomness) from
``spotsafe.lightning.ResumableDataLoader``, validated at every epoch's end. Inside
``spotsafe.Run(root, None)``: ``spot.resume_path()`` gives ``fit`` the newest valid checkpoint
(local or remote), the run checkpoints every ``--save-every`` steps through Lightning, and a
notice (SIGTERM, a cloud's warning) checkpoints the batch just finished and exits 75 without
a validation pass. Kill it at any moment and run it again: it ends with the weights of a run
that was never interrupted.

Prints ``resumed N``, ``step N epoch E batch B loss L ids ...`` per training batch (the loss
as a hex float), ``val epoch E batch B`` per validation batch, ``preempted N`` and ``done N``
(rank 0 only under DDP, but ``preempted`` on every rank). ``--out`` writes the final model,
optimizer and scheduler state.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import time
import warnings

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from train import CLASSES, FEATURES, AugmentedPoints  # examples/train.py: the same data

import spotsafe
import spotsafe.lightning


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 3e-3, total_steps: int = 100, stop_at: int | None = None, stop_rank: int = 0,
                 step_delay: float = 0.0, **extra) -> None:
        super().__init__()
        self.save_hyperparameters()  # plain values: spotsafe's manifest holds them
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(64, CLASSES))

    def say(self, line: str) -> None:
        if self.global_rank == 0:
            os.write(1, (line + "\n").encode())  # one write a line: ranks share stdout

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        smoothing = float(np.random.uniform(0.0, 0.1))  # numpy randomness in the step
        loss = F.cross_entropy(self.net(x), y, label_smoothing=smoothing)
        self.say(f"step {self.global_step + 1} epoch {self.current_epoch} batch {batch_idx} loss {loss.item().hex()} "
                 f"ids {','.join(map(str, ids.tolist()))}")
        hp = self.hparams
        if hp.stop_at == self.global_step + 1 and self.global_rank == hp.stop_rank:
            os.kill(os.getpid(), signal.SIGTERM)  # a real notice, during this step
        if hp.step_delay:
            time.sleep(hp.step_delay)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.say(f"val epoch {self.current_epoch} batch {batch_idx}")
        self.log("val_loss", F.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=self.hparams.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class WithIds(torch.utils.data.Dataset):
    """AugmentedPoints items with their index (the test checks which samples each step saw)."""

    def __init__(self, n: int) -> None:
        self.data = AugmentedPoints(n=n)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = self.data[i]
        return x, y, i


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("SPOTSAFE_ROOT"))
    p.add_argument("--remote", help="object store URL to replicate checkpoints to")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples", type=int, default=64, help="training samples (an epoch is samples / batch steps)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--val-every", type=int, help="validate every N training batches (default: at each epoch's end)")
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (makes notices land mid-run)")
    p.add_argument("--notices", default="signals")
    p.add_argument("--stop-at", type=int, help="send this process a real SIGTERM during step N (a notice drill)")
    p.add_argument("--stop-rank", type=int, default=0, help="the rank that gets --stop-at's SIGTERM")
    p.add_argument("--out", help="write the final model, optimizer and scheduler state here (torch.save, rank 0)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    steps_per_epoch = args.samples // (args.batch_size * world)
    model = Classifier(total_steps=args.epochs * steps_per_epoch, stop_at=args.stop_at, stop_rank=args.stop_rank,
                       step_delay=args.step_delay)
    train = spotsafe.lightning.ResumableDataLoader(WithIds(args.samples), batch_size=args.batch_size, seed=0,
                                                   drop_last=True, num_replicas=world, rank=rank,
                                                   num_workers=args.workers)
    val = torch.utils.data.DataLoader(WithIds(16), batch_size=8, shuffle=True)  # shuffled: draws from torch's RNG
    try:
        with spotsafe.Run(args.root, None, save_every=args.save_every, notices=args.notices,
                          remote=args.remote) as run:
            spot = spotsafe.lightning.SpotSafe(run)
            trainer = L.Trainer(max_epochs=args.epochs, callbacks=[spot], enable_checkpointing=False, logger=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                val_check_interval=args.val_every, accelerator="cpu", devices=world,
                                strategy="ddp" if world > 1 else "auto")
            path = spot.resume_path()
            if rank == 0:
                print(f"resumed {run.step}", flush=True)
            trainer.fit(model, train_dataloaders=train, val_dataloaders=val, ckpt_path=path)
            step = trainer.global_step
    except spotsafe.Preempted as stop:
        sys.stdout.flush()  # every rank prints this: one write each, so two ranks' lines never interleave
        os.write(1, f"preempted {stop.step} rank {rank}\n".encode())
        raise
    if args.out and rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
                    "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(), "step": step}, args.out)
    if rank == 0:
        print(f"done {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
