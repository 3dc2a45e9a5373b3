"""The batch services' recipes. AWS Batch: the job definition and the submit command its header
prints, validated offline by botocore against AWS's own service model (what the AWS CLI and
boto3 check before sending), plus the rule order botocore cannot judge. Google Cloud Batch: no
offline client is installed here (google-cloud-batch is not in the test stack), so the job is
checked by hand against the field names and enums of the Batch v1 REST reference (Job,
TaskGroup, TaskSpec, Runnable.Container, LifecyclePolicy, AllocationPolicy.InstancePolicy)."""

from __future__ import annotations

import json
import math
import shlex
import subprocess

import botocore.exceptions
import botocore.session
import botocore.validate
import pytest
from conftest import run_cli

from spotsafe import EXIT_PREEMPTED
from spotsafe._recipes import MARGIN_S, RecipeOptions, render
from spotsafe._recipes._batch import DEFAULT_ROOT, GCP_PREEMPTED_CODE, PLACEHOLDER_IMAGE

HOSTILE = ("python", "train.py", "--msg", "it's \"quoted\" $HOME \\n", "tab\there", "# not a comment", "é✓")


def strip_header(text: str) -> str:
    """The JSON, as the header tells the user to get it: ``grep -v '^#'`` (the real grep)."""
    lines = text.splitlines()
    json_at = next(i for i, line in enumerate(lines) if line.startswith("{"))
    assert all(line.startswith("#") for line in lines[:json_at])  # the header is all comment
    out = subprocess.run(["grep", "-v", "^#"], input=text, capture_output=True, text=True, timeout=10, check=True)
    return out.stdout


def rendered(platform: str, **kw) -> tuple[str, dict]:
    text = render(platform, RecipeOptions(**{"command": ("python", "train.py"), **kw}))
    return text, json.loads(strip_header(text))


@pytest.fixture(scope="module")
def batch_model():
    return botocore.session.get_session().get_service_model("batch")


def validate(model, operation: str, params: dict) -> None:
    """Raise botocore's ParamValidationError when ``params`` do not fit ``operation``'s input."""
    botocore.validate.validate_parameters(params, model.operation_model(operation).input_shape)


# ------------------------------------------------------------------ AWS Batch


@pytest.mark.parametrize("kw", [
    {"remote": "s3://bucket/exp1", "image": "123.dkr.ecr.us-east-1.amazonaws.com/train:1", "profile": "production"},
    {"command": HOSTILE, "root": "/scratch/ckpt", "max_restarts": 0, "name": "exp_1"},
], ids=["remote", "hostile-command"])
def test_aws_job_definition_and_submit_command_fit_the_service_model(batch_model, kw):
    text, doc = rendered("aws-batch", **kw)
    validate(batch_model, "RegisterJobDefinition", doc)
    # The submit command printed in the header, turned into SubmitJob's parameters.
    submit = next(line[1:].strip() for line in text.splitlines() if "aws batch submit-job" in line)
    words = shlex.split(submit)[3:]
    args = dict(zip(words[::2], words[1::2], strict=True))
    params = {"jobName": args["--job-name"], "jobQueue": args["--job-queue"], "jobDefinition": args["--job-definition"]}
    assert params["jobDefinition"] == doc["jobDefinitionName"]
    validate(batch_model, "SubmitJob", params)
    # ... and the validation is real: a misspelt rule field is refused.
    doc["retryStrategy"]["evaluateOnExit"][0]["onExitcode"] = "75"
    with pytest.raises(botocore.exceptions.ParamValidationError, match="onExitcode"):
        validate(batch_model, "RegisterJobDefinition", doc)


