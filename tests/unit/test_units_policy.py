"""The one duration/interval parser, and the save policies with an injected clock."""

from datetime import timedelta

import pytest

from spotsafe import EveryDuration, EverySteps, parse_duration
from spotsafe._units import Interval, format_duration, parse_interval
from spotsafe.policy import Never, as_policy


@pytest.mark.parametrize("text,seconds", [
    ("90", 90.0), ("90s", 90.0), ("500ms", 0.5), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1h30m", 5400.0), ("2.5h", 9000.0), (" 15 min ", 900.0), ("1h 30m 15s", 5415.0), (".5s", 0.5),
    (45, 45.0), (1.25, 1.25), (timedelta(minutes=3), 180.0), ("0", 0.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "15x", "m", "1h30", "-5s", "5 steps", "abc", True, None, [1], float("nan"),
                                 -1, float("inf"), "1e3s"])
def test_bad_durations_name_the_value_and_the_way_out(bad):
    with pytest.raises(ValueError) as e:
        parse_duration(bad, what="grace")
    assert "grace=" in str(e.value) and "15m" in str(e.value)


@pytest.mark.parametrize("value,interval", [
    (500, Interval(steps=500)), ("500steps", Interval(steps=500)), ("500 steps", Interval(steps=500)),
    ("1step", Interval(steps=1)), ("15m", Interval(seconds=900.0)), (90.0, Interval(seconds=90.0)),
    (timedelta(hours=2), Interval(seconds=7200.0)), ("2h", Interval(seconds=7200.0)),
])
def test_intervals(value, interval):
    assert parse_interval(value) == interval


@pytest.mark.parametrize("bad", [0, -3, "0steps", "0s", "soon", True, 0.0])
def test_bad_intervals(bad):
    with pytest.raises(ValueError, match="save_every"):
        parse_interval(bad)


def test_format_duration():
    assert [format_duration(s) for s in (0.25, 42.04, 900, 930, 7500)] == ["250ms", "42.0s", "15m", "15m30s", "2h05m"]


def test_every_steps_saves_on_multiples_so_resumes_align():
    p = EverySteps(5)
    p.start(7, 0.0)  # resumed at step 7
    assert [s for s in range(8, 21) if p.due(s, 0.0)] == [10, 15, 20]
    with pytest.raises(ValueError, match="EverySteps"):
        EverySteps(0)


def test_every_duration_counts_from_the_last_save_with_an_injected_clock():
    p = EveryDuration("10s")
    p.start(0, 100.0)
    assert not p.due(1, 109.9)
    assert p.due(2, 110.0)
    p.saved(2, 110.0)
    assert not p.due(3, 115.0)
    p.saved(3, 115.0)  # a checkpoint for another reason restarts the clock
    assert not p.due(4, 124.0) and p.due(5, 125.0)


def test_policies_combine_with_or_and_every_part_sees_every_step():
    steps, time_ = EverySteps(100), EveryDuration(timedelta(seconds=30))
    p = steps | time_ | Never()
    p.start(0, 0.0)
    assert repr(p) == "EverySteps(100) | EveryDuration('30.0s') | Never()"
    assert p.due(100, 1.0)              # steps
    p.saved(100, 1.0)
    assert not p.due(101, 30.0)
    assert p.due(102, 31.0)             # time since the save at t=1
    assert len(p.policies) == 3         # flattened, not nested


def test_as_policy_uses_the_one_parser():
    assert isinstance(as_policy(None), Never)
    assert as_policy("250steps").n == 250
    assert as_policy("15m").seconds == 900.0
    p = EverySteps(3)
    assert as_policy(p) is p
    with pytest.raises(ValueError, match="save_every='often'"):
        as_policy("often")
