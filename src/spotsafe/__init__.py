"""spotsafe: PyTorch training that survives spot and preemptible capacity.

Importing ``spotsafe`` has no side effects and does not import torch: the names below
load their modules on first use, so the command-line tool starts fast.

The public API is ``__all__``: the names below and the modules :mod:`spotsafe.data`,
:mod:`spotsafe.errors`, :mod:`spotsafe.notices`, :mod:`spotsafe.policy` and
:mod:`spotsafe.run` (each with its own ``__all__``), and the framework integrations
:mod:`spotsafe.lightning`, :mod:`spotsafe.hf` and :mod:`spotsafe.accelerate`, which import their
framework and so are imported only by their users (``import spotsafe`` never imports them).
Packages and modules whose names start
with an underscore are internal; ``spotsafe.cli`` is the ``spotsafe`` command. Every name
this module binds without an underscore is in ``__all__`` (a test derives the list).
"""

import importlib as _importlib
import typing as _typing

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

if _typing.TYPE_CHECKING:
    from . import data, notices, policy, run
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
    "CheckpointOptions": "spotsafe._engine",
    "EveryDuration": "spotsafe.policy",
    "EverySteps": "spotsafe.policy",
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
    "run": "spotsafe.run",
}
_MODULES = {"data", "notices", "policy", "run"}

__all__ = [
    "Backoff",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointOptions",
    "CheckpointSkippedWarning",
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
    "errors",
    "notices",
    "parse_duration",
    "policy",
    "run",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spotsafe' has no attribute {name!r}")
    mod = _importlib.import_module(module)
    value = mod if name in _MODULES else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