@pytest.mark.parametrize(("max_restarts", "attempts"), [(0, 1), (3, 4), (9, 10), (10, 10), (50, 10)])
def test_aws_retries_exit_75_before_the_catch_all_exit(max_restarts, attempts):
    _, doc = rendered("aws-batch", max_restarts=max_restarts)
    strategy = doc["retryStrategy"]
    assert strategy["attempts"] == attempts  # 1 + restarts, in AWS's range 1..10
    rules = strategy["evaluateOnExit"]
    assert len(rules) <= 5  # the service's limit
    assert all(r["action"] in {"RETRY", "EXIT"} for r in rules)  # botocore leaves the enum to the service
    on_75 = rules.index({"onExitCode": str(EXIT_PREEMPTED), "action": "RETRY"})
    catch_all = rules.index({"onReason": "*", "action": "EXIT"})
    assert on_75 < catch_all == len(rules) - 1  # evaluated in order: 75 must come first
    assert {"onStatusReason": "Host EC2*", "action": "RETRY"} in rules[:catch_all]


def test_aws_container_runs_the_users_command_intact():
    opts = RecipeOptions(command=HOSTILE, remote="s3://b/run 1", profile="experiment")
    text = render("aws-batch", opts)
    doc = json.loads(strip_header(text))
    command = doc["containerProperties"]["command"]
    assert command == opts.supervised(DEFAULT_ROOT, remote="s3://b/run 1")
    assert command[command.index("--") + 1:] == list(HOSTILE)
    assert doc["containerProperties"]["image"] == PLACEHOLDER_IMAGE
    assert "NOT VERIFIED" in text and "Host EC2" in text


# ------------------------------------------------------------------ Google Cloud Batch

# Field names of the Batch v1 REST reference, by message; a key outside these is a typo the
# service would refuse (and this test would otherwise miss).
GCP_FIELDS = {
    "Job": {"name", "uid", "priority", "taskGroups", "allocationPolicy", "labels", "status", "createTime",
            "updateTime", "logsPolicy", "notifications"},
    "TaskGroup": {"name", "taskSpec", "taskCount", "parallelism", "schedulingPolicy", "taskEnvironments",
                  "taskCountPerNode", "requireHostsFile", "permissiveSsh", "runAsNonRoot"},
    "TaskSpec": {"runnables", "computeResource", "maxRunDuration", "maxRetryCount", "lifecyclePolicies",
                 "environments", "volumes", "environment"},
    "Runnable": {"container", "script", "barrier", "displayName", "ignoreExitStatus", "background", "alwaysRun",
                 "environment", "timeout", "labels"},
    "Container": {"imageUri", "commands", "entrypoint", "volumes", "options", "blockExternalNetwork", "username",
                  "password", "enableImageStreaming"},
    "ComputeResource": {"cpuMilli", "memoryMib", "bootDiskMib"},
    "LifecyclePolicy": {"action", "actionCondition"},
    "ActionCondition": {"exitCodes"},
    "AllocationPolicy": {"location", "instances", "serviceAccount", "labels", "network", "placement", "tags"},
    "InstancePolicyOrTemplate": {"policy", "instanceTemplate", "installGpuDrivers", "installOpsAgent",
                                 "blockProjectSshKeys"},
    "InstancePolicy": {"machineType", "minCpuPlatform", "provisioningModel", "accelerators", "bootDisk", "disks",
                       "reservation"},
    "LogsPolicy": {"destination", "logsPath", "cloudLoggingOption"},
}


