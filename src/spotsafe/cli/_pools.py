"""``spotsafe plan --pool ...``: the same plan over several kinds of spot capacity, as one table.

A pool is an instance type, optionally in one region, with its own spot price and
interruption rate: ``g5.xlarge@us-east-1:price=1.2,advisor=<5%``. Every pool row is the
single-pool model (:func:`spotsafe.policy.plan`) at that pool's price and MTBF, nothing more;
on-demand and the deadline hybrid are rows beside them, and the cheapest option (among
those expected to meet ``--deadline``, when one is given) is marked. Durations, rates,
advisor bands and prices are read by the same parsers as ``--mtbf``, ``--rate``,
``--advisor`` and ``--spot-price``.
"""

from __future__ import annotations

import math
import shlex
import statistics
from dataclasses import dataclass

import click
from rich.console import Console
from rich.table import Table

from .._units import format_duration, parse_duration
from ..policy import advisor_mtbf, hybrid, plan, simulate
from ._params import Finite

POOL_SYNTAX = "TYPE[@REGION]:price=P[,mtbf=D|rate=R|advisor=BAND]"
POOL_EXAMPLE = "g5.xlarge@us-east-1:price=1.2,advisor=<5%"
_PRICE = Finite(0, 1e9, min_open=True)
_RATE_KEYS = ("mtbf", "rate", "advisor")


def parse_rate(value: str, *, what: str = "--rate") -> float:
    """Interruptions per hour from ``"0.2"``, ``"0.2/h"`` or ``"0.2/hour"``; ValueError otherwise."""
    text = value.strip().lower().removesuffix("/h").removesuffix("/hour").strip()
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"Cannot read {what} {value!r}; give interruptions per hour, e.g. 0.2 or 0.2/h.") from None
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{what} {value!r} must be more than 0 per hour; use {what.replace('rate', 'mtbf')} for a duration.")
    return rate


@dataclass(frozen=True)
class Pool:
    """One kind of spot capacity: an instance type (in a region, or any), its price and MTBF."""

    name: str
    instance_type: str
    region: str | None
    price: float
    mtbf_s: float | None  # None: the command's --mtbf/--rate/--advisor/--from applies
    rate_given: str | None  # how the MTBF was given ("mtbf=3h", "advisor=<5%"), None when it was not


def parse_pool(text: str) -> Pool:
    """A :class:`Pool` from ``TYPE[@REGION]:price=P[,mtbf=D|rate=R|advisor=BAND]``; click.BadParameter otherwise."""
    def bad(why: str) -> click.BadParameter:
        return click.BadParameter(f"{why} in {text!r}; write {POOL_SYNTAX}, e.g. {POOL_EXAMPLE}.",
                                  param_hint="--pool")

    name, sep, spec = text.partition(":")
    name = name.strip()
    if not sep:
        raise bad("No ':' after the pool's name")
    instance_type, _, region = name.partition("@")
    if not instance_type.strip() or ("@" in name and not region.strip()) or any(c.isspace() for c in name):
        raise bad(f"The name {name!r} is not an instance type with an optional @region")
    fields: dict[str, str] = {}
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not value:
            raise bad(f"{item.strip()!r} is not key=value")
        if key not in ("price", *_RATE_KEYS):
            raise bad(f"Unknown key {key!r} (use price, mtbf, rate or advisor)")
        if key in fields:
            raise bad(f"{key} is given twice")
        fields[key] = value
    if "price" not in fields:
        raise bad("The spot price per hour (price=P) is missing")
    try:
        price = _PRICE.convert(fields["price"], None, None)
    except click.BadParameter as e:
        raise bad(f"The price {fields['price']!r} is not a positive finite number ({e.message.rstrip('.')})") from None
    given = [k for k in _RATE_KEYS if k in fields]
    if len(given) > 1:
        raise bad(f"Give one of mtbf, rate and advisor, not {' and '.join(given)}")
    mtbf = None
    try:
        if given == ["mtbf"]:
            mtbf = parse_duration(fields["mtbf"], what="mtbf")
            if mtbf <= 0:
                raise ValueError("mtbf must be more than 0; give a duration such as 3h.")
        elif given == ["rate"]:
            mtbf = 3600.0 / parse_rate(fields["rate"], what="rate")
        elif given == ["advisor"]:
            mtbf = advisor_mtbf(fields["advisor"])
    except ValueError as e:
        raise click.BadParameter(f"In {text!r}: {e}", param_hint="--pool") from None
    return Pool(name=name, instance_type=instance_type.strip(), region=region.strip() or None, price=price,
                mtbf_s=mtbf, rate_given=f"{given[0]}={fields[given[0]]}" if given else None)


