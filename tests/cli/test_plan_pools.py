"""`spotsafe plan --pool ...`: one table over several kinds of spot capacity.

Every pool row must be the single-pool model at that pool's price and MTBF (checked against
the library and against `spotsafe plan --spot-price` itself), the simulated means must agree
with it, the cheapest option meeting the deadline is the one marked, bad pool specs are
usage errors, and the suggested `spotsafe recipe skypilot` command runs.
"""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from conftest import spotsafe_cli

from spotsafe.policy import advisor_mtbf, hybrid, plan, simulate

H = 3600.0
BASE = ["--hours", "100", "--on-demand-price", "4.1", "--checkpoint-cost", "5m", "--restart-cost", "10m"]
POOLS = ["--pool", "g5.xlarge@us-east-1:price=1.3,advisor=<5%",     # reliable, dearer: 100.4 h, 130.5
         "--pool", "g6.xlarge@us-west-2:price=0.9,mtbf=3h",          # cheap, often interrupted: 135.2 h, 121.6
         "--pool", "g5.xlarge@us-west-2:price=1.0,rate=0.5"]         # MTBF 2 h: 147.3 h, 147.3
MTBF = {"g5.xlarge@us-east-1": advisor_mtbf("<5%"), "g6.xlarge@us-west-2": 3 * H, "g5.xlarge@us-west-2": 2 * H}
PRICE = {"g5.xlarge@us-east-1": 1.3, "g6.xlarge@us-west-2": 0.9, "g5.xlarge@us-west-2": 1.0}


def _plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*spotsafe_cli(), "plan", *args], capture_output=True, text=True, timeout=60)


