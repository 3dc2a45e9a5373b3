"""``spotsafe run`` on real subprocesses: exit codes, signals, the retry budget, backoff, env.

The commands here are small Python scripts (no torch, so each attempt starts fast) and,
where checkpoints matter, examples/train.py. Every test bounds its time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import child_env, spotsafe_cli

from spotsafe._telemetry import read_events

PY = sys.executable
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def script(tmp_path: Path, body: str, name: str = "child.py") -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [PY, str(path)]


def supervise(args: list[str], command: list[str], *, timeout: float = 60, env: dict | None = None):
    return subprocess.run([*spotsafe_cli(), "run", *args, "--", *command], env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout)


def sup_events(events_dir: Path, kind: str | None = None) -> list[dict]:
    evs = [e for e in read_events(events_dir) if e.get("role") == "supervisor"]
    return [e for e in evs if kind is None or e["event"] == kind]


def test_exit_0_is_done_and_the_child_gets_run_id_attempt_and_events_dir(tmp_path):
    log = tmp_path / "env.jsonl"
    cmd = script(tmp_path, f"""
        import json, os, sys
        keys = ["SPOTSAFE_RUN_ID", "SPOTSAFE_ATTEMPT", "SPOTSAFE_EVENTS_DIR", "SPOTSAFE_ROOT",
                "SPOTSAFE_SAVE_EVERY", "SPOTSAFE_SIGNAL_GRACE", "SPOTSAFE_SUPERVISED"]
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps({{k: os.environ.get(k) for k in keys}}) + "\\n")
        sys.exit(75 if int(os.environ["SPOTSAFE_ATTEMPT"]) < 3 else 0)
    """)
    root = tmp_path / "run"
    r = supervise(["--root", str(root), "--profile", "experiment"], cmd)
    assert r.returncode == 0, r.stderr
    seen = [json.loads(x) for x in log.read_text().splitlines()]
    assert [s["SPOTSAFE_ATTEMPT"] for s in seen] == ["1", "2", "3"]      # 75 twice: restarted at once
    assert len({s["SPOTSAFE_RUN_ID"] for s in seen}) == 1                 # one stable run id
    assert seen[0]["SPOTSAFE_EVENTS_DIR"] == str((root / "events").resolve())
    assert seen[0]["SPOTSAFE_ROOT"] == str(root)
    assert seen[0]["SPOTSAFE_SAVE_EVERY"] == "30m"                         # the experiment profile's
    assert seen[0]["SPOTSAFE_SIGNAL_GRACE"] == "30" and seen[0]["SPOTSAFE_SUPERVISED"] == "1"
    restarts = sup_events(root / "events", "restart")
    assert [(e["cause"], e["backoff_s"]) for e in restarts] == [("preempted", 0.0), ("preempted", 0.0)]
    stop = sup_events(root / "events", "supervisor_stop")[-1]
    assert stop["exit_code"] == 0 and stop["restarts"] == 2
    assert "finished (attempt 3; 2 restart(s) by this supervisor)" in r.stderr

    # a second supervisor on the same root keeps the run id and counts attempts on
    r2 = supervise(["--root", str(root)], cmd)
    assert r2.returncode == 0
    again = [json.loads(x) for x in log.read_text().splitlines()][3:]
    assert again[0]["SPOTSAFE_RUN_ID"] == seen[0]["SPOTSAFE_RUN_ID"] and again[0]["SPOTSAFE_ATTEMPT"] == "4"


def test_a_crash_loop_stops_on_the_budget_and_the_backoff_grows(tmp_path):
    cmd = script(tmp_path, "import sys; print('boom', file=sys.stderr); sys.exit(3)\n")
    root = tmp_path / "run"
    t0 = time.monotonic()
    r = supervise(["--root", str(root), "--max-crashes", "4", "--backoff-base", "0.2s", "--backoff-cap", "10s",
                   "--seed", "7"], cmd)
    took = time.monotonic() - t0
    assert r.returncode == 4, r.stderr                                     # EXIT_CRASH_LOOP
    assert "4 crashes in a row with no new checkpoint" in r.stderr
    exits = sup_events(root / "events", "exit")
    assert [(e["cause"], e["exit_code"], e["progress"]) for e in exits] == [("crash", 3, False)] * 4
    delays = [e["backoff_s"] for e in sup_events(root / "events", "restart")]
    assert len(delays) == 3
    for k, d in enumerate(delays):                                          # 0.2 * 2**k, jitter x0.5..1.5
        assert 0.1 * 2 ** k <= d < 0.3 * 2 ** k, delays
    assert delays[2] > delays[0]                                            # it grows
    assert took >= sum(delays)                                              # and it was waited


def test_crashes_that_make_progress_do_not_count_as_a_loop(tmp_path):
    # each attempt commits one more checkpoint (a real CheckpointManager), then crashes
    root = tmp_path / "run"
    cmd = script(tmp_path, f"""
        import sys, torch, spotsafe
        with spotsafe.CheckpointManager({str(root)!r}, async_save=False) as m:
            state = {{"w": torch.zeros(4)}}
            step = (m.restore(state) or 0) + 1
            state["w"] += 1
            m.save(step, state)
        sys.exit(0 if step == 4 else 1)
    """)
    r = supervise(["--root", str(root), "--max-crashes", "1", "--backoff-base", "0.1s", "--seed", "1"], cmd,
                  timeout=120)
    assert r.returncode == 0, r.stderr
    exits = sup_events(root / "events", "exit")
    assert [(e["cause"], e["checkpoint_step"], e["progress"]) for e in exits] == [
        ("crash", 1, True), ("crash", 2, True), ("crash", 3, True), ("done", 4, True)]
    delays = [e["backoff_s"] for e in sup_events(root / "events", "restart")]
    assert all(0.05 <= d < 0.15 for d in delays), delays                    # no growth: progress resets it


def test_max_restarts_and_max_total_time_end_with_exit_3(tmp_path):
    always_preempted = script(tmp_path, "import sys; sys.exit(75)\n")
    r = supervise(["--root", str(tmp_path / "a"), "--max-restarts", "2"], always_preempted)
    assert r.returncode == 3 and "max_restarts (2) is spent" in r.stderr
    assert len(sup_events(tmp_path / "a" / "events", "spawn")) == 3

    # a command that would run for a minute is stopped like a notice when the time is spent
    saved = tmp_path / "saved"
    slow = script(tmp_path, f"""
        import signal, sys, time
        def stop(*_):
            open({str(saved)!r}, "w").write("checkpointed")
            sys.exit(75)
        signal.signal(signal.SIGTERM, stop)
        time.sleep(60)
    """, "slow.py")
    t0 = time.monotonic()
    r = supervise(["--root", str(tmp_path / "b"), "--max-total-time", "2s"], slow)
    assert r.returncode == 3 and "max_total_time (2.0s) is spent" in r.stderr, r.stderr
    assert saved.read_text() == "checkpointed" and time.monotonic() - t0 < 20


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signals_reach_the_child_and_the_supervisor_exits_75(tmp_path, sig):
    got, ready = tmp_path / "got", tmp_path / "ready"
    cmd = script(tmp_path, f"""
        import signal, sys, time
        def on(signum, frame):
            open({str(got)!r}, "w").write(signal.Signals(signum).name)
            sys.exit(75)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(s, on)
        open({str(ready)!r}, "w").write("ready")
        time.sleep(60)
    """)
    p = subprocess.Popen([*spotsafe_cli(), "run", "--root", str(tmp_path / "run"), "--", *cmd], env=child_env(),
                         stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.05)
        p.send_signal(sig)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert got.read_text() == sig.name
    assert p.returncode == 75, err                                          # child checkpointed: restart me
    assert f"{sig.name} received: the command checkpointed and exited 75" in err
    assert len(sup_events(tmp_path / "run" / "events", "spawn")) == 1        # no restart after a stop


def test_a_child_that_ignores_the_stop_is_killed_after_the_grace_and_exit_is_5(tmp_path):
    ready = tmp_path / "ready"
    cmd = script(tmp_path, f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").write("ready")
        time.sleep(60)
    """)
    p = subprocess.Popen([*spotsafe_cli(), "run", "--root", str(tmp_path / "run"), "--grace", "1s", "--", *cmd],
                         env=child_env(), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.05)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        waited = time.monotonic() - t0
    finally:
        p.kill()
    assert p.returncode == 5, err                                           # EXIT_STOP_UNSAFE
    assert 1.0 <= waited < 15
    exit_ev = sup_events(tmp_path / "run" / "events", "exit")[-1]
    assert exit_ev["signal"] == "SIGKILL" and exit_ev["detail"] == "killed at the end of the grace period"


