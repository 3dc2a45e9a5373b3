"""The SkyPilot recipe, validated by SkyPilot itself (offline) and against what SkyPilot accepts blindly.

``sky.Task.from_yaml`` (skypilot 0.14.1, in ``.venv-sky``: its click pin conflicts with
transformers', see scripts/setup.sh) parses and checks the task as ``sky jobs launch`` would,
offline. It accepts misspelled ``job_recovery`` keys and unknown strategy names (its client
allows extra properties), so those are checked here against its schema's keys and its
registry of strategies.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, spotsafe_cli

import spotsafe
from spotsafe._recipes import RecipeOptions, render

SKY = REPO / ".venv-sky" / "bin" / "python"

CHECK = r'''
import json, sys
import sky
from sky.utils import registry, schemas
task = sky.Task.from_yaml(sys.argv[1])
res = list(task.resources)
props = schemas.get_resources_schema()["properties"]["job_recovery"]
keys = set(next(s for s in props["anyOf"] if s.get("type") == "object")["properties"])
print(json.dumps({"name": task.name, "run": task.run, "setup": task.setup,
                  "pools": [[r.instance_type, r.region, r.use_spot] for r in res],
                  "recovery": [r.job_recovery for r in res], "recovery_keys": sorted(keys),
                  "strategies": sorted(registry.JOBS_RECOVERY_STRATEGY_REGISTRY.keys())}))
'''


def sky_check(text: str, tmp_path: Path) -> dict:
    path = tmp_path / "task.yaml"
    path.write_text(text)
    out = subprocess.run([str(SKY), "-c", CHECK, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_recipe_is_a_valid_managed_spot_job_recovered_on_75_over_every_pool(tmp_path):
    opts = RecipeOptions(command=("python", "train.py", "--note", "it's a \"test\""), name="exp1",
                         remote="s3://bkt/exp1", instance_types=("g5.xlarge", "g6.xlarge"),
                         regions=("us-east-1", "us-west-2"), budget_s=40, max_restarts=3)
    text = render("skypilot", opts)
    got = sky_check(text, tmp_path)
    assert got["name"] == "exp1"
    assert sorted(map(tuple, got["pools"])) == [(t, r, True) for t in ("g5.xlarge", "g6.xlarge")
                                               for r in ("us-east-1", "us-west-2")]
    recovery = got["recovery"][0]
    assert all(r == recovery for r in got["recovery"])
    assert set(recovery) <= set(got["recovery_keys"])  # SkyPilot would accept a misspelt key silently
    assert recovery["strategy"].lower() in got["strategies"]  # ... and an unknown strategy
    assert recovery["recover_on_exit_codes"] == [spotsafe.EXIT_PREEMPTED] and recovery["max_restarts_on_errors"] == 3
    run = shlex.split(got["run"].strip())
    assert run[:8] == ["spotsafe", "run", "--root", "~/spotsafe/exp1", "--remote", "s3://bkt/exp1", "--grace", "40s"]
    assert run[8:] == ["--", *opts.command]  # the user's command, quotes and all
    assert got["run"].strip().startswith("spotsafe run --root ~/spotsafe/exp1 ")  # ~ left for the shell to expand
    assert "spotsafe[s3]" in got["setup"]


def test_without_a_remote_the_placeholder_is_named_required_and_one_pool_has_no_any_of(tmp_path):
    text = render("skypilot", RecipeOptions(command=("python", "t.py")))
    got = sky_check(text, tmp_path)
    assert got["pools"] == [[None, None, True]] and "any_of" not in yaml.safe_load(text)["resources"]
    assert "# REQUIRED: replace s3://YOUR-BUCKET/spotsafe-job" in text and "YOUR-BUCKET" in got["run"]


def test_through_the_cli_with_options_before_the_command(tmp_path):
    r = subprocess.run([*spotsafe_cli(), "recipe", "skypilot", "--instance-type", "g5.xlarge", "--budget", "50s",
                        "--remote", "s3://b/r", "--", "python", "train.py", "--lr", "3e-4"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["resources"]["any_of"] == [{"instance_type": "g5.xlarge"}]
    assert doc["run"].strip().endswith("--grace 50s -- python train.py --lr 3e-4")
    bad = subprocess.run([*spotsafe_cli(), "recipe", "skypilot", "--", "python", "a\nb"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "holds a line break" in bad.stderr


@pytest.mark.parametrize("argv", [["recipe", "nomad", "--", "x"], ["recipe", "skypilot"]])
def test_usage_errors_exit_2(argv):
    r = subprocess.run([*spotsafe_cli(), *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(("Usage:", "Error:"))


def test_cli_imports_no_torch_for_a_recipe():
    code = "import sys; from spotsafe.cli._recipe import recipe_cmd; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip() == "False"


def test_exact_pools_and_their_refusals(tmp_path):
    ok = subprocess.run([*spotsafe_cli(), "recipe", "skypilot", "--pool", "g6.xlarge@us-west-2", "--pool", "g5.xlarge",
                         "--remote", "s3://b/r", "--", "python", "t.py"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["resources"]["any_of"] == [{"instance_type": "g6.xlarge", "region": "us-west-2"},
                                                                {"instance_type": "g5.xlarge"}]
    for args, message in ((["--pool", "g5@"], "is not TYPE or TYPE@REGION"),
                          (["--pool", "g5@a@b"], "is not TYPE or TYPE@REGION"),
                          (["--pool", "g5@r", "--region", "r"], "--pool, or --instance-type/--region, not both")):
        bad = subprocess.run([*spotsafe_cli(), "recipe", "skypilot", *args, "--", "x"], capture_output=True,
                             text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
