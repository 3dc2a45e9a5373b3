"""Checking a decoded checkpoint against the user's objects, then loading it into them.

Restore is all or nothing, in two phases:

1. :func:`plan_restore` checks everything and touches nothing: the components on both
   sides (and which may differ, ``partial``), every module's keys, shapes and dtypes,
   every optimizer's tree and parameter groups, and the RNG states. A checkpoint whose
   tree is malformed (an optimizer with ``param_groups: [1]``, an RNG state no generator
   accepts) raises :class:`CorruptCheckpointError`, which restore treats as a skip to an
   older checkpoint; one that is well formed but does not fit the objects raises
   :class:`StateMismatchError`.
2. :func:`apply_checkpoint` first takes a way back for every object, then loads:
   non-module objects, then modules, then plain values, then the RNGs. If anything
   raises, everything already changed (the failing object included) is put back, so the
   objects, the plain values and the global RNGs are exactly as they were.

The ways back: a module's tensors are copied (to host memory for accelerator tensors:
the restore briefly holds one extra copy of every module's parameters and buffers in
RAM) and copied back into the same tensor objects; an optimizer's previous state dict is
kept by reference (loading replaces its state, it never writes into the old tensors);
any other stateful object's state dict is deep-copied; plain values and the RNG states
are kept as they were.

Plain values are restored in place where they are containers, so references the user
holds see the restored values: a dict takes the checkpoint's keys (nested dicts merged
the same way) and keeps the keys the checkpoint lacks (with a warning naming them); a
list takes the checkpoint's items. Any other value is replaced in the state dict.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CorruptCheckpointError, SpotsafeWarning, StateMismatchError, UnsupportedStateError
from ._rng import capture_rng, check_rng, restore_rng

logger = logging.getLogger(__name__)

RNG_COMPONENT = "__rng__"

Partial = bool | str | Collection[str]

# Optimizer state entries that always have the shape of their parameter.
_PARAM_SHAPED = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
                           "acc_delta", "sum", "grad_avg", "ax", "prev", "exp_inf"})
_WAY_OUT = "restore into the objects it was saved from, or start a new run root"


def is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def partial_names(partial: Partial) -> bool | frozenset[str]:
    if isinstance(partial, bool):
        return partial
    if isinstance(partial, str):
        return frozenset({partial})
    if isinstance(partial, Collection) and all(isinstance(n, str) for n in partial):
        return frozenset(partial)
    raise TypeError(f"partial={partial!r} is not True, False or a collection of component names; pass e.g. "
                    "partial=True or partial={'ema'}.")


def check_components(ckpt: str, saved: dict[str, str], state: dict[str, Any],
                     partial: Partial = False) -> tuple[list[str], list[str]]:
    """Both sides must name the same components, each of the same kind (stateful or value).

    ``partial`` lets components differ: True for any, or the names that may. Returns the
    names only the state holds (added: kept at their current values) and those only the
    checkpoint holds (removed: ignored).
    """
    allowed = partial_names(partial)
    added = [n for n in state if n not in saved]
    removed = [n for n in saved if n not in state]
    refused = [n for n in added + removed if not (allowed is True or (allowed and n in allowed))]
    if refused:
        parts = []
        if [n for n in added if n in refused]:
            parts.append(f"has no {', '.join(repr(n) for n in added if n in refused)} that the state holds")
        if [n for n in removed if n in refused]:
            parts.append(f"holds {', '.join(repr(n) for n in removed if n in refused)} that the state lacks")
        names = "{" + ", ".join(repr(n) for n in refused) + "}"
        raise StateMismatchError(
            f"Checkpoint {ckpt} {' and '.join(parts)}; to resume with components added or removed pass "
            f"partial=True (or partial={names}) to restore() or spotsafe.Run, or start a new run root.")
    for name, kind in saved.items():
        if name in state and (kind == "stateful") != is_stateful(state[name]):
            now = "an object with state_dict()" if is_stateful(state[name]) else "a plain value"
            raise StateMismatchError(f"Checkpoint {ckpt} saved state[{name!r}] as {kind} but it is now {now}; "
                                     f"rename the component (and pass partial=True), {_WAY_OUT}.")
    return added, removed


def _describe(t: Any) -> str:
    return f"shape {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" if isinstance(t, torch.Tensor) else type(t).__name__


def _check_module(ckpt: str, name: str, module: torch.nn.Module, sd: Any) -> None:
    if not isinstance(sd, dict):
        raise CorruptCheckpointError(f"the state of module state[{name!r}] is a {type(sd).__name__}, not a dict")
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


def _check_optimizer(ckpt: str, name: str, opt: torch.optim.Optimizer, sd: Any) -> None:
    """Malformed trees are corrupt (skipped); well-formed ones that do not fit are a mismatch."""
    def corrupt(what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"the optimizer state of state[{name!r}] is malformed: {what}")

    if not isinstance(sd, dict) or not isinstance(sd.get("state"), dict) or not isinstance(sd.get("param_groups"),
                                                                                          list):
        raise corrupt("it is not a dict with a 'state' dict and a 'param_groups' list")
    groups = sd["param_groups"]
    seen: set[int] = set()
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list):
            raise corrupt(f"param_groups[{i}] is a {type(g).__name__}, not a dict with a 'params' list")
        for pid in g["params"]:
            if type(pid) is not int or pid in seen:
                raise corrupt(f"param_groups[{i}] lists parameter {pid!r} that is not a new integer id")
            seen.add(pid)
    if len(groups) != len(opt.param_groups):
        raise StateMismatchError(f"Checkpoint {ckpt} has {len(groups)} parameter groups for state[{name!r}], "
                                 f"the optimizer has {len(opt.param_groups)}; {_WAY_OUT}.")
    params: dict[int, torch.Tensor] = {}
    for i, (g, cur) in enumerate(zip(groups, opt.param_groups, strict=True)):
        if len(g["params"]) != len(cur["params"]):
            raise StateMismatchError(f"Checkpoint {ckpt} has {len(g['params'])} parameters in group {i} of "
                                     f"state[{name!r}], the optimizer has {len(cur['params'])}; {_WAY_OUT}.")
        params.update(zip(g["params"], cur["params"], strict=True))
    for pid, entry in sd["state"].items():
        p = params.get(pid)
        if p is None:
            raise corrupt(f"it holds state for parameter {pid!r}, which no parameter group lists")
        if not isinstance(entry, dict):
            raise corrupt(f"the state of parameter {pid} is a {type(entry).__name__}, not a dict")
        for key, val in entry.items():
            if key not in _PARAM_SHAPED or val is None:
                continue
            if not isinstance(val, torch.Tensor):
                raise corrupt(f"{key!r} of parameter {pid} is a {type(val).__name__}, not a tensor")
            if val.shape != p.shape:
                raise StateMismatchError(
                    f"Checkpoint {ckpt} does not fit state[{name!r}]: {key!r} of parameter {pid} has shape "
                    f"{tuple(val.shape)}, the parameter has {tuple(p.shape)}; {_WAY_OUT}.")


@dataclass(kw_only=True)
class RestorePlan:
    """A checkpoint checked against the objects, ready for :func:`apply_checkpoint`."""

    ckpt: str
    state: dict[str, Any]
    loaded: dict[str, Any]
    rng: dict[str, Any] | None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    partial: Partial = False


def plan_restore(ckpt: str, saved: dict[str, str], state: dict[str, Any], loaded: dict[str, Any],
                 rng: dict[str, Any] | None, *, partial: Partial = False) -> RestorePlan:
    """Check that ``loaded`` (component -> decoded tree) fits ``state``; touches nothing.

    ``saved`` maps each component of the checkpoint (the RNG excluded) to its kind. Raises
    :class:`CorruptCheckpointError` for a malformed tree, :class:`StateMismatchError` for
    one that does not fit.
    """
    added, removed = check_components(ckpt, saved, state, partial)
    for name, obj in state.items():
        if name not in loaded:
            continue
        if isinstance(obj, torch.nn.Module):
            _check_module(ckpt, name, obj, loaded[name])
        elif isinstance(obj, torch.optim.Optimizer) and type(obj).state_dict is torch.optim.Optimizer.state_dict:
            _check_optimizer(ckpt, name, obj, loaded[name])
    if rng is not None:
        try:
            check_rng(rng)
        except ValueError as e:
            raise CorruptCheckpointError(str(e)) from None
    return RestorePlan(ckpt=ckpt, state=state, loaded=loaded, rng=rng, added=added, removed=removed, partial=partial)


def apply_checkpoint(plan: RestorePlan) -> None:
    """Load a checked checkpoint into its objects; all or nothing (see the module docstring)."""
    state, loaded, ckpt = plan.state, plan.loaded, plan.ckpt
    stateful = [n for n, o in state.items() if n in loaded and is_stateful(o)]
    order = [n for n in stateful if not isinstance(state[n], torch.nn.Module)]
    order += [n for n in stateful if isinstance(state[n], torch.nn.Module)]
    backups: dict[str, Callable[[bool], None]] = {}
    for name in order:  # every way back before anything changes
        backups[name] = _way_back(name, state[name])
    undo: list[Callable[[], None]] = []
    kept: list[str] = []
    try:
        for name in order:
            obj, sd = state[name], loaded[name]
            if isinstance(sd, dict) and not sd and not obj.state_dict():
                continue  # e.g. a disabled GradScaler: nothing saved, nothing to load
            undo.append(lambda name=name: backups[name](False))
            try:
                obj.load_state_dict(sd)
            except Exception as e:
                undo[-1] = lambda name=name: backups[name](True)
                raise StateMismatchError(f"Checkpoint {ckpt} could not be loaded into state[{name!r}] ({e}); every "
                                         f"object is as it was before the restore; {_WAY_OUT}.") from e
        for name, value in loaded.items():
            if name in state and not is_stateful(state[name]):
                _set_value(state, name, value, undo, kept)
        if plan.rng is not None:
            before = capture_rng()
            undo.append(lambda: restore_rng(before))
            restore_rng(plan.rng)
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except Exception as e:
                logger.error("Could not put an object back after a failed restore of %s: %s", ckpt, e)
        raise
    if plan.added or plan.removed:
        parts = []
        if plan.added:
            parts.append(f"{', '.join(map(repr, plan.added))} not in the checkpoint (kept at their current values)")
        if plan.removed:
            parts.append(f"{', '.join(map(repr, plan.removed))} only in the checkpoint (ignored)")
        warnings.warn(f"Restored {ckpt} with partial={plan.partial!r}: {'; '.join(parts)}.", SpotsafeWarning,
                      stacklevel=3)
    if kept:
        warnings.warn(f"Checkpoint {ckpt} lacks the keys {', '.join(kept)} of plain values in the state; they keep "
                      "their current values and the checkpoint's keys are restored.", SpotsafeWarning, stacklevel=3)


def _way_back(name: str, obj: Any) -> Callable[[bool], None]:
    """Take a copy of ``obj``'s state now; the returned function puts it back.

    It is called with ``failed=True`` for the object whose load raised: that one is put
    back only if its state changed.
    """
    if isinstance(obj, torch.nn.Module):
        return _module_way_back(name, obj)
    if isinstance(obj, torch.optim.Optimizer):
        sd = obj.state_dict()  # by reference: loading replaces the state, it never writes into these tensors
    else:
        try:
            sd = copy.deepcopy(obj.state_dict())
        except Exception as e:
            raise UnsupportedStateError(
                f"state[{name!r}].state_dict() cannot be copied ({type(e).__name__}: {e}), so a failed restore could "
                "not put it back; return tensors, numbers, strings and containers from it.") from e

    def back(failed: bool) -> None:
        if failed and _same(obj.state_dict(), sd):
            return
        obj.load_state_dict(sd)
    return back


def _module_way_back(name: str, module: torch.nn.Module) -> Callable[[bool], None]:
    refs = module.state_dict(keep_vars=True)
    tensors = {k: v for k, v in refs.items() if isinstance(v, torch.Tensor) and not _is_extra(k)}
    copies = {k: v.detach().to("cpu", copy=True) for k, v in tensors.items() if v.device.type != "meta"}
    others = {k: copy.deepcopy(v) for k, v in refs.items() if k not in tensors}  # extra state

    def back(failed: bool) -> None:
        with torch.no_grad():
            for key, saved in copies.items():
                tensors[key].copy_(saved)
        now = module.state_dict(keep_vars=True)
        if others or now.keys() != refs.keys() or any(now[k] is not t for k, t in tensors.items()):
            # extra state, or a load hook that replaced tensors: the module's own load puts them back
            module.load_state_dict({**copies, **others}, strict=False)
    return back


def _is_extra(key: str) -> bool:
    return key.rpartition(".")[2] == "_extra_state"


def _same(a: Any, b: Any) -> bool:
    """Whether two state trees hold equal values (tensors compared bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b) or (a != a and b != b)  # NaN equals NaN here
    except Exception:
        return False


def _set_value(state: dict[str, Any], name: str, value: Any, undo: list[Callable[[], None]],
               kept: list[str]) -> None:
    """Restore a plain value: containers in place, anything else replaced in ``state``."""
    cur = state[name]
    if isinstance(cur, dict) and isinstance(value, dict):
        _merge(cur, value, f"state[{name!r}]", undo, kept)
    elif type(cur) is list and isinstance(value, list):
        old = list(cur)
        undo.append(lambda: cur.__setitem__(slice(None), old))
        cur[:] = value
    else:
        undo.append(lambda: state.__setitem__(name, cur))
        state[name] = value


def _merge(cur: dict, new: dict, path: str, undo: list[Callable[[], None]], kept: list[str]) -> None:
    old = dict(cur)

    def back() -> None:
        cur.clear()
        cur.update(old)
    undo.append(back)
    kept.extend(f"{path}[{k!r}]" for k in cur if k not in new)
    for k, v in new.items():
        if isinstance(cur.get(k), dict) and isinstance(v, dict):
            _merge(cur[k], v, f"{path}[{k!r}]", undo, kept)
        else:
            cur[k] = v
