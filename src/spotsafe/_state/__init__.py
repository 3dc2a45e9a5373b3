"""State layer: user objects to tensors + small metadata and back; RNG capture."""

from ._apply import (
    RNG_COMPONENT,
    Partial,
    RestorePlan,
    apply_checkpoint,
    check_components,
    is_stateful,
    partial_names,
    plan_restore,
)
from ._rng import capture_rng, check_rng, restore_rng
from ._stateful import Stateful
from ._tree import decode, dtype_name, encode, numpy_dtype, torch_dtype

__all__ = [
    "RNG_COMPONENT",
    "Partial",
    "RestorePlan",
    "Stateful",
    "apply_checkpoint",
    "capture_rng",
    "check_components",
    "check_rng",
    "decode",
    "dtype_name",
    "encode",
    "is_stateful",
    "numpy_dtype",
    "partial_names",
    "plan_restore",
    "restore_rng",
    "torch_dtype",
]
