"""The main job: train, get killed with SIGKILL at random steps, resume, and prove it exact.

1. Runs examples/train.py once without interruption (the reference).
2. Runs it again, interrupting it at random steps (mid-epoch, between and during saves)
   and starting it again each time, until it finishes: SIGKILLs (no warning: replay from
   the last checkpoint) and SIGTERM notices (train.py finishes the step, checkpoints it
   and exits 75: nothing is replayed).
3. Compares the final parameters and optimizer state of both runs with ``torch.equal``.

    python examples/preemption_demo.py --kills 4 --steps 200

Exits 0 only when the interrupted run is bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

TRAIN = Path(__file__).with_name("train.py")


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_with_kills(train_args: list[str], *, kills: int, seed: int, save_every: int, total_steps: int,
                   timeout: float = 600.0, notice_every: int = 0, log=print) -> list[tuple[int, int | None, int]]:
    """Run train.py until it finishes, interrupting it ``kills`` times at random steps.

    Interruptions are SIGKILLs (no warning); with ``notice_every=N``, every Nth one is a
    SIGTERM notice instead, after which train.py must exit 75 with a checkpoint of the
    step it was on. Returns per start: (resumed-from step, interrupted-at step or None for
    the run that finished, newest step reported durable before the interruption). Bounded:
    at most ``kills + 3`` starts and ``timeout`` seconds in all.
    """
    rng = random.Random(seed)
    deadline = time.monotonic() + timeout
    history: list[tuple[int, int | None, int]] = []
    for _attempt in range(kills + 3):
        cmd = [sys.executable, str(TRAIN), *train_args]
        # A session of its own: a kill takes the DataLoader workers too, as losing the machine would.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        watchdog = threading.Timer(max(1.0, deadline - time.monotonic()), _killpg, (proc,))
        watchdog.start()
        expect = history[-1][1] if history and history[-1][1] == history[-1][2] else None  # after a notice
        resumed, target, killed_at, durable = None, None, None, 0
        notice = notice_every > 0 and (len(history) + 1) % notice_every == 0
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                word, _, rest = line.partition(" ")
                if word == "preempted":  # the notice's emergency checkpoint is durable
                    killed_at = durable = int(rest.split()[0])
                elif word == "durable":
                    durable = int(rest)
                elif word == "resumed":
                    resumed = int(rest.split()[0])
                    if expect is not None and resumed != expect:
                        _killpg(proc)
                        raise RuntimeError(f"resumed at step {resumed}, not at {expect} where the notice's "
                                           "checkpoint was taken: steps were lost")
                    durable = resumed
                    left = kills - len(history)
                    if left > 0:
                        # Spread over what remains, far enough ahead that a save lands in
                        # between; any phase of the epoch, of a save, of a worker's batch.
                        span = max(save_every + 2, (total_steps - resumed) // (left + 1) * 2)
                        target = resumed + rng.randint(save_every + 1, span)
                elif word == "step" and target is not None and int(rest.split()[0]) >= target and killed_at is None:
                    if notice:
                        os.kill(proc.pid, signal.SIGTERM)  # the notice: finish the step, save, exit 75
                        target = None
                        continue
                    killed_at = int(rest.split()[0])
                    _killpg(proc)
                    break
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.stdout:
                proc.stdout.close()
        if killed_at is not None and notice:
            if proc.returncode != 75:
                raise RuntimeError(f"train.py exited with {proc.returncode} after SIGTERM, not 75 (EXIT_PREEMPTED)")
            history.append((resumed or 0, killed_at, durable))
            log(f"  attempt {len(history)}: resumed at step {resumed}, SIGTERM notice: checkpointed step {killed_at}, "
                "exit 75")
            continue
        if killed_at is not None:
            history.append((resumed or 0, killed_at, durable))
            log(f"  attempt {len(history)}: resumed at step {resumed}, SIGKILL at step {killed_at}")
            continue
        if proc.returncode != 0:
            raise RuntimeError(f"train.py exited with {proc.returncode} after {len(history)} kills")
        history.append((resumed or 0, None, durable))
        log(f"  attempt {len(history)}: resumed at step {resumed}, finished")
        return history
    raise RuntimeError(f"train.py did not finish within {kills + 3} starts")


def compare(a_path: str, b_path: str) -> list[str]:
    """Names of the tensors that differ between two final states (empty when bit-identical)."""
    a = torch.load(a_path, weights_only=True)
    b = torch.load(b_path, weights_only=True)
    diffs = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            if not torch.equal(v, b["optimizer"]["state"][pid][k]):
                diffs.append(f"optimizer.state[{pid}].{k}")
    if a["optimizer"]["param_groups"] != b["optimizer"]["param_groups"]:
        diffs.append("optimizer.param_groups")
    if a["step"] != b["step"]:
        diffs.append("step")
    return diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--kills", type=int, default=4, help="interruptions in all")
    p.add_argument("--notice-every", type=int, default=2,
                   help="every Nth interruption is a SIGTERM notice instead of a SIGKILL (0: SIGKILLs only)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=7, help="seed of the kill points")
    p.add_argument("--dir", help="where to keep the runs (default: a temp dir)")
    args = p.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="spotsafe-demo-"))
    # Signals only: the demo never probes a cloud metadata server (there is none here).
    common = ["--steps", str(args.steps), "--save-every", str(args.save_every), "--workers", str(args.workers),
              "--notices", "signals"]

    print(f"[1/3] uninterrupted reference run ({args.steps} steps) in {work / 'reference'}")
    subprocess.run([sys.executable, str(TRAIN), "--root", str(work / "reference"), "--out",
                    str(work / "reference.pt"), *common], check=True, stdout=subprocess.DEVNULL)
    how = "SIGKILLed" if not args.notice_every else f"SIGKILLed or (every {args.notice_every}) sent a SIGTERM notice"
    print(f"[2/3] the same run, {how} {args.kills} times at random steps, resumed each time")
    history = run_with_kills(["--root", str(work / "interrupted"), "--out", str(work / "interrupted.pt"), *common],
                             kills=args.kills, seed=args.seed, save_every=args.save_every,
                             total_steps=args.steps, notice_every=args.notice_every)
    kills = len(history) - 1
    replayed = sum(killed - history[i + 1][0] for i, (_, killed, _) in enumerate(history[:-1]))
    notices = sum(1 for i, (_, killed, _) in enumerate(history[:-1]) if history[i + 1][0] == killed)
    print(f"[3/3] comparing final parameters and optimizer state ({kills} interruptions: {kills - notices} SIGKILLs, "
          f"{notices} notices; {replayed} steps replayed in all, none after a notice)")
    diffs = compare(str(work / "reference.pt"), str(work / "interrupted.pt"))
    if diffs:
        print(f"FAIL: {len(diffs)} tensors differ, e.g. {diffs[:5]}")
        return 1
    n = sum(t.numel() for t in torch.load(work / "reference.pt", weights_only=True)["model"].values())
    print(f"OK: after {kills} interruptions the final {n} parameters and the Adam state are bit-identical "
          "to the uninterrupted run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