def _json(*args: str) -> dict:
    out = _plan(*BASE, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _model(name: str):
    return plan(100 * H, mtbf=MTBF[name], checkpoint_cost=300.0, restart_cost=600.0, spot_price=PRICE[name],
                on_demand_price=4.1)


def test_pool_rows_are_the_single_pool_model_and_the_cheapest_meeting_the_deadline_is_marked():
    j = _json(*POOLS, "--deadline", "110h")
    rows = {r["name"]: r for r in j["rows"]}
    assert [r["kind"] for r in j["rows"]] == ["pool", "pool", "pool", "on-demand", "hybrid"]
    for name in MTBF:
        p, r = _model(name), rows[name]
        assert r["mtbf_s"] == pytest.approx(MTBF[name], rel=1e-12)
        assert r["optimal_interval_s"] == pytest.approx(p.optimal_interval_s, rel=1e-12)
        assert r["expected_wall_time_s"] == pytest.approx(p.expected_wall_time_s, rel=1e-12)
        assert r["wasted_s"] == pytest.approx(p.wasted_s, rel=1e-12)
        assert r["cost"] == pytest.approx(p.spot_cost, rel=1e-12)
        assert r["meets_deadline"] is (p.expected_wall_time_s <= 110 * H)
    assert rows["on-demand"]["cost"] == pytest.approx(410.0) and rows["on-demand"]["expected_wall_time_s"] == 100 * H
    # the hybrid is the cheapest pool-plus-on-demand split that meets the deadline
    hybrids = {n: hybrid(100 * H, 110 * H, _model(n)) for n in MTBF}
    best = min((h[2], n) for n, h in hybrids.items() if h is not None)
    assert rows["hybrid"]["pool"] == best[1] and rows["hybrid"]["cost"] == pytest.approx(best[0])
    assert rows["hybrid"]["expected_wall_time_s"] == pytest.approx(110 * H)
    # g6 is cheapest overall but expected late; the reliable g5 pool is the cheapest option on time
    assert rows["g6.xlarge@us-west-2"]["cost"] < rows["g5.xlarge@us-east-1"]["cost"]
    assert [r["name"] for r in j["rows"] if r["cheapest"]] == ["g5.xlarge@us-east-1"] == [j["cheapest"]]
    # without a deadline, the cheapest in expectation wins, and no hybrid row appears
    free = _json(*POOLS)
    assert free["cheapest"] == "g6.xlarge@us-west-2" and "hybrid" not in [r["kind"] for r in free["rows"]]

    # the same figures from `spotsafe plan` for a single pool, through the CLI
    single = _json("--spot-price", "0.9", "--mtbf", "3h")
    g6 = rows["g6.xlarge@us-west-2"]
    for k in ("optimal_interval_s", "young_interval_s", "expected_wall_time_s", "wasted_s", "break_even_mtbf_s"):
        assert g6[k] == single[k], k
    assert g6["cost"] == single["spot_cost"] and rows["on-demand"]["cost"] == single["on_demand_cost"]


def test_simulated_means_per_pool_agree_with_the_model():
    j = _json("--pool", "a:price=1,mtbf=3h", "--pool", "b:price=1.2,rate=0.5", "--pool", "c:price=2,mtbf=12h",
              "--simulate", "400", "--seed", "7")
    for r in (r for r in j["rows"] if r["kind"] == "pool"):
        s = r["simulation"]
        assert s["finished"] == 400 and not s["truncated"]
        assert abs(s["mean_vs_expected"]) < 0.03, (r["name"], s)          # 400 jobs, seed 7: within 3%
        # the same draws as the library's simulation at the pool's own interval
        walls = simulate(100 * H, r["optimal_interval_s"], checkpoint_cost=300.0, mtbf=r["mtbf_s"],
                         restart_cost=600.0, runs=400, seed=7)
        assert s["mean_wall_time_s"] == pytest.approx(sum(walls) / len(walls), rel=1e-12)
        assert s["mean_cost"] == pytest.approx(s["mean_wall_time_s"] / H * r["price"], rel=1e-12)


def test_the_table_marks_the_cheapest_and_its_recipe_command_runs(tmp_path):
    out = _plan(*BASE, *POOLS)
    assert out.returncode == 0, out.stderr
    marked = [line for line in out.stdout.splitlines() if "cheapest" in line and "│" in line]
    assert len(marked) == 1 and marked[0].split("│")[1].strip() == "g6.xlarge@us-west-2"
    assert "Spot Instance Advisor band(s) <5%" in out.stdout
    line = next(x for x in out.stdout.splitlines() if x.startswith("spotsafe recipe skypilot"))
    args = shlex.split(line)
    assert args[3:] == ["--pool", "g6.xlarge@us-west-2", "--pool", "g5.xlarge@us-east-1",   # cheapest first
                        "--pool", "g5.xlarge@us-west-2", "--", "COMMAND"]
    recipe = subprocess.run([*spotsafe_cli(), *args[1:-1], "python", "train.py"], capture_output=True, text=True,
                            timeout=60)
    assert recipe.returncode == 0, recipe.stderr
    any_of = [line.strip() for line in recipe.stdout.splitlines() if line.strip().startswith("- {instance_type")]
    assert any_of == [f'- {{instance_type: "{p.split("@")[0]}", region: "{p.split("@")[1]}"}}'
                      for p in ("g6.xlarge@us-west-2", "g5.xlarge@us-east-1", "g5.xlarge@us-west-2")]  # no others


@pytest.mark.parametrize("pool,message", [
    ("g5.xlarge", "No ':' after the pool's name"),
    ("g5:price=x,mtbf=3h", "The price 'x' is not a positive finite number"),
    ("g5:price=-1,mtbf=3h", "The price '-1' is not a positive finite number"),
    ("g5:mtbf=3h", "The spot price per hour (price=P) is missing"),
    ("g5:price=1,mtbf=3h,rate=0.2", "Give one of mtbf, rate and advisor, not mtbf and rate"),
    ("g5:price=1,mtbf=soon", "Cannot read mtbf='soon' as a duration"),
    ("g5:price=1,advisor=30%", "Unknown Spot Instance Advisor band '30%'"),
    ("g5:price=1,rate=0", "rate '0' must be more than 0 per hour"),
    ("g5:price=1,zone=a", "Unknown key 'zone'"),
    ("g5:price=1", "The pool g5 has no interruption rate"),
])
def test_bad_pool_specs_are_one_sentence_and_exit_2(pool, message):
    out = _plan(*BASE, "--pool", pool)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in out.stderr and error[0].endswith(".")


def test_pools_and_spot_price_are_exclusive_and_one_is_needed():
    both = _plan(*BASE, "--spot-price", "1", "--mtbf", "3h", "--pool", "g5:price=1,mtbf=3h")
    assert both.returncode == 2 and "Give --spot-price or --pool, not both" in both.stderr
    neither = _plan(*BASE, "--mtbf", "3h")
    assert neither.returncode == 2 and "Missing --spot-price" in neither.stderr
    twice = _plan(*BASE, "--pool", "g5:price=1,mtbf=3h", "--pool", "g5:price=2,mtbf=3h")
    assert twice.returncode == 2 and "The pool g5 is given twice" in twice.stderr
