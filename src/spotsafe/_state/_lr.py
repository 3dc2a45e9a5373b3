"""The linear scaling rule for an elastic job that keeps its per-rank batch: when the world
size changes from W to W', every learning rate is multiplied by W'/W (Goyal et al. 2017,
arXiv:1706.02677), in the optimizers and in the LR schedulers that compute from them."""

from __future__ import annotations

from typing import Any

import torch

LR_SCALING = ("linear",)
"""The rules ``Run(scale_lr=...)`` accepts."""


def _times(v: Any, factor: float) -> Any:
    if isinstance(v, torch.Tensor):
        return v.mul_(factor)  # a tensor lr (capturable optimizers) keeps its identity
    return v * factor


def scale_learning_rates(state: dict[str, Any], factor: float) -> list[str]:
    """Multiply every learning rate in ``state`` by ``factor``: each optimizer's param groups
    (``lr`` and the ``initial_lr`` schedulers keep) and each LR scheduler's ``base_lrs`` and last
    learning rates. Returns the names of what changed."""
    changed = []
    for name, obj in state.items():
        if isinstance(obj, torch.optim.Optimizer):
            for g in obj.param_groups:
                for key in ("lr", "initial_lr"):
                    if key in g:
                        g[key] = _times(g[key], factor)
            changed.append(name)
        elif isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
            obj.base_lrs = [_times(b, factor) for b in obj.base_lrs]
            last = getattr(obj, "_last_lr", None)
            if last is not None:
                obj._last_lr = [_times(v, factor) for v in last]
            changed.append(name)
    return changed
