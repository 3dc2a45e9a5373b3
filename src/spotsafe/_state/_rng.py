"""Capture and restore every random number generator a training step can draw from.

Python's ``random``, numpy's global generator, torch's CPU generator and the generator of
every CUDA device (only when CUDA is already initialized: capturing must not create a
CUDA context in a CPU-only job).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

from ..errors import SpotsafeWarning


def capture_rng() -> dict[str, Any]:
    """The state of every global RNG, as a state dict of tuples, arrays and tensors."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        # Mersenne Twister's 625 words as one array: a tuple of ints would be 625 tree nodes
        # in the manifest (8 KB of JSON a rank, a millisecond to encode each save)
        "python": {"version": version, "state": np.array(internal, dtype=np.uint32), "gauss": gauss},
        "numpy": np.random.get_state(legacy=True),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_rng(state: Any) -> None:
    """Raise ValueError naming the defect unless ``state`` can be given to :func:`restore_rng`.

    Each state is tried on a throwaway generator of the same kind, so a malformed one is
    found before any global generator (or anything else) is touched.
    """
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= state.keys():
        raise ValueError("the RNG component is not a dict with 'python', 'numpy' and 'torch' states")
    for name, probe in (("python", lambda s: random.Random().setstate(_python_state(s))),
                        ("numpy", lambda s: np.random.RandomState().set_state(tuple(s))),
                        ("torch", lambda s: torch.Generator().set_state(_byte_tensor(s).clone()))):
        try:
            probe(state[name])
        except Exception as e:
            raise ValueError(f"the {name} RNG state is malformed ({type(e).__name__}: {e})") from None
    cuda = state.get("cuda")
    if cuda is not None:
        if not isinstance(cuda, (list, tuple)):
            raise ValueError("the CUDA RNG states are not a list")
        size = torch.cuda.get_rng_state(0).numel() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None
        for s in cuda:
            if _byte_tensor(s).numel() != (size or s.numel()):
                raise ValueError(f"a CUDA RNG state has {s.numel()} bytes, this torch's has {size}")


def _byte_tensor(s: Any) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or s.dtype != torch.uint8 or s.dim() != 1:
        raise ValueError(f"a generator state must be a 1-D uint8 tensor, not {type(s).__name__}")
    return s


def restore_rng(state: dict[str, Any]) -> None:
    """Put every global RNG back to ``state`` (from :func:`capture_rng`, checked by :func:`check_rng`)."""
    random.setstate(_python_state(state["python"]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"].clone())  # a fresh tensor: a view at an offset crashes it
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda) != n:
            warnings.warn(f"The checkpoint holds RNG states for {len(cuda)} CUDA devices and this process sees {n}; "
                          f"restoring the first {min(n, len(cuda))}, so CUDA randomness will not replay exactly.",
                          SpotsafeWarning, stacklevel=3)
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s.clone(), i)


def _python_state(s: Any) -> tuple:
    """``random.setstate``'s tuple from a checkpoint: the array form, or the tuple form that
    earlier checkpoints hold (``random.getstate()`` as it is)."""
    if isinstance(s, dict):
        words = s.get("state")
        if not isinstance(words, np.ndarray) or words.dtype != np.uint32 or words.ndim != 1:
            raise ValueError("its state is not a 1-D uint32 array")
        return (s.get("version"), tuple(int(w) for w in words), s.get("gauss"))
    return _tupled(s)


def _tupled(x: Any) -> Any:
    return tuple(_tupled(v) for v in x) if isinstance(x, (list, tuple)) else x
