"""What a run's own event history says: its attempts, how each ended, interruption rate,
restart cost, checkpoint stall (no torch).

This is the one place that turns events into attempts; ``spotsafe report``,
``spotsafe plan --from`` and ``Optimal(mtbf=None)`` all read them from here, so they agree.

- An *attempt* is one training process of rank 0 (one ``<host>-<pid>.jsonl`` writer of one
  run id and attempt number), from its first event to its last. The supervisor's own
  records (``role: "supervisor"``) are not attempts; they only say how an attempt ended
  when its process could not (a drill's SIGKILL, a crash).
- An attempt is *interrupted* when it stopped for a notice (``stop`` of reason ``notice``,
  whatever the process's exit code: ``torchrun`` exits 1, Lightning and the HF Trainer 0),
  or was killed without one (no ``stop``, and a next attempt or the supervisor's record of
  a kill). It *crashed* when it ended with an error or a non-zero exit, or the supervisor
  recorded a crash. It *finished* when it stopped with reason ``completed`` (or the
  supervisor recorded ``done``): a later attempt is a rerun, not a restart, and the idle
  time before it is neither a restart's cost nor part of the run's wall time.
- An attempt's *world size* is the number of ranks of its job (``torchrun``'s
  ``WORLD_SIZE``, recorded in rank 0's ``run_start``; 1 in files written before it was).
- The *restart cost* is the wall time from the end of an interrupted or crashed attempt to
  the first finished step of the next (emergency save, downtime, backoff, start-up,
  restore).
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise

from .._names import Cause, Event, StopReason

SUPERVISOR = "supervisor"

MACHINE_SOURCES = frozenset({"aws", "gcp", "azure", "kubernetes", "slurm"})
"""Notice sources that mean the machine (or the pod, or the job) is going away: the
supervisor exits 75 after such a notice so that the orchestrator moves the job, instead of
restarting the command where it is."""


def preempted_stop(stop: dict | None) -> bool:
    """Whether a ``stop`` event records a stop for a notice with its checkpoint taken care of
    (durable on a tier, or nothing to save): safe to restart, whatever the exit code."""
    return bool(stop) and stop.get("reason") == StopReason.NOTICE and stop.get("tier") is not None


class Outcome(StrEnum):
    """How an attempt ended, as its events tell (the module docstring defines each)."""

    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    CRASHED = "crashed"


KILLED = "killed"
"""The source of an interruption without a notice (no ``stop`` event, or a drill's kill)."""
NODE_LOST = "node lost"
"""The source of an interruption of a torchrun job that lost a node: the attempt failed (a
collective with the lost rank) and the next one resumed on fewer ranks."""


@dataclass(kw_only=True)
class Attempt:
    """One training process (rank 0) and what its events say."""

    key: tuple                       # (host, pid, run_id, attempt)
    events: list[dict]
    restore_step: int | None = None
    restore_ts: float | None = None
    restore_tier: str | None = None
    stop: dict | None = None
    notice: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    outcome: Outcome | None = None   # None: still running, or left by ``exit`` without a notice
    source: str | None = None        # of an interruption: the notice's source, or KILLED
    world_size: int = 1              # ranks of the job (see :func:`attempts`)

    @property
    def start(self) -> float:
        return self.events[0]["ts"]

    @property
    def end(self) -> float:
        return self.events[-1]["ts"]

    @property
    def last_step(self) -> int:
        steps = [e.get("step") for e in self.metrics + self.checkpoints + ([self.stop] if self.stop else [])]
        return max([s for s in steps if isinstance(s, int)] + [self.restore_step or 0])

    @property
    def last_step_ts(self) -> float:
        return self.metrics[-1]["ts"] if self.metrics else (self.restore_ts or self.end)

    @property
    def first_step_ts(self) -> float | None:
        return next((e["ts"] for e in self.events if e["event"] in (Event.METRICS, Event.CHECKPOINT)), None)


def attempts(events: list[dict]) -> list[Attempt]:
    """The attempts in ``events`` (any order, any number of writers), oldest first, classified."""
    procs: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("role") == SUPERVISOR or (e.get("rank") or 0) != 0:
            continue
        procs[(e.get("host"), e.get("pid"), e.get("run_id"), e.get("attempt"))].append(e)
    spans = []
    for key, evs in procs.items():
        evs.sort(key=lambda e: e["ts"])
        s = Attempt(key=key, events=evs)
        for e in evs:
            kind = e["event"]
            if kind == Event.RESTORE and s.restore_ts is None:
                s.restore_step, s.restore_ts, s.restore_tier = e.get("step") or 0, e["ts"], e.get("tier")
            elif kind == Event.STOP:
                s.stop = e
            elif kind == Event.NOTICE and not e.get("advisory") and s.notice is None:
                s.notice = e
            elif kind == Event.METRICS and isinstance(e.get("step"), int):
                s.metrics.append(e)
            elif kind == Event.CHECKPOINT:
                s.checkpoints.append(e)
        spans.append(s)
    _world_sizes(spans, events)
    spans.sort(key=lambda s: s.start)
    exits = {(e.get("run_id"), e.get("attempt")): e for e in events
             if e.get("role") == SUPERVISOR and e["event"] == Event.EXIT}
    for i, s in enumerate(spans):
        _classify(s, spans[i + 1] if i + 1 < len(spans) else None, exits.get(s.key[2:]))
    return spans


def _world_sizes(spans: list[Attempt], events: list[dict]) -> None:
    """Each attempt's world size: the ``world_size`` its ``run_start`` recorded, else (an event file
    written before it was recorded) the distinct ranks whose ``run_start`` has the attempt's run id
    and number (ranks that ran without a supervisor have run ids of their own: 1)."""
    started: dict[tuple, set] = defaultdict(set)
    for e in events:
        if e["event"] == Event.RUN_START and e.get("role") != SUPERVISOR:
            started[(e.get("run_id"), e.get("attempt"))].add(e.get("rank") or 0)
    for s in spans:
        recorded = next((e.get("world_size") for e in s.events if e["event"] == Event.RUN_START), None)
        s.world_size = recorded if isinstance(recorded, int) and recorded >= 1 else max(1, len(started[s.key[2:]]))


def attempt_count(events: list[dict], spans: list[Attempt]) -> int:
    """How many attempts ``events`` record: the (run id, attempt number) of every training process
    in ``spans``, and of every attempt the supervisor spawned that never wrote an event."""
    spawned = {(e.get("run_id"), e.get("attempt")) for e in events
               if e.get("role") == SUPERVISOR and e["event"] == Event.SPAWN}
    return len({s.key[2:] for s in spans} | spawned)


def _classify(s: Attempt, nxt: Attempt | None, sup_exit: dict | None) -> None:
    cause = sup_exit.get("cause") if sup_exit else None
    reason = s.stop.get("reason") if s.stop else None
    if reason == StopReason.NOTICE or (s.stop is None and s.notice is not None):
        s.outcome = Outcome.INTERRUPTED
        s.source = (s.notice or {}).get("source") or (s.stop or {}).get("source") or "signal"
    elif s.stop is None and cause in (None, Cause.CHAOS_KILL, Cause.PREEMPTED) and (nxt is not None or cause):
        s.outcome, s.source = Outcome.INTERRUPTED, KILLED
    elif reason == StopReason.ERROR and nxt is not None and nxt.world_size < s.world_size:
        s.outcome, s.source = Outcome.INTERRUPTED, NODE_LOST  # its peers went, the job went on without them
    elif cause == Cause.CRASH or (s.stop is not None and s.stop.get("exit_code") not in (0, None)
                                  and reason in (StopReason.ERROR, StopReason.EXIT)):
        s.outcome = Outcome.CRASHED
    elif reason == StopReason.COMPLETED or cause == Cause.DONE:
        s.outcome = Outcome.FINISHED


def idle_after_finish(events: list[dict], spans: list[Attempt]) -> float:
    """Seconds nobody worked on the run: after each finished attempt followed by a rerun, from the
    last event before the rerun began (its supervisor's start, else its first event) to that start."""
    ts = sorted(e["ts"] for e in events)
    idle = 0.0
    for s, nxt in pairwise(spans):
        if s.outcome != Outcome.FINISHED:
            continue
        begin = min((e["ts"] for e in events if e.get("role") == SUPERVISOR and e["event"] == Event.SUPERVISOR_START
                     and s.end < e["ts"] <= nxt.start), default=nxt.start)
        before = ts[max(0, bisect.bisect_left(ts, begin) - 1)]
        idle += max(0.0, begin - max(before, s.end))
    return idle


def restart_gaps(spans: list[Attempt], *, from_last_step: bool = False) -> dict[int, float]:
    """Index of the attempt that ended -> seconds until the next attempt's first step (its end
    when it never reached one), for every restart after an attempt that did not finish (a
    rerun after a finished attempt is no restart). Measured from the attempt's last event, or
    with ``from_last_step`` from its last step (the report's "time lost": the emergency save
    included)."""
    out = {}
    for i, (s, nxt) in enumerate(pairwise(spans)):
        if s.outcome == Outcome.FINISHED:
            continue
        first = nxt.first_step_ts
        out[i] = max(0.0, (first if first is not None else nxt.end) - (s.last_step_ts if from_last_step else s.end))
    return out


@dataclass(frozen=True, kw_only=True)
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
    """Summarize ``events`` (any order, any number of writers, the supervisor's included)."""
    spans = attempts(events)
    running = sum(s.end - s.start for s in spans)
    interruptions = sum(1 for s in spans if s.outcome == Outcome.INTERRUPTED)
    restarts = [gap for i, gap in restart_gaps(spans).items() if spans[i + 1].first_step_ts is not None]
    step_times = []
    for s in spans:
        ts = [e["ts"] for e in s.events if e["event"] == Event.METRICS]
        step_times += [b - a for a, b in pairwise(ts) if b > a]
    stalls = [c["stall_s"] for s in spans for c in s.checkpoints if c.get("stall_s")]
    return Measured(
        attempts=attempt_count(events, spans), interruptions=interruptions, running_s=running,
        mtbf_s=running / (interruptions + 1) if running > 0 else None,
        restart_s=statistics.median(restarts) if restarts else None,
        checkpoint_stall_s=statistics.median(stalls) if stalls else None,
        step_s=statistics.median(step_times) if step_times else None,
        stalls_s=stalls[-20:])
