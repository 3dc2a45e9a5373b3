"""A tiny Hugging Face Trainer run (GPT-2 from a config, dropout on, generated data) for the tests.

``python hf_train.py --out final.pt [--root DIR] [--stock]`` trains 2 epochs of 12 optimizer
steps on CPU and saves the final weights and optimizer state to ``--out`` (rank 0). With
spotsafe (the default) it runs inside ``spotsafe.Run(root, None)`` with ``spotsafe.hf.attach``
and resumes from ``run.resume_path()``; ``--stock`` is the plain Trainer. One line per event on
stdout (one write each: torchrun's ranks share it): ``rank R pid P resumed N``, ``rank R loss STEP
VALUE`` (every step's logged loss, exactly), ``rank R done N``. Under ``torchrun`` it is a DDP
job on gloo.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

SAMPLES, BATCH, EPOCHS = 48, 4, 2  # 12 optimizer steps an epoch on one rank


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


class Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.randint(0, 64, (SAMPLES, 16), generator=torch.Generator().manual_seed(123))

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


class Report(TrainerCallback):
    """Prints every logged loss (or keeps it in ``losses``); sleeps ``delay`` seconds a step (so that
    drills land mid-run); stops training after step ``stop_at`` (as if the job's time ran out);
    sends this process a SIGTERM during step ``sigterm_at``."""

    def __init__(self, rank: int = 0, delay: float = 0.0, *, losses: dict[int, float] | None = None,
                 stop_at: int | None = None, sigterm_at: int | None = None) -> None:
        self.rank, self.delay, self.losses = rank, delay, losses
        self.stop_at, self.sigterm_at = stop_at, sigterm_at

    def on_step_end(self, args, state, control, **kw):
        if self.delay:
            time.sleep(self.delay)
        if state.global_step == self.stop_at:
            control.should_training_stop = True
        if state.global_step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            if self.losses is not None:
                self.losses[state.global_step] = float(logs["loss"])
            else:
                say(f"rank {self.rank} loss {state.global_step} {float(logs['loss'])!r}")


def make_trainer(out_dir: str, *, save_steps: int = 5, save_total_limit: int | None = None, jit: bool = False,
                 save_only_model: bool = False) -> Trainer:
    """The Trainer of every run here: the same model, data, seed and schedule."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)  # dropout 0.1 on: the RNG state matters
    extra = {"ddp_backend": "gloo", "ddp_timeout": 60, "ddp_find_unused_parameters": False} \
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    targs = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS, learning_rate=1e-3,
        logging_steps=1, save_steps=save_steps, save_total_limit=save_total_limit, report_to=[],
        disable_tqdm=True, seed=0, use_cpu=True, dataloader_num_workers=0,
        enable_jit_checkpoint=jit, save_only_model=save_only_model, **extra)
    trainer = Trainer(model=model, args=targs, train_dataset=Data())
    trainer.remove_callback(PrinterCallback)  # its log lines: stdout holds ours alone
    return trainer


def final_state(trainer: Trainer) -> dict:
    """What an exact resume must reproduce: the weights, the optimizer's and the scheduler's state."""
    return {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.lr_scheduler.state_dict()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--root", default=None, help="the Run's root (default: $SPOTSAFE_ROOT)")
    p.add_argument("--remote", default=None)
    p.add_argument("--output-dir", default=None, help="the Trainer's output_dir (default: <root>-hf)")
    p.add_argument("--save-steps", type=int, default=5)
    p.add_argument("--save-total-limit", type=int, default=None)
    p.add_argument("--step-delay", type=float, default=0.0)
    p.add_argument("--stock", action="store_true", help="the plain Trainer, resuming from its newest folder")
    p.add_argument("--jit", action="store_true", help="enable_jit_checkpoint=True")
    p.add_argument("--save-only-model", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    root = args.root or os.environ.get("SPOTSAFE_ROOT")
    out_dir = args.output_dir or f"{root}-hf"
    if args.stock:
        trainer = make_trainer(out_dir, save_steps=args.save_steps, jit=args.jit)
        trainer.add_callback(Report(rank, args.step_delay))
        last = get_last_checkpoint(out_dir) if os.path.isdir(out_dir) else None
        say(f"rank {rank} pid {os.getpid()} resumed {int(last.rsplit('-', 1)[1]) if last else 0}")
        trainer.train(resume_from_checkpoint=last)
    else:
        import spotsafe
        import spotsafe.hf

        with spotsafe.Run(args.root, None, remote=args.remote, notices="signals") as run:
            trainer = make_trainer(out_dir, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
                                   jit=args.jit, save_only_model=args.save_only_model)
            trainer.add_callback(Report(rank, args.step_delay))
            spotsafe.hf.attach(trainer, run)
            path = run.resume_path()
            say(f"rank {rank} pid {os.getpid()} resumed {run.start_step}")
            trainer.train(resume_from_checkpoint=path)
    say(f"rank {rank} done {trainer.state.global_step}")
    if rank == 0:
        torch.save(final_state(trainer), args.out)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
