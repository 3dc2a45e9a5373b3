"""Child process for the crash-consistency tests: real saves killed by a real SIGKILL.

Usage: crash_child.py BASE syscall           # one trial per file-system call of a save
       crash_child.py BASE timed N SEED      # N trials, killed after a random delay

Each trial forks a saver process that commits step 1 and then step 2 (keep=1, so
step 1 is deleted after step 2 commits) -- or, in timed mode, steps 1, 2, 3, ... in a loop
-- and dies by SIGKILL: in syscall mode it kills itself at the K-th os call (open, write, pwrite,
fsync, mkdir, rename, unlink, rmdir) of the second save, for every K; in timed mode this
process kills it after a random delay. Forking keeps torch imported once. Prints one JSON
line per trial: root, the kill point, and the steps whose save() and wait() returned
before the kill (durable).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

import torch

import spotsafe

torch.set_num_threads(1)
HOOKED = ("open", "write", "pwrite", "fsync", "mkdir", "rename", "unlink", "rmdir")


def make_state(step: int) -> dict:
    """State whose every byte is a function of the step, so a restore can be checked."""
    return {
        "model": {"w": torch.full((512, 1024), float(step)), "b": torch.arange(4096, dtype=torch.int64) + step},
        "optimizer": {"m": torch.full((256, 1024), step * 2.0), "v": torch.full((300,), step * 3.0)},
        "meta": {"step": step, "name": f"s{step}"},
    }


def install_kill_at(k: int, counter: list[int], active: list[bool]) -> None:
    for name in HOOKED:
        real = getattr(os, name)

        def hooked(*a, _real=real, **kw):
            if active[0]:
                counter[0] += 1
                if counter[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
            return _real(*a, **kw)

        setattr(os, name, hooked)


def saver(root: str, report_fd: int, kill_at: int | None, loop: bool) -> None:
    counter, active = [0], [False]
    install_kill_at(-1 if kill_at is None else kill_at, counter, active)
    mgr = spotsafe.CheckpointManager(root, keep=1)
    step = 1
    while True:
        state = make_state(step)
        active[0] = step == 2
        mgr.save(step, state)
        mgr.wait()  # durable: the background write, commit and prune ran
        mgr._gc_executor.submit(lambda: None).result()  # the background prune of step 1 counts too
        active[0] = False
        os.write(report_fd, f"{step} {counter[0]}\n".encode())
        if not loop and step == 2:
            break
        step += 1
    os._exit(0)


def trial(root: str, kill_at: int | None, delay: float | None, loop: bool) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            saver(root, w, kill_at, loop)
        finally:
            os._exit(3)
    os.close(w)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    chunks = []
    while data := os.read(r, 65536):
        chunks.append(data)
    os.close(r)
    lines = b"".join(chunks).decode().split()
    committed = [int(x) for x in lines[0::2]]
    calls = [int(x) for x in lines[1::2]]
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"root": root, "kill_at": kill_at, "delay": delay, "killed": killed, "committed": committed,
            "calls_in_save2": calls[1] if len(calls) > 1 else None}


def main() -> None:
    base, mode = sys.argv[1], sys.argv[2]
    if mode == "syscall":
        dry = trial(os.path.join(base, "dry"), None, None, False)
        total = dry["calls_in_save2"]
        print(json.dumps({**dry, "total_calls": total}), flush=True)
        for k in range(1, total + 1):
            print(json.dumps(trial(os.path.join(base, f"k{k:03d}"), k, None, False)), flush=True)
    else:
        n, rng = int(sys.argv[3]), random.Random(int(sys.argv[4]))
        for i in range(n):
            print(json.dumps(trial(os.path.join(base, f"t{i:03d}"), None, rng.uniform(0.05, 0.6), True)), flush=True)


if __name__ == "__main__":
    main()
