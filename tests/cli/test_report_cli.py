"""``spotsafe report`` on a directory of hand-written event files (the log of tests/unit/test_report.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import child_env, spotsafe_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_report import three_attempts


def write_log(root: Path) -> None:
    files = defaultdict(list)
    for e in three_attempts():
        files[f"{e['host']}-{e['pid']}.jsonl"].append(json.dumps(e))
    (root / "events").mkdir(parents=True)
    for name, lines in files.items():
        (root / "events" / name).write_text("\n".join(lines) + "\n" + '{"ts": 1, "event": "torn')  # a torn tail


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*spotsafe_cli(), "report", *args], env=child_env(), capture_output=True, text=True,
                          timeout=60)


def test_text_report_states_the_figures(tmp_path):
    write_log(tmp_path)
    r = report(str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "3 attempts, final step 30 (completed), wall time 42.20 s" in out
    assert "interruptions 2 (aws 1, killed 1); crashes 0; drills injected 1" in out
    assert "resumed 2 of 2 restarts from the newest checkpoint (100%)" in out
    assert "replayed work per interruption: 1.0 steps mean, 2 worst; 1.00 s mean, 2.00 s worst" in out
    assert "time lost to restarts 9.00 s; useful training 29.30 s; goodput 69.4%" in out
    assert "cost: spot 0.01 (0.012 h x 1/h) vs on-demand 0.03 (0.009 h x 4/h): spot saved 0.02 (66%)" in out


def test_json_prometheus_and_html_outputs(tmp_path):
    write_log(tmp_path)
    r = report(str(tmp_path), "--json", "--spot-price", "2", "--on-demand-price", "2")
    rep = json.loads(r.stdout)
    assert rep["cost"]["spot_price"] == 2 and rep["cost"]["savings"] < 0    # flags beat the profile's prices
    r = report(str(tmp_path), "--prometheus", "-")
    assert r.returncode == 0 and r.stdout.startswith("# HELP spotsafe_attempts_total")
    assert f'spotsafe_interruptions_total{{run="{tmp_path}",source="aws"}} 1.0' in r.stdout
    r = report(str(tmp_path), "--prometheus", str(tmp_path / "m.prom"), "--html", str(tmp_path / "r.html"))
    assert r.returncode == 0 and "wrote" in r.stdout
    assert (tmp_path / "m.prom").read_text().count("\n# TYPE ") > 15
    html = (tmp_path / "r.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and 'id="report-data"' in html


def test_no_events_is_a_clear_error(tmp_path):
    r = report(str(tmp_path))
    assert r.returncode == 1
    assert f"No events in {tmp_path}/events; pass the run root" in r.stderr


def test_fields_of_the_wrong_type_read_as_absent(tmp_path):
    """A hand-edited or foreign event file: a step that is a string, a stall that is markup, an infinite
    persist time, a count of skipped checkpoints, prices that are not numbers. The report still states
    the run's figures (exit 0), as if those fields were missing, instead of an "Internal error"."""
    from test_report import ev, sup

    write_log(tmp_path)
    hostile = [ev(1030.5, "metrics", 13, 3, step="x", values={"loss": 1}),
               ev(1031.5, "restore", 13, 3, step=[1], skipped=5),
               ev(1041.6, "checkpoint", 13, 3, step="x", stall_s="[/bogus]", persist_s=float("inf")),
               sup(1042.15, "supervisor_start", 3, profile={"spot_price": "x", "on_demand_price": [4]}),
               {"ts": "soon", "event": "metrics", "step": 3}]
    hostile.append(ev(1041.7, "metrics", 13, 3, step=30, values={"loss": float("nan"), "acc": float("inf")}))
    (tmp_path / "events" / "h-13.jsonl").open("a").write("\n" + "\n".join(json.dumps(e) for e in hostile) + "\n")
    r = report(str(tmp_path), "--json")                                 # strict JSON: NaN and Infinity become null
    assert json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json"))["attempts"] == 3
    r = report(str(tmp_path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "3 attempts, final step 30 (completed), wall time 42.20 s" in r.stdout
    assert "resumed 2 of 2 restarts from the newest checkpoint (100%); invalid checkpoints skipped 0" in r.stdout
    assert "cost: pass --spot-price and --on-demand-price" in r.stdout   # the newest profile's prices are no numbers
