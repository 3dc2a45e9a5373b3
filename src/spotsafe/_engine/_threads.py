"""Background threads that give way to the training loop."""

from __future__ import annotations

import os
import threading

from .._env import BACKGROUND_NICE_ENV

BACKGROUND_NICE = int(os.environ.get(BACKGROUND_NICE_ENV, "10"))  # added to the nice value of the
# threads that persist and upload; 0 turns it off


def lower_thread_priority(by: int = BACKGROUND_NICE) -> None:
    """Make the calling thread yield the CPU to the training loop (Linux: per-thread nice).

    Persisting mostly waits on the disk, so it loses little; the loop, which on a small
    machine uses every core, no longer loses its CPU to checksums and kernel copies.
    """
    if by <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (AttributeError, OSError):
        pass
