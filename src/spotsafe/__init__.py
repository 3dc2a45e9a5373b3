"""spotsafe: PyTorch training that survives spot and preemptible capacity.

Importing ``spotsafe`` has no side effects and does not import torch: the names below
load their modules on first use, so the command-line tool starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._backoff import Backoff
from ._exitcodes import EXIT_OK, EXIT_PREEMPTED
from ._units import parse_duration
from ._version import __version__
from .errors import (
    CheckpointNotFoundError,
    CheckpointSkippedWarning,
    CorruptCheckpointError,
    DeletionFailedError,
    LeaseLostError,
    MissingDependencyError,
    ReadOnlyRootError,
    RemoteAccessError,
    RemoteError,
    RemoteUnavailableError,
    RemoteUnavailableWarning,
    RootLockedError,
    SaveFailedError,
    SpotsafeError,
    SpotsafeWarning,
    StateMismatchError,
    UnsafeFileError,
    UnsupportedStateError,
    UnsupportedURLError,
)

if TYPE_CHECKING:
    from . import data, notices, policy
    from ._engine import CheckpointManager, CheckpointOptions, RestoreStats, SaveStats, UploadStats
    from ._format import CheckpointInfo
    from ._state import Stateful
    from ._storage import LeaseOptions
    from .notices import Notice
    from .policy import EveryDuration, EverySteps
    from .run import Preempted, Run

_LAZY = {
    "CheckpointInfo": "spotsafe._format",
    "CheckpointManager": "spotsafe._engine",
    "EveryDuration": "spotsafe.policy",
    "EverySteps": "spotsafe.policy",
    "CheckpointOptions": "spotsafe._engine",
    "LeaseOptions": "spotsafe._storage",
    "Notice": "spotsafe.notices",
    "Preempted": "spotsafe.run",
    "RestoreStats": "spotsafe._engine",
    "Run": "spotsafe.run",
    "SaveStats": "spotsafe._engine",
    "Stateful": "spotsafe._state",
    "UploadStats": "spotsafe._engine",
    "data": "spotsafe.data",
    "notices": "spotsafe.notices",
    "policy": "spotsafe.policy",
}
_MODULES = {"data", "notices", "policy"}

__all__ = [
    "Backoff",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointSkippedWarning",
    "CheckpointOptions",
    "CorruptCheckpointError",
    "DeletionFailedError",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EveryDuration",
    "EverySteps",
    "LeaseLostError",
    "LeaseOptions",
    "MissingDependencyError",
    "Notice",
    "Preempted",
    "ReadOnlyRootError",
    "RemoteAccessError",
    "RemoteError",
    "RemoteUnavailableError",
    "RemoteUnavailableWarning",
    "RestoreStats",
    "RootLockedError",
    "Run",
    "SaveFailedError",
    "SaveStats",
    "SpotsafeError",
    "SpotsafeWarning",
    "StateMismatchError",
    "Stateful",
    "UnsafeFileError",
    "UnsupportedStateError",
    "UnsupportedURLError",
    "UploadStats",
    "__version__",
    "data",
    "notices",
    "parse_duration",
    "policy",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spotsafe' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name in _MODULES else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
