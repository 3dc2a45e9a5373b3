"""Accelerate's own checkpoint (``Accelerator.save_state``), made a spotsafe checkpoint.

Why not Accelerate's ``ProjectConfiguration(automatic_checkpoint_naming=True)``: it names
folders by a save counter that ``load_state`` does not restore, so after a restart the next
save is ``checkpoint_0`` again, rotation deletes the newer folder and a later resume picks a
stale one (accelerate#3306, #1601); and the folder is written in place, so one cut short by a
SIGKILL loads as if whole. Here each checkpoint is named by the global step: every rank
writes ``save_state`` into a staging folder inside the run root (rank 0 the model, optimizer,
scheduler, sampler and custom objects; each rank its ``random_states_<rank>.pkl``); after
``wait_for_everyone`` rank 0 commits it with :meth:`CheckpointManager.save_files
<spotsafe.CheckpointManager.save_files>` (links, checksums, manifest last, upload, retention)
and the staging folder goes. ``load_state`` hands ``Accelerator.load_state`` the newest
folder that verifies, fetched from the remote on a new machine.

The stop after a notice is agreed across ranks by spotsafe's own agreement when the ranks
were started by ``accelerate launch``/``torchrun`` (no collective per step); otherwise through
Accelerate's trigger (``set_trigger``/``check_trigger``, one all-reduce per step).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from .._engine import SaveStats
from .._format import step_dir
from ..run import Run

logger = logging.getLogger("spotsafe.accelerate")

KIND = "accelerate"
_STAGING = "tmp-acce1e7a7e"  # hex, so a staging folder left by a crash is a leftover the next writer removes


def _staging_dir(run: Run, step: int) -> Path:
    if not run.manager or not hasattr(run.manager.storage, "path"):
        raise ValueError(f"spotsafe.accelerate writes Accelerate's checkpoint into a local run root, and {run.root} "
                         "is remote; pass a local directory as root and the URL as remote=.")
    return Path(run.manager.storage.path(f"{step_dir(step)}.{_STAGING}"))


def _check(accelerator: Any) -> None:
    if accelerator.project_configuration.automatic_checkpoint_naming:
        raise ValueError("spotsafe.accelerate names checkpoints by global step, and this Accelerator has "
                         "ProjectConfiguration(automatic_checkpoint_naming=True), whose counter load_state forgets "
                         "(accelerate#3306); create it without automatic_checkpoint_naming.")


def _attach(accelerator: Any, run: Run) -> None:
    """Make ``run`` checkpoint through ``accelerator`` (once per run)."""
    if getattr(run, "_spotsafe_accelerator", None) is accelerator:
        return
    _check(accelerator)
    run.use_saver(lambda step, reason: _save(accelerator, run, step))
    if accelerator.num_processes > 1:  # used only where spotsafe's own agreement is not there
        def any_rank(flag: bool) -> bool:
            if flag:
                accelerator.set_trigger()
            return bool(accelerator.check_trigger())

        run.use_agreement(any_rank)
    run._spotsafe_accelerator = accelerator  # type: ignore[attr-defined]


def _save(accelerator: Any, run: Run, step: int) -> SaveStats | None:
    """Every rank: ``save_state`` into the staging folder of ``step``; rank 0 then commits it."""
    folder = _staging_dir(run, step)
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)  # a crashed save of the same step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()  # every rank's files are in: the folder is whole
    stats = None
    if run.writer:
        try:
            stats = run.manager.save_files(step, folder, kind=KIND)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the commit holds links to its files
    return stats


def load_state(accelerator: Any, run: Run) -> int:
    """Resume ``accelerator``'s prepared objects from the newest valid checkpoint of ``run``; its step (0: none).

    Call it on every rank after ``accelerator.prepare(...)`` and ``register_for_checkpointing``,
    inside ``spotsafe.Run(root, None)``. It also makes ``run`` save through
    ``accelerator.save_state``: whenever the run's policy asks (``save_every``), at a notice
    and at the end, named by step.

    Example::

        acc = Accelerator()
        model, opt, sched = acc.prepare(model, opt, sched)
        loader = spotsafe.data.ResumableDataLoader(dataset, batch_size=32, seed=0)
        acc.register_for_checkpointing(loader)       # the exact data position
        with spotsafe.Run("runs/exp1", None, save_every="15m", remote="s3://b/exp1") as run:
            spotsafe.accelerate.load_state(acc, run)
            batches = iter(loader)
            for step in run.steps(total):
                ...                                  # one optimizer step
        # a notice: checkpointed, exit 75; the end: a final checkpoint, exit 0
    """
    _attach(accelerator, run)
    path = run.resume_path()
    if path is None:
        return 0
    accelerator.load_state(path)
    logger.info("Accelerate state loaded from %s (step %d)", path, run.start_step)
    return run.start_step


def save_state(accelerator: Any, run: Run, step: int | None = None) -> SaveStats | None:
    """Checkpoint now, as ``step`` (default: the run's last finished step); on every rank.

    ``accelerator.save_state`` named by step and committed like any spotsafe checkpoint; returns
    the save's stats on rank 0 (durable later: ``run.manager.wait()``), None elsewhere.
    """
    _attach(accelerator, run)
    step = run.step if step is None else step
    if step <= 0:
        raise ValueError(f"save_state needs a step after the first (got {step}); call it after run.step_done(step) "
                         "or pass step=.")
    stats = _save(accelerator, run, step)
    run.checkpointed(step, stats, reason="manual")
    return stats
