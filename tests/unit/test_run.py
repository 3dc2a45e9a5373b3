"""spotsafe.Run in-process: the loop, policies, notices, exit codes, events."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch

import spotsafe
from spotsafe._telemetry import read_events
from spotsafe.notices import AWS, FileTrigger, Signals


def make_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, {"model": model, "optimizer": opt}


def train_step(model, opt):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()


def test_steps_restore_save_by_policy_and_a_final_checkpoint(root):
    model, opt, state = make_state()
    with spotsafe.Run(root, state, save_every=3, notices=None) as run:
        assert run.start_step == 0
        seen = []
        for step in run.steps(7):
            train_step(model, opt)
            run.log(loss=torch.tensor(1.5) / step, lr=0.1)
            seen.append(step)
    assert seen == list(range(1, 8)) and run.exit_code == 0 and run.completed
    final = {k: v.clone() for k, v in model.state_dict().items()}
    with spotsafe.CheckpointManager(root, keep=10) as mgr:
        assert [c.step for c in mgr.checkpoints() if c.valid] == [3, 6, 7]
    ev = read_events(root / "events")
    assert [e["event"] for e in ev][:2] == ["run_start", "restore"] and ev[-1]["event"] == "stop"
    assert [(e["step"], e["reason"]) for e in ev if e["event"] == "checkpoint"] == [(3, "policy"), (6, "policy"),
                                                                                   (7, "final")]
    metrics = [e for e in ev if e["event"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 8)) and metrics[1]["values"] == {"loss": 0.75, "lr": 0.1}
    assert ev[-1]["reason"] == "completed" and ev[-1]["exit_code"] == 0
    assert {"ts", "run_id", "attempt", "rank", "host", "pid"} <= set(ev[0])

    model2, opt2, state2 = make_state()
    with spotsafe.Run(root, state2, save_every=3, notices=None) as run:
        assert run.start_step == 7 and list(run.steps(9)) == [8, 9]
    for k, v in final.items():
        assert torch.equal(model2.state_dict()[k], v), k  # loaded at 7 (steps 8, 9 did no training)
    restore = [e for e in read_events(root / "events") if e["event"] == "restore"][-1]
    assert restore["step"] == 7 and restore["tier"] == "local" and restore["bytes"] > 0


def test_save_every_a_duration_uses_the_injected_clock(root):
    model, opt, state = make_state()
    now = [0.0]
    with spotsafe.Run(root, state, save_every="2.5s", notices=None, clock=lambda: now[0]) as run:
        for _ in run.steps(10):
            now[0] += 1.0          # each step takes one (fake) second
    ev = [e for e in read_events(root / "events") if e["event"] == "checkpoint"]
    assert [(e["step"], e["reason"]) for e in ev] == [(3, "policy"), (6, "policy"), (9, "policy"), (10, "final")]


def test_a_notice_finishes_the_step_checkpoints_it_and_raises_exit_75(root, tmp_path):
    model, opt, state = make_state()
    trigger = tmp_path / "now"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(spotsafe.Preempted) as stop:
        with spotsafe.Run(root, state, save_every=100, notices=[Signals(), FileTrigger(trigger, interval=0.02)]) \
                as run:
            for step in run.steps(1000):
                train_step(model, opt)
                if step == 3:
                    trigger.write_text("20")
                time.sleep(0.01)
    assert stop.value.code == spotsafe.EXIT_PREEMPTED == 75
    on = stop.value.step
    assert 3 <= on < 50 and stop.value.tier == "local" and stop.value.notice.source == "file"
    assert signal.getsignal(signal.SIGTERM) == before          # handlers put back
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.latest_step() == on
        model2, _, state2 = make_state()
        mgr.restore(state2)
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v)          # the state after step `on`, exactly
    stop_ev = read_events(root / "events")[-1]
    assert stop_ev["event"] == "stop" and stop_ev["exit_code"] == 75 and stop_ev["source"] == "file"
    assert 18 <= stop_ev["seconds_left"] <= 20


def test_without_exit_on_notice_the_loop_ends_and_says_so(root):
    model, opt, state = make_state()
    with spotsafe.Run(root, state, notices=[Signals(["SIGUSR1"])], exit_on_notice=False) as run:
        for step in run.steps(100):
            train_step(model, opt)
            if step == 5:
                os.kill(os.getpid(), signal.SIGUSR1)
        assert run.stop_requested and run.notice.source == "signal" and run.step == 5
    assert run.exit_code == 75 and run.tier == "local"
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.latest_step() == 5


def test_manual_loops_use_step_done_and_stop_requested(root, tmp_path):
    model, opt, state = make_state()
    trigger = tmp_path / "go"
    with pytest.raises(spotsafe.Preempted) as stop:
        with spotsafe.Run(root, state, save_every=4, notices=[FileTrigger(trigger, interval=0.02)]) as run:
            step = run.step
            while True:                                        # no steps(): the user's own loop
                step += 1
                train_step(model, opt)
                if step == 6:
                    trigger.touch()
                    deadline = time.monotonic() + 5
                    while not run.stop_requested and time.monotonic() < deadline:
                        time.sleep(0.01)
                run.step_done(step)
    assert stop.value.step == 6
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        assert [c.step for c in mgr.checkpoints()] == [4, 6]


def test_a_notice_before_any_step_exits_75_with_nothing_to_save(root):
    model, opt, state = make_state()
    with pytest.raises(spotsafe.Preempted) as stop:
        with spotsafe.Run(root, state, notices=[Signals(["SIGUSR1"])]) as run:
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in run.steps(10):
                pytest.fail("no step may run after a notice")
    assert stop.value.code == 75 and stop.value.tier == "none" and stop.value.step == 0
    assert not [d for d in os.listdir(root) if d.startswith("step-")]


def test_an_aws_rebalance_recommendation_checkpoints_at_once_and_training_goes_on(root, metadata):
    model, opt, state = make_state()
    with spotsafe.Run(root, state, save_every=1000, notices=[AWS(metadata.url, interval=0.05)]) as run:
        for step in run.steps(40):
            train_step(model, opt)
            if step == 5:
                metadata.aws_rebalance_now()
            time.sleep(0.02)
    assert run.exit_code == 0 and run.step == 40
    ev = read_events(root / "events")
    advisory = [e for e in ev if e["event"] == "notice"]
    assert len(advisory) == 1 and advisory[0]["source"] == "aws-rebalance" and advisory[0]["advisory"]
    ck = [(e["step"], e["reason"]) for e in ev if e["event"] == "checkpoint"]
    assert ck[0][1] == "notice" and 5 <= ck[0][0] < 40 and ck[-1] == (40, "final")


def test_an_error_in_the_loop_is_recorded_and_not_checkpointed(root):
    model, opt, state = make_state()
    with pytest.raises(ZeroDivisionError):
        with spotsafe.Run(root, state, save_every=2, notices=None) as run:
            for step in run.steps(10):
                train_step(model, opt)
                if step == 3:
                    raise ZeroDivisionError("training bug")
    assert run.exit_code == 1
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.latest_step() == 2                          # not the half-done step 3
    stop = read_events(root / "events")[-1]
    assert stop["reason"] == "error" and "ZeroDivisionError" in stop["error"]


def test_bad_arguments_are_named(root):
    _, _, state = make_state()
    with pytest.raises(ValueError, match="save_every='sometimes'"):
        spotsafe.Run(root, state, save_every="sometimes")
    with pytest.raises(ValueError, match="Unknown notice source 'ec2'"):
        spotsafe.Run(root, state, notices="ec2")
    with pytest.raises(TypeError, match="state must be a dict"):
        spotsafe.Run(root, [1, 2])


def test_events_are_json_lines_even_when_the_last_one_is_torn(root):
    model, opt, state = make_state()
    with spotsafe.Run(root, state, notices=None) as run:
        for _ in run.steps(3):
            run.log(loss=float("nan"))                         # not JSON: recorded as null
    (path,) = (root / "events").glob("*.jsonl")
    with open(path, "a") as f:
        f.write('{"ts": 1, "event": "metr')                     # a writer killed mid-line
    ev = read_events(root / "events")
    assert [e["values"]["loss"] for e in ev if e["event"] == "metrics"] == [None, None, None]
    assert all(json.loads(line) for line in path.read_text().splitlines()[:-1])


def _freeze(server, sig):
    os.killpg(server.proc.pid, sig)


def test_a_second_signal_or_the_deadline_stops_waiting_for_a_hung_remote(root, s3_private, tmp_path):
    """The server freezes (SIGSTOP) after the first upload: the emergency upload cannot finish.
    A second SIGTERM ends the wait at once; without it, the deadline does. Both keep the local
    checkpoint and exit 75."""
    server = s3_private
    server.make_bucket("bkt")
    opts = dict(server.storage_options(), config_kwargs={"read_timeout": 2, "connect_timeout": 2,
                                                         "retries": {"max_attempts": 1, "mode": "standard"}})
    for case, grace in (("second signal", 30), ("deadline", 4)):
        model, opt, state = make_state()
        run_root = tmp_path / case.replace(" ", "-")
        t0 = None
        try:
            with pytest.raises(spotsafe.Preempted) as stop:
                with spotsafe.Run(run_root, state, save_every=2, remote=f"s3://bkt/{run_root.name}",
                                  storage_options=opts, notices=[Signals(grace=grace)], margin=1) as run:
                    for step in run.steps(1000):
                        train_step(model, opt)
                        if step == 2:
                            run.manager.wait(remote=True, timeout=60)     # one upload measured
                            _freeze(server, signal.SIGSTOP)
                        if step == 3:
                            t0 = time.monotonic()
                            os.kill(os.getpid(), signal.SIGTERM)
                            if case == "second signal":
                                threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        finally:
            _freeze(server, signal.SIGCONT)
        took = time.monotonic() - t0
        assert stop.value.code == 75 and stop.value.step == 3 and stop.value.tier == "local", case
        assert (took < 6) if case == "second signal" else (2.5 < took < 10), (case, took)
        with spotsafe.CheckpointManager(run_root) as mgr:
            assert mgr.latest_step() == 3
        last = read_events(run_root / "events")[-1]
        assert last["tier"] == "local" and last["checkpoint_step"] == 3


class _SignalWhileSaving(spotsafe.policy.SavePolicy):
    """Due every 5 steps; the notice lands while the policy's own save is being taken."""

    def due(self, step, now):
        return step % 5 == 0

    def saved(self, step, now, stall_s=None):
        if step == 5:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_a_notice_during_the_policy_save_still_stops_at_that_step(root):
    model, opt, state = make_state()
    with pytest.raises(spotsafe.Preempted) as stop:
        with spotsafe.Run(root, state, save_every=_SignalWhileSaving(), notices=[Signals(["SIGUSR1"])]) as run:
            for _ in run.steps(20):
                train_step(model, opt)
    assert stop.value.step == 5 and stop.value.code == 75
    assert read_events(root / "events")[-1]["exit_code"] == 75


