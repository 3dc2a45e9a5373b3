"""The SageMaker recipe: its CreateTrainingJob request against botocore's own service model,
offline, plus the values botocore does not judge (patterns, enums, the spot settings, the
entry point, the time budget)."""

from __future__ import annotations

import json
import logging
import re
import runpy
import subprocess
import sys

import botocore.session
import pytest
from botocore.exceptions import ParamValidationError
from botocore.validate import validate_parameters
from conftest import run_cli

from spotsafe._recipes import RecipeOptions, render
from spotsafe._recipes._sagemaker import STOP_GRACE_S

SHAPE = botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob").input_shape


def _request(tmp_path, opts: RecipeOptions) -> tuple[dict, str]:
    path = tmp_path / "job.py"
    text = render("sagemaker", opts)
    path.write_text(text)
    return runpy.run_path(str(path), run_name="recipe")["REQUEST"], text


def _check(req: dict) -> None:
    """What a user needs of the request: valid for the API, spot on, SageMaker's sync as the remote."""
    validate_parameters(req, SHAPE)                          # raises ParamValidationError
    assert re.fullmatch(SHAPE.members["TrainingJobName"].metadata["pattern"], req["TrainingJobName"])
    assert req["ResourceConfig"]["InstanceType"] in SHAPE.members["ResourceConfig"].members["InstanceType"].enum
    assert req["AlgorithmSpecification"]["TrainingInputMode"] in (
        SHAPE.members["AlgorithmSpecification"].members["TrainingInputMode"].enum)
    assert req["EnableManagedSpotTraining"] is True
    stop = req["StoppingCondition"]
    assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"] > 0


def test_request_validates_and_runs_spotsafe_on_the_synced_folder(tmp_path):
    req, text = _request(tmp_path, RecipeOptions(command=("python", "train.py", "--lr", "3e-4"), name="exp1",
                                                 remote="s3://bucket/runs/exp1", budget_s=40,
                                                 instance_types=("g5.2xlarge", "g6.xlarge"), image="me/train:1"))
    _check(req)
    assert req["CheckpointConfig"] == {"S3Uri": "s3://bucket/runs/exp1", "LocalPath": "/opt/ml/checkpoints"}
    entry = req["AlgorithmSpecification"]["ContainerEntrypoint"]
    assert entry == ["spotsafe", "run", "--root", "/opt/ml/checkpoints", "--grace", "40s", "--",
                     "python", "train.py", "--lr", "3e-4"]
    assert "--remote" not in entry[:entry.index("--")]        # SageMaker uploads the folder itself
    assert req["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    assert req["AlgorithmSpecification"]["TrainingImage"] == "me/train:1"
    assert "not used: g6.xlarge" in text
    assert "WARNING" not in text


def test_botocore_model_catches_a_bad_request(tmp_path):
    """The validator is the real one: a misspelt key and a wrong type are refused."""
    req, _ = _request(tmp_path, RecipeOptions(command=("python", "train.py")))
    _check(req)                                               # placeholders still make a valid request
    bad = json.loads(json.dumps(req))
    bad["StoppingCondition"]["MaxWaitTimeInSecond"] = bad["StoppingCondition"].pop("MaxWaitTimeInSeconds")
    bad["EnableManagedSpotTraining"] = "yes"
    with pytest.raises(ParamValidationError) as refused:
        validate_parameters(bad, SHAPE)
    assert 'Unknown parameter in StoppingCondition: "MaxWaitTimeInSecond"' in str(refused.value)
    assert "EnableManagedSpotTraining" in str(refused.value)


def test_budget_over_the_stop_grace_is_warned(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="spotsafe._recipes._sagemaker"):
        _, text = _request(tmp_path, RecipeOptions(command=("python", "train.py"), budget_s=STOP_GRACE_S - 10))
    warning = [line for line in text.splitlines() if line.startswith("# WARNING: ")]
    assert len(warning) == 1 and "110 s plus the 15 s margin exceeds SageMaker's 120 s" in warning[0]
    assert caplog.records and "exceeds SageMaker's 120 s" in caplog.records[0].getMessage()
    _, fits = _request(tmp_path, RecipeOptions(command=("python", "train.py"), budget_s=STOP_GRACE_S - 15))
    assert "WARNING" not in fits and "= 120 s fits." in fits


def test_cli_writes_a_file_that_prints_the_request(tmp_path):
    """Through the installed entry point; the file, run, prints JSON for --cli-input-json."""
    out = tmp_path / "job.py"
    done = run_cli("recipe", "--name", "exp2", "--remote", "s3://b/exp2", "--budget", "20s", "-o", out,
                   "sagemaker", "--", "python", "train.py")
    assert done.returncode == 0, done.stderr
    printed = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=30)
    req = json.loads(printed.stdout)
    _check(req)
    assert req["CheckpointConfig"]["S3Uri"] == "s3://b/exp2"
    assert req["AlgorithmSpecification"]["ContainerEntrypoint"][:6] == [
        "spotsafe", "run", "--root", "/opt/ml/checkpoints", "--grace", "20s"]
    refused = run_cli("recipe", "--remote", "gs://b/exp2", "sagemaker", "--", "python", "train.py")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("Error: SageMaker syncs checkpoints only to S3, not to gs://b/exp2; "
                                      "pass --remote s3://bucket/prefix.")
