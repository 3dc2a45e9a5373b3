"""The supervisor's record of how an attempt ended (``AttemptEnd``), on real subprocesses, and
the event names a real supervised ``Run`` writes: every one a member of ``Event``."""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path

import pytest

from spotsafe._names import Cause, Event, StopReason, Tier
from spotsafe._supervisor import Profile, Supervisor
from spotsafe._supervisor._supervisor import AttemptEnd
from spotsafe._telemetry import read_events

FAST = Profile(max_restarts=0, backoff_base=0.1, backoff_cap=0.1, grace=10.0)


def supervise(tmp_path: Path, body: str, profile: Profile = FAST) -> tuple[int, Supervisor]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body))
    said: list[str] = []
    sup = Supervisor([sys.executable, str(script)], profile, root=str(tmp_path / "run"), say=said.append)
    return sup.run(), sup


@pytest.mark.parametrize(("body", "code", "cause", "exit_code", "detail"), [
    ("import sys; sys.exit(75)", 3, Cause.PREEMPTED, 75, "exit 75, checkpoint durable"),
    ("import sys; sys.exit(3)", 3, Cause.CRASH, 3, "exit 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 3, Cause.CRASH, -signal.SIGKILL,
     "killed by SIGKILL"),
    ("import sys; sys.exit(6)", 6, Cause.LOCKED, 6, "exit 6: refused at start, another process holds the run root"),
    ("pass", 0, Cause.DONE, 0, "exit 0"),
], ids=["preempted", "crash", "killed", "locked", "done"])
def test_the_record_of_an_attempt_s_end(tmp_path, body, code, cause, exit_code, detail):
    # max_restarts=0: a preempted or crashed attempt ends the supervisor on its budget (exit 3)
    rc, sup = supervise(tmp_path, body)
    assert rc == code
    (end,) = sup.ended
    assert isinstance(end, AttemptEnd)
    assert (end.cause, end.exit_code, end.detail) == (cause, exit_code, detail)
    assert end.preempted is (cause is Cause.PREEMPTED)
    assert end.signal_name == ("SIGKILL" if exit_code < 0 else None)
    assert end.restored == 0 and end.stop_signal is None and not end.budget_spent and end.drill is None
    assert 0 < end.duration_s < 30
    # the exit event says the same
    (ex,) = [e for e in read_events(tmp_path / "run" / "events") if e["event"] == Event.EXIT]
    assert ex["cause"] == cause and ex["detail"] == detail


def test_the_record_is_keyword_only_frozen_and_of_the_vocabulary():
    end = AttemptEnd(exit_code=1, cause="crash", detail="exit 1", duration_s=0.5)
    assert end.cause is Cause.CRASH                      # the string is taken as the member
    with pytest.raises(ValueError):
        AttemptEnd(exit_code=1, cause="crashed", detail="exit 1", duration_s=0.5)
    with pytest.raises(TypeError):
        AttemptEnd(1, Cause.CRASH, "exit 1", 0.5)        # type: ignore[misc]
    with pytest.raises(AttributeError):
        end.cause = Cause.DONE                           # type: ignore[misc]


@pytest.mark.slow
def test_a_supervised_run_writes_only_events_of_the_vocabulary(tmp_path):
    """Attempt 1 is stopped by a SIGTERM at step 3 (emergency checkpoint, exit 75); attempt 2
    resumes from it and finishes."""
    rc, sup = supervise(tmp_path, """
        import os, signal, spotsafe
        state = {"n": 0}
        with spotsafe.Run(None, state, notices="signal", save_every=2) as run:
            for step in run.steps(5):
                run.log(loss=1.0 / step)
                if step == 3 and os.environ["SPOTSAFE_ATTEMPT"] == "1":
                    os.kill(os.getpid(), signal.SIGTERM)
    """, Profile(max_restarts=1, grace=20.0))
    assert rc == 0
    first, second = sup.ended
    assert (first.cause, first.exit_code, first.source, first.restored) == (Cause.PREEMPTED, 75, "signal", 0)
    assert (second.cause, second.exit_code, second.restored) == (Cause.DONE, 0, 3)
    events = read_events(tmp_path / "run" / "events")
    names = [e["event"] for e in events]
    assert all(n in Event.__members__.values() for n in names), sorted(set(names) - set(Event))
    assert {Event.SUPERVISOR_START, Event.SPAWN, Event.RUN_START, Event.RESTORE, Event.METRICS, Event.CHECKPOINT,
            Event.NOTICE, Event.STOP, Event.EXIT, Event.RESTART, Event.SUPERVISOR_STOP} <= set(names)
    stops = [(e["reason"], e.get("tier")) for e in events if e["event"] == Event.STOP]
    assert stops == [(StopReason.NOTICE, Tier.LOCAL), (StopReason.COMPLETED, Tier.LOCAL)]
    assert [e["tier"] for e in events if e["event"] == Event.RESTORE] == [None, Tier.LOCAL]
    assert [e["reason"] for e in events if e["event"] == Event.CHECKPOINT] == ["policy", "notice", "policy", "final"]