def test_leaving_the_loop_early_with_a_notice_pending_takes_the_emergency_path(root):
    model, opt, state = make_state()
    with pytest.raises(spotsafe.Preempted) as stop:
        with spotsafe.Run(root, state, notices=[Signals(["SIGUSR1"])]) as run:
            for step in range(1, 4):
                train_step(model, opt)
                run.step_done(step) if step < 3 else os.kill(os.getpid(), signal.SIGUSR1)
            run.step = 3  # the user's loop says where it stands, then leaves
    assert stop.value.step == 3
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.latest_step() == 3


def test_with_a_remote_and_time_enough_the_emergency_checkpoint_is_on_the_remote(root, s3_url, tmp_path):
    model, opt, state = make_state()
    with pytest.raises(spotsafe.Preempted) as stop:
        with spotsafe.Run(root, state, save_every=2, remote=s3_url, notices=[Signals(["SIGUSR1"], grace=60)]) as run:
            for step in run.steps(100):
                train_step(model, opt)
                if step == 3:  # step 2 reached the remote first (else step 3 may rightly supersede it)
                    assert run.manager.wait(timeout=30, remote=True).step == 2
                    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop.value.step == 3 and stop.value.tier == "remote"
    ev = read_events(root / "events")
    last = ev[-1]
    assert last["tier"] == "remote" and last["checkpoint_step"] == 3 and last["notice_to_durable_s"] < 30
    ups = {e["step"]: e for e in ev if e["event"] == "upload"}
    ckpts = {e["step"]: e for e in ev if e["event"] == "checkpoint"}
    assert sorted(ups) == [2, 3] and all(ups[s]["bytes"] == ckpts[s]["bytes"] > 0 for s in ups)
    with spotsafe.CheckpointManager(tmp_path / "new-node", remote=s3_url) as mgr:   # the machine is gone
        assert [c.step for c in mgr.checkpoints(remote=True) if c.valid][-1] == 3
        model2, _, state2 = make_state()
        assert mgr.restore(state2) == 3
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v)


