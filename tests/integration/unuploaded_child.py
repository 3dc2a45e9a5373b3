"""Child process: a run that uploads step N, then dies after committing step M locally, before M's upload.

Usage: unuploaded_child.py LOCAL_ROOT REMOTE_URL N M

Saves ``state(N)`` and waits until it is on the remote (prints "remote N"), then saves
``state(M)`` synchronously (durable on local disk) and is SIGKILLed by its own upload
thread the moment that thread opens M's first file: M is on local disk only, and the
remote holds N. ``state(step)`` is deterministic, so the test can rebuild what was saved.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

import spotsafe
from spotsafe._format import step_dir
from spotsafe._storage import ObstoreStorage

torch.set_num_threads(1)


def state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)},
            "optimizer": {"m": torch.randn(4096, generator=g)}, "step": step}


def main() -> None:
    local, remote, n, m = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    real = ObstoreStorage.upload_file

    def die_at_m(st, fd, rel, **kw):
        if rel.startswith(step_dir(m)):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(st, fd, rel, **kw)

    ObstoreStorage.upload_file = die_at_m
    mgr = spotsafe.CheckpointManager(local, remote=remote, keep=1, async_save=False)
    mgr.save(n, state(n))
    mgr.wait(remote=True, timeout=120)
    print("remote", mgr.remote_watermark, flush=True)
    mgr.save(m, state(m))
    mgr.wait(remote=True, timeout=120)
    print("not killed", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main()
