"""The SLURM recipe run for real by bash: a real ``spotsafe run`` supervising a real job, real
signals to the batch shell, and a fake ``scontrol`` on PATH that records what it was asked.

SLURM itself is not started here: the script is run the way slurmd runs a batch script (bash,
``SLURM_*`` variables), and the signal ``--signal=B:USR1@N`` would send is sent by the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env, run_cli

from spotsafe import EXIT_PREEMPTED
from spotsafe._recipes import RecipeOptions, render

# The job: records the signal it got and exits 75 (as spotsafe.Run does after its checkpoint),
# or finishes at once when told to; records the environment spotsafe run and the script gave it.
JOB = """
import json, os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def stop(sig, frame):
    (out / "signal").write_text(signal.Signals(sig).name)
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
(out / "env.json").write_text(json.dumps({k: v for k, v in os.environ.items() if k.startswith("SPOTSAFE_")}))
(out / "ready").write_text(str(os.getpid()))
if sys.argv[2] == "finish":
    sys.exit(0)
time.sleep(20)
sys.exit(1)
"""


def _setup(tmp_path: Path, mode: str, **opts) -> tuple[Path, dict[str, str], Path]:
    """The rendered script, its environment (fake scontrol first on PATH) and the job's out dir."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "job.py").write_text(JOB)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    scontrol.chmod(0o755)
    options = RecipeOptions(command=(sys.executable, str(tmp_path / "job.py"), str(out), mode),
                            root=str(tmp_path / "run"), budget_s=5, **opts)
    script = tmp_path / "job.sbatch"
    script.write_text(render("slurm", options))
    env = child_env()
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(tmp_path))
    return script, env, out


def _run(script: Path, env: dict[str, str], out: Path, sig: int | None) -> subprocess.CompletedProcess:
    """bash SCRIPT as slurmd would run it; ``sig`` sent to the shell alone once the job is up."""
    proc = subprocess.Popen(["bash", str(script)], env=env, cwd=script.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if sig is not None:
            deadline = time.monotonic() + 15
            while not (out / "ready").exists():
                assert proc.poll() is None and time.monotonic() < deadline, "the job did not start"
                time.sleep(0.05)
            os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_script_header_and_syntax(tmp_path):
    """bash accepts it; the signal comes budget + margin early, the supervisor's grace is the budget."""
    text = render("slurm", RecipeOptions(command=("python", "train.py", "--lr", "3e-4"), name="exp1", budget_s=40,
                                         remote="s3://b/exp1", profile="production"))
    script = tmp_path / "exp1.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    directives = re.findall(r"^#SBATCH (\S+)$", text, re.M)
    assert directives[:4] == ["--job-name=exp1", "--requeue", "--signal=B:USR1@55", "--open-mode=append"]
    assert ('spotsafe run --root "$SPOTSAFE_JOB_ROOT" --remote s3://b/exp1 --profile production --grace 40s '
            "-- python train.py --lr 3e-4 &") in text
    assert 'SPOTSAFE_JOB_ROOT="${SLURM_SUBMIT_DIR:-$PWD}/runs/"exp1' in text


@pytest.mark.parametrize("sig, array, requeued", [
    (signal.SIGUSR1, False, "requeue 4242"),            # --signal=B:USR1@N before the time limit
    (signal.SIGTERM, True, "requeue 100_7"),            # scancel / preemption; an array task
])
def test_signal_checkpoints_and_requeues(tmp_path, sig, array, requeued):
    script, env, out = _setup(tmp_path, "wait")
    if array:
        env.update(SLURM_ARRAY_JOB_ID="100", SLURM_ARRAY_TASK_ID="7")
    done = _run(script, env, out, sig)
    assert (out / "signal").read_text() == "SIGTERM"       # the job got SIGTERM through spotsafe run
    assert f"spotsafe run exited {EXIT_PREEMPTED}" in done.stderr
    assert (tmp_path / "scontrol.log").read_text().splitlines() == [requeued]
    assert done.returncode == 0, done.stderr               # requeued: the job goes back to PENDING, not FAILED
    env_seen = json.loads((out / "env.json").read_text())
    assert env_seen["SPOTSAFE_ROOT"] == str(tmp_path / "run")
    assert env_seen["SPOTSAFE_SLURM_GRACE"] == "5"


def test_finished_run_exits_0_without_requeue(tmp_path):
    script, env, out = _setup(tmp_path, "finish")
    done = _run(script, env, out, None)
    assert done.returncode == 0, done.stderr
    assert "spotsafe run exited 0" in done.stderr
    assert not (tmp_path / "scontrol.log").exists()


def test_restart_count_past_budget_does_not_requeue(tmp_path):
    script, env, out = _setup(tmp_path, "wait", max_restarts=2)
    env["SLURM_RESTART_COUNT"] = "2"
    done = _run(script, env, out, signal.SIGUSR1)
    assert f"spotsafe run exited {EXIT_PREEMPTED}" in done.stderr
    assert not (tmp_path / "scontrol.log").exists()
    assert done.returncode == 3                            # spotsafe's "retry budget spent"
    assert "MAX_REQUEUES=2" in done.stderr


def test_cli_prints_the_script(tmp_path):
    """Through the installed entry point: options, the platform, then the command after --."""
    done = run_cli("recipe", "--name", "exp2", "--budget", "1m", "--max-restarts", "4", "-o", tmp_path / "exp2.sbatch",
                   "slurm", "--", "python", "train.py", "--steps", "100")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "exp2.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@75" in text
    assert "--grace 60s -- python train.py --steps 100 &" in text
    assert "MAX_REQUEUES=4" in text
    assert subprocess.run(["bash", "-n", str(tmp_path / "exp2.sbatch")]).returncode == 0
