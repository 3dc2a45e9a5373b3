"""The flattened DCP state of a job's modules and optimizers, rebuilt from the live objects.

``get_model_state_dict`` / ``get_optimizer_state_dict`` and DCP's flattening cost 3 to 5 ms a
save on a small FSDP2 model (about 0.1 ms per DTensor: torch rebuilds its name maps on every
call), a third of a save's stall. Between two saves of a training loop what they return
changes only in value: the same parameters and optimizer-state tensors, updated in place,
and new numbers in the param groups (the learning rate). So a :class:`LiveState` records,
once, from torch's own flattened state dict, where each key's value lives: a live tensor
(the parameter, buffer or optimizer-state tensor whose memory the state dict's tensor is),
a param group's entry, or a constant (a group's parameter names). A later save takes the
fast way only when a cheap walk of the live objects (:func:`walk`: every parameter, buffer,
param group and optimizer-state entry, by identity, address, shape, dtype and placement)
equals the walk recorded with it; anything replaced, re-bound, re-shaped, added or removed
makes the walk differ, and that save asks torch again (and records again).

A state whose flattened dict holds anything this cannot locate (a state-dict hook that
converts a tensor, a module's extra state, an optimizer state value that is not a tensor)
is never taken the fast way: ``sources`` is None and every save asks torch.
"""

from __future__ import annotations

import io
import itertools
from typing import Any

import torch

_PRIMITIVES = (bool, int, float, str, type(None))


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (the tensor itself otherwise)."""
    local = getattr(t, "_local_tensor", None)  # a DTensor's shard, without to_local()'s autograd call
    if local is None and hasattr(t, "to_local"):
        local = t.to_local()
    return t if local is None else local


def tensor_key(t: torch.Tensor) -> tuple:
    """Where a tensor's bytes are and how they are laid out: equal keys, the same bytes."""
    loc = local_tensor(t)
    key: tuple = (loc.device, loc.data_ptr(), tuple(loc.shape), loc.stride(), loc.dtype)
    if loc is not t:  # a DTensor: its global shape, mesh and placements too
        key += (tuple(t.shape), id(getattr(t, "device_mesh", None)), tuple(getattr(t, "placements", ())))
    return key


def walk(state: dict[str, Any], kinds: dict[str, str]) -> tuple:
    """Everything of ``state``'s modules and optimizers whose change would change their state
    dicts other than by value: names, identities and tensor keys; param group keys."""
    out: list[Any] = []
    for n, kind in kinds.items():
        o = state[n]
        out.append((n, id(o)))
        if kind == "module":
            for name, t in itertools.chain(o.named_parameters(), o.named_buffers()):
                out.append((name, id(t), tensor_key(t)))
            continue
        for g in o.param_groups:  # a value's type decides its kind of item (a tensor lr is no bytes item)
            out.append((id(g), tuple(map(id, g["params"])), tuple((k, type(v)) for k, v in g.items())))
        for p, s in o.state.items():
            out.append((id(p), id(s), tuple((k, id(v), tensor_key(v)) if isinstance(v, torch.Tensor)
                                            else (k, type(v)) for k, v in s.items())))
    return tuple(out)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)


class LiveState:
    """Where each key of one flattened DCP state dict lives (see the module docstring)."""

    def __init__(self, state: dict[str, Any], kinds: dict[str, str], flat: dict[str, Any], sig: str) -> None:
        self.kinds = dict(kinds)
        self.sig = sig
        self.walk = walk(state, kinds)
        self.sources: dict[str, tuple[str, Any, Any]] | None = self._locate(state, flat)

    def _locate(self, state: dict[str, Any], flat: dict[str, Any]) -> dict[str, tuple[str, Any, Any]] | None:
        live: dict[tuple, torch.Tensor] = {}
        groups: dict[str, list[dict[str, Any]]] = {}
        for n, kind in self.kinds.items():
            o = state[n]
            if kind == "module":
                tensors: Any = itertools.chain(o.parameters(), o.buffers())
            else:
                groups[f"{n}.param_groups."] = o.param_groups
                tensors = (v for s in o.state.values() for v in s.values() if isinstance(v, torch.Tensor))
            for t in tensors:
                live.setdefault(tensor_key(t), t)
        sources: dict[str, tuple[str, Any, Any]] = {}
        for fqn, v in flat.items():
            if isinstance(v, torch.Tensor):
                t = live.get(tensor_key(v))
                if t is None:
                    return None  # not the memory of a live tensor (converted by a hook): ask torch each time
                sources[fqn] = ("tensor", t, None)
                continue
            found = None
            for prefix, gs in groups.items():
                if fqn.startswith(prefix):
                    i, _, key = fqn[len(prefix):].partition(".")
                    if i.isdigit() and int(i) < len(gs) and key in gs[int(i)]:
                        found = (gs[int(i)], key)
                    break
            if found is None:
                return None  # e.g. a module's extra state, or an optimizer state value that is no tensor
            g, key = found
            if key == "params":
                sources[fqn] = ("const", v, None)  # the group's parameter names: fixed while the walk is
            elif _same(g[key], v):
                sources[fqn] = ("group", g, key)
            else:
                return None
        return sources

    def flat(self, state: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any] | None:
        """The flattened state dict as torch would give it now, or None when it must be asked."""
        if self.sources is None or kinds != self.kinds or walk(state, kinds) != self.walk:
            return None
        out: dict[str, Any] = {}
        for fqn, (how, a, b) in self.sources.items():
            out[fqn] = a if how != "group" else a[b]
        return out


class ObjectBytes:
    """``torch.save`` of a plain value (DCP's bytes item), kept for values seen before: a
    param group's dozen values, of which usually only the learning rate changes."""

    def __init__(self, limit: int = 512) -> None:
        self._cache: dict[tuple, bytes] = {}
        self._limit = limit

    def __call__(self, value: Any) -> bytes:
        key = _value_key(value)
        if key is not None:
            got = self._cache.get(key)
            if got is not None:
                return got
        buf = io.BytesIO()
        torch.save(value, buf)
        out = buf.getvalue()
        if key is not None:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = out
        return out


def _value_key(value: Any) -> tuple | None:
    """A key that equals only for values whose ``torch.save`` bytes are equal, or None."""
    if isinstance(value, (tuple, list)):
        if len(value) > 64:
            return None
        items = tuple(_value_key(v) for v in value)
        return None if None in items else (type(value).__name__, items)
    if type(value) in _PRIMITIVES:
        return (type(value).__name__, repr(value))
    return None
