"""The Stateful protocol: what an object needs to be saved and restored by spotsafe.

Call order, all on the thread that calls ``CheckpointManager.save`` / ``restore``:

* ``state_dict()`` is called once per save, before ``save`` returns. What it returns may be
  read after that only if the manager staged (copied) it; it must not be mutated while
  ``save`` runs.
* ``load_state_dict(sd)`` is called once per restore, after the whole checkpoint has been
  read and verified and after every component has been checked against the objects.
  Just before, ``state_dict()`` is called once more and its result deep-copied: if any
  object's load raises, ``load_state_dict`` is called again with that copy, so every
  object ends as it was (restore is all or nothing).

``torch.nn.Module``, ``torch.optim.Optimizer``, LR schedulers, ``GradScaler`` and
``spotsafe.data.ResumableDataLoader`` satisfy it as they are.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    """An object that can describe its state and take it back."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...
