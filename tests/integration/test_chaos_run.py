"""A real training run under ``spotsafe run --chaos``: drills of both kinds, bit-exact end, true report.

examples/train.py (dropout, Adam, one-cycle LR, two DataLoader workers with random
augmentation) is supervised with a fixed drill seed: SIGTERM notices (answered with a
checkpoint and exit 75) and hard SIGKILLs of the whole process group. It must finish with
parameters and Adam state ``torch.equal`` to an uninterrupted run, and ``spotsafe report``
must tell exactly what the processes printed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import EXAMPLES, child_env, spotsafe_cli
from preemption_demo import compare
from test_report_html import PAGE, Tags, page_errors, run_chromium

from spotsafe._telemetry import read_events

pytestmark = pytest.mark.slow

STEPS, SAVE_EVERY = 240, 7   # long enough that all 4 drills land during training
TRAIN = [sys.executable, str(EXAMPLES / "train.py"), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY),
         "--notices", "signals"]


def attempts_from_stdout(out: str) -> list[dict]:
    """What each attempt's process printed: where it resumed, the steps it ran, how it ended."""
    runs: list[dict] = []
    for line in out.splitlines():
        if m := re.match(r"resumed (\d+) ", line):
            runs.append({"resumed": int(m[1]), "steps": [], "preempted": None, "done": False})
        elif m := re.match(r"step (\d+) ", line):
            runs[-1]["steps"].append(int(m[1]))
        elif m := re.match(r"preempted (\d+) source (\S+)", line):
            runs[-1]["preempted"] = int(m[1])
        elif line.startswith("done "):
            runs[-1]["done"] = True
    return runs


