"""Real training subprocesses (examples/train.py under spotsafe.Run) get a notice mid-run.

For every source: the process finishes its step, commits a checkpoint of exactly that
step (checksummed, the newest valid one: zero steps lost), exits 75; for a signal and a
cloud's poller it is restarted, resumes from that step and ends bit-exact with an
uninterrupted run (what follows the notice is one path, whatever the source). Then the hard cases: a notice while an async save
is in flight, during the restore, at the last step, and a deadline too short for the
upload to the remote.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, child_env
from preemption_demo import compare

pytestmark = pytest.mark.slow

STEPS, SAVE_EVERY = 30, 10
TRAIN = [sys.executable, str(EXAMPLES / "train.py")]


class Child:
    """A train.py process whose stdout lines are read as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([*TRAIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, start_new_session=True)
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._err.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line.strip())
        self._q.put(None)

    def _take(self, timeout: float, prefix: str | None = None) -> str | None:
        """Collect lines until one starts with ``prefix`` (returned), the output ends, or time is up."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                return None
            self.lines.append(line)
            if prefix is not None and line.startswith(prefix):
                return line
        return None

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        line = self._take(timeout, prefix)
        if line is None:
            raise AssertionError(f"no line starting with {prefix!r} within {timeout}s; got {self.lines[-5:]}, "
                                 f"stderr {''.join(self._err)[-2000:]}")
        return line

    def finish(self, timeout: float = 90.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        self._take(5.0)  # the rest of the output
        return rc

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def steps(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("step ")]


def events(root: Path) -> list[dict]:
    out = []
    for p in sorted((root / "events").glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return sorted(out, key=lambda e: e["ts"])


def committed(root: Path) -> list[int]:
    from spotsafe._format import committed_steps
    from spotsafe._storage import open_storage

    return committed_steps(open_storage(root, None))


def newest_valid(root: Path) -> int:
    import spotsafe

    with spotsafe.CheckpointManager(root) as mgr:
        return mgr.latest_step()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must match."""
    d = tmp_path_factory.mktemp("reference")
    subprocess.run([*TRAIN, "--root", str(d / "run"), "--out", str(d / "ref.pt"), "--steps", str(STEPS),
                    "--save-every", str(SAVE_EVERY), "--workers", "0", "--notices", "off"],
                   env=child_env(), check=True, stdout=subprocess.DEVNULL, timeout=300)
    return d / "ref.pt"


def _env(metadata, **extra: str) -> dict[str, str]:
    env = child_env()
    env.update(metadata.env())
    env["SPOTSAFE_NOTICE_POLL_S"] = "0.1"
    for k in ("KUBERNETES_SERVICE_HOST", "SLURM_JOB_ID", "SPOTSAFE_NOTICE_FILE"):
        env.pop(k, None)
    env.update(extra)
    return env


SOURCES = {
    # name: (extra environment, how to deliver, expected Notice.source, workers)
    "sigterm": ({}, lambda c, m, p: os.kill(c.proc.pid, signal.SIGTERM), "signal", 2),
    "sigint": ({}, lambda c, m, p: os.kill(c.proc.pid, signal.SIGINT), "signal", 0),
    "slurm-sigusr1": ({"SLURM_JOB_ID": "4242"}, lambda c, m, p: os.kill(c.proc.pid, signal.SIGUSR1), "slurm", 0),
    "kubernetes": ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "SPOTSAFE_TERMINATION_GRACE": "45"},
                   lambda c, m, p: os.kill(c.proc.pid, signal.SIGTERM), "kubernetes", 0),
    "aws": ({}, lambda c, m, p: m.aws_interrupt(seconds=120), "aws", 0),
    "gcp": ({}, lambda c, m, p: m.gcp_preempt(), "gcp", 0),
    "azure": ({}, lambda c, m, p: m.azure_preempt(seconds=30), "azure", 0),
    "file": ({"SPOTSAFE_NOTICE_FILE": "{trigger}"}, lambda c, m, p: p.write_text("30"), "file", 0),
}


RESUMED = {"sigterm", "aws"}  # restarted to the end, bit-exact (a signal with DataLoader workers, a cloud's poller)