def pools_table(pools: list[Pool], *, work: float, checkpoint_cost: float, restart_cost: float,
                on_demand_price: float, default_mtbf: float | None, deadline: float | None, runs: int,
                seed: int) -> dict:
    """Every pool's plan, on-demand and the deadline hybrid as rows (the JSON of ``--pool``), the cheapest marked."""
    names = [p.name for p in pools]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise click.BadParameter(f"The pool {dup[0]} is given twice; give each TYPE@REGION once.", param_hint="--pool")
    rows: list[dict] = []
    hybrids = []
    for pool in pools:
        mtbf = pool.mtbf_s if pool.mtbf_s is not None else default_mtbf
        if mtbf is None:
            raise click.UsageError(f"The pool {pool.name} has no interruption rate; give it mtbf=, rate= or advisor=.")
        try:
            p = plan(work, mtbf=mtbf, checkpoint_cost=checkpoint_cost, restart_cost=restart_cost,
                     spot_price=pool.price, on_demand_price=on_demand_price)
        except ValueError as e:
            raise click.UsageError(f"Pool {pool.name}: {e}") from None
        row: dict = {"kind": "pool", "name": pool.name, "instance_type": pool.instance_type, "region": pool.region,
                     "price": pool.price, "mtbf_s": p.mtbf_s,
                     "mtbf_from": pool.rate_given or "the command's --mtbf/--rate/--advisor/--from",
                     "optimal_interval_s": p.optimal_interval_s, "young_interval_s": p.young_interval_s,
                     "expected_wall_time_s": p.expected_wall_time_s, "expected_interruptions": p.expected_interruptions,
                     "wasted_s": p.wasted_s, "checkpoint_overhead_s": p.checkpoint_overhead_s, "cost": p.spot_cost,
                     "savings_fraction": p.savings_fraction, "break_even_mtbf_s": p.break_even_mtbf_s}
        if runs:
            row["simulation"] = _simulation(p, runs=runs, seed=seed)
        rows.append(row)
        if deadline is not None:
            h = hybrid(work, deadline, p)
            if h is not None:
                hybrids.append((h[2], pool.name, h))
    rows.append({"kind": "on-demand", "name": "on-demand", "price": on_demand_price, "optimal_interval_s": None,
                 "expected_wall_time_s": work, "wasted_s": 0.0, "cost": work / 3600.0 * on_demand_price})
    if hybrids:
        cost, name, (share, wall, _) = min(hybrids)
        rows.append({"kind": "hybrid", "name": "hybrid", "pool": name, "spot_share": share,
                     "expected_wall_time_s": wall, "wasted_s": wall - work, "cost": cost,
                     "optimal_interval_s": next(r["optimal_interval_s"] for r in rows if r["name"] == name)})
    for r in rows:
        r["meets_deadline"] = None if deadline is None else r["expected_wall_time_s"] <= deadline * (1 + 1e-9)
    eligible = [r for r in rows if r["meets_deadline"] is not False]
    best = min(eligible, key=lambda r: r["cost"]) if eligible else None
    for r in rows:
        r["cheapest"] = r is best
    on_demand_cost = rows[len(pools)]["cost"]
    chosen = sorted((r for r in rows[:len(pools)] if r["cost"] < on_demand_cost), key=lambda r: r["cost"])
    return {"work_s": work, "checkpoint_cost_s": checkpoint_cost, "restart_cost_s": restart_cost,
            "on_demand_price": on_demand_price, "deadline_s": deadline, "rows": rows,
            "cheapest": best["name"] if best else None, "recipe": _recipe([p for r in chosen for p in pools
                                                                            if p.name == r["name"]])}


def _simulation(p, *, runs: int, seed: int) -> dict:
    walls = simulate(p.work_s, p.optimal_interval_s, checkpoint_cost=p.checkpoint_cost_s, mtbf=p.mtbf_s,
                     restart_cost=p.restart_cost_s, runs=runs, seed=seed)
    mean = statistics.fmean(walls) if walls else None
    return {"runs": runs, "seed": seed, "finished": len(walls), "truncated": len(walls) < runs,
            "mean_wall_time_s": mean, "mean_cost": None if mean is None else mean / 3600.0 * p.spot_price,
            "mean_vs_expected": None if mean is None else mean / p.expected_wall_time_s - 1.0}


