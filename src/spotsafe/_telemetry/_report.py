"""The run report, computed from the events alone (no torch).

Definitions (the README's "Reading the report" repeats them; attempts and how each ended
come from :mod:`._measure`, the one place that reads them, shared with ``spotsafe plan``):

- An *attempt* is one training process (rank 0), from its first event to its last.
- An attempt is *interrupted* when it stopped for a notice (``stop`` reason ``notice``;
  the source is the notice's) or was killed without one (no ``stop`` event, or the
  supervisor recorded a drill's kill; source ``killed``). It *crashed* when it ended with
  an error or a non-zero exit, or the supervisor recorded a crash. An attempt after a
  *finished* one is a rerun: not a restart, and the idle time before it is not wall time.
- A restart *resumed* when it restored at least the newest checkpoint an earlier attempt
  reported durable before it started (a fall-back past a corrupt checkpoint is a failure).
- Step time comes from the ``metrics`` events: an event at step s covers the steps since
  the previous one (or since the restore) and the time since then. A step's *final*
  execution is the last one; the others were *replayed*. Replayed work of an interruption
  is the steps between the next attempt's restore and the last step reached, and the time
  their executions took. Every value a replayed step logged is compared with the value the
  same step logged before (exact equality): how many replays reproduced the same metrics.
- *Time lost to a restart* runs from the interrupted attempt's last step to the next
  attempt's first (emergency save, downtime, backoff, start-up, restore).
- *Useful time* is the time of final step executions less the checkpoint stalls inside
  them; *goodput* is useful time / wall time (first event to last, less the idle time
  before reruns).
- An attempt's *world size* is the number of ranks of its job (``torchrun``); the
  checkpoint figures per rank come from every rank's own ``checkpoint`` events, the
  "checkpoints" figures from rank 0's.
- *Cost*: spot = wall hours x spot price; on-demand = the hours the run would have taken
  without interruptions (wall less replayed and restart time) x on-demand price.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .._names import Cause, Event, StopReason
from ._measure import SUPERVISOR, Attempt, Outcome, attempt_count, attempts, idle_after_finish, restart_gaps


def _quantiles(values: list[Any]) -> dict[str, float | None]:
    vals = sorted(v for v in values if isinstance(v, (int, float)))
    if not vals:
        return {"median": None, "p95": None, "count": 0, "sum": 0.0}
    p95 = vals[0] if len(vals) == 1 else statistics.quantiles(vals, n=20, method="inclusive")[18]
    return {"median": statistics.median(vals), "p95": p95, "count": len(vals), "sum": sum(vals)}


def _count(values) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for v in values:
        out[str(v)] += 1
    return dict(sorted(out.items()))


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "worst": None, "total": 0}
    return {"mean": sum(values) / len(values), "worst": max(values), "total": sum(values)}


@dataclass(kw_only=True)
class _Interval:
    """One metrics event: the steps (lo, hi] it covers, run from t0 to t1 by attempt ``span``."""

    lo: int
    hi: int
    t0: float
    t1: float
    span: int
    final: bool = True
    attributed: bool = False

    @property
    def seconds(self) -> float:
        return max(0.0, self.t1 - self.t0)

    def share(self, lo: int, hi: int) -> float:
        """Seconds of this interval spent on steps (lo, hi]."""
        overlap = min(hi, self.hi) - max(lo, self.lo)
        return 0.0 if overlap <= 0 or self.hi <= self.lo else self.seconds * overlap / (self.hi - self.lo)


def _intervals(spans: list[Attempt]) -> list[_Interval]:
    out = []
    for i, s in enumerate(spans):
        prev_step, prev_ts = (s.restore_step or 0), (s.restore_ts if s.restore_ts is not None else s.start)
        for m in s.metrics:
            if m["step"] > prev_step:
                out.append(_Interval(lo=prev_step, hi=m["step"], t0=prev_ts, t1=m["ts"], span=i))
            prev_step, prev_ts = m["step"], m["ts"]
    # an execution is final unless a later attempt ran any of its steps again
    covered: list[tuple[int, int]] = []
    for iv in sorted(out, key=lambda iv: iv.t1, reverse=True):
        if any(lo < iv.hi and iv.lo < hi for lo, hi in covered):
            iv.final = False
        covered.append((iv.lo, iv.hi))
        if len(covered) > 64:  # keep the scan short: merge into one range list
            covered = _merge(covered)
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _replayed_metrics(spans: list[Attempt], keep: int = 10) -> dict[str, Any]:
    """Every step logged by more than one attempt (a replay after a restart), each logged value
    compared with the same step's value in the attempt that ran it before: exact equality."""
    runs: dict[int, list[tuple[Any, dict]]] = defaultdict(list)  # step -> [(attempt, values)] oldest first
    for s in spans:
        merged: dict[int, dict] = {}
        for m in s.metrics:
            if isinstance(m.get("values"), dict):
                merged.setdefault(m["step"], {}).update(m["values"])
        for step, values in merged.items():
            runs[step].append((s.key[3], values))
    steps = compared = identical = 0
    differing: list[dict] = []
    for step in sorted(runs):
        execs = runs[step]
        for (a0, before), (a1, after) in pairwise(execs):
            names = [k for k in after if k in before]
            steps += bool(names)
            for k in names:
                compared += 1
                if before[k] == after[k] and type(before[k]) is type(after[k]):
                    identical += 1
                elif len(differing) < keep:
                    differing.append({"step": step, "name": k, "attempts": [a0, a1], "values": [before[k], after[k]]})
    return {"steps": steps, "compared": compared, "identical": identical, "differing": differing}


