"""spotsafe report's figures from a hand-written event log whose answers are worked out by hand."""

from __future__ import annotations

import json
import re

import pytest

from spotsafe._telemetry import build_report, prometheus_text

SUP = {"role": "supervisor", "run_id": "r1", "host": "h", "pid": 10, "rank": 0}


def ev(ts, event, pid, attempt, **fields):
    base = {"run_id": "r1", "host": "h", "pid": pid, "rank": 0, "attempt": attempt}
    return {"ts": ts, "event": event, **base, **fields}


def sup(ts, event, attempt, **fields):
    return {"ts": ts, "event": event, **SUP, "attempt": attempt, **fields}


def three_attempts() -> list[dict]:
    """Attempt 1 is SIGKILLed by a drill after step 12 (checkpoints 5, 10); attempt 2 resumes at
    10, gets an AWS notice at step 20 and checkpoints it; attempt 3 resumes at 20 and finishes
    at 30. Steps take 1 s each; the supervisor starts at t=1000 and stops at t=1042.2."""
    e = [sup(1000, "supervisor_start", 0, profile={"spot_price": 1.0, "on_demand_price": 4.0})]
    e += [sup(1000.5, "spawn", 1, child_pid=11)]
    e += [ev(1001, "run_start", 11, 1), ev(1002, "restore", 11, 1, step=None, skipped=[])]
    e += [ev(1002 + s, "metrics", 11, 1, step=s, values={"loss": 1 / s}) for s in range(1, 13)]
    e += [ev(1007.5, "checkpoint", 11, 1, step=5, reason="policy", stall_s=0.2, persist_s=0.4),
          ev(1012.5, "checkpoint", 11, 1, step=10, reason="policy", stall_s=0.4, persist_s=0.6)]
    e += [sup(1014.5, "chaos", 1, action="kill"), sup(1014.6, "exit", 1, cause="chaos_kill", exit_code=None,
                                                        signal="SIGKILL"),
          sup(1014.6, "restart", 1, cause="chaos_kill", backoff_s=0.0), sup(1015, "spawn", 2, child_pid=12)]
    e += [ev(1016, "run_start", 12, 2), ev(1018, "restore", 12, 2, step=10, tier="local", skipped=[])]
    e += [ev(1008 + s, "metrics", 12, 2, step=s, values={"loss": 1 / s}) for s in range(11, 21)]
    e += [ev(1023.5, "checkpoint", 12, 2, step=15, reason="policy", stall_s=0.2, persist_s=0.8),
          ev(1028.2, "notice", 12, 2, source="aws", seconds_left=119.0, advisory=False),
          ev(1028.5, "checkpoint", 12, 2, step=20, reason="notice", stall_s=0.1, persist_s=0.2),
          ev(1028.6, "stop", 12, 2, reason="notice", exit_code=75, step=20, tier="local")]
    e += [sup(1028.7, "exit", 2, cause="preempted", exit_code=75), sup(1028.7, "restart", 2, cause="preempted",
                                                                       backoff_s=0.0)]
    e += [ev(1030, "run_start", 13, 3), ev(1031, "restore", 13, 3, step=20, tier="local", skipped=[])]
    e += [ev(1011 + s, "metrics", 13, 3, step=s, values={"loss": 1 / s}) for s in range(21, 31)]
    e += [ev(1036.5, "checkpoint", 13, 3, step=25, reason="policy", stall_s=0.3, persist_s=0.6),
          ev(1037.0, "upload", 13, 3, step=25, upload_s=1.0, bytes=100),
          ev(1041.5, "checkpoint", 13, 3, step=30, reason="final", stall_s=0.1, persist_s=0.4),
          ev(1041.8, "upload", 13, 3, step=30, upload_s=3.0, bytes=100),
          ev(1042.0, "stop", 13, 3, reason="completed", exit_code=0, step=30, tier="remote")]
    e += [sup(1042.1, "exit", 3, cause="done", exit_code=0), sup(1042.2, "supervisor_stop", 3, exit_code=0)]
    return e


