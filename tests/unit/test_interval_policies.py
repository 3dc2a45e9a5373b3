"""Interval policies and the spot/on-demand plan: Daly's worked examples, the simulation
against the analytic expectation, and policies driven by an injected clock (no sleeping)."""

from __future__ import annotations

import json
import math
import statistics
import subprocess

import pytest
from conftest import spotsafe_cli

import spotsafe
from spotsafe._telemetry import measure, read_events
from spotsafe.policy import (
    EverySteps,
    LostWorkBudget,
    OnNotice,
    Optimal,
    OverheadBudget,
    advisor_mtbf,
    break_even_mtbf,
    daly_interval,
    expected_wall_time,
    hybrid,
    plan,
    simulate,
    young_interval,
)
from spotsafe.policy._interval import segment_time

MIN, H = 60.0, 3600.0


@pytest.mark.parametrize("mtbf,daly_min,young_min", [(24 * H, 117, 120.0), (6 * H, 57, 60.0), (15 * MIN, 9.1, 12.25)])
def test_dalys_worked_examples(mtbf, daly_min, young_min):
    """Checkpoint 5 min, restart 10 min (the restart does not enter the interval)."""
    assert daly_interval(5 * MIN, mtbf) / MIN == pytest.approx(daly_min, abs=0.35)
    assert young_interval(5 * MIN, mtbf) / MIN == pytest.approx(young_min, abs=0.01)


def test_daly_when_checkpoints_cost_more_than_twice_the_mtbf():
    assert daly_interval(3 * H, 1 * H) == 1 * H
    with pytest.raises(ValueError, match="mtbf must be a positive"):
        daly_interval(5 * MIN, 0)


@pytest.mark.parametrize("work,mtbf,ckpt,restart,interval,seed", [
    (100 * H, 6 * H, 5 * MIN, 10 * MIN, None, 1),           # the plan's own optimum
    (10 * H, 1 * H, 30, 5 * MIN, None, 2),                 # frequent interruptions, cheap async saves
    (24 * H, 30 * MIN, 2 * MIN, 2 * MIN, 17 * MIN, 3),      # more interruptions than hours; a partial last segment
    (8 * H, 2 * H, 10, 15 * MIN, 5 * MIN, 4),               # an interval far from the optimum
])
def test_the_simulation_agrees_with_the_analytic_expectation(work, mtbf, ckpt, restart, interval, seed):
    tau = interval or daly_interval(ckpt, mtbf)
    expected = expected_wall_time(work, tau, checkpoint_cost=ckpt, mtbf=mtbf, restart_cost=restart)
    walls = simulate(work, tau, checkpoint_cost=ckpt, mtbf=mtbf, restart_cost=restart, runs=1500, seed=seed)
    assert statistics.fmean(walls) == pytest.approx(expected, rel=0.05)
    assert min(walls) >= work                              # never faster than the work itself


def test_the_optimum_is_the_cheapest_interval():
    work, mtbf, ckpt, restart = 50 * H, 3 * H, 3 * MIN, 10 * MIN
    best = daly_interval(ckpt, mtbf)
    at = lambda tau: expected_wall_time(work, tau, checkpoint_cost=ckpt, mtbf=mtbf, restart_cost=restart)  # noqa: E731
    assert at(best) < at(best * 0.7) and at(best) < at(best * 1.4)


COSTS = {"checkpoint_cost": 5 * MIN, "restart_cost": 10 * MIN, "spot_price": 1.0, "on_demand_price": 3.0}


def test_plan_costs_savings_and_break_even_are_consistent():
    p = plan(100 * H, **COSTS, mtbf=6 * H)
    assert p.optimal_interval_s == pytest.approx(daly_interval(5 * MIN, 6 * H))
    assert p.spot_cost == pytest.approx(p.expected_wall_time_s / H * 1.0)
    assert p.on_demand_cost == pytest.approx(300.0)
    assert p.savings_fraction == pytest.approx(1 - p.spot_cost / 300.0)
    assert p.wasted_s == pytest.approx(p.expected_wall_time_s - 100 * H) and p.wasted_s > p.checkpoint_overhead_s
    at_break_even = plan(100 * H, **COSTS, mtbf=p.break_even_mtbf_s)
    # equal up to one checkpoint (under interruptions): the cost jumps by one where the work stops
    # being a whole number of intervals, and the break-even may sit on such a jump
    one_checkpoint = segment_time(5 * MIN, mtbf=p.break_even_mtbf_s, restart_cost=10 * MIN) / H * 1.0
    assert at_break_even.spot_cost == pytest.approx(at_break_even.on_demand_cost, abs=one_checkpoint)
    assert one_checkpoint < 0.001 * at_break_even.on_demand_cost
    assert break_even_mtbf(100 * H, **{**COSTS, "spot_price": 3.0}) is None      # no discount: never


