"""The one parser of durations and intervals for the whole package (no torch).

Durations are float seconds, :class:`datetime.timedelta`, or strings: ``"90"``, ``"90s"``,
``"500ms"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1h30m"``, ``"2.5h"``. Intervals
(``save_every=``) are either steps or a duration: an ``int`` or ``"500steps"`` counts
steps, everything a duration accepts counts time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta

_UNITS = {
    "ms": 0.001, "msec": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")
_STEPS = re.compile(r"^\s*(\d+)\s*(?:steps?)\s*$")
_HINT = "use seconds or a number with a unit: 500ms, 30s, 15m, 2h, 1d, 1h30m"


def parse_duration(value: float | int | str | timedelta, *, what: str = "duration") -> float:
    """Seconds in ``value``; raises ValueError naming ``what`` for anything else or a negative value."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"{what}={value!r} is not a duration; {_HINT}.")
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, what)
    else:
        raise ValueError(f"{what}={value!r} is not a duration; {_HINT}.")
    if math.isnan(seconds) or seconds < 0 or math.isinf(seconds):
        raise ValueError(f"{what}={value!r} must be a finite duration of 0 or more; {_HINT}.")
    return seconds


def _parse_text(text: str, what: str) -> float:
    s = text.strip().lower()
    pos, total, parts = 0, 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None or m.end() == pos:
            break
        number, unit = m.groups()
        if unit and unit not in _UNITS:
            break
        if not unit and (parts or m.end() != len(s)):
            break  # a bare number only on its own: "90", not "1h30"
        total += float(number) * _UNITS.get(unit, 1.0)
        parts += 1
        pos = m.end()
    if not s or pos != len(s) or parts == 0:
        raise ValueError(f"Cannot read {what}={text!r} as a duration; {_HINT}.")
    return total


@dataclass(frozen=True)
class Interval:
    """A save interval: ``steps`` or ``seconds``, exactly one of them set."""

    steps: int | None = None
    seconds: float | None = None


def parse_interval(value: int | float | str | timedelta, *, what: str = "save_every") -> Interval:
    """Steps (``500``, ``"500steps"``) or a duration (``"15m"``, ``90.0`` seconds, a timedelta)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r} is neither steps nor a duration; use 500, '500steps', '15m' or a "
                         "timedelta.")
    if isinstance(value, int):
        steps = value
    elif isinstance(value, str) and _STEPS.match(value.lower()):
        steps = int(_STEPS.match(value.lower()).group(1))  # type: ignore[union-attr]
    else:
        try:
            seconds = parse_duration(value, what=what)
        except ValueError:
            raise ValueError(f"Cannot read {what}={value!r} as steps or a duration; use 500, '500steps', "
                             f"'15m', '2h', float seconds or a timedelta.") from None
        if seconds <= 0:
            raise ValueError(f"{what}={value!r} must be longer than 0 seconds.")
        return Interval(seconds=seconds)
    if steps < 1:
        raise ValueError(f"{what}={value!r} must be at least 1 step.")
    return Interval(steps=steps)


def format_duration(seconds: float) -> str:
    """A short human form: ``850ms``, ``42.0s``, ``15m``, ``2h05m``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        m, s = divmod(round(seconds), 60)
        return f"{m}m{s:02d}s" if s else f"{m}m"
    h, rem = divmod(round(seconds), 3600)
    return f"{h}h{rem // 60:02d}m"
