"""Child process for the SIGKILL-during-upload test.

Usage: upload_child.py LOCAL_ROOT REMOTE_URL

Saves step 1 and waits until it is on the remote; then saves step 2 and SIGKILLs itself
in the middle of its upload: after the largest file went up and while the next one is
being sent, so the remote holds a step-2/ with some files, no manifest, and possibly an
incomplete multipart upload. Prints "remote 1" once step 1 is durable on the remote.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import torch

import spotsafe
from spotsafe.storage import FsspecStorage

torch.set_num_threads(1)


def state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(6 << 20, generator=g)}, "optimizer": {"m": torch.randn(5 << 20, generator=g)},
            "step": step}


def main() -> None:
    local, remote = sys.argv[1], sys.argv[2]
    real = FsspecStorage.upload_file
    calls = []

    def upload_then_die(self, path, rel):
        calls.append(rel)
        if "step-000000000002" in rel and len([c for c in calls if "step-000000000002" in c]) == 2:
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return real(self, path, rel)

    FsspecStorage.upload_file = upload_then_die
    with spotsafe.CheckpointManager(local, remote=remote, keep_last=3) as mgr:
        mgr.save(1, state(1))
        mgr.wait(remote=True, timeout=120)
        print("remote", mgr.remote_watermark, flush=True)
        mgr.save(2, state(2))
        mgr.wait(remote=True, timeout=120)
    print("not killed", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main()
