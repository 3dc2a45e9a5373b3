"""Defaults from the platform's marks: SageMaker's checkpoint folder and SIGTERM budget, Kubernetes', SLURM's.

SageMaker's local layout is reproduced with its variables and ``/opt/ml/checkpoints`` replaced by
a temp dir (``SPOTSAFE_SAGEMAKER_CHECKPOINTS``, the job's ``checkpoint_local_path``): a job
with no root and no remote checkpoints there, is stopped by a real SIGTERM with SageMaker's
120 s, and its restart resumes from the folder (which SageMaker itself copies to S3 and back:
spotsafe uploads nothing).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import EXAMPLES, child_env, spotsafe_cli

import spotsafe
from spotsafe._platforms import _said, detect
from spotsafe._telemetry import read_events

SAGEMAKER = {"TRAINING_JOB_NAME": "job-42", "SM_CURRENT_HOST": "algo-1"}


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("TRAINING_JOB_NAME", "SM_TRAINING_ENV", "SM_CURRENT_HOST", "KUBERNETES_SERVICE_HOST", "SLURM_JOB_ID",
              "SPOTSAFE_ROOT", "SPOTSAFE_REMOTE", "SPOTSAFE_SAGEMAKER_CHECKPOINTS", "SPOTSAFE_SAGEMAKER_GRACE"):
        monkeypatch.delenv(k, raising=False)
    _said.clear()
    yield monkeypatch
    _said.clear()


def test_each_platform_is_named_with_what_it_sets(clean_env):
    assert detect() is None
    clean_env.setenv("SLURM_JOB_ID", "77")
    clean_env.setenv("SLURM_RESTART_COUNT", "2")
    p = detect()
    assert p.name == "slurm" and p.root is None and "SLURM job 77 (requeued 2 times)" in p.note
    clean_env.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    clean_env.setenv("SPOTSAFE_TERMINATION_GRACE", "90")
    p = detect()
    assert p.name == "kubernetes" and "a SIGTERM leaves 90 s" in p.note
    clean_env.setenv("SM_TRAINING_ENV", "{}")
    p = detect()  # SageMaker's marks win: its own container may run on a cluster
    assert p.name == "sagemaker" and p.root == "/opt/ml/checkpoints" and p.syncs_root


def test_a_sagemaker_run_without_a_root_checkpoints_in_its_folder_and_stops_with_120_s(clean_env, tmp_path, caplog):
    folder = tmp_path / "opt-ml-checkpoints"
    for k, v in SAGEMAKER.items():
        clean_env.setenv(k, v)
    clean_env.setenv("SPOTSAFE_SAGEMAKER_CHECKPOINTS", str(folder))
    model = torch.nn.Linear(4, 4)
    caplog.set_level(logging.WARNING, logger="spotsafe.run")
    with pytest.raises(spotsafe.Preempted) as stop:
        with spotsafe.Run(None, {"model": model}, save_every=2, notices="auto") as run:
            for step in run.steps(10):
                if step == 3:
                    os.kill(os.getpid(), signal.SIGTERM)
    assert run.root == str(folder) and stop.value.step == 3 and stop.value.notice.source == "sagemaker"
    assert 100 < stop.value.notice.seconds_left() <= 120
    assert sorted(os.listdir(folder))[-1] == "step-000000000003"
    said = [r.getMessage() for r in caplog.records if "SageMaker training job job-42" in r.getMessage()]
    assert len(said) == 1 and f"checkpoints default to {folder}" in said[0]


@pytest.mark.slow
def test_under_spotsafe_run_the_job_resumes_from_the_folder_and_uploads_nothing(tmp_path):
    folder = tmp_path / "opt-ml-checkpoints"
    env = dict(child_env(), **SAGEMAKER, SPOTSAFE_SAGEMAKER_CHECKPOINTS=str(folder))
    env.pop("SPOTSAFE_ROOT", None)
    env.pop("SPOTSAFE_REMOTE", None)
    cmd = [*spotsafe_cli(), "run", "--", sys.executable, str(EXAMPLES / "train.py"), "--workers", "0", "--notices",
           "signals", "--save-every", "5", "--steps", "20"]
    first = subprocess.Popen([*cmd, "--step-delay", "0.05"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for _ in range(200):  # bounded: the job prints one line a step
            line = first.stdout.readline()
            if not line or line.startswith("step 8 "):
                break
        first.send_signal(signal.SIGTERM)  # SageMaker stops the job: the supervisor forwards it
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 75, err[-2000:]
    assert f"spotsafe run: SageMaker training job job-42: checkpoints default to {folder}" in err
    stopped = int(out.split("preempted ")[1].split()[0])
    assert f"step-{stopped:012d}" in os.listdir(folder)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)  # SageMaker restored the folder
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resumed {stopped} " in second.stdout and "done 20" in second.stdout
    events = read_events(folder / "events")
    assert [e for e in events if e["event"] == "upload"] == []
    assert all(e.get("remote") is None for e in events if e["event"] == "run_start")