def _recipe(chosen: list[Pool]) -> dict | None:
    """The ``spotsafe recipe skypilot`` command over ``chosen`` (cheapest first); None when there are none."""
    if not chosen:
        return None
    any_region = any(p.region is None for p in chosen)
    args = ["spotsafe", "recipe", "skypilot"]
    for p in chosen:  # exactly the pools priced: the recipe's any_of is these pairs
        args += ["--pool", p.name]
    return {"pools": [p.name for p in chosen], "command": shlex.join(args) + " -- COMMAND", "any_region": any_region}


def print_pools(out: dict, console: Console, assumptions: list[str]) -> None:
    """The rows as one table, then the deadline, the simulation's caveats and the recipe line."""
    deadline = out["deadline_s"]
    title = (f"Plan over {sum(r['kind'] == 'pool' for r in out['rows'])} pools: {out['work_s'] / 3600:g} compute "
             f"hours, checkpoint {format_duration(out['checkpoint_cost_s'])}, restart "
             f"{format_duration(out['restart_cost_s'])}"
             + (f", deadline {format_duration(deadline)}" if deadline is not None else ""))
    sim = any("simulation" in r for r in out["rows"])
    t = Table(title=title)
    for head in ("", "price/h", "MTBF", "interval", "wall time", "wasted", "cost", *(["sim. wall"] if sim else []),
                 ""):
        t.add_column(head, justify="left" if head in ("", "MTBF") else "right", no_wrap=True)
    for r in out["rows"]:
        mark = "cheapest" if r["cheapest"] else ("late" if r["meets_deadline"] is False else "")
        price = f"{r['price']:g}" if "price" in r else "-"
        mtbf = "-" if "mtbf_s" not in r else (format_duration(r["mtbf_s"]) if r["mtbf_s"] < 360000 else
                                              f"{r['mtbf_s'] / 3600:,.0f}h")
        interval = format_duration(r["optimal_interval_s"]) if r["optimal_interval_s"] is not None else "-"
        cells = [r["name"], price, mtbf, interval, f"{r['expected_wall_time_s'] / 3600:.2f} h",
                 f"{r['wasted_s'] / 3600:.2f} h", f"{r['cost']:.2f}"]
        if sim:
            s = r.get("simulation")
            cells.append("-" if not s or s["mean_wall_time_s"] is None else f"{s['mean_wall_time_s'] / 3600:.2f} h")
        t.add_row(*cells, mark)
    width = console.measure(t, options=console.options.update_width(1000)).maximum
    if not console.is_terminal and width > console.width:  # piped: no terminal to fit, so do not wrap the cells
        console = Console(highlight=False, width=width, file=console.file)
    console.print(t)
    h = next((r for r in out["rows"] if r["kind"] == "hybrid"), None)
    if h is not None:
        console.print(f"hybrid: the first {h['spot_share']:.0%} of the work on {h['pool']}, the rest on on-demand, "
                      f"to finish within the {format_duration(deadline)} deadline (expected).")
    if any(r["meets_deadline"] is False for r in out["rows"]):
        console.print("late: expected to miss the deadline.")
    if deadline is not None:
        if out["cheapest"] is None:
            console.print(f"Deadline {format_duration(deadline)}: not even on-demand meets it.")
        elif not any(r["kind"] == "hybrid" for r in out["rows"]):
            console.print(f"Deadline {format_duration(deadline)}: every pool meets it alone (expected).")
    for r in out["rows"]:
        s = r.get("simulation")
        if s and s["truncated"]:
            console.print(f"Simulation of {r['name']} cut short: {s['finished']} of {s['runs']} jobs finished within "
                          "its bound; its expectation stands.")
    if sim:
        runs = next(r["simulation"] for r in out["rows"] if "simulation" in r)
        console.print(f"sim. wall: the mean of {runs['runs']} simulated jobs per pool (seed {runs['seed']}).")
    for a in assumptions:
        console.print(f"Assumed: {a}.")
    rec = out["recipe"]
    if rec is None:
        console.print("No pool is expected to cost less than on-demand: no spot recipe suggested.")
        return
    console.print(f"Run over the {len(rec['pools'])} pool(s) cheaper than on-demand (cheapest first):")
    console.print(rec["command"], soft_wrap=True)  # one line, to copy
    if rec["any_region"]:
        console.print("(A pool with no @region: the recipe lets SkyPilot choose among all regions.)")
