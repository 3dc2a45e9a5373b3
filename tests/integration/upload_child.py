"""Child process for the SIGKILL-during-upload test.

Usage: upload_child.py LOCAL_ROOT REMOTE_URL

Saves step 1 and waits until it is on the remote; then saves step 2 and SIGKILLs itself
in the middle of its upload: the largest file is up, and the next one is a multipart
upload with two parts sent. The remote then holds a step-2/ with some files, no
manifest, and an incomplete multipart upload. Prints "remote 1" once step 1 is durable
on the remote.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

import spotsafe
from spotsafe._format import step_dir
from spotsafe._storage import _obstore

torch.set_num_threads(1)


def state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(12 << 20, generator=g)}, "optimizer": {"m": torch.randn(10 << 20, generator=g)},
            "step": step}


def main() -> None:
    local, remote = sys.argv[1], sys.argv[2]
    real = _obstore._verified_parts

    def die_mid_upload(fd, size, checksum, rel):
        for i, part in enumerate(real(fd, size, checksum, rel)):
            if i == 2 and rel.endswith(f"{step_dir(2)}/optimizer.bin"):
                time.sleep(2.0)  # the two parts in flight land
                os.kill(os.getpid(), signal.SIGKILL)
            yield part

    _obstore._verified_parts = die_mid_upload
    with spotsafe.CheckpointManager(local, remote=remote, keep=3) as mgr:
        mgr.save(1, state(1))
        mgr.wait(remote=True, timeout=120)
        print("remote", mgr.remote_watermark, flush=True)
        mgr.save(2, state(2))
        mgr.wait(remote=True, timeout=120)
    print("not killed", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main()
