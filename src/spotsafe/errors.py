"""The errors spotsafe raises, and the warnings it gives.

Every error has one root, :class:`SpotsafeError`, and also inherits the built-in
exception that matches it, so ``except FileNotFoundError`` keeps working::

    SpotsafeError(Exception)
    ├── CheckpointNotFoundError(SpotsafeError, FileNotFoundError)
    ├── CorruptCheckpointError(SpotsafeError, ValueError)
    ├── DeletionFailedError(SpotsafeError)
    ├── LeaseLostError(SpotsafeError, RuntimeError)
    ├── ReadOnlyRootError(SpotsafeError, PermissionError)
    ├── UnsupportedURLError(SpotsafeError, ValueError)
    ├── MissingDependencyError(SpotsafeError, ImportError)
    ├── RemoteError(SpotsafeError)
    │   ├── RemoteUnavailableError(RemoteError, ConnectionError)
    │   └── RemoteAccessError(RemoteError, PermissionError)
    ├── RootLockedError(SpotsafeError, RuntimeError)
    ├── SaveFailedError(SpotsafeError)
    ├── StateMismatchError(SpotsafeError, ValueError)
    ├── UnsafeFileError(SpotsafeError, OSError)
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


class DeletionFailedError(SpotsafeError):
    """Retention could not delete an old checkpoint (locally or on the remote), in the background.

    Raised once, by the next ``save()``, ``wait()`` or ``close()``; ``__cause__`` is what the
    deletion raised. The checkpoint just saved is durable all the same.
    """


class SaveFailedError(SpotsafeError):
    """An asynchronous save failed in the background: that step is not durable.

    Raised once, by the next ``save()``, ``wait()`` or ``close()``, naming the step and the
    newest checkpoint still in the root; ``__cause__`` is what the write raised.
    """


class LeaseLostError(SpotsafeError, RuntimeError):
    """Another writer took over the remote root's lease; this process stopped writing there."""


class ReadOnlyRootError(SpotsafeError, PermissionError):
    """A write was asked of a manager opened with ``read_only=True``."""


class UnsupportedURLError(SpotsafeError, ValueError):
    """A storage URL whose scheme no file system handles (``foo://x``)."""


class MissingDependencyError(SpotsafeError, ImportError):
    """A storage URL whose file-system package is not installed (``gs://`` without gcsfs)."""


class RemoteError(SpotsafeError):
    """The remote store could not be written or read, after every retry."""


class RemoteUnavailableError(RemoteError, ConnectionError):
    """Restore could read no valid checkpoint because the remote store could not be reached."""


class RootLockedError(SpotsafeError, RuntimeError):
    """Another process writes to this run root (or remote) already: one writer per root."""


class RemoteAccessError(RemoteError, PermissionError):
    """The remote store cannot be used with the credentials at hand: none were found, or it refused them."""


class StateMismatchError(SpotsafeError, ValueError):
    """A valid checkpoint does not fit the objects it is restored into (keys, shapes, dtypes)."""


class UnsafeFileError(SpotsafeError, OSError):
    """A checkpoint member is a link, a device, a FIFO or otherwise not a plain file or directory."""


class UnsupportedStateError(SpotsafeError, TypeError):
    """A state holds a value spotsafe cannot store without pickle."""


class SpotsafeWarning(UserWarning):
    """Root of every warning spotsafe gives."""


class CheckpointSkippedWarning(SpotsafeWarning):
    """Restore skipped an invalid checkpoint and fell back to an older one."""


class RemoteUnavailableWarning(SpotsafeWarning):
    """Restore could not reach the remote store and used the local checkpoints alone."""
