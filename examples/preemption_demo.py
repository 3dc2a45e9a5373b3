"""The main job: train under `spotsafe run --chaos`, get interrupted at random, resume, prove it exact.

1. Runs examples/train.py once without interruption (the reference).
2. Runs it again under the supervisor with preemption drills: at random times (a fixed
   seed), a SIGTERM notice (train.py finishes the step, checkpoints it and exits 75:
   nothing is replayed) or a SIGKILL of the whole process group (no warning: replay from
   the last checkpoint). The supervisor restarts it each time until it finishes.
3. Compares the final parameters and optimizer state of both runs with ``torch.equal``.
4. Prints ``spotsafe report`` (interruptions, lost work, checkpoint cost, money); with
   ``--dir DIR`` it also writes DIR/report.html and keeps the runs there.

    python examples/preemption_demo.py --drills 4 --steps 300

Without ``--dir`` everything goes to a temp dir (``spotsafe-demo-*`` in ``$TMPDIR`` or
/tmp) that is removed when the demo ends, fails, or is stopped by Ctrl-C, SIGTERM or
SIGHUP; its child processes are stopped first (bounded), so none writes there afterwards.

Exits 0 only when drills were injected and the interrupted run is bit-identical to the
uninterrupted one. ``run_with_kills`` (used by the tests) interrupts train.py by hand.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
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


def spotsafe_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("spotsafe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "spotsafe.cli"]


_children: list[subprocess.Popen] = []


_child_env: dict[str, str] = {}


def _start(cmd: list[str], **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env={**os.environ, **_child_env}, **kwargs)
    _children.append(proc)
    return proc


def _run(cmd: list[str], **kwargs) -> None:
    """subprocess.run(check=True), with the child known to :func:`_stop_children`."""
    proc = _start(cmd, **kwargs)
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)


def _stop_children(timeout: float = 15.0) -> None:
    """SIGTERM every child still running (the supervisor forwards it, train.py checkpoints and
    exits), wait for it at most ``timeout`` seconds in all, then SIGKILL what is left."""
    live = [p for p in _children if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in live:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


_interrupted = False  # a Ctrl-C came: whatever the children did meanwhile, the demo ends with 130


def _on_ctrl_c(signum: int, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _exit_on(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's finally: children stopped, temp dir removed


def cleanup(work: Path, keep: bool) -> None:
    """Stop the children, then remove ``work`` unless it is to be kept (the user's --dir)."""
    _stop_children()
    if keep:
        return
    for _ in range(3):  # bounded: a child that outlived _stop_children may still create a file
        shutil.rmtree(work, ignore_errors=True)
        if not work.exists():
            print(f"Removed {work} (pass --dir DIR to keep the runs and report.html).", flush=True)
            return
        time.sleep(0.5)
    print(f"Could not remove {work}; remove it by hand.", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--chaos", default="2s", help="mean time between drills (spotsafe run --chaos)")
    p.add_argument("--drills", type=int, default=4, help="interruptions to inject (--chaos-max)")
    p.add_argument("--kill-share", type=float, default=0.5, help="share of drills that are SIGKILLs, not notices")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1, help="seed of the drills")
    p.add_argument("--spot-price", default="0.92", help="illustrative spot price per hour, for the report")
    p.add_argument("--on-demand-price", default="3.06", help="illustrative on-demand price per hour")
    p.add_argument("--dir", help="keep the runs and report.html here (default: a temp dir, removed at the end)")
    args = p.parse_args()
    keep = args.dir is not None
    work = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="spotsafe-demo-"))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on)
    signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        code = demo(args, work, keep)
        if _interrupted:  # the supervisor, Ctrl-C'd with us, may have ended before our handler ran
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        code = 130
    finally:
        cleanup(work, keep)
    return code


def demo(args: argparse.Namespace, work: Path, keep: bool) -> int:
    """The four steps of the module docstring, in ``work``; the exit code."""
    # The children's temp files go into work/tmp and away with it: a SIGKILLed DataLoader
    # worker leaves its multiprocessing dir (pymp-*) behind, and torch makes a cache dir.
    # Not when that path is long: multiprocessing puts a socket there, and a socket's path
    # may not pass 107 bytes (TMPDIR + /pymp-XXXXXXXX/listener-XXXXXXXX).
    if len(os.fsencode(work / "tmp")) <= 70:
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        _child_env["TMPDIR"] = str(work / "tmp")
    # Signals only: the demo never probes a cloud metadata server (there is none here).
    common = ["--steps", str(args.steps), "--save-every", str(args.save_every), "--workers", str(args.workers),
              "--notices", "signals"]

    print(f"[1/4] uninterrupted reference run ({args.steps} steps) in {work / 'reference'}", flush=True)
    _run([sys.executable, str(TRAIN), "--root", str(work / "reference"), "--out", str(work / "reference.pt"),
          *common], stdout=subprocess.DEVNULL)
    root = work / "interrupted"
    print(f"[2/4] the same run under `spotsafe run --chaos {args.chaos} --chaos-seed {args.seed}`: {args.drills} "
          "drills at random times (SIGTERM notices, answered with a checkpoint and exit 75, and SIGKILLs of the "
          "whole process group), restarted and resumed each time", flush=True)
    cmd = [*spotsafe_cmd(), "run", "--root", str(root), "--profile", "experiment", "--chaos", args.chaos,
           "--chaos-seed", str(args.seed), "--chaos-max", str(args.drills), "--chaos-kill-share", str(args.kill_share),
           "--chaos-grace", "30s", "--spot-price", args.spot_price, "--on-demand-price", args.on_demand_price, "--",
           sys.executable, str(TRAIN), *common, "--step-delay", "0.02", "--out", str(work / "interrupted.pt")]
    proc = _start(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    for line in proc.stdout:  # type: ignore[union-attr]  # the child's own lines: show the restarts only
        if line.startswith(("resumed", "preempted", "done")):
            print(f"  {line.rstrip()}", flush=True)
    if proc.wait() != 0:
        print(f"FAIL: spotsafe run exited {proc.returncode}")
        return 1
    print("[3/4] comparing final parameters and optimizer state", flush=True)
    diffs = compare(str(work / "reference.pt"), str(work / "interrupted.pt"))
    if diffs:
        print(f"FAIL: {len(diffs)} tensors differ, e.g. {diffs[:5]}")
        return 1
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from spotsafe._telemetry import read_events

    drills = [e["action"] for e in read_events(root / "events") if e["event"] == "chaos"]
    n = sum(t.numel() for t in torch.load(work / "reference.pt", weights_only=True)["model"].values())
    print(f"OK: after {len(drills)} drills ({drills.count('notice')} notices, {drills.count('kill')} SIGKILLs) the "
          f"final {n} parameters and the Adam state are bit-identical to the uninterrupted run.", flush=True)
    print(f"[4/4] spotsafe report {root}", flush=True)
    _run([*spotsafe_cmd(), "report", str(root), *(["--html", str(work / "report.html")] if keep else [])])
    if not drills:
        print("FAIL: no drill was injected (the run was too short for --chaos); nothing was proven")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