def test_a_command_that_cannot_start_exits_127_and_usage_errors_exit_2(tmp_path):
    r = supervise(["--root", str(tmp_path / "run")], [str(tmp_path / "no-such-program")])
    assert r.returncode == 127 and "cannot start" in r.stderr
    r = supervise(["--root", str(tmp_path / "run"), "--profile", "production"], [PY, "-c", "pass"])
    assert r.returncode == 2 and "requires a remote" in r.stderr
    r = supervise(["--profile", "nope"], [PY, "-c", "pass"])
    assert r.returncode == 2 and "Unknown profile 'nope'" in r.stderr


def test_the_supervisor_does_not_import_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from spotsafe.cli import main
        try:
            main(["run", "--root", {str(tmp_path / 'run')!r}, "--", sys.executable, "-c", "pass"])
        except SystemExit as e:
            print("exit", e.code, "torch" in sys.modules)
    """)
    r = subprocess.run([PY, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "exit 0 False", r.stderr


def test_prometheus_textfile_and_endpoint(tmp_path):
    ready = tmp_path / "ready"
    cmd = script(tmp_path, f"""
        import os, sys, time
        if os.environ["SPOTSAFE_ATTEMPT"] == "1":
            sys.exit(75)
        open({str(ready)!r}, "w").write("ready")
        for _ in range(600):
            if os.path.exists({str(tmp_path / 'go')!r}):
                break
            time.sleep(0.05)
    """)
    prom = tmp_path / "textfile" / "spotsafe.prom"
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([*spotsafe_cli(), "run", "--root", str(tmp_path / "run"), "--metrics-file", str(prom),
                          "--metrics-port", str(port), "--", *cmd], env=child_env(), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            ctype = resp.headers["Content-Type"]
            scraped = resp.read().decode()
        (tmp_path / "go").write_text("go")
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert f"Prometheus metrics at http://127.0.0.1:{port}/metrics" in err
    assert ctype.startswith("text/plain; version=0.0.4")
    run = f'run="{tmp_path / "run"}"'
    assert f"spotsafe_restarts_total{{{run}}} 1.0" in scraped                 # mid-run: one restart so far
    text = prom.read_text()
    assert f"spotsafe_restarts_total{{{run}}} 1.0" in text
    assert "# TYPE spotsafe_checkpoint_stall_seconds summary" in text


def test_production_advises_on_demand_after_n_interruptions(tmp_path):
    cmd = script(tmp_path, "import os, sys; sys.exit(75 if int(os.environ['SPOTSAFE_ATTEMPT']) <= 3 else 0)\n")
    root = tmp_path / "run"
    r = supervise(["--root", str(root), "--profile", "production", "--remote", f"file://{tmp_path}/remote",
                   "--spot-price", "1.2", "--on-demand-price", "3.06"], cmd)
    assert r.returncode == 0, r.stderr
    advice = sup_events(root / "events", "advice")
    assert len(advice) == 1 and advice[0]["interruptions"] == 3               # once, after the 3rd (production: 3)
    assert "3 interruptions in" in r.stderr and "consider on-demand capacity" in r.stderr
    assert "spotsafe plan --mtbf" in advice[0]["message"] and "--on-demand-price 3.06" in advice[0]["message"]
    # the supervisor copied every event file to the remote, and the report reads the prices it used
    copied = sorted(p.name for p in (tmp_path / "remote" / "events").glob("*.jsonl"))
    assert copied == sorted(p.name for p in (root / "events").glob("*.jsonl")) and len(copied) == 1
    rep = json.loads(subprocess.run([*spotsafe_cli(), "report", str(root), "--json"], env=child_env(),
                                    capture_output=True, text=True, timeout=60, check=True).stdout)
    assert rep["cost"]["spot_price"] == 1.2 and rep["cost"]["on_demand_price"] == 3.06
    assert rep["attempts"] == 4 and rep["resume"]["restarts"] == 3


TORCHRUN_WORKER = """
import os, sys, time, torch, spotsafe
from datetime import timedelta
import torch.distributed as dist
dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank()
state = {"w": torch.zeros(3)}
with spotsafe.Run(None, state, save_every=5, notices="signals") as run:  # the root: $SPOTSAFE_ROOT
    print(f"rank {rank} resumed {run.step}", flush=True)
    for step in run.steps(int(sys.argv[1])):
        state["w"] += 1
        run.log(loss=float(step))
        time.sleep(0.05)
