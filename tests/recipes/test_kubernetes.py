"""The Kubernetes recipe against Kubernetes' own schemas (kubernetes-validate, strict, for every
version we claim), plus the values those schemas cannot judge: the enums, the exit code the Job
ignores, the grace period against the save budget, and the command the container runs."""

from __future__ import annotations

import math

import kubernetes_validate
import pytest
import yaml
from conftest import run_cli

from spotsafe import EXIT_PREEMPTED
from spotsafe._recipes import MARGIN_S, RecipeOptions, render
from spotsafe._recipes._kubernetes import DEFAULT_ROOT, FAILED_CODES, PLACEHOLDER_IMAGE

VERSIONS = ["1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37"]  # podFailurePolicy is GA from 1.31
# A command a shell or a YAML emitter could mangle: spaces, both quotes, $, a backslash, a tab,
# YAML's own markers, non-ASCII.
HOSTILE = ("python", "train.py", "--msg", "it's \"quoted\" $HOME \\n", "tab\there", "- [a]: {b} #c", "é✓")

# Enum values from the Kubernetes API reference (batch/v1 PodFailurePolicyRule), which the
# JSON schemas leave as free strings (kubernetes-validate passes "Ignor" and "Inn").
ACTIONS = {"Ignore", "FailJob", "Count", "FailIndex"}
OPERATORS = {"In", "NotIn"}


def job(**kw) -> dict:
    return yaml.safe_load(render("kubernetes", RecipeOptions(**{"command": ("python", "train.py"), **kw})))


def container(doc: dict) -> dict:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("kw", [
    {"remote": "s3://bucket/exp1", "instance_types": ("g5.xlarge", "g6.xlarge"), "image": "ghcr.io/me/train:1"},
    {"command": HOSTILE, "profile": "production", "root": "/data/ckpt", "max_restarts": 0},
], ids=["remote-emptydir", "no-remote-pvc"])
def test_job_passes_strict_schema_for_every_claimed_version(kw):
    doc = job(**kw)
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    # ... and the validator is strict enough to matter: a misspelt rule field is refused.
    rule = doc["spec"]["podFailurePolicy"]["rules"][0]
    rule["onExitCode"] = rule.pop("onExitCodes")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def test_failure_policy_ignores_exit_75_and_disruption_and_fails_on_definite_errors():
    doc = job(max_restarts=4)
    spec = doc["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    assert spec["backoffLimit"] == 4
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    name = container(doc)["name"]
    for rule in rules:
        assert rule["action"] in ACTIONS
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["operator"] in OPERATORS
            assert codes["containerName"] == name
            assert codes["values"] == sorted(set(codes["values"]))  # the API requires sorted, unique
            assert 0 not in codes["values"]  # refused with In
    first = rules[0]
    assert first["action"] == "Ignore"
    assert first["onExitCodes"]["operator"] == "In" and first["onExitCodes"]["values"] == [EXIT_PREEMPTED] == [75]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    fail = rules[2]
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["values"] == list(FAILED_CODES)
    assert EXIT_PREEMPTED not in fail["onExitCodes"]["values"]


@pytest.mark.parametrize("budget", [0.4, 30.0, 40.2, 200.0])
def test_grace_period_covers_the_save_budget(budget):
    opts = RecipeOptions(command=("python", "train.py"), budget_s=budget, budget_source="--budget")
    text = render("kubernetes", opts)
    doc = yaml.safe_load(text)
    grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == math.ceil(budget + MARGIN_S) >= budget + MARGIN_S
    argv = container(doc)["command"]
    assert argv[argv.index("--grace") + 1] == f"{math.ceil(budget)}s"  # spotsafe waits the whole budget
    assert f"save budget {budget:g} s, from --budget" in text
    assert ("more than GKE Spot's default 15 s" in text) == (grace > 15)
    assert ("does not fit in EC2's 120 s notice" in text) == (grace > 120)


def test_container_runs_the_users_command_intact_under_spotsafe_run():
    opts = RecipeOptions(command=HOSTILE, remote="gs://b/run 1", profile="experiment")
    doc = job(command=HOSTILE, remote="gs://b/run 1", profile="experiment")
    c = container(doc)
    assert c["command"] == opts.supervised(DEFAULT_ROOT, remote="gs://b/run 1")
    assert c["command"][:3] == ["spotsafe", "run", "--root"]
    assert c["command"][c["command"].index("--") + 1:] == list(HOSTILE)
    assert c["image"] == PLACEHOLDER_IMAGE  # none given: the placeholder, named in the comments
    assert c["volumeMounts"] == [{"name": "checkpoints", "mountPath": DEFAULT_ROOT}]
    assert doc["spec"]["template"]["spec"]["volumes"] == [{"name": "checkpoints", "emptyDir": {}}]


def test_without_a_remote_the_root_is_on_a_claim_and_a_named_image_is_used():
    doc = job(root="/data/ckpt", image="ghcr.io/me/train:1", name="exp1")
    c = container(doc)
    assert c["image"] == "ghcr.io/me/train:1"
    assert c["volumeMounts"][0]["mountPath"] == "/data/ckpt"
    assert doc["spec"]["template"]["spec"]["volumes"] == [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "exp1-ckpt"}}]
    assert doc["metadata"]["name"] == "exp1"


def test_cli_prints_a_valid_job_and_budget_sizes_its_grace():
    default = run_cli("recipe", "kubernetes", "--remote", "s3://b/exp1", "--", "python", "train.py", "--lr", "3e-4")
    assert default.returncode == 0, default.stderr
    doc = yaml.safe_load(default.stdout)
    kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
    assert container(doc)["command"][-4:] == ["python", "train.py", "--lr", "3e-4"]
    assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45  # 30 s default + 15

    measured = run_cli("recipe", "kubernetes", "--budget", "40s", "--", "python", "train.py")
    assert measured.returncode == 0, measured.stderr
    assert yaml.safe_load(measured.stdout)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 55

    unknown = run_cli("recipe", "nomad", "--", "python", "train.py")
    assert unknown.returncode == 2 and "nomad" in unknown.stderr