def test_hybrid_meets_the_deadline_with_the_largest_spot_share():
    p = plan(100 * H, **COSTS, mtbf=6 * H)
    share, wall, cost = hybrid(100 * H, 110 * H, p)
    assert 0 < share < 1 and wall == pytest.approx(110 * H)
    assert p.spot_cost < cost < p.on_demand_cost
    assert hybrid(100 * H, 130 * H, p) is None             # spot alone is fast enough
    assert hybrid(100 * H, 90 * H, p) is None              # nothing is


def test_advisor_bands_are_translated_with_the_stated_assumption():
    assert advisor_mtbf("<5%") == pytest.approx(730 * H / -math.log(0.95))
    assert advisor_mtbf(" 5-10% ") == pytest.approx(730 * H / -math.log(0.90))
    assert advisor_mtbf(">20%") < advisor_mtbf("15-20%") < advisor_mtbf("<5%")
    with pytest.raises(ValueError, match="Unknown Spot Instance Advisor band '30%'"):
        advisor_mtbf("30%")


def _drive(policy, step_times, stall=0.0):
    """Run ``policy`` over steps of the given durations on a fake clock; returns (saved steps,
    worst replay: the most work done since the last checkpoint at any step end)."""
    now, last, saves, worst = 0.0, 0.0, [], 0.0
    policy.start(0, now)
    for step, dt in enumerate(step_times, start=1):
        now += dt
        worst = max(worst, now - last)
        if policy.due(step, now):
            now += stall
            policy.saved(step, now, stall or None)
            last = now
            saves.append(step)
    return saves, worst


