"""The save budget a recipe sizes the platform's grace from: given, or measured from a real run's events."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch
import yaml
from conftest import spotsafe_cli

import spotsafe
from spotsafe._recipes import MARGIN_S, RecipeOptions, budget_from_events
from spotsafe._telemetry import read_events


def test_the_worst_notice_to_durable_wins_else_the_worst_save_plus_upload():
    events = [{"event": "checkpoint", "total_s": 1.5}, {"event": "checkpoint", "total_s": 4.0},
              {"event": "upload", "upload_s": 6.0}, {"event": "upload", "upload_s": 2.0}]
    assert budget_from_events(events) == (10.0, "the slowest of the run's 2 checkpoint(s) plus its slowest upload")
    events += [{"event": "stop", "notice_to_durable_s": 7.5}, {"event": "stop", "notice_to_durable_s": None}]
    assert budget_from_events(events)[0] == 7.5
    assert budget_from_events([{"event": "metrics"}]) is None
    assert RecipeOptions(command=("x",), budget_s=10.2).grace_s() == 26 == int(10.2 + MARGIN_S) + 1


@pytest.mark.parametrize("bad", [0, -1.0])
def test_a_budget_must_be_positive(bad):
    with pytest.raises(ValueError, match="more than 0 seconds"):
        RecipeOptions(command=("x",), budget_s=bad)


def test_from_a_real_run_the_grace_covers_its_measured_notice_to_durable(tmp_path):
    root = tmp_path / "run"
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(spotsafe.Preempted):
        with spotsafe.Run(root, {"model": model, "optimizer": opt}, save_every=2, notices="signals") as run:
            for step in run.steps(10):
                model(torch.randn(4, 64)).sum().backward()
                opt.step()
                if step == 5:
                    os.kill(os.getpid(), signal.SIGTERM)
    stop = [e for e in read_events(root / "events") if e["event"] == "stop"][-1]
    measured = stop["notice_to_durable_s"]
    assert measured > 0
    r = subprocess.run([*spotsafe_cli(), "recipe", "skypilot", "--from", str(root), "--", "python", "train.py"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    run_line = yaml.safe_load(r.stdout)["run"]
    assert f"--grace {int(measured) + 1}s" in run_line  # the measured budget, rounded up
    assert "the slowest notice-to-durable of the run's 1 notice(s)" in r.stdout
    empty = subprocess.run([*spotsafe_cli(), "recipe", "skypilot", "--from", str(tmp_path), "--", "x"],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "No checkpoint or notice events under" in empty.stderr
    both = subprocess.run([*spotsafe_cli(), "recipe", "skypilot", "--from", str(root), "--budget", "5s", "--", "x"],
                          capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "--budget or --from, not both" in both.stderr
