"""spotsafe: PyTorch training that survives spot and preemptible capacity.

Importing ``spotsafe`` has no side effects and does not import torch: the names below
load their modules on first use, so the command-line tool starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._backoff import Backoff
from ._version import __version__
from .errors import (
    CheckpointNotFoundError,
    CheckpointSkippedWarning,
    CorruptCheckpointError,
    RemoteError,
    RemoteUnavailableError,
    RemoteUnavailableWarning,
    SpotsafeError,
    SpotsafeWarning,
    StateMismatchError,
    UnsupportedStateError,
)

if TYPE_CHECKING:
    from . import data
    from .engine import CheckpointManager, SaveStats, UploadStats
    from .format import CheckpointInfo
    from .state import Stateful

_LAZY = {
    "CheckpointInfo": "spotsafe.format",
    "CheckpointManager": "spotsafe.engine",
    "SaveStats": "spotsafe.engine",
    "Stateful": "spotsafe.state",
    "UploadStats": "spotsafe.engine",
    "data": "spotsafe.data",
}

__all__ = [
    "Backoff",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointSkippedWarning",
    "CorruptCheckpointError",
    "RemoteError",
    "RemoteUnavailableError",
    "RemoteUnavailableWarning",
    "SaveStats",
    "SpotsafeError",
    "SpotsafeWarning",
    "StateMismatchError",
    "Stateful",
    "UnsupportedStateError",
    "UploadStats",
    "__version__",
    "data",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spotsafe' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "data" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