def test_figures_of_a_hand_written_log():
    r = build_report(list(reversed(three_attempts())), root="runs/x")  # any order
    assert r["attempts"] == 3 and r["final_step"] == 30 and r["completed"]
    assert r["wall_s"] == pytest.approx(42.2)
    assert r["interruptions"] == {"total": 2, "by_source": {"aws": 1, "killed": 1}}
    assert r["crashes"] == 0 and r["drills"] == 1
    assert r["resume"] == {"restarts": 2, "resumed": 2, "rate": 1.0, "fallbacks": 0}
    first, second = r["per_interruption"]
    assert (first["source"], first["step"], first["resumed_step"], first["replayed_steps"]) == ("killed", 12, 10, 2)
    assert first["replayed_s"] == pytest.approx(2.0) and first["restart_s"] == pytest.approx(5.0)   # 1014 -> 1019
    assert (second["source"], second["step"], second["resumed_step"], second["replayed_steps"]) == ("aws", 20, 20, 0)
    assert second["replayed_s"] == 0.0 and second["restart_s"] == pytest.approx(4.0) and second["tier"] == "local"
    assert r["replayed"]["steps"] == {"mean": 1.0, "worst": 2, "total": 2}
    assert r["replayed"]["seconds"] == pytest.approx({"mean": 1.0, "worst": 2.0, "total": 2.0})
    assert r["restart_lost_s"] == pytest.approx(9.0)
    # final executions: 30 steps of 1 s, less the stalls of saves 5, 15 and 25 that sit inside them
    assert r["useful_s"] == pytest.approx(30 - 0.7)
    assert r["goodput"] == pytest.approx(29.3 / 42.2)
    ck = r["checkpoints"]
    assert ck["count"] == 6 and ck["by_reason"] == {"final": 1, "notice": 1, "policy": 4}
    assert ck["stall_s"]["median"] == pytest.approx(0.2) and ck["stall_s"]["p95"] == pytest.approx(0.375)
    assert ck["persist_s"]["median"] == pytest.approx(0.5) and ck["persist_s"]["p95"] == pytest.approx(0.75)
    assert ck["upload_s"]["median"] == pytest.approx(2.0) and ck["upload_s"]["p95"] == pytest.approx(2.9)
    # prices from the supervisor's profile: spot for 42.2 h-seconds, on demand for what was not lost
    c = r["cost"]
    assert c["spot_cost"] == pytest.approx(42.2 / 3600) and c["on_demand_cost"] == pytest.approx(4 * 31.2 / 3600)
    assert c["savings_fraction"] == pytest.approx(1 - 42.2 / (4 * 31.2))
    pts = r["loss"]["points"]
    assert len(pts) == 32 and [p[0] for p in pts if p[2] == 1][-2:] == [11, 12]
    assert pts[-1] == [30, pytest.approx(1 / 30), 3]
    json.dumps(r)  # JSON-able as it is


def test_flag_prices_override_the_profile_and_no_prices_means_no_cost():
    r = build_report(three_attempts(), spot_price=2.0, on_demand_price=2.0)
    assert r["cost"]["spot_cost"] == pytest.approx(2 * 42.2 / 3600) and r["cost"]["savings"] < 0
    bare = [e for e in three_attempts() if e.get("role") != "supervisor"]
    r = build_report(bare)
    assert r["cost"] is None and r["drills"] == 0
    # without the supervisor's records the kill is still seen: no stop event, and a next attempt
    assert r["interruptions"]["by_source"] == {"aws": 1, "killed": 1}
    assert r["wall_s"] == pytest.approx(1042.0 - 1001.0)


def test_crashes_fallbacks_and_a_resume_that_fell_back():
    e = [ev(0, "run_start", 1, 1), ev(1, "restore", 1, 1, step=None, skipped=[])]
    e += [ev(1 + s, "metrics", 1, 1, step=s, values={"loss": 1.0}) for s in range(1, 5)]
    e += [ev(3.5, "checkpoint", 1, 1, step=2, stall_s=0.1), ev(4.5, "checkpoint", 1, 1, step=4, stall_s=0.1)]
    e += [ev(5.5, "stop", 1, 1, reason="error", exit_code=1, step=4)]
    e += [ev(8, "run_start", 2, 2), ev(9, "restore", 2, 2, step=2, skipped=["step-000000000004: corrupt"])]
    e += [ev(9 + s, "metrics", 2, 2, step=s, values={"loss": 1.0}) for s in range(3, 6)]
    e += [ev(14.5, "stop", 2, 2, reason="completed", exit_code=0, step=5)]
    r = build_report(e)
    assert r["crashes"] == 1 and r["interruptions"]["total"] == 0 and r["per_interruption"] == []
    assert r["resume"] == {"restarts": 1, "resumed": 0, "rate": 0.0, "fallbacks": 1}
    assert r["restart_lost_s"] == pytest.approx(12 - 5)
    # final executions: steps 1-2 of attempt 1 (1 s each), 3-5 of attempt 2 (3 s from its restore to
    # step 3, then 1 s each); save 2's stall sat in step 3 of attempt 1, which was replayed
    assert r["useful_s"] == pytest.approx(2 + 3 + 1 + 1)


