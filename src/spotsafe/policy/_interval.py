"""The checkpoint interval and the cost of a job on interruptible capacity (no torch).

The model is Daly's (J. T. Daly, "A higher order estimate of the optimum checkpoint interval
for restart dumps", FGCS 22, 2006): interruptions arrive as a Poisson process of mean
``M`` (the MTBF), a checkpoint costs ``delta`` of compute time (the *stall*, for
asynchronous saves), a restart costs ``R`` (during which interruptions may strike again),
and work is done in segments of ``tau`` between checkpoints.

* Young's first-order optimum: ``tau = sqrt(2 delta M)``.
* Daly's higher-order optimum: ``tau = sqrt(2 delta M) [1 + sqrt(delta / 2M) / 3 + (delta / 2M) / 9] - delta``
  for ``delta < 2M``, else ``tau = M``.
* A segment of length ``L = tau + delta`` takes on average ``M e^(R/M) (e^(L/M) - 1)``
  (exact for this model: a failure costs the time already spent in the segment plus a
  restart, itself retried until it completes). The job's expected wall time is the sum
  over its segments; the last one is shorter when the work is not a multiple of ``tau``.

:func:`simulate` runs the same model as a Monte Carlo (fixed seed), so the two agree. Its work
grows like ``e^(R/M)`` per interruption (a restart much longer than the MTBF almost never
completes), so it runs under a bound on random draws and on time, and returns only the
jobs it finished.

Every input must be a finite number; a figure too large for a float (``e^(R/M)`` for a
restart hundreds of MTBFs long) is infinite, and :func:`plan` then says the job would
never finish on spot instead of returning it.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._units import format_duration

HOURS_PER_MONTH = 730.0  # 365.25 * 24 / 12

ADVISOR_BANDS = {"<5%": 0.05, "5-10%": 0.10, "10-15%": 0.15, "15-20%": 0.20, ">20%": 0.25}
"""AWS Spot Instance Advisor bands ("frequency of interruption": share of instances
interrupted in a month) -> the share used: the band's upper edge (a planning figure should
not be optimistic); ">20%" has none, 25% is assumed."""

SIMULATION_MAX_DRAWS = 20_000_000
"""Random draws :func:`simulate` makes at most, all jobs together (about 10 s of Python)."""
SIMULATION_TIME_LIMIT = 10.0
"""Seconds :func:`simulate` runs at most."""


def young_interval(checkpoint_cost: float, mtbf: float) -> float:
    """Young's first-order optimum compute time between checkpoints: sqrt(2 delta M)."""
    _check_positive(checkpoint_cost=checkpoint_cost, mtbf=mtbf)
    return math.sqrt(2.0 * checkpoint_cost * mtbf)


def daly_interval(checkpoint_cost: float, mtbf: float) -> float:
    """Daly's higher-order optimum compute time between checkpoints (his eq. 37)."""
    _check_positive(checkpoint_cost=checkpoint_cost, mtbf=mtbf)
    d, m = checkpoint_cost, mtbf
    if d >= 2.0 * m:
        return m
    x = d / (2.0 * m)
    return math.sqrt(2.0 * d * m) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - d


def segment_time(length: float, *, mtbf: float, restart_cost: float) -> float:
    """Expected wall time to get through ``length`` seconds of uninterruptible work (inf past a float's range)."""
    try:
        return mtbf * math.exp(restart_cost / mtbf) * math.expm1(length / mtbf)
    except OverflowError:
        return math.inf