print(f"rank {rank} done {run.step} w {state['w'][0].item():.0f}", flush=True)
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # gloo's C++ destructors abort at interpreter exit now and then
"""


@pytest.mark.slow
def test_torchrun_under_the_supervisor_stop_then_resume(tmp_path):
    from spotsafe._format import committed_steps
    from spotsafe._storage import open_storage

    worker = tmp_path / "worker.py"
    worker.write_text(TORCHRUN_WORKER)
    torchrun = [str(Path(PY).with_name("torchrun")), "--nproc-per-node", "2", "--standalone", str(worker), "200"]
    root = tmp_path / "run"
    p = subprocess.Popen([*spotsafe_cli(), "run", "--root", str(root), "--grace", "30s", "--", *torchrun],
                         env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = set()
        for line in p.stdout:                      # bounded: 200 steps of 50 ms at most
            if line.startswith("rank ") and " resumed " in line:
                seen.add(line.split()[1])
            if seen == {"0", "1"}:
                break
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)              # the machine is going away
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 75, err[-3000:]
    last = sup_events(root / "events", "exit")[-1]
    # torchrun turns its workers' exit 75 into a failure of its own; their stop events tell the truth
    assert last["cause"] == "preempted" and last["exit_code"] not in (0, 75), last
    stops = {e["rank"]: e for e in read_events(root / "events") if e["event"] == "stop"}
    assert set(stops) == {0, 1}
    assert stops[0]["step"] == stops[1]["step"]  # one stop step, agreed (spotsafe._dist)
    for stop in stops.values():
        assert stop["exit_code"] == 75 and stop["reason"] == "notice"
    assert committed_steps(open_storage(str(root)))[-1] == stops[0]["step"] > 0  # one checkpoint for the job

    r = subprocess.run([*spotsafe_cli(), "run", "--root", str(root), "--", *torchrun], env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank, stop in stops.items():
        assert f"rank {rank} resumed {stop['step']}" in r.stdout
        assert f"rank {rank} done 200 w 200" in r.stdout                  # no step lost or repeated


def test_as_a_containers_pid_1_it_reaps_orphans_and_still_forwards_signals(tmp_path):
    """In a PID namespace of its own (what a container gives its entrypoint), orphans are
    handed to the supervisor: it must reap them, or zombies pile up attempt after attempt."""
    probe = subprocess.run(["unshare", "--fork", "--pid", "--mount-proc", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here ({probe.stderr.decode().strip()})")
    zombies = tmp_path / "zombies"
    cmd = script(tmp_path, f"""
        import os, sys, time
        attempt = int(os.environ["SPOTSAFE_ATTEMPT"])
        if attempt == 1:
            if os.fork() == 0:          # a grandchild that outlives its parent, then exits: an orphan
                time.sleep(0.3)
                os._exit(0)
            sys.exit(75)
        if attempt == 2:                # meanwhile the orphan exits: a zombie of PID 1 until reaped
            time.sleep(0.8)
            sys.exit(75)
        n = 0                           # attempt 3: after attempt 2 ended, nothing may be left
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    state = open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                n += state == "Z"
        open({str(zombies)!r}, "w").write(str(n))
    """)
    r = subprocess.run(["unshare", "--fork", "--pid", "--mount-proc", *spotsafe_cli(), "run", "--root",
                        str(tmp_path / "run"), "--", *cmd], env=child_env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    spawn = sup_events(tmp_path / "run" / "events", "supervisor_start")[0]
    assert spawn["pid"] == 1                                                  # it really was PID 1
    assert zombies.read_text() == "0"


def test_a_command_refused_by_another_writer_s_lock_stops_the_supervisor_with_exit_6(tmp_path):
    import torch

    import spotsafe

    root = tmp_path / "run"
    cmd = script(tmp_path, """
        import spotsafe, torch
        with spotsafe.Run(None, {"w": torch.zeros(4)}, notices=None) as run:
            for step in run.steps(3):
                pass
    """)
    with spotsafe.CheckpointManager(root) as holder:               # a live writer on the same root
        holder.save(1, {"w": torch.ones(4)})
        holder.wait()
        r = supervise(["--root", str(root), "--max-crashes", "4", "--backoff-base", "0.2s"], cmd)
        assert r.returncode == 6, r.stderr                                   # EXIT_ROOT_LOCKED, no crash loop
        lines = r.stderr.strip().splitlines()
        assert f"pid {os.getpid()}, " in "\n".join(lines)                   # the command named the holder
        assert lines[-1].startswith("spotsafe run: the command was refused at start: another process holds")
        exits = sup_events(root / "events", "exit")
        assert [(e["cause"], e["exit_code"]) for e in exits] == [("locked", 6)]   # one attempt, not restarted
        assert sup_events(root / "events", "restart") == []
    with spotsafe.CheckpointManager(root, read_only=True) as reader:
        state = {"w": None}
        assert reader.restore(state) == 1 and torch.equal(state["w"], torch.ones(4))  # the holder's own
