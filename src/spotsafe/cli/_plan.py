"""``spotsafe plan``: the checkpoint interval and the cost of a job on spot against on-demand."""

from __future__ import annotations

import json
import statistics

import click
from rich.console import Console
from rich.table import Table

from .._units import format_duration, parse_duration
from ..policy import advisor_mtbf, hybrid, plan, simulate
from ..policy._interval import SIMULATION_MAX_DRAWS, SIMULATION_TIME_LIMIT
from ._params import Finite
from ._pools import POOL_EXAMPLE, POOL_SYNTAX, parse_pool, parse_rate, pools_table, print_pools

_out = Console(highlight=False)


def _duration(what: str):
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            return parse_duration(value, what=what)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return convert


def _rate(ctx, param, value):
    """A rate per hour: "0.1", "0.1/h"."""
    if value is None:
        return None
    try:
        return parse_rate(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _pools(ctx, param, value):
    return [parse_pool(v) for v in value]


def _from_events(root: str | None):
    """What the run at ``root`` measured (the same attempts ``spotsafe report`` counts), or None."""
    if root is None:
        return None
    from .._storage import is_url
    from .._telemetry import events_dir_of, measure, read_events, read_remote_events

    if is_url(root):
        try:
            events = read_remote_events(root)
        except (OSError, ImportError, ValueError) as e:
            raise click.BadParameter(f"Cannot read the events under {root}/events ({e}); check the URL and "
                                     "credentials.", param_hint="--from") from None
    else:
        d = events_dir_of(root)
        if not d.is_dir():
            raise click.BadParameter(f"{d} does not exist; pass the run root whose events to read.",
                                     param_hint="--from")
        events = read_events(d)
    if not events:
        raise click.BadParameter(f"No events under {root}/events; pass the root that spotsafe.Run or spotsafe run "
                                 "wrote to.", param_hint="--from")
    return measure(events)


@click.command("plan")
@click.option("--hours", type=Finite(0, 1e9, min_open=True), required=True,
              help="Compute hours the job needs without interruptions.")
@click.option("--on-demand-price", type=Finite(0, 1e9, min_open=True), required=True, help="On-demand price per hour.")
@click.option("--spot-price", type=Finite(0, 1e9, min_open=True), help="Spot price per hour (or give --pool).")
@click.option("--pool", "pools", multiple=True, callback=_pools,
              help=f"Instead of --spot-price, a kind of spot capacity to compare (repeat): {POOL_SYNTAX}, e.g. "
                   f"{POOL_EXAMPLE}; without a rate of its own, a pool takes --mtbf/--rate/--advisor/--from.")
@click.option("--mtbf", callback=_duration("--mtbf"), help="Mean time between interruptions: 6h, 90m, ...")
@click.option("--rate", callback=_rate, help="Interruptions per hour: 0.2 (the same as --mtbf 5h).")
@click.option("--advisor", help="An AWS Spot Instance Advisor band: '<5%', '5-10%', '10-15%', '15-20%', '>20%'.")
@click.option("--checkpoint-cost", callback=_duration("--checkpoint-cost"),
              help="Time a checkpoint blocks training (the stall, for async saves): 30s, 5m.")
@click.option("--restart-cost", callback=_duration("--restart-cost"),
              help="Time an interruption costs besides lost work (new machine, start, restore): 10m.")
@click.option("--from", "from_root", help="Read the measured stall, restart cost and MTBF from this run's events "
                                          "(flags given explicitly win).")
@click.option("--deadline", callback=_duration("--deadline"),
              help="Wall time the job must finish in: suggests a spot/on-demand split when spot alone is too slow.")
@click.option("--simulate", "runs", type=click.IntRange(0, 100000), default=0,
              help="Also run this many Monte Carlo jobs under Poisson interruptions.")
@click.option("--seed", type=int, default=0, help="Seed of the simulation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plan_cmd(hours, on_demand_price, spot_price, pools, mtbf, rate, advisor, checkpoint_cost, restart_cost, from_root,
             deadline, runs, seed, as_json) -> None:
    """The optimal checkpoint interval (Young, Daly), expected wall time, waste and cost on spot vs on-demand.

    With --pool (repeated), one row per pool, one for on-demand and one for the --deadline hybrid,
    the cheapest marked, and the `spotsafe recipe skypilot` command over the pools cheaper than on-demand.
    """
    if spot_price is None and not pools:
        raise click.UsageError(f"Missing --spot-price; give it, or one --pool {POOL_SYNTAX} per kind of capacity.")
    if spot_price is not None and pools:
        raise click.UsageError("Give --spot-price or --pool, not both; each pool carries its own price.")
    measured = _from_events(from_root)
    given = [x for x in (mtbf, rate, advisor) if x is not None]
    if len(given) > 1:
        raise click.UsageError("Give one of --mtbf, --rate and --advisor.")
    assumption = None
    if rate is not None:
        mtbf = 3600.0 / rate
    elif advisor is not None:
        try:
            mtbf = advisor_mtbf(advisor)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--advisor") from None
        assumption = (f"Spot Instance Advisor band {advisor}: its upper share of instances interrupted per month, "
                      f"read as a Poisson process over 730 h (MTBF {mtbf / 3600:.0f} h)")
    sources = {}
    for name, value, field in (("mtbf", mtbf, "mtbf_s"), ("checkpoint cost", checkpoint_cost, "checkpoint_stall_s"),
                               ("restart cost", restart_cost, "restart_s")):
        if value is None and measured is not None and getattr(measured, field) is not None:
            sources[name] = "measured"
        elif value is not None:
            sources[name] = "given"
    mtbf = mtbf if mtbf is not None else (measured.mtbf_s if measured else None)
    checkpoint_cost = checkpoint_cost if checkpoint_cost is not None else (
        measured.checkpoint_stall_s if measured else None)
    restart_cost = restart_cost if restart_cost is not None else (measured.restart_s if measured else None)
    need_mtbf = not pools or any(p.mtbf_s is None for p in pools)
    missing = [f for f, v in (("--mtbf/--rate/--advisor", mtbf if need_mtbf else 0.0), ("--checkpoint-cost", checkpoint_cost),
                              ("--restart-cost", restart_cost)) if v is None]
    if pools and mtbf is None and need_mtbf:
        raise click.UsageError(f"The pool {next(p.name for p in pools if p.mtbf_s is None)} has no interruption "
                               "rate; give it mtbf=, rate= or advisor=, or --mtbf/--rate/--advisor for the pools "
                               "that give none.")
    if missing:
        raise click.UsageError(f"Missing {', '.join(missing)}; give them, or --from a run root whose events "
                               "measured them.")
    if pools:
        _plan_pools(pools, hours=hours, on_demand_price=on_demand_price, mtbf=mtbf, checkpoint_cost=checkpoint_cost,
                    restart_cost=restart_cost, deadline=deadline, runs=runs, seed=seed, as_json=as_json,
                    sources=sources, measured=measured, assumption=assumption)
        return
    try:
        p = plan(hours * 3600.0, mtbf=mtbf, checkpoint_cost=checkpoint_cost, restart_cost=restart_cost,
                 spot_price=spot_price, on_demand_price=on_demand_price)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    out = p.to_json()
    out["inputs"] = {k: sources.get(k, "given") for k in ("mtbf", "checkpoint cost", "restart cost")}
    if measured is not None:
        out["measured"] = {k: v for k, v in measured.__dict__.items() if k != "stalls_s"}
    if assumption:
        out["assumption"] = assumption
    if runs:
        walls = sorted(simulate(p.work_s, p.optimal_interval_s, checkpoint_cost=checkpoint_cost, mtbf=mtbf,
                                restart_cost=restart_cost, runs=runs, seed=seed))
        out["simulation"] = {"runs": runs, "seed": seed, "finished": len(walls), "truncated": len(walls) < runs,
                             "mean_wall_time_s": statistics.fmean(walls) if walls else None,
                             "p95_wall_time_s": walls[min(len(walls) - 1, int(0.95 * len(walls)))] if walls else None,
                             "mean_vs_expected": statistics.fmean(walls) / p.expected_wall_time_s - 1.0 if walls
                             else None}
    if deadline is not None:
        h = hybrid(p.work_s, deadline, p)
        out["hybrid"] = None if h is None else {"spot_share": h[0], "expected_wall_time_s": h[1], "cost": h[2]}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    _print(p, out, deadline)


def _plan_pools(pools, *, hours, on_demand_price, mtbf, checkpoint_cost, restart_cost, deadline, runs, seed, as_json,
                sources, measured, assumption) -> None:
    out = pools_table(pools, work=hours * 3600.0, checkpoint_cost=checkpoint_cost, restart_cost=restart_cost,
                      on_demand_price=on_demand_price, default_mtbf=mtbf, deadline=deadline, runs=runs, seed=seed)
    out["inputs"] = {k: sources.get(k, "given") for k in ("checkpoint cost", "restart cost")}
    if measured is not None:
        out["measured"] = {k: v for k, v in measured.__dict__.items() if k != "stalls_s"}
    assumptions = [assumption] if assumption else []
    bands = sorted({p.rate_given.partition("=")[2] for p in pools if (p.rate_given or "").startswith("advisor=")})
    if bands:
        assumptions.append(f"Spot Instance Advisor band(s) {', '.join(bands)}: the band's upper share of instances "
                           "interrupted per month, read as a Poisson process over 730 h")
    if assumptions:
        out["assumptions"] = assumptions
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    print_pools(out, _out, assumptions)


def _print(p, out: dict, deadline: float | None) -> None:
    t = Table(title=f"Plan: {p.work_s / 3600:g} compute hours, MTBF {format_duration(p.mtbf_s)}, checkpoint "
                    f"{format_duration(p.checkpoint_cost_s)}, restart {format_duration(p.restart_cost_s)}")
    t.add_column("")
    t.add_column("spot", justify="right")
    t.add_column("on-demand", justify="right")
    t.add_row("checkpoint interval (Daly)", format_duration(p.optimal_interval_s), "-")
    t.add_row("checkpoint interval (Young)", format_duration(p.young_interval_s), "-")
    t.add_row("expected interruptions", f"{p.expected_interruptions:.1f}", "0")
    t.add_row("expected wall time", f"{p.expected_wall_time_s / 3600:.2f} h", f"{p.work_s / 3600:.2f} h")
    t.add_row("  wasted (checkpoints, rework, restarts)", f"{p.wasted_s / 3600:.2f} h", "0")
    t.add_row("  of which checkpoint stalls", f"{p.checkpoint_overhead_s / 3600:.2f} h", "-")
    t.add_row("price per hour", f"{p.spot_price:g}", f"{p.on_demand_price:g}")
    t.add_row("expected cost", f"{p.spot_cost:.2f}", f"{p.on_demand_cost:.2f}")
    _out.print(t)
    if p.savings_fraction > 0:
        _out.print(f"Spot saves {p.savings_fraction:.0%} ({p.on_demand_cost - p.spot_cost:.2f}).")
    else:
        _out.print(f"On-demand is cheaper: spot would cost {p.spot_cost / p.on_demand_cost:.2f}x as much "
                   "(interruptions cost more than the discount).")
    if p.break_even_mtbf_s is None:
        _out.print("Break-even: none, spot is not cheaper per hour.")
    else:
        _out.print(f"Break-even: spot stays cheaper while the MTBF is above {format_duration(p.break_even_mtbf_s)} "
                   f"({3600 / p.break_even_mtbf_s:.3g} interruptions per hour).")
    if "simulation" in out:
        s = out["simulation"]
        if s["truncated"]:
            _out.print(f"Simulation cut short: {s['finished']} of {s['runs']} jobs finished within its bound of "
                       f"{SIMULATION_MAX_DRAWS:,} interruption draws or {SIMULATION_TIME_LIMIT:g} s (restarts much "
                       "longer than the MTBF rarely complete); the expectation above stands" +
                       (" alone." if not s["finished"] else ", and the figures below are of the jobs that finished."))
        if s["finished"]:
            _out.print(f"Simulation: {s['finished']} jobs, mean wall time {s['mean_wall_time_s'] / 3600:.2f} h "
                       f"({s['mean_vs_expected']:+.1%} of the expectation), p95 {s['p95_wall_time_s'] / 3600:.2f} h.")
    if deadline is not None:
        h = out["hybrid"]
        if h is None:
            fits = p.expected_wall_time_s <= deadline
            _out.print(f"Deadline {format_duration(deadline)}: " + (
                "spot alone meets it (expected)." if fits else "not even on-demand meets it."))
        else:
            _out.print(f"Hybrid for the {format_duration(deadline)} deadline: the first {h['spot_share']:.0%} of the "
                       f"work on spot, the rest on on-demand: {h['expected_wall_time_s'] / 3600:.2f} h, "
                       f"cost {h['cost']:.2f}.")
    if "assumption" in out:
        _out.print(f"Assumed: {out['assumption']}.")
    measured = [k for k, v in out["inputs"].items() if v == "measured"]
    if measured:
        _out.print(f"Measured from the run's events: {', '.join(measured)}.")