LABEL = r'[a-z_]+="(?:[^"\\]|\\.)*"'
SAMPLE = re.compile(rf'^([a-z_]+)\{{({LABEL}(?:,{LABEL})*)\}} (-?[0-9.e+-]+|NaN)$')


def test_prometheus_text_is_well_formed_and_carries_the_figures():
    text = prometheus_text(build_report(three_attempts(), root='runs/"x"'))
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) spotsafe_[a-z_]+ .+$", line), line
            continue
        m = SAMPLE.match(line)
        assert m, line
        samples[(m[1], m[2])] = float(m[3])
    run = 'run="runs/\\"x\\""'
    assert samples[("spotsafe_interruptions_total", run + ',source="aws"')] == 1
    assert samples[("spotsafe_interruptions_total", run + ',source="killed"')] == 1
    assert samples[("spotsafe_attempts_total", run)] == 3
    assert samples[("spotsafe_checkpoint_stall_seconds", run + ',quantile="0.95"')] == pytest.approx(0.375)
    assert samples[("spotsafe_checkpoint_stall_seconds_count", run)] == 6
    assert samples[("spotsafe_goodput_ratio", run)] == pytest.approx(29.3 / 42.2)
    assert samples[("spotsafe_cost_on_demand", run)] == pytest.approx(4 * 31.2 / 3600)
    assert samples[("spotsafe_replayed_steps_total", run)] == 2
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert kinds["spotsafe_checkpoint_stall_seconds"] == "summary" and kinds["spotsafe_attempts_total"] == "counter"


def test_thin_points_keeps_every_attempt_its_ends_and_the_order():
    from spotsafe._telemetry._html import MAX_POINTS, render_html
    from spotsafe._telemetry._report import thin_points

    pts = [[s, 1 / s, 1] for s in range(1, 60_001)] + [[s, 1 / s, 2] for s in range(50_001, 50_011)] + \
          [[s, 1 / s, 3] for s in range(50_011, 140_001)]
    thin = thin_points(pts, 6000)
    assert 5990 <= len(thin) <= 6010
    for a in (1, 2, 3):
        mine = [p for p in thin if p[2] == a]
        full = [p for p in pts if p[2] == a]
        assert mine[0] == full[0] and mine[-1] == full[-1] and mine == sorted(mine)
    assert len([p for p in thin if p[2] == 2]) == 10      # a short attempt stays whole
    page = render_html({"loss": {"name": "loss", "points": pts}})
    assert page.count("],[") < MAX_POINTS + 20            # the embedded data is thinned too


def test_the_supervisors_records_are_not_attempts_and_plan_reads_the_report_s_figures():
    """measure() (spotsafe plan --from, Optimal(mtbf=None)) counts the attempts the report counts:
    the supervisor's file, split by attempt number, is no attempt of its own."""
    from spotsafe._telemetry import measure

    m = measure(three_attempts())
    r = build_report(three_attempts())
    assert m.attempts == r["attempts"] == 3 and m.interruptions == r["interruptions"]["total"] == 2
    assert m.running_s == pytest.approx(13.0 + 12.6 + 12.0)          # each process, first event to last
    assert m.mtbf_s == pytest.approx(m.running_s / 3)
    # from the end of an attempt to the next one's first step: 1014 -> 1019 and 1028.6 -> 1032
    assert m.restart_s == pytest.approx((5.0 + 3.4) / 2) and m.restart_s > 0
    # an attempt the supervisor spawned that crashed before writing an event counts for both
    e = three_attempts() + [sup(1043, "spawn", 4, child_pid=14), sup(1043.5, "exit", 4, cause="crash", exit_code=1)]
    assert measure(e).attempts == build_report(e)["attempts"] == 4