def _per_rank(events: list[dict]) -> list[dict[str, Any]]:
    """Every rank that reported a checkpoint (any attempt), lowest first: how many, and the
    median and p95 of its stall and persist times."""
    by_rank: dict[int, list[dict]] = defaultdict(list)
    for e in events:
        if e["event"] == Event.CHECKPOINT and e.get("role") != SUPERVISOR:
            rank = e.get("rank") or 0
            by_rank[rank if isinstance(rank, int) else 0].append(e)
    return [{"rank": rank, "count": len(cs), "stall_s": _quantiles([c.get("stall_s") for c in cs]),
             "persist_s": _quantiles([c.get("persist_s") for c in cs])} for rank, cs in sorted(by_rank.items())]


def world_change(interruption: dict[str, Any]) -> str:
    """The ranks of an interrupted attempt and of the next: ``"2 → 1"``, or ``"2"`` when the same."""
    a, b = interruption.get("world_size"), interruption.get("next_world_size")
    return "-" if a is None else str(a) if b is None or b == a else f"{a} → {b}"


def thin_points(points: list[list], limit: int) -> list[list]:
    """About ``limit`` of the [step, value, attempt] points, evenly spread within each attempt
    (its share in proportion to its length, at least 50: short attempts stay whole), each
    attempt's first and last kept."""
    by_attempt: dict[Any, list[list]] = defaultdict(list)
    for p in points:
        by_attempt[p[2] if len(p) > 2 else None].append(p)
    out = []
    for pts in by_attempt.values():
        keep = min(len(pts), max(50, limit * len(pts) // max(1, len(points))))  # short attempts stay whole
        if keep >= len(pts):
            out += pts
            continue
        out += [pts[round(i * (len(pts) - 1) / (keep - 1))] for i in range(keep)]
    return out


def build_report(events: list[dict], *, root: str | None = None, spot_price: float | None = None,
                 on_demand_price: float | None = None, metric: str = "loss") -> dict[str, Any]:
    """Every figure of ``spotsafe report`` from ``events`` (any order, any number of writers)."""
    events = sorted(events, key=lambda e: e["ts"])
    sup = [e for e in events if e.get("role") == SUPERVISOR]
    spans = attempts(events)
    intervals = _intervals(spans)
    exits = {(e.get("run_id"), e.get("attempt")): e for e in sup if e["event"] == Event.EXIT}
    if spot_price is None or on_demand_price is None:
        for e in reversed(sup):
            if e["event"] == Event.SUPERVISOR_START and isinstance(e.get("profile"), dict):
                prices = {k: v for k, v in e["profile"].items() if type(v) in (int, float) and 0 <= v <= 1e12}
                spot_price = spot_price if spot_price is not None else prices.get("spot_price")
                on_demand_price = on_demand_price if on_demand_price is not None else prices.get("on_demand_price")
                break

    by_source: dict[str, int] = defaultdict(int)
    per_interruption: list[dict] = []
    restarts = resumed = reruns = 0
    lost = restart_gaps(spans, from_last_step=True)
    durable_before = []  # (ts, step) of every reported-durable checkpoint
    for s in spans:
        durable_before += [(c["ts"], c.get("step") or 0) for c in s.checkpoints]
    for i, s in enumerate(spans):
        nxt = spans[i + 1] if i + 1 < len(spans) else None
        if i > 0 and spans[i - 1].outcome == Outcome.FINISHED:
            reruns += 1
        elif i > 0:
            restarts += 1
            expected = max((step for ts, step in durable_before if ts < s.start), default=0)
            if s.restore_ts is not None and (s.restore_step or 0) >= expected:
                resumed += 1
        if s.outcome != Outcome.INTERRUPTED:
            continue
        by_source[str(s.source)] += 1  # a hand-edited or foreign event may carry any JSON value
        entry = {"attempt": s.key[3], "source": s.source, "ts": s.stop["ts"] if s.stop else s.end,
                 "step": s.last_step, "resumed_step": None, "replayed_steps": None, "replayed_s": None,
                 "restart_s": lost.get(i), "tier": s.stop.get("tier") if s.stop else None, "restored_from": None,
                 "world_size": s.world_size, "next_world_size": nxt.world_size if nxt is not None else None}
        if nxt is not None and nxt.restore_ts is not None:
            r = nxt.restore_step or 0
            entry["resumed_step"] = r
            entry["restored_from"] = {"step": r, "tier": nxt.restore_tier}
            entry["replayed_steps"] = max(0, s.last_step - r)
            secs = 0.0
            for iv in intervals:
                if iv.t1 <= nxt.start and not iv.attributed and iv.share(r, s.last_step) > 0:
                    secs += iv.share(r, s.last_step)
                    iv.attributed = True
            entry["replayed_s"] = secs
        per_interruption.append(entry)
    crashes = max(sum(1 for s in spans if s.outcome == Outcome.CRASHED),
                  sum(1 for e in exits.values() if e.get("cause") == Cause.CRASH))
    restarts = max(restarts, sum(1 for e in sup if e["event"] == Event.RESTART))  # attempts that never reported count

    ckpts = [c for s in spans for c in s.checkpoints]
    uploads = [e for e in events if e["event"] == Event.UPLOAD and (e.get("rank") or 0) == 0 and e.get("role") != SUPERVISOR]
    # checkpoint stalls inside final step executions are not useful work
    stall_in_final = 0.0
    finals_by_span: dict[int, list[_Interval]] = defaultdict(list)
    for iv in intervals:
        if iv.final:
            finals_by_span[iv.span].append(iv)
    for i, s in enumerate(spans):
        for c in s.checkpoints:
            step = c.get("step") or 0
            if c.get("stall_s") and any(iv.lo <= step < iv.hi for iv in finals_by_span[i]):
                stall_in_final += c["stall_s"]
    useful = max(0.0, sum(iv.seconds for iv in intervals if iv.final) - stall_in_final)
    idle = idle_after_finish(events, spans)
    wall = max(0.0, events[-1]["ts"] - events[0]["ts"] - idle) if events else 0.0
    replayed_steps = [p["replayed_steps"] for p in per_interruption if p["replayed_steps"] is not None]
    replayed_s = [p["replayed_s"] for p in per_interruption if p["replayed_s"] is not None]
    cost = None
    if spot_price is not None and on_demand_price is not None and wall > 0:
        od_s = max(0.0, wall - sum(replayed_s) - sum(lost.values()))
        spot_cost, od_cost = wall / 3600 * spot_price, od_s / 3600 * on_demand_price
        cost = {"spot_price": spot_price, "on_demand_price": on_demand_price, "wall_h": wall / 3600,
                "on_demand_h": od_s / 3600, "spot_cost": spot_cost, "on_demand_cost": od_cost,
                "savings": od_cost - spot_cost, "savings_fraction": (od_cost - spot_cost) / od_cost if od_cost else None}
    points = []
    for s in spans:
        for m in s.metrics:
            v = (m.get("values") or {}).get(metric)
            points.append([m["step"], v if isinstance(v, (int, float)) else None, s.key[3]])
    last = spans[-1] if spans else None
    return {
        "root": root,
        "run_ids": sorted({str(e.get("run_id")) for e in events if e.get("run_id")}),
        "attempts": attempt_count(events, spans),
        "world_size": max((s.world_size for s in spans), default=1),
        "per_attempt": [{"attempt": s.key[3], "run_id": s.key[2], "start": s.start, "end": s.end,
                         "outcome": s.outcome, "world_size": s.world_size} for s in spans],
        "wall_s": wall,
        "final_step": max((s.last_step for s in spans), default=0),
        "completed": bool(last and last.stop and last.stop.get("reason") == StopReason.COMPLETED),
        "interruptions": {"total": sum(by_source.values()), "by_source": dict(sorted(by_source.items()))},
        "crashes": crashes,
        "drills": sum(1 for e in sup if e["event"] == Event.CHAOS),
        "reruns": reruns,
        "resume": {"restarts": restarts, "resumed": resumed, "rate": resumed / restarts if restarts else None,
                   "fallbacks": sum(len(e.get("skipped") or []) for e in events if e["event"] == Event.RESTORE)},
        "replayed": {"steps": _summary(replayed_steps), "seconds": _summary(replayed_s),
                     "metrics": _replayed_metrics(spans)},
        "per_interruption": per_interruption,
        "checkpoints": {"count": len(ckpts), "stall_s": _quantiles([c.get("stall_s") for c in ckpts]),
                        "persist_s": _quantiles([c.get("persist_s") for c in ckpts]),
                        "upload_s": _quantiles([u.get("upload_s") for u in uploads]),
                        "by_reason": _count(c.get("reason") for c in ckpts)},
        "checkpoints_by_rank": _per_rank(events),
        "checkpoint_list": [{"ts": c["ts"], "step": c.get("step"), "reason": c.get("reason"),
                             "stall_s": c.get("stall_s"), "persist_s": c.get("persist_s"), "attempt": c.get("attempt")}
                            for c in ckpts],
        "restart_lost_s": sum(lost.values()),
        "idle_s": idle,
        "useful_s": useful,
        "goodput": useful / wall if wall > 0 else None,
        "cost": cost,
        "loss": {"name": metric, "points": points},
    }
