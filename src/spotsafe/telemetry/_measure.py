"""What a run's own event history says: interruption rate, restart cost, checkpoint stall (no torch).

Each process (one ``<host>-<pid>.jsonl`` writer, one attempt) is a span from its first to
its last event. An attempt that ended with a ``stop`` of reason ``notice``, or with no
``stop`` at all (killed: SIGKILL, a lost machine), counts as an interruption; a ``stop``
of reason ``error`` is a crash, not an interruption. The restart cost is the wall time
from the end of one attempt to the first finished step of the next (process start,
imports, restore).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Measured:
    """Figures measured from events; None where the history does not say."""

    attempts: int = 0
    interruptions: int = 0
    running_s: float = 0.0
    mtbf_s: float | None = None
    restart_s: float | None = None
    checkpoint_stall_s: float | None = None
    step_s: float | None = None
    stalls_s: list[float] = field(default_factory=list)


def measure(events: list[dict]) -> Measured:
    """Summarize ``events`` (any order, any number of writers)."""
    procs: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        procs[(e.get("host"), e.get("pid"), e.get("run_id"), e.get("attempt"))].append(e)
    spans = sorted((sorted(evs, key=lambda e: e["ts"]) for evs in procs.values()), key=lambda evs: evs[0]["ts"])
    running, interruptions, restarts, step_times = 0.0, 0, [], []
    for i, evs in enumerate(spans):
        running += evs[-1]["ts"] - evs[0]["ts"]
        stop = next((e for e in reversed(evs) if e["event"] == "stop"), None)
        if stop is None or stop.get("reason") == "notice":
            interruptions += 1 if i < len(spans) - 1 or stop is not None else 0
        if i:
            first_step = next((e["ts"] for e in evs if e["event"] in ("metrics", "checkpoint")), None)
            if first_step is not None:
                restarts.append(first_step - spans[i - 1][-1]["ts"])
        ts = [e["ts"] for e in evs if e["event"] == "metrics"]
        step_times += [b - a for a, b in zip(ts, ts[1:]) if b > a]
    stalls = [e["stall_s"] for e in events if e["event"] == "checkpoint" and e.get("stall_s")]
    return Measured(
        attempts=len(spans), interruptions=interruptions, running_s=running,
        mtbf_s=running / (interruptions + 1) if running > 0 else None,
        restart_s=statistics.median(restarts) if restarts else None,
        checkpoint_stall_s=statistics.median(stalls) if stalls else None,
        step_s=statistics.median(step_times) if step_times else None,
        stalls_s=stalls[-20:])
