"""The Lightning callback: the run's checkpoints through Lightning, a notice answered with exit 75.

The Trainer keeps its own checkpoint dict and its own restore (``ckpt_path``: model,
optimizers, schedulers, loops, callbacks, the train loader's position); spotsafe adds what
it lacks, from hooks Lightning calls on every rank, in the training thread:

* ``setup``: puts :class:`SpotSafeCheckpointIO` into the strategy (when the Trainer still has
  Lightning's default ``TorchCheckpointIO``), refuses hyper-parameters the checkpoint could not
  hold before any step runs, and installs the run's saver: ``trainer.save_checkpoint(<root>/step-N)``
  on every rank (Lightning dumps the dict on every rank and writes it on rank 0, through the
  CheckpointIO, into ``run.manager``).
* ``on_sanity_check_start``/``on_train_start``: spotsafe answers SIGTERM. Lightning's own
  handler (installed at ``fit``, chaining spotsafe's) would end ``fit`` with exit 0 after the
  batch, without a checkpoint, and under DDP broadcast from inside the signal handler; the
  handler spotsafe had is put back.
* ``on_train_batch_end``: ``run.step_done(global_step)`` each time the global step advanced
  (not on the micro-batches of gradient accumulation). On a notice, agreed across ranks by the
  Run, that saves the step just finished, waits until it is durable and raises
  ``spotsafe.Preempted`` (``SystemExit(75)``) out of the hook: Lightning runs no validation and
  re-raises it out of ``fit``.
* RNG: Lightning saves none. Every rank's python, numpy, torch and CUDA states ride in this
  callback's ``state_dict`` (gathered from every rank when the run saves) and each rank puts its
  own back before the first training batch after a resume. So that the training batches draw
  the same numbers as in an uninterrupted run whatever ran between them, the state at the end of
  a training batch is also put back before the next one after a validation pass or an epoch
  boundary: validation never advances the training randomness. (A resume at an epoch's last
  batch skips that epoch's validation, as Lightning's restart does for its own checkpoints.)
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings
from typing import TYPE_CHECKING, Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from .. import data
from .._dist._collective import distributed as _distributed
from .._dist._collective import from_rank0 as _from_rank0
from ..errors import SpotsafeWarning, UnsupportedStateError
from ._io import SpotSafeCheckpointIO, refusal
from ._loader import ResumableDataLoader
from ._rng import PendingRng, Snapshot, gather

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from .._engine import SaveStats
    from ..run import Run

logger = logging.getLogger("spotsafe.lightning")


def _loaders(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _loaders(v)]
    return [] if obj is None else [obj]


class SpotSafe(Callback):
    """Makes a Lightning ``Trainer`` checkpoint through a spotsafe run and stop safely on a notice.

    Args:
        run: The entered ``spotsafe.Run(root, None)`` (the framework holds the training state).
        fallback: The ``CheckpointIO`` for checkpoints outside the run's root (a user's
            ``ModelCheckpoint``): default Lightning's ``TorchCheckpointIO``.

    Example::

        with spotsafe.Run("runs/exp1", None, save_every=50, remote="s3://bucket/exp1") as run:
            spot = spotsafe.lightning.SpotSafe(run)
            trainer = L.Trainer(max_epochs=2, callbacks=[spot], enable_checkpointing=False)
            trainer.fit(model, train_dataloaders=loader, ckpt_path=spot.resume_path())

    Use :class:`spotsafe.lightning.ResumableDataLoader` as the train loader for an exact
    resume in the middle of an epoch. A job of several processes runs under ``torchrun``.
    """

    def __init__(self, run: Run, *, fallback: CheckpointIO | None = None) -> None:
        if run.state is not None:
            raise ValueError("spotsafe.lightning.SpotSafe needs a Run whose framework holds the state: enter "
                             "spotsafe.Run(root, None, ...) and let Lightning save the model and optimizers.")
        self.run = run
        self.checkpoint_io = SpotSafeCheckpointIO(run, fallback=fallback)
        self._trainer: pl.Trainer | None = None
        self._last: int | None = None          # the global step last handed to run.step_done
        self._snap: Snapshot | None = None     # the RNGs at the end of the last training batch
        self._dirty = False                    # something ran since that batch (validation, an epoch's end)
        self._pending: PendingRng | None = None  # the RNGs a resume put back at the next training batch
        self._together = False                 # inside the run's own save: every rank dumps at this point
        run.use_saver(self._save)

    @property
    def state_key(self) -> str:
        return "SpotSafe"

    def resume_path(self) -> str | None:
        """The newest valid checkpoint of the run (local or remote) for ``trainer.fit(ckpt_path=...)``; None
        for a fresh start. See :meth:`spotsafe.Run.resume_path`: call it on every rank."""
        return self.run.resume_path()

    # -- the run's saver -------------------------------------------------------------------
    def _save(self, step: int, reason: str) -> SaveStats | None:
        """``trainer.save_checkpoint`` of ``step`` into the run's root, on every rank (the Run calls it)."""
        trainer, io = self._trainer, self.checkpoint_io
        if trainer is None:
            raise RuntimeError(f"spotsafe cannot checkpoint step {step}: no Trainer has fitted with this callback; pass "
                               "it in Trainer(callbacks=[...]) before trainer.fit().")
        if trainer.global_step != step:
            raise RuntimeError(f"spotsafe was asked to checkpoint step {step} while the Trainer is at global step "
                               f"{trainer.global_step}; call run.step_done() only from this callback.")
        io.reason, io.last_stats, io.error = reason, None, None
        self._together = True
        try:
            trainer.save_checkpoint(io.path_of(step), weights_only=False)
        finally:
            self._together = False
            io.reason = None
        error, io.error = io.error, None
        if _distributed():
            text = _from_rank0(str(error) if error is not None else None)
            if text is not None and error is None:
                error = UnsupportedStateError(text)
        if error is not None:
            raise error
        return io.last_stats if self.run.writer else None

    # -- set-up ----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        if trainer.world_size > 1 and os.environ.get("RANK") != str(trainer.global_rank):
            # Lightning's own launcher starts the other ranks inside fit(), after the Run was entered without
            # RANK/WORLD_SIZE: every process would think it writes the root
            raise RuntimeError(f"spotsafe.lightning runs a job of {trainer.world_size} processes when each has its RANK "
                               "and WORLD_SIZE before the Run is entered; launch the script with `torchrun "
                               f"--nproc-per-node {trainer.num_devices} train.py` instead of Lightning's own launcher.")
        strategy = trainer.strategy
        if strategy.checkpoint_io is not self.checkpoint_io:
            if type(strategy.checkpoint_io) is not TorchCheckpointIO:
                raise ValueError(f"The Trainer stores checkpoints through a {type(strategy.checkpoint_io).__name__}; "
                                 "spotsafe stores them through spot.checkpoint_io (asynchronous already, so not wrapped "
                                 "in AsyncCheckpointIO): drop that plugin, or pass it as SpotSafe(run, fallback=...) "
                                 "for checkpoints outside the run's root.")
            strategy.checkpoint_io = self.checkpoint_io
        for key, owner in (("hyper_parameters", pl_module),
                           ("datamodule_hyper_parameters", getattr(trainer, "datamodule", None))):
            hparams = getattr(owner, "hparams", None) if owner is not None else None
            if hparams and (error := refusal(key, dict(hparams))) is not None:
                raise error
        if trainer.world_size > 1:  # unused where spotsafe's own agreement runs (torchrun)
            self.run.use_agreement(lambda flag: trainer.strategy.reduce_boolean_decision(flag, all=False))

    def _own_sigterm(self, trainer: pl.Trainer) -> None:
        """Put back the SIGTERM handler Lightning replaced at ``fit`` (spotsafe's, when it watches signals)."""
        connector = getattr(trainer, "_signal_connector", None)
        current = signal.getsignal(signal.SIGTERM)
        if connector is None or threading.current_thread() is not threading.main_thread() \
                or type(current).__name__ != "_HandlersCompose":
            return
        prior = getattr(connector, "_original_handlers", {}).get(signal.SIGTERM)
        signal.signal(signal.SIGTERM, prior if prior is not None else signal.SIG_DFL)
        connector.received_sigterm = False  # a SIGTERM before now reached spotsafe's handler too (it was chained)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._own_sigterm(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._own_sigterm(trainer)
        self._last = trainer.global_step
        self._check_loaders(trainer)

    def _check_loaders(self, trainer: pl.Trainer) -> None:
        for loader in _loaders(trainer.train_dataloader):
            if isinstance(loader, ResumableDataLoader):
                s = loader.sampler
                if (s.num_replicas, s.rank) != (trainer.world_size, trainer.global_rank):
                    raise ValueError(f"The train loader on rank {trainer.global_rank} of {trainer.world_size} was made "
                                     f"with num_replicas={s.num_replicas}, rank={s.rank}; make it with "
                                     f"num_replicas={trainer.world_size}, rank={trainer.global_rank} (torchrun's "
                                     "WORLD_SIZE and RANK).")
            elif isinstance(loader, data.ResumableDataLoader):
                raise TypeError("spotsafe.data.ResumableDataLoader counts the batches left and restarts its epoch at "
                                "Lightning's set_epoch; use spotsafe.lightning.ResumableDataLoader (same arguments) "
                                "as a Lightning train loader.")
            elif not (callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict",
                                                                                       None))):
                warnings.warn(f"The train loader ({type(loader).__name__}) keeps no position: a resume in the middle "
                              "of an epoch replays or skips batches; use spotsafe.lightning.ResumableDataLoader for an "
                              "exact one.", SpotsafeWarning, stacklevel=2)

    # -- every batch -----------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            self._pending.apply()
            self._pending = None
        elif self._dirty and self._snap is not None:
            self._snap.restore()
        self._dirty = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._snap = Snapshot()
        step = trainer.global_step
        if step != self._last:
            self._last = step
            self.run.step_done(step)  # saves by policy; raises spotsafe.Preempted after a notice's checkpoint

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._dirty = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._dirty = True

    # -- the checkpoint --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        snap = self._snap if self._snap is not None else Snapshot()
        trainer = self._trainer
        return {"step": trainer.global_step if trainer is not None else self.run.step,
                "world_size": trainer.world_size if trainer is not None else 1,
                "ranks": gather(snap.saved(), self._together)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank = self._trainer.global_rank if self._trainer is not None else 0
        self._pending = PendingRng(state_dict, rank)
