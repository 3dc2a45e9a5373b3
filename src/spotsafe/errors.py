"""The errors spotsafe raises, and the warnings it gives.

Every error has one root, :class:`SpotsafeError`, and also inherits the built-in
exception that matches it, so ``except FileNotFoundError`` keeps working::

    SpotsafeError(Exception)
    ├── CheckpointNotFoundError(SpotsafeError, FileNotFoundError)
    ├── CorruptCheckpointError(SpotsafeError, ValueError)
    ├── RemoteError(SpotsafeError)
    │   └── RemoteUnavailableError(RemoteError, ConnectionError)
    ├── StateMismatchError(SpotsafeError, ValueError)
    └── UnsupportedStateError(SpotsafeError, TypeError)

    SpotsafeWarning(UserWarning)
    ├── CheckpointSkippedWarning(SpotsafeWarning)
    └── RemoteUnavailableWarning(SpotsafeWarning)

A message is one sentence that names the object and the way out.
"""

from __future__ import annotations


class SpotsafeError(Exception):
    """Root of every error spotsafe raises."""


class CheckpointNotFoundError(SpotsafeError, FileNotFoundError):
    """No checkpoint (or not the requested one) exists under a root."""


class CorruptCheckpointError(SpotsafeError, ValueError):
    """A checkpoint failed verification: a file is missing, short, or has the wrong checksum."""


class RemoteError(SpotsafeError):
    """The remote store could not be written or read, after every retry."""


class RemoteUnavailableError(RemoteError, ConnectionError):
    """Restore could read no valid checkpoint because the remote store could not be reached."""


class StateMismatchError(SpotsafeError, ValueError):
    """A valid checkpoint does not fit the objects it is restored into (keys, shapes, dtypes)."""


class UnsupportedStateError(SpotsafeError, TypeError):
    """A state holds a value spotsafe cannot store without pickle."""


class SpotsafeWarning(UserWarning):
    """Root of every warning spotsafe gives."""


class CheckpointSkippedWarning(SpotsafeWarning):
    """Restore skipped an invalid checkpoint and fell back to an older one."""


class RemoteUnavailableWarning(SpotsafeWarning):
    """Restore could not reach the remote store and used the local checkpoints alone."""