def test_chaos_drills_then_bit_exact_and_the_report_matches_what_happened(tmp_path):
    env = child_env()
    subprocess.run([*TRAIN, "--root", str(tmp_path / "ref"), "--out", str(tmp_path / "ref.pt"), "--workers", "0"],
                   check=True, env=env, stdout=subprocess.DEVNULL, timeout=300)

    root = tmp_path / "run"
    # seed 1 draws: notice, kill, kill, notice (one drill per attempt, ~1.5 s into training)
    r = subprocess.run([*spotsafe_cli(), "run", "--root", str(root), "--chaos", "1.5s", "--chaos-seed", "1",
                        "--chaos-max", "4", "--chaos-grace", "20s", "--seed", "0", "--",
                        *TRAIN, "--workers", "2", "--step-delay", "0.03", "--out", str(tmp_path / "int.pt")],
                       env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert compare(str(tmp_path / "ref.pt"), str(tmp_path / "int.pt")) == []

    sup = [e for e in read_events(root / "events") if e.get("role") == "supervisor"]
    drills = [e["action"] for e in sup if e["event"] == "chaos"]
    causes = [e["cause"] for e in sup if e["event"] == "exit"]
    assert drills == ["notice", "kill", "kill", "notice"]
    assert causes == ["preempted", "chaos_kill", "chaos_kill", "preempted", "done"]

    runs = attempts_from_stdout(r.stdout)
    assert len(runs) == 5 and runs[-1]["done"]
    for i in (0, 3):                       # notices: the step it stopped on is the step it resumed at
        assert runs[i]["preempted"] == runs[i]["steps"][-1] == runs[i + 1]["resumed"]
    for i in (1, 2):                       # kills: it resumed from a checkpoint before the kill
        assert runs[i + 1]["resumed"] <= runs[i]["steps"][-1] and runs[i + 1]["resumed"] % SAVE_EVERY == 0

    page = tmp_path / PAGE
    rep = json.loads(subprocess.run([*spotsafe_cli(), "report", str(root), "--json", "--spot-price", "1",
                                     "--on-demand-price", "3", "--html", str(page)], env=env, capture_output=True,
                                    text=True, timeout=60, check=True).stdout)
    assert rep["attempts"] == 5 and rep["final_step"] == STEPS and rep["completed"]
    assert rep["interruptions"] == {"total": 4, "by_source": {"killed": 2, "signal": 2}}
    assert rep["drills"] == 4 and rep["crashes"] == 0
    assert rep["resume"] == {"restarts": 4, "resumed": 4, "rate": 1.0, "fallbacks": 0}
    per = rep["per_interruption"]
    assert [p["source"] for p in per] == ["signal", "killed", "killed", "signal"]
    for p, run, nxt in zip(per, runs, runs[1:]):
        # a kill can land between the step's event and its print: the event may be one step ahead
        assert p["step"] - run["steps"][-1] in (0, 1)
        assert p["resumed_step"] == nxt["resumed"]
        assert p["replayed_steps"] == p["step"] - nxt["resumed"]
    assert per[0]["replayed_steps"] == per[3]["replayed_steps"] == 0       # a notice loses nothing
    assert per[0]["replayed_s"] == 0.0 and per[0]["tier"] == "local"
    assert rep["replayed"]["steps"]["total"] == sum(p["replayed_steps"] for p in per)
    printed = sum(len(run["steps"]) for run in runs)
    points = rep["loss"]["points"]
    assert printed <= len(points) <= printed + 2                           # every step's loss, across restarts
    assert len({p[0] for p in points}) == STEPS
    assert rep["checkpoints"]["count"] >= STEPS // SAVE_EVERY
    assert 0 < rep["goodput"] < 1 and rep["restart_lost_s"] > 0
    c = rep["cost"]
    assert c["spot_cost"] == pytest.approx(rep["wall_s"] / 3600)
    assert c["on_demand_cost"] == pytest.approx(
        3 * (rep["wall_s"] - rep["replayed"]["seconds"]["total"] - rep["restart_lost_s"]) / 3600)

    # the HTML page of this real run, in a real headless Chromium: the curve of every attempt drawn
    dom = run_chromium(tmp_path, page, "--dump-dom")
    assert not page_errors(dom.stderr), page_errors(dom.stderr)
    tags = Tags(dom.stdout)
    assert "data-errors" not in tags.first("body")
    chart = tags.first("svg", id="loss-chart")
    assert int(chart["data-points"]) == sum(1 for p in points if p[1] is not None) == len(points)
    assert chart["data-segments"] == "5" and chart["data-markers"] == "4"
    shot = tmp_path / "real-report.png"
    run_chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars")
    assert shot.stat().st_size > 20_000


def test_sigkill_then_a_corrupt_newest_checkpoint_is_skipped_recorded_and_still_bit_exact(tmp_path):
    import os
    import signal
    import time

    from spotsafe._format import committed_steps, step_dir
    from spotsafe._storage import open_storage

    env = child_env()
    args = ["--steps", "60", "--save-every", "10", "--notices", "signals", "--workers", "0"]
    subprocess.run([*TRAIN[:2], *args, "--root", str(tmp_path / "ref"), "--out", str(tmp_path / "ref.pt")],
                   check=True, env=env, stdout=subprocess.DEVNULL, timeout=300)
    root = tmp_path / "run"
    p = subprocess.Popen([*spotsafe_cli(), "run", "--root", str(root), "--backoff-base", "3s", "--seed", "0", "--",
                          *TRAIN[:2], *args, "--step-delay", "0.05", "--out", str(tmp_path / "int.pt")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        for line in p.stdout:                                   # bounded: the child ends by step 60
            if line.startswith("durable 30"):
                break
        spawn = next(e for e in read_events(root / "events") if e["event"] == "spawn")
        os.kill(spawn["child_pid"], signal.SIGKILL)             # no notice, no checkpoint
        time.sleep(0.3)
        newest = committed_steps(open_storage(str(root)))[-1]
        victim = max((root / step_dir(newest)).glob("*.bin"), key=lambda f: f.stat().st_size)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01                            # same size: only the checksum can tell
        victim.write_bytes(bytes(data))
        out, err = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 0, err[-3000:]
    assert compare(str(tmp_path / "ref.pt"), str(tmp_path / "int.pt")) == []
    restores = [e for e in read_events(root / "events") if e["event"] == "restore"]
    assert restores[-1]["step"] == newest - 10 and len(restores[-1]["skipped"]) == 1
    assert step_dir(newest) in restores[-1]["skipped"][0]
    sup_exit = next(e for e in read_events(root / "events") if e["event"] == "exit")
    assert sup_exit["cause"] == "crash" and sup_exit["signal"] == "SIGKILL" and sup_exit["checkpoint_step"] == newest
    rep = json.loads(subprocess.run([*spotsafe_cli(), "report", str(root), "--json"], env=env, capture_output=True,
                                    text=True, timeout=60, check=True).stdout)
    assert rep["resume"] == {"restarts": 1, "resumed": 0, "rate": 0.0, "fallbacks": 1}
    assert rep["crashes"] == 1 and rep["interruptions"]["total"] == 0


def test_events_reach_the_remote_and_the_report_reads_them_there(tmp_path, s3_url):
    env = child_env()
    root = tmp_path / "run"
    # 0.1 s a step: step 10's upload starts before step 20 is saved (else 20 rightly supersedes it)
    args = ["--steps", "20", "--save-every", "10", "--notices", "signals", "--workers", "0", "--step-delay", "0.1"]
    r = subprocess.run([*spotsafe_cli(), "run", "--root", str(root), "--remote", s3_url, "--", *TRAIN[:2], *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    local = json.loads(subprocess.run([*spotsafe_cli(), "report", str(root), "--json"], env=env, capture_output=True,
                                      text=True, timeout=60, check=True).stdout)
    remote = json.loads(subprocess.run([*spotsafe_cli(), "report", s3_url, "--json"], env=env, capture_output=True,
                                       text=True, timeout=60, check=True).stdout)
    assert local["checkpoints"]["count"] == 2 and local["checkpoints"]["upload_s"]["count"] == 2
    for key in ("attempts", "final_step", "completed", "checkpoints", "loss", "interruptions"):
        assert remote[key] == local[key], key
    # a Run outside the supervisor copies its own event file
    r = subprocess.run([*TRAIN[:2], "--root", str(tmp_path / "solo"), "--remote", s3_url + "-solo", *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    solo = json.loads(subprocess.run([*spotsafe_cli(), "report", s3_url + "-solo", "--json"], env=env,
                                     capture_output=True, text=True, timeout=60, check=True).stdout)
    assert solo["final_step"] == 20 and solo["completed"] and len(solo["loss"]["points"]) == 20
