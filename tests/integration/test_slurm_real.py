"""The SLURM recipe on a real SLURM: sbatch, a USR1 to the batch shell, checkpoint, exit 75, requeue,
resume, COMPLETED, and final parameters bit-identical to an uninterrupted run.

The cluster (tests/slurm_cluster.py) is slurmctld, slurmd and munged of Debian's ``slurm-wlm`` and
``munge``, started by the test as root in a temp dir. The notice is what ``--signal=B:USR1@N``
sends before the time limit, sent now by ``scancel --batch --signal=USR1``. A requeued job is
held ``CredExpire + 1`` s (``Reason=BeginTime``); the test releases it as a user would, with
``scontrol update jobid=ID StartTime=now``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from conftest import EXAMPLES, child_env, run_cli
from preemption_demo import compare
from slurm_cluster import SlurmCluster, missing_binaries

from spotsafe import EXIT_PREEMPTED

pytestmark = pytest.mark.slow

TRAIN_ARGS = ["--steps", "60", "--save-every", "10", "--workers", "0", "--notices", "slurm", "--step-delay", "0.05"]


def _until(what: str, check, timeout: float, cluster: SlurmCluster, out=None):
    """``check()``'s first truthy value, polled every 0.1 s; fails after ``timeout`` s with the job's output."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            text = out.read_text(errors="replace")[-3000:] if out is not None and out.exists() else "(no output)"
            pytest.fail(f"{what} not within {timeout:.0f} s.\njob output:\n{text}\n"
                        f"slurmctld.log:\n{cluster.log('slurmctld.log')[-2000:]}")
        time.sleep(0.1)
    return value


def test_recipe_on_real_slurm_requeues_on_usr1_and_finishes_bit_exact(tmp_path):
    assert not missing_binaries(), (f"{', '.join(missing_binaries())} not installed: this test needs a real SLURM "
                                    "(apt-get install -y slurm-wlm munge)")
    env = child_env()
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]])  # the venv's python, spotsafe
    # The uninterrupted reference, beside the cluster's start.
    ref = subprocess.Popen([sys.executable, str(EXAMPLES / "train.py"), *TRAIN_ARGS, "--root", str(tmp_path / "ref"),
                            "--out", str(tmp_path / "ref.pt")], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        done = run_cli("recipe", "--name", "t", "--budget", "10s", "-o", job_dir / "job.sbatch", "slurm", "--",
                       "python", EXAMPLES / "train.py", *TRAIN_ARGS, "--out", tmp_path / "int.pt")
        assert done.returncode == 0, done.stderr
        with SlurmCluster() as cluster:
            job_id = cluster.run("sbatch", "--parsable", "job.sbatch", cwd=job_dir, env=env).stdout.strip()
            out = job_dir / f"t-{job_id}.out"       # --output=<name>-%j.out, appended to across requeues
            text = lambda: out.read_text(errors="replace") if out.exists() else ""  # noqa: E731
            _until("the job's first step", lambda: re.search(r"^step \d+ ", text(), re.M), 20, cluster, out)
            cluster.run("scancel", "--batch", "--signal=USR1", job_id)
            # The script forwards SIGTERM; the Run checkpoints its step and exits 75; the script requeues.
            job = _until("the requeue", lambda: (j := cluster.job(job_id)).get("Restarts") == "1" and j, 20,
                         cluster, out)
            first = text()
            stopped = re.search(r"^preempted (\d+) source (\S+)", first, re.M)
            assert stopped, first
            assert f"spotsafe run exited {EXIT_PREEMPTED}" in first
            assert f"requeued job {job_id} (requeue 1 of 10)" in first
            assert 0 < int(stopped[1]) < 60                     # stopped mid-training, not at the end
            assert stopped[2] == "slurm"                        # SLURM's source: its deadline SPOTSAFE_SLURM_GRACE
            assert job["JobState"] in ("PENDING", "REQUEUED", "COMPLETING"), job
            # Release SLURM's own requeue hold. Not in the second of the requeue: slurmd revoked the first
            # start's credential, by whole seconds, and would refuse the new one ("Job credential revoked";
            # the job then FAILS).
            job = _until("PENDING", lambda: (j := cluster.job(job_id))["JobState"] == "PENDING" and j, 15, cluster, out)
            assert job["Reason"] == "BeginTime", job
            time.sleep(max(0.0, int(time.time()) + 1.1 - time.time()))    # PENDING: revoked by now
            cluster.run("scontrol", "update", f"jobid={job_id}", "StartTime=now")
            job = _until("COMPLETED", lambda: (j := cluster.job(job_id))["JobState"] == "COMPLETED" and j, 25,
                         cluster, out)
            assert job["ExitCode"] == "0:0" and job["Restarts"] == "1", job
            final = text()
        ref.wait(timeout=60)
    finally:
        if ref.poll() is None:
            os.killpg(ref.pid, 9)
            ref.wait()
    assert ref.returncode == 0, ref.stderr.read()
    # The second start resumed at the preempted step: nothing replayed, nothing lost.
    assert re.findall(r"^resumed (\d+) ", final, re.M) == ["0", stopped[1]], final
    assert "done 60" in final and "spotsafe run exited 0" in final
    assert "start 2 on" in final                               # SLURM_RESTART_COUNT=1 seen by the script
    assert compare(str(tmp_path / "ref.pt"), str(tmp_path / "int.pt")) == []
