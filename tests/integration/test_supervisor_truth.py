"""``spotsafe run`` and ``spotsafe report`` tell the truth, with real processes (issue 12, section 7).

- the events live beside the run's checkpoints even when the root is given only inside the
  script; nothing is written into the current directory; run ids and attempt numbers hold
  across supervisors;
- ``spotsafe plan --from`` reads the attempts ``spotsafe report`` counts; a rerun of a
  finished run adds no lost time; after a SIGKILL the report says where the next attempt
  restored from; replayed steps are compared with what they logged before;
- a cloud notice ends the supervisor with 75 (the job must move), a drill's notice restarts
  here; a process that exits 0 or 1 after recording a stop for a notice was preempted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import child_env, run_cli, spotsafe_cli

from spotsafe._telemetry import read_events

PY = sys.executable

TRAIN = textwrap.dedent("""
    import os, signal, sys, time, torch, spotsafe
    root, steps, mode, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    ready = os.environ.get("READY_FILE")
    state = {"w": torch.zeros(2)}
    with spotsafe.Run(root, state, save_every=5, notices=os.environ.get("NOTICES", "signals"),
                      exit_on_notice=not mode.startswith("soft")) as run:
        print("resumed", run.step, run.events.run_id, run.events.attempt, flush=True)
        for step in run.steps(steps):
            state["w"] += 1
            run.log(loss=float(state["w"][0]) / 7)        # the same value whenever the step is replayed
            time.sleep(delay)
            if step == 3 and ready:
                open(ready, "w").write("ready")
            if mode != "plain" and step == 8 and run.events.attempt == 1:
                os.kill(os.getpid(), signal.SIGTERM)     # a notice to this process alone
    print("done", run.step, run.exit_code, flush=True)
    if mode.startswith("soft") and run.exit_code == 75:
        sys.exit(int(mode[4:]))                          # as Lightning (0) or torchrun (1) would after a notice
