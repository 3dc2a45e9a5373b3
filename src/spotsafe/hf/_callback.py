"""The Trainer callback: each ``checkpoint-N/`` a spotsafe commit, and a notice answered with exit 75.

The Trainer keeps its own save format and its own resume (``_load_from_checkpoint``, the RNG
files, the data skip); spotsafe adds what it lacks. The callback is the last of the Trainer's
callbacks (``attach`` adds it), so the Trainer's ``DefaultFlowCallback`` has already decided
what the step does when it runs. Per optimizer step, on every rank, in the training thread:

* ``on_step_end``: ``run.step_done(global_step)``. When the run's policy or a notice (agreed
  across ranks by the Run) wants a checkpoint, the Run calls :meth:`SpotSafeCallback.save`,
  which makes the Trainer write ``checkpoint-N`` exactly as its own save does
  (``Trainer._save_checkpoint``, as the Trainer's JIT checkpoint does), waits for every rank's
  files (a barrier), and hands the folder to ``run.manager.save_files`` on the writing rank.
  On a notice the Run waits until that commit is durable and raises ``spotsafe.Preempted``;
  the callback holds it, turns on this step's log (so the last loss is reported, as it is
  for every other step) and turns off its evaluation and save, and raises it from
  ``on_log`` (or, failing that, ``on_epoch_end``/``on_train_end``): ``trainer.train()``
  ends with ``SystemExit(75)``.
* ``on_save``: the Trainer's own saves (``save_steps``, epochs, the end) are committed the
  same way and reported with ``run.checkpointed``.

The commit hard-links the files, so the Trainer's ``save_total_limit`` rotation may delete a
folder whose checksums are still being computed or whose upload is still running. What it must
never do is write into a folder already handed over (the links share its inodes): a folder of
a step after the one resumed from is left over from an attempt that got further, and is
removed at ``on_train_begin`` before the Trainer could write that step again in place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

from .._dist._collective import barrier
from .._format import step_dir
from ..run import Preempted

if TYPE_CHECKING:
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

    from .._engine import SaveStats
    from ..run import Run

logger = logging.getLogger("spotsafe.hf")

KIND = "hf-trainer"
"""The component name and type of a Trainer checkpoint in spotsafe's manifest."""


def checkpoint_steps(output_dir: str) -> dict[int, str]:
    """The Trainer's ``checkpoint-N`` folders in ``output_dir``: step -> path."""
    found: dict[int, str] = {}
    try:
        entries = list(os.scandir(output_dir))
    except FileNotFoundError:
        return found
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    for entry in entries:
        tail = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and tail.isdigit() and entry.is_dir(follow_symlinks=False):
            found[int(tail)] = entry.path
    return found


