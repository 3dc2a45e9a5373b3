"""Child process for the one-writer tests: a job that writes checkpoints of its own weights.

Usage: writer_child.py ROOT VALUE STEPS HOLD_FILE [--remote URL] [--fork-worker]

Opens ``CheckpointManager(ROOT, keep=3)`` (a second writer is refused right here, and
the error goes out as a user would see it: a traceback and exit 1), prints ``holding
<pid>``, saves step 1, then waits until HOLD_FILE exists (at most 60 s) before saving
steps 2..STEPS and closing. Every checkpoint's ``w`` is ``VALUE + step``, so whose it is
can be read from its bytes. ``--fork-worker`` forks a child that just sleeps, as a
DataLoader worker would (it must not keep the lock alive when this process dies).
"""

from __future__ import annotations

import os
import sys
import time

import torch

import spotsafe

torch.set_num_threads(1)


def main() -> None:
    root, value, steps, hold = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    remote = sys.argv[sys.argv.index("--remote") + 1] if "--remote" in sys.argv else None
    mgr = spotsafe.CheckpointManager(root, remote=remote, keep=3)
    if "--fork-worker" in sys.argv:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        print(f"worker {pid}", flush=True)
    print(f"holding {os.getpid()}", flush=True)
    mgr.save(1, {"w": torch.full((1000,), value + 1)})
    mgr.wait(remote=remote is not None, timeout=60)
    print("saved 1", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.02)
    for step in range(2, steps + 1):
        mgr.save(step, {"w": torch.full((1000,), value + step)})
    mgr.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