def test_a_rerun_of_a_finished_run_adds_no_lost_time_and_no_wall_time():
    e = three_attempts()
    idle = 20 * 60.0                                                   # the user reruns 20 minutes later
    t = 1042.2 + idle
    e += [sup(t, "supervisor_start", 3, profile={"spot_price": 1.0, "on_demand_price": 4.0}),
          sup(t + 0.1, "spawn", 4, child_pid=14), ev(t + 1, "run_start", 14, 4),
          ev(t + 1.5, "restore", 14, 4, step=30, tier="local", skipped=[]),
          ev(t + 1.6, "stop", 14, 4, reason="completed", exit_code=0, step=30, tier="local"),
          sup(t + 1.7, "exit", 4, cause="done", exit_code=0), sup(t + 1.8, "supervisor_stop", 4, exit_code=0)]
    r, before = build_report(e), build_report(three_attempts())
    assert r["restart_lost_s"] == pytest.approx(before["restart_lost_s"]) == pytest.approx(9.0)
    assert r["idle_s"] == pytest.approx(idle) and r["wall_s"] == pytest.approx(42.2 + 1.8)
    assert r["reruns"] == 1 and r["resume"]["restarts"] == 2 and r["interruptions"]["total"] == 2
    assert r["completed"] and r["crashes"] == 0
    from spotsafe._telemetry import measure
    assert measure(e).restart_s == pytest.approx(measure(three_attempts()).restart_s)


def test_replayed_steps_compare_their_logged_metrics_and_restored_from_names_the_step():
    r = build_report(three_attempts())
    # attempt 1 was killed at step 12, attempt 2 resumed at 10: steps 11 and 12 ran twice, same loss
    assert r["replayed"]["metrics"] == {"steps": 2, "compared": 2, "identical": 2, "differing": []}
    first, second = r["per_interruption"]
    assert first["restored_from"] == {"step": 10, "tier": "local"}     # after a SIGKILL, too
    assert second["restored_from"] == {"step": 20, "tier": "local"}
    e = [x if not (x["event"] == "metrics" and x["pid"] == 12 and x["step"] == 12)
         else {**x, "values": {"loss": 0.5}} for x in three_attempts()]
    m = build_report(e)["replayed"]["metrics"]
    assert (m["compared"], m["identical"]) == (2, 1)
    assert m["differing"] == [{"step": 12, "name": "loss", "attempts": [1, 2], "values": [1 / 12, 0.5]}]
    text = prometheus_text(build_report(e))
    assert 'spotsafe_replayed_metrics_compared_total{run=""} 2.0' in text
    assert 'spotsafe_replayed_metrics_identical_total{run=""} 1.0' in text
    from spotsafe._telemetry._html import render_html
    page = render_html(r)
    assert "step 10 (local)" in page and "2 logged metrics compared, 2 identical" in page


def _elastic(next_world: int) -> list[dict]:
    """A 2-rank job's rank 0 fails in a collective at step 7 (checkpoint 5); the next attempt runs on
    ``next_world`` ranks from 5 to 8."""
    e = [ev(0, "run_start", 1, 1, world_size=2), ev(1, "restore", 1, 1, step=None, skipped=[])]
    e += [ev(1 + s, "metrics", 1, 1, step=s, values={"loss": 1 / s}) for s in range(1, 8)]
    e += [ev(6.5, "checkpoint", 1, 1, step=5, reason="policy", stall_s=0.1, persist_s=0.2),
          ev(8.5, "stop", 1, 1, reason="error", exit_code=1, step=7, error="RuntimeError: Connection closed by peer")]
    e += [ev(20, "run_start", 2, 2, world_size=next_world), ev(21, "restore", 2, 2, step=5, tier="remote",
                                                                skipped=[])]
    e += [ev(16 + s, "metrics", 2, 2, step=s, values={"loss": 1 / s}) for s in range(6, 9)]
    return e + [ev(25, "stop", 2, 2, reason="completed", exit_code=0, step=8)]


def test_a_failure_after_which_the_job_goes_on_with_fewer_ranks_is_a_lost_node():
    from spotsafe._telemetry._report import world_change

    r = build_report(_elastic(1))
    (hit,) = r["per_interruption"]
    assert (hit["source"], hit["step"], hit["resumed_step"], hit["replayed_steps"]) == ("node lost", 7, 5, 2)
    assert world_change(hit) == "2 → 1" and [a["outcome"] for a in r["per_attempt"]] == ["interrupted", "finished"]
    same = build_report(_elastic(2))  # the same size after it: a crash, as before
    assert not same["per_interruption"] and [a["outcome"] for a in same["per_attempt"]] == ["crashed", "finished"]
