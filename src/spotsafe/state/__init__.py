"""State layer: user objects to tensors + small metadata and back; RNG capture."""

from ._apply import RNG_COMPONENT, apply_checkpoint, check_components, is_stateful
from ._rng import capture_rng, restore_rng
from ._stateful import Stateful
from ._tree import decode, dtype_name, encode, numpy_dtype, torch_dtype

__all__ = [
    "RNG_COMPONENT",
    "Stateful",
    "apply_checkpoint",
    "capture_rng",
    "check_components",
    "decode",
    "dtype_name",
    "encode",
    "is_stateful",
    "numpy_dtype",
    "restore_rng",
    "torch_dtype",
]