def check_gcp_shape(doc: dict) -> None:
    def fields(obj: dict, message: str) -> None:
        assert isinstance(obj, dict) and set(obj) <= GCP_FIELDS[message], (message, set(obj) - GCP_FIELDS[message])

    fields(doc, "Job")
    for group in doc["taskGroups"]:
        fields(group, "TaskGroup")
        spec = group["taskSpec"]
        fields(spec, "TaskSpec")
        for runnable in spec["runnables"]:
            fields(runnable, "Runnable")
            fields(runnable["container"], "Container")
            assert isinstance(runnable["container"]["entrypoint"], str)
            assert all(isinstance(w, str) for w in runnable["container"]["commands"])
        fields(spec["computeResource"], "ComputeResource")
        assert isinstance(spec["maxRetryCount"], int) and 0 <= spec["maxRetryCount"] <= 10
        for policy in spec["lifecyclePolicies"]:
            fields(policy, "LifecyclePolicy")
            fields(policy["actionCondition"], "ActionCondition")
            assert policy["action"] in {"RETRY_TASK", "FAIL_TASK"}
            assert all(isinstance(c, int) for c in policy["actionCondition"]["exitCodes"])
    fields(doc["allocationPolicy"], "AllocationPolicy")
    for instance in doc["allocationPolicy"]["instances"]:
        fields(instance, "InstancePolicyOrTemplate")
        fields(instance["policy"], "InstancePolicy")
        assert instance["policy"]["provisioningModel"] in {"STANDARD", "SPOT", "PREEMPTIBLE"}
    fields(doc["logsPolicy"], "LogsPolicy")
    assert doc["logsPolicy"]["destination"] in {"CLOUD_LOGGING", "PATH"}


@pytest.mark.parametrize(("max_restarts", "retries"), [(0, 0), (4, 4), (10, 10), (50, 10)])
def test_gcp_job_has_the_documented_shape_and_retries_75_on_spot(max_restarts, retries):
    _, doc = rendered("gcp-batch", max_restarts=max_restarts, instance_types=("n1-standard-8", "n2-standard-8"),
                      regions=("us-central1",))
    check_gcp_shape(doc)
    (group,) = doc["taskGroups"]
    spec = group["taskSpec"]
    assert spec["maxRetryCount"] == retries
    (policy,) = spec["lifecyclePolicies"]
    assert policy["action"] == "RETRY_TASK"
    assert policy["actionCondition"]["exitCodes"] == [EXIT_PREEMPTED, GCP_PREEMPTED_CODE]
    (instance,) = doc["allocationPolicy"]["instances"]
    assert instance["policy"] == {"provisioningModel": "SPOT", "machineType": "n1-standard-8"}


def test_gcp_container_runs_the_users_command_intact():
    opts = RecipeOptions(command=HOSTILE, remote="gs://b/run 1", root="/mnt/disks/ckpt")
    text = render("gcp-batch", opts)
    doc = json.loads(strip_header(text))
    check_gcp_shape(doc)
    container = doc["taskGroups"][0]["taskSpec"]["runnables"][0]["container"]
    argv = [container["entrypoint"], *container["commands"]]
    assert argv == opts.supervised("/mnt/disks/ckpt", remote="gs://b/run 1")
    assert argv[argv.index("--") + 1:] == list(HOSTILE)
    assert container["imageUri"] == PLACEHOLDER_IMAGE
    assert "gcloud batch jobs submit spotsafe-job --location REGION --config job.json" in text


# ------------------------------------------------------------------ through the CLI


def test_cli_prints_both_batch_recipes_and_budget_sizes_the_grace(batch_model):
    aws = run_cli("recipe", "aws-batch", "--remote", "s3://b/exp1", "--budget", "40s", "--",
                  "python", "train.py", "--lr", "3e-4")
    assert aws.returncode == 0, aws.stderr
    doc = json.loads(strip_header(aws.stdout))
    validate(batch_model, "RegisterJobDefinition", doc)
    command = doc["containerProperties"]["command"]
    assert command[command.index("--grace") + 1] == "40s"
    assert command[-4:] == ["python", "train.py", "--lr", "3e-4"]
    assert f"= {math.ceil(40 + MARGIN_S)} s needed" in aws.stdout

    gcp = run_cli("recipe", "gcp-batch", "--", "python", "train.py")
    assert gcp.returncode == 0, gcp.stderr
    doc = json.loads(strip_header(gcp.stdout))
    check_gcp_shape(doc)
    assert doc["taskGroups"][0]["taskSpec"]["runnables"][0]["container"]["commands"][-2:] == ["python", "train.py"]
    assert "= 45 s needed" in gcp.stdout and "WARNING: 45 s does not fit in 30 s" in gcp.stdout
    assert "WARNING: no --remote" in gcp.stdout
