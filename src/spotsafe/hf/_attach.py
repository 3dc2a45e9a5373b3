"""``spotsafe.hf.attach``: one call between building a Trainer and ``trainer.train()``.

It checks what would make the Trainer's checkpoints unable to resume or spotsafe deaf to a
notice, before any step runs, then adds the callback and installs the run's saver:

* ``save_only_model=True`` is refused: such a checkpoint has no optimizer, scheduler or RNG
  state, so the run could not continue from it.
* ``enable_jit_checkpoint=True`` is turned off (with a warning): its SIGTERM handler replaces
  spotsafe's without calling it, so spotsafe would never see the notice, and it ends
  ``train()`` normally (exit 0) with an uncommitted folder. spotsafe's callback does what it
  meant to do, for every notice source, with a commit and exit 75.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from .._storage import is_url
from ._callback import SpotSafeCallback

if TYPE_CHECKING:
    from transformers import Trainer

    from ..run import Run

logger = logging.getLogger("spotsafe.hf")


def attach(trainer: Trainer, run: Run) -> SpotSafeCallback:
    """Make ``trainer``'s checkpoints commits of ``run`` and stop it safely on a notice.

    Call it after building the Trainer and before ``trainer.train()``, inside
    ``with spotsafe.Run(root, None) as run:``. Every ``checkpoint-N/`` the Trainer writes
    (``save_steps``, epochs, the end of training, and the run's own ``save_every`` and notices)
    becomes ``<root>/step-N/``: hard-linked, checksummed and committed in the background, then
    uploaded to the run's remote. On a notice (SIGTERM, a cloud's warning; agreed across ranks)
    the step just finished is checkpointed, made durable, and ``trainer.train()`` raises
    :class:`spotsafe.Preempted` (exit 75). Resume with
    ``trainer.train(resume_from_checkpoint=run.resume_path())``.

    Args:
        trainer: A ``transformers.Trainer`` (or subclass), not yet training.
        run: The entered ``spotsafe.Run(root, None)``: a local root (the Trainer's files are
            hard-linked into it; put ``output_dir`` on the same file system), any remote.

    Returns:
        The callback added to the Trainer.

    Raises:
        ValueError: ``save_only_model=True``, a Run that holds its own state, a URL root, or a
            Trainer that already has one.

    Example::

        with spotsafe.Run("runs/exp1", None, remote="s3://bucket/exp1") as run:
            trainer = Trainer(model=model, args=TrainingArguments(output_dir="out", save_steps=50), ...)
            spotsafe.hf.attach(trainer, run)
            trainer.train(resume_from_checkpoint=run.resume_path())
    """
    if run.state is not None:
        raise ValueError("spotsafe.hf.attach needs a Run whose state the Trainer saves and loads; enter it as "
                         "spotsafe.Run(root, None).")
    if is_url(run.root):
        raise ValueError(f"spotsafe.hf commits the Trainer's checkpoint folders into a local root, and {run.root} is "
                         "a URL; pass a local directory as the Run's root and the URL as remote=.")
    run_writer = run.writer  # raises when the Run is not entered
    args = trainer.args
    if args.save_only_model:
        raise ValueError("TrainingArguments(save_only_model=True) leaves the optimizer, scheduler and RNG states out "
                         "of every checkpoint, so none could resume the run; drop save_only_model (each checkpoint "
                         "still holds the model in model.safetensors).")
    if any(isinstance(cb, SpotSafeCallback) for cb in trainer.callback_handler.callbacks):
        raise ValueError("This Trainer already has spotsafe's callback; call spotsafe.hf.attach once per Trainer.")
    _turn_off_jit_checkpoint(trainer)
    callback = SpotSafeCallback(run, trainer)
    trainer.add_callback(callback)  # last: after DefaultFlowCallback has set this step's flags
    run.use_saver(callback.save)
    logger.debug("spotsafe.hf attached to %s (writing rank: %s)", type(trainer).__name__, run_writer)
    return callback


def _turn_off_jit_checkpoint(trainer: Trainer) -> None:
    """Remove the Trainer's JIT checkpoint callback and give SIGTERM back to the handler it replaced."""
    if not getattr(trainer.args, "enable_jit_checkpoint", False):
        return
    for cb in list(trainer.callback_handler.callbacks):
        if type(cb).__name__ != "JITCheckpointCallback":
            continue
        jit = getattr(cb, "jit_manager", None)
        if jit is not None and signal.getsignal(signal.SIGTERM) == jit._sigterm_handler:
            previous = jit._original_sigterm_handler
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        trainer.callback_handler.remove_callback(cb)
    logger.warning("TrainingArguments(enable_jit_checkpoint=True) is turned off for this Trainer: its SIGTERM handler "
                   "would hide the notice from spotsafe and end training with exit 0, while spotsafe checkpoints "
                   "on every notice itself and exits 75; drop enable_jit_checkpoint to silence this.")