def test_sys_exit_in_the_loop_is_recorded_with_its_code_and_the_handlers_are_restored(root):
    model, opt, state = make_state()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        with spotsafe.Run(root, state, save_every=2, notices=[Signals()]) as run:
            for step in run.steps(10):
                train_step(model, opt)
                if step == 3:
                    raise SystemExit(4)
    assert run.exit_code == 4 and signal.getsignal(signal.SIGTERM) == before
    stop = read_events(root / "events")[-1]
    assert stop["event"] == "stop" and stop["reason"] == "exit" and stop["exit_code"] == 4


def test_a_failing_history_read_leaves_nothing_installed(root, monkeypatch):
    model, opt, state = make_state()
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr("spotsafe.run._run.measure", lambda events: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        with spotsafe.Run(root, state, save_every=spotsafe.policy.Optimal("6h"), notices=[Signals()]):
            pass
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_supervisors_environment_fills_root_remote_and_save_every(root, monkeypatch, tmp_path):
    model, opt, state = make_state()
    with pytest.raises(ValueError, match=r"Run needs a checkpoint root: pass root= or run under `spotsafe run"):
        spotsafe.Run(None, state, notices=None)
    monkeypatch.setenv("SPOTSAFE_ROOT", str(root))
    monkeypatch.setenv("SPOTSAFE_SAVE_EVERY", "4steps")
    import uuid

    import fsspec

    remote = f"memory://env-{uuid.uuid4().hex[:8]}/run"
    monkeypatch.setenv("SPOTSAFE_REMOTE", remote)
    monkeypatch.setenv("SPOTSAFE_RUN_ID", "run-42")
    monkeypatch.setenv("SPOTSAFE_ATTEMPT", "3")
    with spotsafe.Run(None, state, notices=None) as run:
        for _ in run.steps(9):
            train_step(model, opt)
    with spotsafe.CheckpointManager(root, keep=10) as mgr:
        assert [c.step for c in mgr.checkpoints() if c.valid] == [4, 8, 9]          # $SPOTSAFE_SAVE_EVERY
    mem = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[-1] for p in mem.ls(remote, detail=False))
    assert names == ["events", "step-000000000004", "step-000000000008", "step-000000000009"]  # $SPOTSAFE_REMOTE
    ev = read_events(root / "events")
    assert {(e["run_id"], e["attempt"]) for e in ev} == {("run-42", 3)}
    # not supervised: the Run copied its own event file to the remote, whole
    (copied,) = mem.ls(f"{remote}/events", detail=False)
    assert mem.cat(copied).decode() == next((root / "events").glob("*.jsonl")).read_text()
    # code wins over the environment
    with spotsafe.Run(None, state, save_every=2, notices=None) as run:
        assert run.policy.__class__.__name__ == "EverySteps" and "2" in repr(run.policy)


def test_leave_on_notice_ends_only_a_torchrun_parent(monkeypatch):
    """A rank leaves an elastic job by ending its torchrun agent, and never ends any other parent
    (here pytest's own process, whatever the environment says)."""
    import os

    from spotsafe.run._run import _torchrun_agent

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert _torchrun_agent() is None  # not a torchrun worker
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert _torchrun_agent() is None and os.getppid() > 1  # the parent is no torchrun: left alone