""")


def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(TRAIN)
    return path


def supervise(args, cmd, *, cwd, env=None, timeout=120):
    return subprocess.run([*spotsafe_cli(), "run", *args, "--", *cmd], cwd=cwd, env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout)


def cli_json(*args, cwd=None):
    r = run_cli(*args, "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def state_env(tmp_path: Path) -> dict[str, str]:
    env = child_env()
    env["SPOTSAFE_STATE_DIR"] = str(tmp_path / "state")
    return env


@pytest.mark.slow
def test_root_only_in_the_script_events_beside_the_checkpoints_nothing_in_cwd_ids_stable(tmp_path):
    cwd, root = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    env = state_env(tmp_path)
    cmd = [PY, str(script(tmp_path)), str(root), "20", "term", "0"]
    r = supervise([], cmd, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(cwd) == []                                       # nothing written here, unasked
    assert [p.name for p in (tmp_path / "state" / "supervisor").iterdir()] == []   # its records moved
    events = read_events(root / "events")
    sup = [e for e in events if e.get("role") == "supervisor"]
    run_ids = {e["run_id"] for e in events}
    assert len(run_ids) == 1 and (root / "events" / "run-id").read_text().strip() in run_ids
    assert [(e["attempt"], e["cause"]) for e in sup if e["event"] == "exit"] == [(1, "preempted"), (2, "done")]
    resumed = [line.split() for line in r.stdout.splitlines() if line.startswith("resumed")]
    assert [(int(x[1]), x[2], int(x[3])) for x in resumed] == [(0, *run_ids, 1), (8, *run_ids, 2)]
    before = cli_json("report", str(root))
    assert before["attempts"] == 2 and before["completed"] and before["interruptions"]["by_source"] == {"signal": 1}

    time.sleep(1.5)                                                    # idle, then a rerun of the finished run
    cmd[2] = f"file://{root}"                                          # the same root, spelled as a URL
    r = supervise([], cmd, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(cwd) == []
    assert f"resumed 20 {next(iter(run_ids))} 3" in r.stdout            # same run id, the attempts count on
    after = cli_json("report", str(root))
    assert after["attempts"] == 3 and after["reruns"] == 1 and after["resume"]["restarts"] == 1
    assert after["restart_lost_s"] == pytest.approx(before["restart_lost_s"])   # the idle time is no restart
    evs = read_events(root / "events")
    rerun = [e["ts"] for e in evs if e["event"] == "supervisor_start"][1]
    assert after["idle_s"] >= 1.5
    assert after["wall_s"] == pytest.approx(before["wall_s"] + evs[-1]["ts"] - rerun, abs=1e-3)  # idle not billed


@pytest.mark.slow
def test_a_drill_kill_the_report_and_plan_from_tell_what_happened(tmp_path):
    cwd, root = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    cmd = [PY, str(script(tmp_path)), str(root), "60", "plain", "0.03"]
    r = supervise(["--chaos", "1s", "--chaos-seed", "5", "--chaos-kill-share", "1", "--chaos-max", "1"], cmd,
                  cwd=cwd, env=state_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(cwd) == []
    events = read_events(root / "events")
    sup = {e["event"]: e for e in events if e.get("role") == "supervisor"}
    assert sup["chaos"]["action"] == "kill"
    procs = {}
    for e in events:
        if e.get("role") != "supervisor":
            procs.setdefault(e["attempt"], []).append(e)
    assert sorted(procs) == [1, 2]
    killed_at = max(e["step"] for e in procs[1] if e["event"] == "metrics")
    restored = next(e for e in procs[2] if e["event"] == "restore")
    # the newest checkpoint on disk: the one attempt 1 reported durable, or one it had no step left to report
    reported = max(e["step"] for e in procs[1] if e["event"] == "checkpoint")
    assert restored["step"] in (reported, reported + 5) and restored["step"] <= killed_at

    page = tmp_path / "report.html"
    rep = cli_json("report", str(root), "--html", str(page))
    assert rep["attempts"] == 2 and rep["completed"] and rep["interruptions"]["by_source"] == {"killed": 1}
    (kill,) = rep["per_interruption"]
    assert kill["step"] == killed_at and kill["resumed_step"] == restored["step"]
    assert kill["restored_from"] == {"step": restored["step"], "tier": "local"}        # not "-" after a SIGKILL
    assert f"step {restored['step']} (local)" in page.read_text()
    replayed = killed_at - restored["step"]
    assert rep["replayed"]["steps"]["total"] == replayed
    assert rep["replayed"]["metrics"] == {"steps": replayed, "compared": replayed, "identical": replayed,
                                          "differing": []}                         # a deterministic script
    text = run_cli("report", root).stdout
    assert f"replayed {replayed} steps, {replayed} logged metrics compared, {replayed} identical" in text

    plan = cli_json("plan", "--hours", "10", "--on-demand-price", "3", "--spot-price", "1", "--from", str(root))
    m = plan["measured"]
    assert m["attempts"] == 2 and m["interruptions"] == 1                # the supervisor's file is no attempt
    first_step = min(e["ts"] for e in procs[2] if e["event"] in ("metrics", "checkpoint"))
    assert m["restart_s"] == pytest.approx(first_step - max(e["ts"] for e in procs[1]))
    assert plan["restart_cost_s"] == m["restart_s"] > 0
    running = sum(max(e["ts"] for e in evs) - min(e["ts"] for e in evs) for evs in procs.values())
    assert plan["mtbf_s"] == pytest.approx(running / 2)
    assert plan["inputs"] == {"mtbf": "measured", "checkpoint cost": "measured", "restart cost": "measured"}


@pytest.mark.slow
def test_a_cloud_notice_ends_the_supervisor_with_75_and_a_drill_notice_restarts(tmp_path, metadata):
    root = tmp_path / "run"
    env = child_env()
    env.update(metadata.env())
    env.update({"NOTICES": "auto", "SPOTSAFE_NOTICE_POLL_S": "0.1", "READY_FILE": str(tmp_path / "ready")})
    cmd = [PY, str(script(tmp_path)), str(root), "60", "plain", "0.05"]
    p = subprocess.Popen([*spotsafe_cli(), "run", "--root", str(root), "--", *cmd], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (tmp_path / "ready").exists() or p.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "ready").exists(), "the supervised command never reached step 3"
        metadata.aws_interrupt(120)                      # the machine is being reclaimed
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 75, err[-3000:]
    assert "notice from aws" in err and "exiting 75 so that the job moves" in err
    sup = [e for e in read_events(root / "events") if e.get("role") == "supervisor"]
    assert [e["event"] for e in sup].count("spawn") == 1                       # no restart on this machine
    (ex,) = [e for e in sup if e["event"] == "exit"]
    assert ex["cause"] == "preempted" and ex["source"] == "aws" and ex["exit_code"] == 75
    stop = next(e for e in read_events(root / "events") if e["event"] == "stop")
    assert ex["checkpoint_step"] == stop["step"] > 3

    metadata.reset()                                     # a new machine; now a drill's notice: restart here
    del env["READY_FILE"]
    r = supervise(["--root", str(root), "--chaos", "0.5s", "--chaos-seed", "5", "--chaos-kill-share", "0",
                   "--chaos-max", "1"], cmd, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    exits = [e for e in read_events(root / "events") if e.get("role") == "supervisor" and e["event"] == "exit"]
    assert [(e["attempt"], e["cause"], e["source"]) for e in exits] == [
        (1, "preempted", "aws"), (2, "preempted", "signal"), (3, "done", None)]
    assert "done 60 0" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("code", [0, 1])
def test_exit_0_or_1_after_a_recorded_notice_stop_is_preempted(tmp_path, code):
    root = tmp_path / "run"
    cmd = [PY, str(script(tmp_path)), str(root), "12", f"soft{code}", "0"]
    r = supervise(["--root", str(root), "--max-crashes", "1"], cmd, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    exits = [e for e in read_events(root / "events") if e.get("role") == "supervisor" and e["event"] == "exit"]
    assert [(e["exit_code"], e["cause"]) for e in exits] == [(code, "preempted"), (0, "done")]
    assert "recorded a stop for a notice" in exits[0]["detail"]
    assert "resumed 8 " in r.stdout and "done 12 0" in r.stdout
    rep = cli_json("report", str(root))
    assert rep["crashes"] == 0 and rep["interruptions"]["by_source"] == {"signal": 1}


def test_a_url_root_keeps_the_events_on_the_object_store_and_nothing_in_cwd(tmp_path, s3_url):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = state_env(tmp_path)
    r = supervise(["--root", s3_url], [PY, "-c", "import sys; sys.exit(0)"], cwd=cwd, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(cwd) == []
    rep = cli_json("report", s3_url)                                   # the supervisor's records, on the remote
    assert rep["attempts"] == 1 and rep["run_ids"] == [(next((tmp_path / "state" / "runs").iterdir())
                                                         / "events" / "run-id").read_text().strip()]