def test_lost_work_budget_holds_when_the_step_time_changes_mid_run():
    times = [1.0] * 60 + [1.8] * 60 + [0.4] * 100            # slower by 1.8x, then 4.5x faster
    policy = LostWorkBudget("30s")
    saves, worst = _drive(policy, times)
    assert worst <= 30.0
    gaps = [b - a for a, b in zip(saves, saves[1:])]
    assert max(gaps[:3]) <= 30 and min(gaps[:3]) >= 10       # ~28 steps of 1 s, not every step
    assert max(gaps[-3:]) >= 40                              # at 0.4 s per step it saves less often (adapts)
    assert policy.steps == int(30 // (2 * 0.4))
    with pytest.raises(ValueError, match="max_lost"):
        LostWorkBudget("soon")


def test_overhead_budget_lengthens_the_interval_and_says_so(caplog):
    inner = EverySteps(1)
    policy = OverheadBudget(inner, share=0.1)
    saves, _ = _drive(policy, [1.0] * 200, stall=0.5)       # a save stalls half a step
    stalled = 0.5 * len(saves)
    assert stalled / (200 + stalled) <= 0.1 + 0.01          # the budget holds
    assert policy.skipped > 150 and len(saves) > 30         # it lengthened the interval, not stopped saving
    assert "over the 10.0% budget: lengthening the interval" in caplog.text


def test_optimal_uses_the_measured_stall_and_the_rate():
    policy = Optimal("6h", initial="10m")
    assert policy.interval == 600
    saves, _ = _drive(policy, [10.0] * 6000, stall=300.0)   # 5 min stalls
    assert policy.interval == pytest.approx(daly_interval(300.0, 6 * H))
    gaps = [b - a for a, b in zip(saves[1:], saves[2:])]
    assert set(gaps) <= {math.ceil(policy.interval / 10.0), math.ceil(policy.interval / 10.0) + 1}
    assert repr(EverySteps(5) | OnNotice()) == "EverySteps(5) | OnNotice()"


def _events(tmp_path):
    """Three attempts: ended by a notice, by a SIGKILL (no stop), and finished; known figures."""
    rows, t = [], 1000.0
    for pid, (length, stop) in enumerate([(3600.0, "notice"), (1800.0, None), (1800.0, "completed")]):
        rows.append({"ts": t, "event": "run_start", "pid": pid, "host": "h", "run_id": "r", "attempt": pid + 1})
        rows.append({"ts": t + 60.0, "event": "metrics", "pid": pid, "host": "h", "run_id": "r", "attempt": pid + 1})
        rows.append({"ts": t + 62.0, "event": "metrics", "pid": pid, "host": "h", "run_id": "r", "attempt": pid + 1})
        rows.append({"ts": t + 100.0, "event": "checkpoint", "stall_s": 4.0 + pid, "pid": pid, "host": "h",
                     "run_id": "r", "attempt": pid + 1})
        if stop:
            rows.append({"ts": t + length, "event": "stop", "reason": stop, "pid": pid, "host": "h", "run_id": "r",
                         "attempt": pid + 1})
        else:
            rows.append({"ts": t + length, "event": "metrics", "pid": pid, "host": "h", "run_id": "r",
                         "attempt": pid + 1})
        t += length + 240.0                                  # 4 minutes until the next attempt starts
    d = tmp_path / "run" / "events"
    d.mkdir(parents=True)
    for pid in range(3):
        (d / f"h-{pid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["pid"] == pid))
    return d


def test_measure_reads_rate_restart_and_stall_from_events(tmp_path):
    m = measure(read_events(_events(tmp_path)))
    assert m.attempts == 3 and m.interruptions == 2
    assert m.running_s == pytest.approx(7200.0)
    assert m.mtbf_s == pytest.approx(7200.0 / 3)             # n interruptions in T: T / (n + 1)
    assert m.restart_s == pytest.approx(300.0)               # 4 min away + 1 min to the first step
    assert m.checkpoint_stall_s == pytest.approx(5.0) and m.step_s == pytest.approx(2.0)
    policy = Optimal()
    policy.history(m)
    assert policy.mtbf == pytest.approx(2400.0) and policy.interval == pytest.approx(daly_interval(5.0, 2400.0))


def _plan(*args):
    return subprocess.run([*spotsafe_cli(), "plan", *args], capture_output=True, text=True, timeout=60)


def test_plan_command_json_table_and_measured_inputs(tmp_path):
    out = _plan("--hours", "100", "--on-demand-price", "3", "--spot-price", "1", "--mtbf", "6h",
                "--checkpoint-cost", "5m", "--restart-cost", "10m", "--simulate", "300", "--json")
    assert out.returncode == 0, out.stderr
    j = json.loads(out.stdout)
    assert j["optimal_interval_s"] / 60 == pytest.approx(56.7, abs=0.1) and j["young_interval_s"] == 3600
    assert j["expected_wall_time_s"] == pytest.approx(expected_wall_time(100 * H, j["optimal_interval_s"],
                                                                         checkpoint_cost=300, mtbf=6 * H,
                                                                         restart_cost=600))
    assert j["on_demand_cost"] == 300 and j["spot_cost"] == pytest.approx(j["expected_wall_time_s"] / H)
    assert j["savings_fraction"] == pytest.approx(1 - j["spot_cost"] / 300)
    assert abs(j["simulation"]["mean_vs_expected"]) < 0.05

    table = _plan("--hours", "10", "--on-demand-price", "3", "--spot-price", "1", "--advisor", "5-10%",
                  "--checkpoint-cost", "20s", "--restart-cost", "5m")
    assert table.returncode == 0 and "checkpoint interval (Daly)" in table.stdout and "Spot saves" in table.stdout
    assert "Poisson process over 730 h" in table.stdout

    _events(tmp_path)
    measured = _plan("--hours", "10", "--on-demand-price", "3", "--spot-price", "1", "--from",
                     str(tmp_path / "run"), "--json")
    assert measured.returncode == 0, measured.stderr
    m = json.loads(measured.stdout)
    assert m["mtbf_s"] == pytest.approx(2400) and m["checkpoint_cost_s"] == 5 and m["restart_cost_s"] == 300
    assert m["inputs"] == {"mtbf": "measured", "checkpoint cost": "measured", "restart cost": "measured"}


@pytest.mark.parametrize("args,message", [
    (["--mtbf", "6h", "--rate", "0.1"], "Give one of --mtbf, --rate and --advisor"),
    (["--checkpoint-cost", "5m", "--restart-cost", "10m"], "Missing --mtbf/--rate/--advisor"),
    (["--mtbf", "soon", "--checkpoint-cost", "5m", "--restart-cost", "1m"], "Cannot read --mtbf='soon'"),
    (["--advisor", "30%", "--checkpoint-cost", "5m", "--restart-cost", "1m"], "Unknown Spot Instance Advisor"),
])
def test_plan_command_usage_errors_exit_2(args, message):
    out = _plan("--hours", "10", "--on-demand-price", "3", "--spot-price", "1", *args)
    assert out.returncode == 2 and message in out.stderr


def test_run_wires_policies_into_save_every(root):
    import torch

    model = torch.nn.Linear(2, 2)
    now = [0.0]
    with spotsafe.Run(root, {"model": model}, save_every=LostWorkBudget("5s"), notices=None,
                      clock=lambda: now[0]) as run:
        for _ in run.steps(12):
            now[0] += 1.0
    saved = [e["step"] for e in read_events(root / "events") if e["event"] == "checkpoint"]
    assert saved == [3, 6, 9, 12]           # 1 s steps, 5 s budget, 2x safety: every 3 steps (12: final)
