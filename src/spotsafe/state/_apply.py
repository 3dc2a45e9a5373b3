"""Checking a decoded checkpoint against the user's objects, then loading it into them.

Restore promises that a checkpoint which does not fit (a missing key, a wrong shape)
raises before any object is modified. Modules and optimizers are checked up front
(keys, shapes, dtypes, parameter groups); every other stateful object is loaded first
with a backup of its state dict, modules last, and if any load fails the objects already
loaded get their backups back. Plain values and RNG states are set only after all that
succeeded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import StateMismatchError
from ._rng import restore_rng

RNG_COMPONENT = "__rng__"

# Optimizer state entries that always have the shape of their parameter.
_PARAM_SHAPED = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
                           "acc_delta", "sum", "grad_avg", "ax", "prev", "exp_inf"})
_WAY_OUT = "restore into the objects it was saved from, or start a new run root"


def is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def check_components(ckpt: str, saved: dict[str, str], state: dict[str, Any]) -> None:
    """Both sides must name the same components, each of the same kind (stateful or value)."""
    missing = [n for n in state if n not in saved]
    extra = [n for n in saved if n not in state]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"has no {', '.join(map(repr, missing))} that the state holds")
        if extra:
            parts.append(f"holds {', '.join(map(repr, extra))} that the state lacks")
        raise StateMismatchError(f"Checkpoint {ckpt} {' and '.join(parts)}; {_WAY_OUT}.")
    for name, kind in saved.items():
        if (kind == "stateful") != is_stateful(state[name]):
            now = "an object with state_dict()" if is_stateful(state[name]) else "a plain value"
            raise StateMismatchError(f"Checkpoint {ckpt} saved state[{name!r}] as {kind} but it is now {now}; {_WAY_OUT}.")


def _describe(t: Any) -> str:
    return f"shape {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" if isinstance(t, torch.Tensor) else type(t).__name__


def _check_module(ckpt: str, name: str, module: torch.nn.Module, sd: dict) -> None:
    current = module.state_dict()
    missing = [k for k in current if k not in sd]
    unexpected = [k for k in sd if k not in current]
    if missing or unexpected:
        raise StateMismatchError(
            f"Checkpoint {ckpt} does not fit state[{name!r}]: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}; {_WAY_OUT}.")
    for key, cur in current.items():
        new = sd[key]
        if isinstance(cur, torch.Tensor) and (not isinstance(new, torch.Tensor) or new.shape != cur.shape
                                              or new.dtype != cur.dtype):
            raise StateMismatchError(
                f"Checkpoint {ckpt} does not fit state[{name!r}]: {key!r} has {_describe(new)} in the checkpoint "
                f"and {_describe(cur)} in the model; {_WAY_OUT}.")


def _check_optimizer(ckpt: str, name: str, opt: torch.optim.Optimizer, sd: dict) -> None:
    groups = sd.get("param_groups")
    if not isinstance(groups, list) or not isinstance(sd.get("state"), dict):
        raise StateMismatchError(f"Checkpoint {ckpt} holds no optimizer state for state[{name!r}]; {_WAY_OUT}.")
    if len(groups) != len(opt.param_groups):
        raise StateMismatchError(f"Checkpoint {ckpt} has {len(groups)} parameter groups for state[{name!r}], "
                                 f"the optimizer has {len(opt.param_groups)}; {_WAY_OUT}.")
    params: dict[Any, torch.Tensor] = {}
    for i, (g, cur) in enumerate(zip(groups, opt.param_groups)):
        if len(g["params"]) != len(cur["params"]):
            raise StateMismatchError(f"Checkpoint {ckpt} has {len(g['params'])} parameters in group {i} of "
                                     f"state[{name!r}], the optimizer has {len(cur['params'])}; {_WAY_OUT}.")
        params.update(zip(g["params"], cur["params"]))
    for pid, entry in sd["state"].items():
        p = params.get(pid)
        if p is None:
            raise StateMismatchError(f"Checkpoint {ckpt} has state for unknown parameter {pid!r} in "
                                     f"state[{name!r}]; {_WAY_OUT}.")
        for key, val in entry.items():
            if key in _PARAM_SHAPED and isinstance(val, torch.Tensor) and val.shape != p.shape:
                raise StateMismatchError(
                    f"Checkpoint {ckpt} does not fit state[{name!r}]: {key!r} of parameter {pid} has shape "
                    f"{tuple(val.shape)}, the parameter has {tuple(p.shape)}; {_WAY_OUT}.")


def apply_checkpoint(ckpt: str, state: dict[str, Any], loaded: dict[str, Any], rng: dict | None) -> None:
    """Load ``loaded`` (component -> decoded state dict or value) into ``state``; all or nothing."""
    for name, obj in state.items():
        if isinstance(obj, torch.nn.Module):
            _check_module(ckpt, name, obj, loaded[name])
        elif isinstance(obj, torch.optim.Optimizer):
            _check_optimizer(ckpt, name, obj, loaded[name])
    stateful = [n for n, o in state.items() if is_stateful(o)]
    order = [n for n in stateful if not isinstance(state[n], torch.nn.Module)]
    order += [n for n in stateful if isinstance(state[n], torch.nn.Module)]
    done: list[tuple[str, Any]] = []
    try:
        for name in order:
            obj, sd = state[name], loaded[name]
            if isinstance(sd, dict) and not sd and not obj.state_dict():
                continue  # e.g. a disabled GradScaler: nothing saved, nothing to load
            if isinstance(obj, torch.nn.Module):
                backup = None
            elif isinstance(obj, torch.optim.Optimizer):
                backup = obj.state_dict()  # load replaces the state, it does not mutate these tensors
            else:
                backup = copy.deepcopy(obj.state_dict())
            try:
                obj.load_state_dict(sd)
            except Exception as e:
                raise StateMismatchError(f"Checkpoint {ckpt} could not be loaded into state[{name!r}] ({e}); "
                                         f"{_WAY_OUT}.") from e
            done.append((name, backup))
    except BaseException:
        for name, backup in reversed(done):
            if backup is not None:
                state[name].load_state_dict(backup)
        raise
    for name, value in loaded.items():
        if name not in stateful:
            state[name] = value
    if rng is not None:
        restore_rng(rng)