@pytest.mark.parametrize("name", list(SOURCES))
def test_notice_mid_run_exits_75_with_the_step_it_was_on_and_resumes_bit_exact(name, tmp_path, metadata,
                                                                                 reference):
    extra, deliver, source, workers = SOURCES[name]
    trigger = tmp_path / "preempt-now"
    env = _env(metadata, **{k: v.format(trigger=trigger) for k, v in extra.items()})
    root = tmp_path / "run"
    args = ["--root", str(root), "--out", str(tmp_path / "out.pt"), "--steps", str(STEPS),
            "--save-every", str(SAVE_EVERY), "--workers", str(workers)]

    child = Child([*args, "--step-delay", "0.1"], env)
    child.wait_for("step 4 ")
    deliver(child, metadata, trigger)
    rc = child.finish()
    assert rc == 75, child.stderr
    on = child.steps()[-1]                                  # the step it was on
    assert 4 <= on < SAVE_EVERY * 2 and child.lines[-1] == f"preempted {on} source {source} tier local"
    assert committed(root)[-1] == on and newest_valid(root) == on   # committed and checksummed
    assert f"step-{on:012d} is durable at {root}" in child.stderr
    ev = events(root)
    notice = [e for e in ev if e["event"] == "notice"]
    stop = ev[-1]
    assert [n["source"] for n in notice] == [source] and notice[0]["step"] == on
    assert stop["event"] == "stop" and stop["exit_code"] == 75 and stop["checkpoint_step"] == on
    assert stop["tier"] == "local" and 0 < stop["notice_to_durable_s"] < 5
    ckpt = [e for e in ev if e["event"] == "checkpoint" and e["step"] == on]
    assert ckpt and ckpt[0]["reason"] == "notice"
    if name == "azure":  # acknowledged, and only after the checkpoint was durable
        assert len(metadata.azure_acks) == 1 and metadata.azure_acks[0][0] >= ckpt[0]["ts"]
    if name == "kubernetes":
        assert 43 <= notice[0]["seconds_left"] <= 45

    if name not in RESUMED:
        return  # after the Notice the path is the same for every source: two of them run on to the end
    metadata.reset()                                        # the restart: a new machine, no notice
    trigger.unlink(missing_ok=True)
    resumed = Child(args, _env(metadata))
    assert resumed.wait_for("resumed ") .split()[1] == str(on)     # zero steps lost
    assert resumed.finish() == 0, resumed.stderr
    assert resumed.steps()[0] == on + 1 and resumed.lines[-1] == f"done {STEPS}"
    assert compare(str(reference), str(tmp_path / "out.pt")) == []


def test_notice_at_the_last_step_finishes_with_0_and_a_final_checkpoint(tmp_path, metadata, reference):
    root = tmp_path / "run"
    args = ["--root", str(root), "--out", str(tmp_path / "out.pt"), "--steps", str(STEPS),
            "--save-every", "7", "--workers", "0"]
    child = Child([*args, "--step-delay", "0.1"], _env(metadata))
    child.wait_for(f"step {STEPS} ")
    os.kill(child.proc.pid, signal.SIGTERM)                 # arrives during the last step
    assert child.finish() == 0, child.stderr
    assert child.lines[-1] == f"done {STEPS}"
    assert committed(root)[-1] == STEPS and newest_valid(root) == STEPS
    stop = events(root)[-1]
    assert stop["event"] == "stop" and stop["reason"] == "completed" and stop["exit_code"] == 0
    assert stop["notice"] == "signal" and stop["tier"] == "local"
    again = Child(args, _env(metadata))
    assert again.wait_for("resumed ").split()[1] == str(STEPS)
    assert again.finish() == 0 and again.steps() == []
    assert compare(str(reference), str(tmp_path / "out.pt")) == []


