"""Turning state dicts into JSON plus a list of tensors, and back, without pickle.

A state dict is a tree of containers, numbers, strings, tensors and numpy arrays. The
tree is written as JSON in the manifest; tensors and arrays become ``{"$tensor": i}`` /
``{"$ndarray": i}`` references into the component's raw-bytes file. Types JSON cannot
tell apart carry a tag: ``{"$tuple": [...]}``, ``{"$dict": [[k, v], ...]}`` (non-string
keys, ordered dicts, torch's ``_metadata``), ``{"$float": "nan"}``, ``{"$dtype": "float32"}``.

Anything else (a function, an arbitrary object) is refused with an error that names
where it sits: storing it would need pickle, and loading pickle can run code.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._format._schema import (
    DEVICE_TYPES,
    MAX_NDIM,
    MAX_NUMBER_CHARS,
    MAX_STATE_DEPTH,
    NUMPY_DTYPES,
    TORCH_DTYPES,
    TORCH_VALUE_DTYPES,
    device_ok,
)
from ..errors import UnsupportedStateError

_BIG = 10 ** (MAX_NUMBER_CHARS - 1)  # a sign and 99 digits: the longest number the reader takes


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str, *, storage: bool = True) -> torch.dtype:
    """The torch dtype called ``name``, from the format's allow-list (``storage``: one a tensor may be
    stored as; else any dtype a state may hold as a value); never evaluates anything but an attribute lookup."""
    allowed = TORCH_DTYPES if storage else TORCH_VALUE_DTYPES
    dt = getattr(torch, name, None) if isinstance(name, str) and name in allowed else None
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown tensor dtype {name!r}")
    return dt


def numpy_dtype(name: str) -> np.dtype:
    """A plain numeric numpy dtype from its string, from the format's allow-list (object dtypes are refused)."""
    if not isinstance(name, str) or name not in NUMPY_DTYPES:
        raise ValueError(f"unsupported array dtype {name!r}")
    return np.dtype(name)


def _path_str(path: tuple) -> str:
    return "".join(f"[{p!r}]" for p in path)


