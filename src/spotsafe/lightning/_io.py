"""Lightning's ``CheckpointIO`` over spotsafe's checkpoint manager.

Every checkpoint Lightning writes or reads passes through the strategy's ``CheckpointIO``
(``Strategy.save_checkpoint`` calls it on global rank 0 only; ``load_checkpoint`` runs on
every rank). Where a path points decides who handles it:

* ``<root>/step-N`` (the run's root, a committed-checkpoint name): spotsafe's format.
  Saving hands the checkpoint dict to ``run.manager.save`` (one component per top-level key,
  tensors as raw bytes and everything else as JSON in the manifest, no pickle; checksummed,
  committed manifest-last and uploaded in the background; it returns after a memory copy,
  so it is never wrapped in Lightning's ``AsyncCheckpointIO``). Loading reads it back with
  ``run.manager.read_values``: every byte verified, from the local root or the remote.
  Removing does nothing: the run's ``keep=`` owns retention.
* Anywhere else (a user's ``ModelCheckpoint`` directory, ``trainer.save_checkpoint("x.ckpt")``):
  Lightning's own ``TorchCheckpointIO``, as without spotsafe, so ``best_model_path``,
  top-k removal and ``LightningModule.load_from_checkpoint`` keep working on those files.
  They are the user's exports; spotsafe resumes from its own checkpoints only.

A checkpoint dict spotsafe cannot hold (a hyper-parameter that is an arbitrary object) is
refused with one sentence naming the key and the way out.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import lightning
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from .._format import parse_step_dir, step_dir
from .._state._tree import encode
from .._storage import LocalFiles, is_url
from ..errors import UnsupportedStateError

if TYPE_CHECKING:
    from .._engine import SaveStats
    from ..run import Run

logger = logging.getLogger("spotsafe.lightning")

HPARAMS_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


def _culprit(obj: Any, path: tuple) -> tuple[tuple, Any] | None:
    """The first value in ``obj`` that spotsafe's manifest cannot hold, with where it sits; None when all can."""
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            found = _culprit(v, (*path, k))
            if found is not None:
                return found
        return None
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            found = _culprit(v, (*path, i))
            if found is not None:
                return found
        return None
    try:
        encode(obj, [], path)
    except UnsupportedStateError:
        return path, obj
    return None


def refusal(key: str, value: Any) -> UnsupportedStateError | None:
    """The error for a checkpoint entry spotsafe cannot store, naming ``key`` and the way out; None when it can."""
    found = _culprit(value, (key,))
    if found is None:
        return None
    path, obj = found
    where = "".join(f"[{p!r}]" for p in path)
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    out = (f"self.save_hyperparameters(ignore=[{path[1]!r}])" if key in HPARAMS_KEYS and len(path) > 1
           else "drop it in on_save_checkpoint")
    return UnsupportedStateError(
        f"Lightning's checkpoint entry {key!r} holds a {kind} at {where}, which spotsafe cannot store without pickle; "
        f"make it a plain value (a number, string, list, dict or tensor) or leave it out of the checkpoint ({out}).")


class SpotSafeCheckpointIO(CheckpointIO):
    """Stores Lightning's checkpoints of the run's root in spotsafe's format (see the module docstring).

    Made by :class:`~spotsafe.lightning.SpotSafe` (``spot.checkpoint_io``); the callback puts
    it into the Trainer's strategy when the Trainer still has Lightning's default one.

    Args:
        run: The entered ``spotsafe.Run(root, None)``.
        fallback: The ``CheckpointIO`` for paths outside the root (default ``TorchCheckpointIO``).
    """

    def __init__(self, run: Run, *, fallback: CheckpointIO | None = None) -> None:
        super().__init__()
        self.run = run
        self.fallback = fallback if fallback is not None else TorchCheckpointIO()
        self.reason: str | None = None       # set by the callback's saver around its trainer.save_checkpoint
        self.last_stats: SaveStats | None = None
        self.error: BaseException | None = None  # a refusal during the saver's save, raised by the saver on every rank

    # -- where a path goes ---------------------------------------------------------------
    def path_of(self, step: int) -> str:
        """The path of checkpoint ``step`` in the run's root (what ``run.resume_path()`` names)."""
        mgr = self.run.manager
        assert mgr is not None, "the Run is not entered"
        name = step_dir(step)
        return str(mgr.storage.path(name)) if isinstance(mgr.storage, LocalFiles) else f"{mgr.root}/{name}"

    def step_of(self, path: str | os.PathLike) -> int | None:
        """The step a path names when it is a checkpoint of the run's root; None for a path outside the root.

        Raises ValueError for any other name in the root: it holds spotsafe's checkpoints only.
        """
        mgr = self.run.manager
        if mgr is None:
            return None
        text = os.fspath(path).rstrip("/")
        parent, _, name = text.rpartition("/")
        root = self.path_of(0).rpartition("/")[0]
        inside = (parent == root.rstrip("/") if is_url(text) or is_url(root)
                  else os.path.realpath(parent or ".") == os.path.realpath(root))
        if not inside:
            return None
        step = parse_step_dir(name)
        if step is None:
            raise ValueError(f"Lightning was asked to write or read {text}, in spotsafe's root, which holds only the "
                             "run's step-N checkpoints; point ModelCheckpoint(dirpath=...) or save_checkpoint() at "
                             "another directory.")
        return step

    # -- CheckpointIO ----------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH,
                        storage_options: Any | None = None) -> None:
        step = self.step_of(path)
        if step is None:
            self.fallback.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if checkpoint.get("global_step") != step:
            raise ValueError(f"Lightning was asked to save the checkpoint of global step {checkpoint.get('global_step')} "
                             f"as {path}, the name of step {step} in spotsafe's root; save it under "
                             f"{step_dir(int(checkpoint.get('global_step') or 0))} or outside the root.")
        try:
            stats = self.run.manager.save(step, dict(checkpoint), epoch=checkpoint.get("epoch"),  # type: ignore[union-attr]
                                          metadata={"framework": "lightning", "lightning": lightning.__version__})
        except UnsupportedStateError:
            error = next((e for k, v in checkpoint.items() if (e := refusal(k, v)) is not None), None)
            if error is None:
                raise
            if self.reason is None:
                raise error from None
            self.error = error  # the saver raises it on every rank (a raise here would leave the others waiting)
            return
        self.last_stats = stats
        if self.reason is None:
            logger.info("Lightning saved %s itself; spotsafe committed it", path)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        step = self.step_of(path)
        if step is None:
            return self.fallback.load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        values = self.run.manager.read_values(step)  # type: ignore[union-attr]
        checkpoint = {k: v for k, v in values.items() if not k.startswith("__")}  # the manager's own RNG component
        if map_location is not None:
            from lightning.fabric.utilities.apply_func import move_data_to_device

            checkpoint = move_data_to_device(checkpoint, map_location)
        return checkpoint

    def remove_checkpoint(self, path: _PATH) -> None:
        if self.step_of(path) is None:
            self.fallback.remove_checkpoint(path)
        else:
            logger.debug("Not removing %s: spotsafe's retention (keep=) decides which checkpoints stay", path)

    def teardown(self) -> None:
        self.fallback.teardown()  # the run closes its manager when it ends