def test_notice_during_an_inflight_save_then_during_the_restore(tmp_path, metadata):
    """A 400 MiB state: the save of step 10 is still persisting when SIGTERM comes at step 11;
    the restart is signalled while it restores. Both exit 75 and nothing is lost."""
    common = ["--steps", "14", "--save-every", "10", "--workers", "0", "--ballast-mib", "400"]
    subprocess.run([*TRAIN, "--root", str(tmp_path / "ref"), "--out", str(tmp_path / "ref.pt"), *common,
                    "--notices", "off"], env=child_env(), check=True, stdout=subprocess.DEVNULL, timeout=300)
    root = tmp_path / "run"
    args = ["--root", str(root), "--out", str(tmp_path / "out.pt"), *common]

    child = Child([*args, "--step-delay", "0.02"], _env(metadata))
    child.wait_for("step 11 ")                               # step 10's save was handed over before this
    os.kill(child.proc.pid, signal.SIGTERM)
    assert child.finish() == 75, child.stderr
    assert child.lines[-1] == "preempted 11 source signal tier local"
    assert committed(root)[-2:] == [10, 11] and newest_valid(root) == 11
    ev = events(root)
    ck = {e["step"]: e for e in ev if e["event"] == "checkpoint"}
    assert ck[11]["reason"] == "notice" and ck[11]["waited_s"] > 0   # waited for step 10 in flight
    assert "durable 10" not in child.lines                  # it was not durable when the notice came

    # the restart gets SIGTERM while it reads and verifies 400 MiB
    n_events = len(ev)
    restarting = Child(args, _env(metadata))
    end = time.monotonic() + 60
    while time.monotonic() < end and not any(e["event"] == "run_start" for e in events(root)[n_events:]):
        time.sleep(0.005)
    os.kill(restarting.proc.pid, signal.SIGTERM)
    assert restarting.finish() == 75, restarting.stderr
    assert restarting.steps() == []                         # not one step ran
    assert restarting.lines[-1] == "preempted 11 source signal tier local"
    new = events(root)[n_events:]
    notice = [e for e in new if e["event"] == "notice"][0]
    assert notice["during"] == "restore" and notice["step"] == 11
    assert [e["event"] for e in new][-1] == "stop" and not [e for e in new if e["event"] == "checkpoint"]
    assert committed(root)[-1] == 11 and "No step has run since the restore" in restarting.stderr

    final = Child(args, _env(metadata))
    assert final.wait_for("resumed ").split()[1] == "11"
    assert final.finish() == 0, final.stderr
    assert compare(str(tmp_path / "ref.pt"), str(tmp_path / "out.pt")) == []


def test_deadline_too_short_for_the_upload_keeps_the_local_checkpoint(tmp_path, metadata, s3_url):
    """A 6 s grace, 3 s margin and a 500 MiB state: the upload does not fit, the local copy is
    the emergency checkpoint (said so on stderr and in the stop event); the next start
    resumes from it and uploads it."""
    root = tmp_path / "run"
    args = ["--root", str(root), "--remote", s3_url, "--steps", "40", "--save-every", "5", "--workers", "0",
            "--ballast-mib", "500"]
    child = Child([*args, "--step-delay", "0.3"], _env(metadata, SPOTSAFE_SIGNAL_GRACE="6"))
    child.wait_for("durable 5")
    end = time.monotonic() + 60                             # the first upload has been measured
    while time.monotonic() < end and not [e for e in events(root) if e["event"] == "upload"]:
        child.wait_for("step ")
    child.wait_for("step ")
    os.kill(child.proc.pid, signal.SIGTERM)
    assert child.finish() == 75, child.stderr
    on = int(child.lines[-1].split()[1])
    assert child.lines[-1] == f"preempted {on} source signal tier local", child.stderr
    assert newest_valid(root) == on
    assert f"step-{on:012d} is durable on local disk at {root} only: its upload to {s3_url} would take about" \
        in child.stderr, child.stderr
    stop = events(root)[-1]
    assert stop["tier"] == "local" and stop["checkpoint_step"] == on and stop["exit_code"] == 75, stop

    import spotsafe

    state_probe = Child([*args, "--steps", str(on)], _env(metadata))   # resumes, nothing left to run
    assert state_probe.wait_for("resumed ").split()[1] == str(on)
    assert state_probe.finish() == 0, state_probe.stderr
    with spotsafe.CheckpointManager(tmp_path / "other", remote=s3_url) as mgr:
        on_remote = [c.step for c in mgr.checkpoints(remote=True) if c.valid]
    assert on in on_remote, (on_remote, state_probe.stderr)  # uploaded on the restart