class SpotSafeCallback(TrainerCallback):
    """Commits the Trainer's checkpoints to a :class:`spotsafe.Run` and stops it safely on a notice.

    Made and added by :func:`spotsafe.hf.attach`, which also installs :meth:`save` as the
    run's saver; see the module docstring for what each hook does.

    Args:
        run: The entered ``spotsafe.Run(root, None)``.
        trainer: The Trainer whose checkpoints it commits.
    """

    def __init__(self, run: Run, trainer: Trainer) -> None:
        self.run = run
        self.trainer = trainer
        self.saved: int | None = None  # the newest step committed by this callback (either way)
        self.stats: list[SaveStats] = []  # what each commit cost the training thread (writing rank)
        self._preempted: Preempted | None = None
        self._flow_done: float | None = None  # when on_step_end returned on a step the Trainer saves itself

    # -- the run's saver ---------------------------------------------------------------------
    def save(self, step: int, reason: str) -> SaveStats | None:
        """The run's saver (every rank, the same step): the Trainer writes ``checkpoint-{step}``, then it is
        committed. Returns the manager's SaveStats on the writing rank, None on the others."""
        trainer = self.trainer
        if trainer.state.global_step != step:
            raise RuntimeError(f"spotsafe asked for a checkpoint of step {step}, and the Trainer is at step "
                               f"{trainer.state.global_step}; call run.step_done only through spotsafe.hf.attach's "
                               "callback.")
        if self.saved != step:
            trainer._save_checkpoint(trainer.model, trial=None)  # the Trainer's own save, as its JIT checkpoint does
        logger.info("Checkpoint %s of the Trainer (%s)", step_dir(step), reason)
        return self._commit(step)

    def _commit(self, step: int) -> SaveStats | None:
        """After every rank wrote its files into ``checkpoint-{step}``: hand the folder to the manager."""
        barrier()  # rank k writes rng_state_k.pth: every file is there before the writing rank links them
        if self.saved == step:  # the Trainer saved this step twice (e.g. a step end and an epoch end)
            return None
        self.saved = step
        if not self.run.writer:
            return None
        state = self.trainer.state
        folder = os.path.join(self.trainer._get_output_dir(trial=None), f"{PREFIX_CHECKPOINT_DIR}-{step}")
        epoch = math.floor(state.epoch) if state.epoch is not None else None
        manager = self.run.manager
        assert manager is not None  # the run is entered: attach checked it
        stats = manager.save_files(step, folder, kind=KIND, epoch=epoch,
                                   metadata={"hf_epoch": float(state.epoch or 0.0)})
        self.stats.append(stats)
        return stats

    # -- the Trainer's hooks -----------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        run = self.run
        run.total = state.max_steps  # the step at which the run is complete
        if run.step != state.global_step:
            logger.warning("The Trainer starts at step %d and the run at step %d: pass "
                           "resume_from_checkpoint=run.resume_path() to trainer.train(), so both resume from the "
                           "run's newest valid checkpoint.", state.global_step, run.step)
            run.step = state.global_step
        self.saved = None
        self._preempted = None
        if run.writer:
            self._remove_stale(args, state.global_step)
        barrier()

    def _remove_stale(self, args: TrainingArguments, step: int) -> None:
        """Remove ``checkpoint-K`` folders with K > ``step``: left by an attempt that got further than the
        checkpoint resumed from, their files may be hard links of a commit, and the Trainer would
        write into them in place when it reaches step K again."""
        stale = {k: p for k, p in checkpoint_steps(self.trainer._get_output_dir(trial=None)).items() if k > step}
        for k in sorted(stale):
            shutil.rmtree(stale[k], ignore_errors=True)
        if stale:
            logger.warning("Removed %s from %s: left over from an earlier attempt that got past step %d, the "
                           "step this one resumes from.", ", ".join(f"{PREFIX_CHECKPOINT_DIR}-{k}" for k in
                                                                  sorted(stale)), args.output_dir, step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        step = state.global_step
        if step >= state.max_steps and args.save_strategy == SaveStrategy.NO:
            control.should_save = True  # the last step is always a checkpoint: a restart finds the end
        try:
            self.run.step_done(step)
        except Preempted as stop:
            # checkpoint-N is durable: report this step's logs, then leave (on_log raises it)
            self._preempted = stop
            control.should_log = True
            control.should_evaluate = control.should_save = False
            control.should_training_stop = True
            return control
        if self.saved == step:
            control.should_save = False  # the run's saver has just written and committed this step
        # the Trainer's own save follows (after the step's log): its time is the save's stall too
        self._flow_done = time.perf_counter() if control.should_save and not control.should_evaluate else None
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        step = state.global_step
        if self.saved == step:
            return
        stats = self._commit(step)
        if stats is not None and self._flow_done is not None:
            stats = dataclasses.replace(stats, stall_s=max(stats.stall_s, time.perf_counter() - self._flow_done))
        self._flow_done = None
        self.run.checkpointed(step, stats)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl:
        self._raise_preempted()
        if control.should_save and self.saved == state.global_step:
            control.should_save = False  # an epoch's end on a step already committed: not written twice
        return control

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and self.run.writer:
            values = {k: float(v) for k, v in logs.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
            if values:
                self.run.log(step=state.global_step, **values)
        self._raise_preempted()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._raise_preempted()

    def _raise_preempted(self) -> None:
        stop, self._preempted = self._preempted, None
        if stop is not None:
            raise stop