def encode(obj: Any, arrays: list, path: tuple = ()) -> Any:
    """Encode ``obj`` as JSON-able data; tensors and arrays are appended to ``arrays``.

    Only what :mod:`spotsafe._format`'s validator accepts is written (dtypes from its
    allow-list, at most ``MAX_STATE_DEPTH`` containers deep), so every checkpoint saved can
    be restored.
    """
    if len(path) > MAX_STATE_DEPTH:
        raise UnsupportedStateError(f"The value at {_path_str(path[:5])}... is nested more than {MAX_STATE_DEPTH} "
                                    "containers deep; flatten it.")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        if obj.dtype.str not in NUMPY_DTYPES or obj.dtype.kind == "c":
            raise UnsupportedStateError(f"The numpy scalar at {_path_str(path)} has dtype {obj.dtype}; convert it "
                                        "to a Python number or a supported numpy type first.")
        return {"$np": obj.dtype.str, "v": encode(obj.item(), arrays, path)}
    if isinstance(obj, int):
        if not -_BIG < obj < _BIG:
            raise UnsupportedStateError(f"The integer at {_path_str(path)} has more than {MAX_NUMBER_CHARS - 1} digits; "
                                        "store it as a string.")
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else {"$float": repr(float(obj))}
    if isinstance(obj, torch.Tensor):
        device = obj.device.type
        if obj.layout != torch.strided or obj.is_quantized or device == "meta" or device not in DEVICE_TYPES:
            raise UnsupportedStateError(
                f"The tensor at {_path_str(path)} is {obj.layout}/{obj.device}; convert it to a dense tensor on a "
                "device spotsafe knows (cpu, cuda, xpu, mps, ...) before saving.")
        if dtype_name(obj.dtype) not in TORCH_DTYPES:
            raise UnsupportedStateError(f"The tensor at {_path_str(path)} has dtype {obj.dtype}, which spotsafe does not "
                                        "store; convert it to a standard dtype before saving.")
        if obj.dim() > MAX_NDIM:  # numpy arrays never have more
            raise UnsupportedStateError(f"The tensor at {_path_str(path)} has {obj.dim()} dimensions, more than the "
                                        f"{MAX_NDIM} a checkpoint holds; reshape it before saving.")
        arrays.append(obj)
        return {"$tensor": len(arrays) - 1}
    if isinstance(obj, np.ndarray):
        if obj.dtype.str not in NUMPY_DTYPES:
            raise UnsupportedStateError(
                f"The numpy array at {_path_str(path)} has dtype {obj.dtype}; only numeric arrays of standard "
                "dtypes (no object, string, record or long double) can be stored without pickle, convert it first.")
        arrays.append(obj)
        return {"$ndarray": len(arrays) - 1}
    if isinstance(obj, torch.dtype):
        if dtype_name(obj) not in TORCH_VALUE_DTYPES:
            raise UnsupportedStateError(f"The dtype at {_path_str(path)} is {obj}, which spotsafe does not know; "
                                        "store its name as a string.")
        return {"$dtype": dtype_name(obj)}
    if isinstance(obj, torch.device):
        if not device_ok(str(obj)):
            raise UnsupportedStateError(f"The device at {_path_str(path)} is {obj}, a type spotsafe does not know; "
                                        "store it as a string.")
        return {"$device": str(obj)}
    if type(obj) is tuple or isinstance(obj, torch.Size):
        return {"$tuple": [encode(v, arrays, path + (i,)) for i, v in enumerate(obj)]}
    if type(obj) is list:
        return [encode(v, arrays, path + (i,)) for i, v in enumerate(obj)]
    if isinstance(obj, dict) and type(obj) in (dict, OrderedDict):
        meta = getattr(obj, "_metadata", None)
        plain = type(obj) is dict and all(isinstance(k, str) and not k.startswith("$") for k in obj)
        if plain:
            return {k: encode(v, arrays, path + (k,)) for k, v in obj.items()}
        out: dict[str, Any] = {"$dict": [[encode(k, arrays, path), encode(v, arrays, path + (k,))]
                                         for k, v in obj.items()]}
        if type(obj) is OrderedDict:
            out["ordered"] = True
        if meta is not None:
            out["meta"] = encode(meta, arrays, path + ("_metadata",))
        return out
    raise UnsupportedStateError(
        f"The value at {_path_str(path)} is a {type(obj).__module__}.{type(obj).__qualname__}, which spotsafe "
        "cannot store without pickle; give its owner state_dict()/load_state_dict() that return tensors, "
        "numbers, strings and containers.")


def decode(tree: Any, array: Callable[[str, int], Any]) -> Any:
    """Rebuild the object encoded by :func:`encode`; ``array(kind, i)`` returns array ``i``."""
    if tree is None or isinstance(tree, (bool, str, int, float)):
        return tree
    if isinstance(tree, list):
        return [decode(v, array) for v in tree]
    if not isinstance(tree, dict):
        raise ValueError(f"unexpected node {type(tree).__name__} in the state tree")
    if "$tensor" in tree:
        return array("tensor", int(tree["$tensor"]))
    if "$ndarray" in tree:
        return array("ndarray", int(tree["$ndarray"]))
    if "$tuple" in tree:
        return tuple(decode(v, array) for v in tree["$tuple"])
    if "$dict" in tree:
        items = [(_hashable(decode(k, array)), decode(v, array)) for k, v in tree["$dict"]]
        out = OrderedDict(items) if tree.get("ordered") else dict(items)
        if "meta" in tree:
            out._metadata = decode(tree["meta"], array)  # type: ignore[attr-defined]
        return out
    if "$float" in tree:
        return float(tree["$float"])
    if "$np" in tree:
        return numpy_dtype(tree["$np"]).type(decode(tree["v"], array))
    if "$dtype" in tree:
        return torch_dtype(tree["$dtype"], storage=False)
    if "$device" in tree:
        return torch.device(tree["$device"])
    return {k: decode(v, array) for k, v in tree.items()}


def _hashable(key: Any) -> Any:
    """A dict key as a hashable value: lists, also inside tuples, become tuples."""
    if isinstance(key, (list, tuple)):
        return tuple(_hashable(k) for k in key)
    return key
