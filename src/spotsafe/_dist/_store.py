"""The job's key-value store (torchrun's TCPStore at ``MASTER_ADDR:MASTER_PORT``), as spotsafe uses it.

Every ``torchrun`` job already has this store; spotsafe keeps its keys under
``spotsafe/<job>/<attempt>/<restart>/`` so that a restarted job never reads the last one's.
A TCPStore client serialises its operations (a blocking ``wait`` holds the client), so each
thread that talks to the store opens a client of its own with :func:`connect`. No collective
is ever issued from a background thread: the store is the only way spotsafe's threads talk
across ranks, and it cannot interleave with the training loop's collectives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .._env import ATTEMPT_ENV


@dataclass(frozen=True)
class StoreAddress:
    """Where the job's store is, and this job's namespace in it."""

    host: str
    port: int
    prefix: str

    @classmethod
    def from_env(cls) -> StoreAddress | None:
        """The store of this ``torchrun`` job (``MASTER_ADDR``/``MASTER_PORT``), or None outside one."""
        env = os.environ
        try:
            host, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
        except (KeyError, ValueError):
            return None
        job = env.get("TORCHELASTIC_RUN_ID") or "job"
        prefix = f"spotsafe/{job}/{env.get(ATTEMPT_ENV, '0')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        return cls(host, port, prefix)

    def connect(self, timeout: float, sub: str = "") -> Any:
        """A new client (for one thread) of the store, its keys under ``prefix + sub``."""
        from torch.distributed import PrefixStore, TCPStore

        store = TCPStore(self.host, self.port, is_master=False, wait_for_workers=False,
                         timeout=timedelta(seconds=timeout))  # the connect, and every call but an explicit wait
        return PrefixStore(self.prefix + sub, store)