def segments(work: float, interval: float) -> tuple[int, float]:
    """(full segments, length of the last partial one, 0 when none) for ``work`` at ``interval``."""
    full = int(work // interval)
    rest = work - full * interval
    if rest < 1e-9 * interval:
        rest = 0.0
    return full, rest


def expected_wall_time(work: float, interval: float, *, checkpoint_cost: float, mtbf: float,
                       restart_cost: float) -> float:
    """Expected wall time of ``work`` seconds of compute with a checkpoint every ``interval``."""
    _check_positive(work=work, interval=interval, mtbf=mtbf)
    _check_not_negative(checkpoint_cost=checkpoint_cost, restart_cost=restart_cost)
    full, rest = segments(work, interval)
    total = full * segment_time(interval + checkpoint_cost, mtbf=mtbf, restart_cost=restart_cost) if full else 0.0
    if rest:
        total += segment_time(rest + checkpoint_cost, mtbf=mtbf, restart_cost=restart_cost)
    return total


def simulate(work: float, interval: float, *, checkpoint_cost: float, mtbf: float, restart_cost: float,
             runs: int = 1000, seed: int = 0, max_draws: int = SIMULATION_MAX_DRAWS,
             time_limit: float = SIMULATION_TIME_LIMIT, clock: Callable[[], float] = time.monotonic) -> list[float]:
    """Wall times of simulated jobs under Poisson interruptions (the model above).

    Returns ``runs`` wall times, or fewer (maybe none) when ``max_draws`` random draws in
    all or ``time_limit`` seconds of ``clock`` ran out first: only jobs simulated to the
    end are returned, so ``len(result) < runs`` says the simulation was cut short.
    """
    _check_positive(work=work, interval=interval, mtbf=mtbf)
    _check_not_negative(checkpoint_cost=checkpoint_cost, restart_cost=restart_cost)
    rng = random.Random(seed)
    full, rest = segments(work, interval)
    count = full + (1 if rest else 0)
    rate = 1.0 / mtbf
    draws, check_at, deadline = 0, 0, clock() + time_limit
    out: list[float] = []
    for _ in range(runs):
        wall = 0.0
        for i in range(count):  # no list of segments: their number may be astronomic
            length = (interval if i < full else rest) + checkpoint_cost
            restarting = False  # after an interruption: the restart (itself interruptible), then the segment again
            while True:
                if draws >= check_at:  # the bound, checked every 4096 draws
                    if draws >= max_draws or clock() > deadline:
                        return out
                    check_at = draws + 4096
                draws += 1
                failure = rng.expovariate(rate)
                need = restart_cost if restarting else length
                if failure < need:
                    wall += failure
                    restarting = True
                elif restarting:
                    wall += restart_cost
                    restarting = False
                else:
                    wall += length
                    break
        out.append(wall)
    return out


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Expected time and money of a job on spot against on-demand, at Daly's optimum interval."""

    work_s: float
    mtbf_s: float
    checkpoint_cost_s: float
    restart_cost_s: float
    spot_price: float
    on_demand_price: float
    young_interval_s: float
    optimal_interval_s: float
    expected_wall_time_s: float
    expected_interruptions: float
    wasted_s: float
    checkpoint_overhead_s: float
    spot_cost: float
    on_demand_cost: float
    savings_fraction: float
    break_even_mtbf_s: float | None

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["on_demand_wall_time_s"] = self.work_s
        d["break_even_rate_per_hour"] = None if self.break_even_mtbf_s is None else 3600.0 / self.break_even_mtbf_s
        return d


def plan(work: float, *, mtbf: float, checkpoint_cost: float, restart_cost: float, spot_price: float,
         on_demand_price: float, interval: float | None = None) -> Plan:
    """The plan at Daly's optimum (or at ``interval``); on-demand runs ``work`` with no interruptions."""
    _check_positive(work=work, mtbf=mtbf, checkpoint_cost=checkpoint_cost, spot_price=spot_price,
                    on_demand_price=on_demand_price)
    _check_not_negative(restart_cost=restart_cost)
    tau = interval if interval is not None else daly_interval(checkpoint_cost, mtbf)
    wall = expected_wall_time(work, tau, checkpoint_cost=checkpoint_cost, mtbf=mtbf, restart_cost=restart_cost)
    if not math.isfinite(wall):
        raise ValueError(f"On spot this job would never finish: with an interruption every {format_duration(mtbf)}, "
                         f"a restart of {format_duration(restart_cost)} and {format_duration(tau + checkpoint_cost)} "
                         "between checkpoints its expected wall time is beyond a float's range; check the MTBF and "
                         "the costs, or run it on demand.")
    if not (math.isfinite(wall / 3600.0 * spot_price) and math.isfinite(work / 3600.0 * on_demand_price)):
        raise ValueError(f"The cost of this job is beyond a float's range ({work / 3600:g} h at {spot_price:g} and "
                         f"{on_demand_price:g} per hour); give the prices per machine-hour.")
    full, rest = segments(work, tau)
    overhead = (full + (1 if rest else 0)) * checkpoint_cost
    spot = wall / 3600.0 * spot_price
    on_demand = work / 3600.0 * on_demand_price
    return Plan(work_s=work, mtbf_s=mtbf, checkpoint_cost_s=checkpoint_cost, restart_cost_s=restart_cost,
                spot_price=spot_price, on_demand_price=on_demand_price,
                young_interval_s=young_interval(checkpoint_cost, mtbf), optimal_interval_s=tau,
                expected_wall_time_s=wall, expected_interruptions=wall / mtbf, wasted_s=wall - work,
                checkpoint_overhead_s=overhead, spot_cost=spot, on_demand_cost=on_demand,
                savings_fraction=1.0 - spot / on_demand,
                break_even_mtbf_s=break_even_mtbf(work, checkpoint_cost=checkpoint_cost, restart_cost=restart_cost,
                                                  spot_price=spot_price, on_demand_price=on_demand_price))


def break_even_mtbf(work: float, *, checkpoint_cost: float, restart_cost: float, spot_price: float,
                    on_demand_price: float) -> float | None:
    """The MTBF at which spot (at its optimal interval) costs as much as on-demand; None if spot never wins."""
    if spot_price >= on_demand_price:
        return None

    def spot_cost(m: float) -> float:
        tau = daly_interval(checkpoint_cost, m)
        return expected_wall_time(work, tau, checkpoint_cost=checkpoint_cost, mtbf=m, restart_cost=restart_cost) \
            * spot_price

    target = work * on_demand_price
    lo, hi = max(checkpoint_cost, restart_cost, 1.0) * 1e-3, 1.0
    while spot_cost(hi) > target:  # grow until spot wins; bounded: it wins as M -> infinity
        hi *= 2.0
        if hi > 1e15:
            return None
    for _ in range(200):  # bisection on log M; spot cost falls as M grows
        mid = math.sqrt(lo * hi)
        if spot_cost(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-9:
            break
    return hi


def hybrid(work: float, deadline: float, p: Plan) -> tuple[float, float, float] | None:
    """Meet ``deadline`` (expected) by running a share of the work on spot and the rest on on-demand.

    Returns (spot share of the work, expected wall time, expected cost), or None when spot
    alone meets the deadline or on-demand alone cannot.
    """
    if p.expected_wall_time_s <= deadline or work > deadline:
        return None
    slowdown = p.expected_wall_time_s / work          # spot wall seconds per second of work
    share = (deadline - work) / (work * (slowdown - 1.0))  # share*work*slowdown + (1-share)*work = deadline
    share = min(max(share, 0.0), 1.0)
    wall = share * p.expected_wall_time_s + (1 - share) * work
    cost = share * p.spot_cost + (1 - share) * p.on_demand_cost
    return share, wall, cost


def advisor_mtbf(band: str) -> float:
    """MTBF in seconds for a Spot Instance Advisor band ("<5%", "5-10%", ...).

    Assumption: the band's share ``f`` of instances interrupted within a month is the
    probability that one instance is interrupted within 730 h, interruptions being a
    Poisson process: rate = -ln(1 - f) / 730 h.
    """
    key = re.sub(r"\s+", "", band)
    if key not in ADVISOR_BANDS:
        raise ValueError(f"Unknown Spot Instance Advisor band {band!r}; use one of {', '.join(ADVISOR_BANDS)}.")
    rate_per_hour = -math.log(1.0 - ADVISOR_BANDS[key]) / HOURS_PER_MONTH
    return 3600.0 / rate_per_hour


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name.replace('_', ' ')} must be a positive finite number, got {v!r}.")


def _check_not_negative(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name.replace('_', ' ')} must be a finite number of seconds, 0 or more, got {v!r}.")
