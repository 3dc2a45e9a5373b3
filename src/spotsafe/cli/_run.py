"""``spotsafe run`` (the supervisor) and ``spotsafe report``; neither imports torch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .._platforms import detect as detect_platform
from .._storage import check_root, is_url
from .._supervisor import Chaos, Supervisor, get_profile
from .._telemetry import (
    build_report,
    events_dir_of,
    prometheus_text,
    read_events,
    read_remote_events,
    serve_metrics,
    write_textfile,
)
from .._telemetry._events import _clean  # the one JSON-safe conversion
from .._telemetry._report import world_change
from .._units import format_duration
from ._params import Finite
from ._plan import _duration
from ._safe import markup

_out = Console(highlight=False, soft_wrap=True)


def _load_events(root: str, events_dir: str | None) -> list[dict]:
    if events_dir is not None:
        return read_events(events_dir)
    if is_url(root):
        try:
            return read_remote_events(root)
        except (OSError, ImportError) as e:
            raise click.ClickException(f"Cannot read the events under {root}/events ({e}); check the URL and "
                                       "credentials.") from None
    return read_events(events_dir_of(root))


def _report_for(root: str, events_dir: str | None, spot: float | None, od: float | None, metric: str) -> dict:
    events = _load_events(root, events_dir)
    if not events:
        where = events_dir or (f"{root}/events" if is_url(root) else events_dir_of(root))
        raise click.ClickException(f"No events in {where}; pass the run root that spotsafe.Run or spotsafe run "
                                   "wrote to (or --events DIR).")
    return build_report(events, root=root, spot_price=spot, on_demand_price=od, metric=metric)


@click.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--root", help="The run's checkpoint root (dir or URL): $SPOTSAFE_ROOT for the command, read for "
              "progress; events go to ROOT/events.")
@click.option("--profile", "profile_name", help="Profile: production, experiment, default, or one of the profiles file.")
@click.option("--profiles", "profiles_path", type=click.Path(dir_okay=False),
              help="TOML profiles file (default $SPOTSAFE_PROFILES or ./spotsafe.toml).")
@click.option("--remote", help="Object store URL for checkpoints and events ($SPOTSAFE_REMOTE for the command).")
@click.option("--save-every", help="Checkpoint interval for the command ($SPOTSAFE_SAVE_EVERY): 500steps, 15m.")
@click.option("--max-restarts", type=click.IntRange(min=0), help="Restarts allowed, any cause.")
@click.option("--max-total-time", help="Wall-clock budget of the whole run (e.g. 72h).")
@click.option("--max-crashes", "max_crashes_without_progress", type=click.IntRange(min=1),
              help="Give up after this many crashes in a row with no new checkpoint.")
@click.option("--backoff-base", help="First delay after a crash (doubles per crash in a row).")
@click.option("--backoff-cap", help="Longest delay after a crash.")
@click.option("--grace", help="How long to wait for the command's checkpoint after a stop signal.")
@click.option("--advise-after", "advise_on_demand_after", type=click.IntRange(min=1),
              help="Advise on-demand after this many interruptions.")
@click.option("--spot-price", type=Finite(min=0), help="Spot price per hour (advice, report).")
@click.option("--on-demand-price", type=Finite(min=0), help="On-demand price per hour (advice, report).")
@click.option("--events", "--events-dir", "events_dir", type=click.Path(file_okay=False),
              help="Events directory (default ROOT/events; without --root, the root the command's Run opens).")
@click.option("--run-id", help="Stable run id (default: kept in the events directory).")
@click.option("--seed", type=int, help="Seed of the backoff jitter.")
@click.option("--chaos", "chaos_every", callback=_duration("--chaos"),
              help="Drill: inject interruptions at random, one every this long on average (e.g. 20s).")
@click.option("--chaos-seed", type=int, default=0, show_default=True, help="Seed of the drills.")
@click.option("--chaos-kill-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of drills that are hard kills (SIGKILL, no notice); the rest are SIGTERM notices.")
@click.option("--chaos-grace", callback=_duration("--chaos-grace"), default="30s", show_default=True,
              help="A drill notice's SIGKILL comes this long after its SIGTERM.")
@click.option("--chaos-max", type=click.IntRange(min=0), help="Inject at most this many drills.")
@click.option("--chaos-ready-timeout", callback=_duration("--chaos-ready-timeout"), default="60s",
              show_default=True, help="Drills are timed from the command's restore event, or from this long "
              "after its start when it writes none.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus /metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option("--metrics-file", type=click.Path(dir_okay=False),
              help="Write Prometheus text here after each attempt (node_exporter textfile collector).")
def run_cmd(command, root, profile_name, profiles_path, remote, save_every, max_restarts, max_total_time,
            max_crashes_without_progress, backoff_base, backoff_cap, grace, advise_on_demand_after, spot_price,
            on_demand_price, events_dir, run_id, seed, chaos_every, chaos_seed, chaos_kill_share, chaos_grace,
            chaos_max, chaos_ready_timeout, metrics_port, metrics_host, metrics_file):
    """Run COMMAND, restart it after interruptions and crashes, resume it from its checkpoints.

    \b
      spotsafe run --root runs/exp1 --profile experiment -- python train.py
      spotsafe run --root runs/exp1 --chaos 20s --chaos-seed 1 -- python train.py   # a drill

    Exit codes: 0 finished; 75 stopped by a signal, or the command stopped for a notice from
    the machine (cloud metadata, Kubernetes, SLURM); its checkpoint is durable (restart me,
    elsewhere); 3 retry budget spent (restarts or total time); 4 crash loop (crashes in a
    row with no new checkpoint); 5 stopped, but the command did not exit 0 or 75 within the
    grace period; 127 the command cannot be started; 2 usage error.
    """
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    platform = detect_platform()
    if platform is not None:  # said once, here: the command's Run stays quiet about it (it logs at info)
        if root is None and platform.root:
            root = platform.root
        click.echo(f"spotsafe run: {platform.note}" + (f"; --root {root}" if root else "") + ".", err=True)
    try:
        profile = get_profile(profile_name, profiles_path).with_overrides(
            remote=remote, save_every=save_every, max_restarts=max_restarts, max_total_time=max_total_time,
            max_crashes_without_progress=max_crashes_without_progress, backoff_base=backoff_base,
            backoff_cap=backoff_cap, grace=grace, advise_on_demand_after=advise_on_demand_after,
            spot_price=spot_price, on_demand_price=on_demand_price)
        for where in (root, profile.remote):  # a typo is refused now, not logged at every attempt
            if where is not None:
                check_root(where)
        chaos = None if chaos_every is None else Chaos(
            every=chaos_every, seed=chaos_seed, kill_share=chaos_kill_share, grace=chaos_grace,
            max_injections=chaos_max, ready_timeout=chaos_ready_timeout)

        def export(events: Path) -> None:
            if metrics_file:
                report = build_report(read_events(events), root=root or os.fspath(events),
                                      spot_price=profile.spot_price, on_demand_price=profile.on_demand_price)
                write_textfile(metrics_file, prometheus_text(report))

        sup = Supervisor(command, profile, root=root, events_dir=events_dir, run_id=run_id, chaos=chaos, seed=seed,
                         on_attempt_end=export)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    server = None
    if metrics_port is not None:
        cache: dict = {}

        def text() -> str:  # recomputed only when an event file has grown
            files = sup.events_dir.glob("*.jsonl")
            key = tuple(sorted((f.name, f.stat().st_size) for f in files))
            if cache.get("key") != key:
                cache["text"] = prometheus_text(build_report(
                    read_events(sup.events_dir), root=root or os.fspath(sup.events_dir),
                    spot_price=profile.spot_price, on_demand_price=profile.on_demand_price))
                cache["key"] = key
            return cache["text"]
        try:
            server = serve_metrics(text, metrics_port, metrics_host)
        except OSError as e:
            raise click.UsageError(f"Cannot serve metrics on {metrics_host}:{metrics_port} ({e.strerror}); "
                                   "choose another --metrics-port.") from None
        click.echo(f"spotsafe run: Prometheus metrics at http://{metrics_host}:{server.server_address[1]}/metrics",
                   err=True)
    try:
        code = sup.run()
    finally:
        if server is not None:
            server.shutdown()
    sys.exit(code)


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.1f} ms" if v < 1 else (f"{v:.2f} s" if v < 60 else format_duration(v))


@click.command("report")
@click.argument("root")
@click.option("--events", "events_dir", type=click.Path(file_okay=False), help="Read events here instead of ROOT/events.")
@click.option("--profile", "profile_name", help="Take the prices from this profile.")
@click.option("--profiles", "profiles_path", type=click.Path(dir_okay=False), help="TOML profiles file.")
@click.option("--spot-price", type=Finite(min=0), help="Spot price per hour.")
@click.option("--on-demand-price", type=Finite(min=0), help="On-demand price per hour.")
@click.option("--metric", default="loss", show_default=True, help="The logged value drawn as the loss curve.")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Also write a self-contained HTML page.")
@click.option("--prometheus", "prom_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Also write Prometheus text exposition here (- for stdout).")
def report_cmd(root, events_dir, profile_name, profiles_path, spot_price, on_demand_price, metric, as_json,
               html_path, prom_path):
    """What happened to the run at ROOT (a directory or URL), from its events alone.

    Prices come from the flags, else the profile (--profile, or the one spotsafe run used).
    """
    if profile_name is not None:
        try:
            p = get_profile(profile_name, profiles_path)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        spot_price = spot_price if spot_price is not None else p.spot_price
        on_demand_price = on_demand_price if on_demand_price is not None else p.on_demand_price
    report = _report_for(root, events_dir, spot_price, on_demand_price, metric)
    if html_path:
        from .._telemetry._html import render_html

        Path(html_path).write_text(render_html(report))
    if prom_path:
        text = prometheus_text(report)
        if prom_path == "-":
            click.echo(text, nl=False)
        else:
            write_textfile(prom_path, text)
    if as_json:
        click.echo(json.dumps(_clean(report), indent=2))  # strict JSON: a NaN from a hand-edited file is null
        return
    if prom_path == "-":
        return
    _print_report(report, html_path)


def _print_report(r: dict, html_path: str | None) -> None:
    """The report as text. Every value that comes from the events (names, sources, and figures,
    which a hostile file could make strings) goes through ``markup``: no rich markup or terminal
    control characters from a file reach the terminal."""
    inter, res, rep, ck = r["interruptions"], r["resume"], r["replayed"], r["checkpoints"]
    sources = ", ".join(f"{markup(k)} {markup(v)}" for k, v in inter["by_source"].items()) or "none"
    rate = "-" if res["rate"] is None else f"{res['rate']:.0%}"
    _out.print(f"[bold]{markup(r['root'])}[/bold]: {markup(r['attempts'])} attempts, final step "
               f"{markup(r['final_step'])}{' (completed)' if r['completed'] else ''}, wall time {_s(r['wall_s'])}")
    if r["world_size"] > 1:
        _out.print(" world size per attempt: " + ", ".join(markup(a["world_size"]) for a in r["per_attempt"]))
    _out.print(f" interruptions {markup(inter['total'])} ({sources}); crashes {markup(r['crashes'])}; drills injected "
               f"{markup(r['drills'])}")
    _out.print(f" resumed {res['resumed']} of {res['restarts']} restarts from the newest checkpoint ({rate}); "
               f"invalid checkpoints skipped {res['fallbacks']}")
    if rep["steps"]["mean"] is not None:
        _out.print(f" replayed work per interruption: {rep['steps']['mean']:.1f} steps mean, {rep['steps']['worst']} "
                   f"worst; {_s(rep['seconds']['mean'])} mean, {_s(rep['seconds']['worst'])} worst")
    rm = rep.get("metrics") or {}
    if rep["steps"]["total"] or rm.get("compared"):
        _out.print(f" replayed {rep['steps']['total']} steps, {rm.get('compared', 0)} logged metrics compared, "
                   f"{rm.get('identical', 0)} identical")
        for d in rm.get("differing") or []:
            (a0, a1), (v0, v1) = d["attempts"], d["values"]
            _out.print(f"  step {d['step']} {markup(d['name'])}: {markup(repr(v0))} in attempt {markup(a0)}, "
                       f"{markup(repr(v1))} in attempt {markup(a1)}")
    _out.print(f" time lost to restarts {_s(r['restart_lost_s'])}; useful training {_s(r['useful_s'])}; goodput "
               + ("-" if r["goodput"] is None else f"{r['goodput']:.1%}")
               + (f"; {r['reruns']} rerun(s) after the run finished (idle {_s(r['idle_s'])} not counted)"
                  if r.get("reruns") else ""))
    t = Table(title=f"checkpoints ({ck['count']})", title_justify="left")
    for col in ("", "median", "p95", "count"):
        t.add_column(col, justify="right" if col else "left")
    for key, name in (("stall_s", "training stall"), ("persist_s", "persist (background)"), ("upload_s", "upload")):
        q = ck[key]
        t.add_row(name, _s(q["median"]), _s(q["p95"]), str(q["count"]))
    _out.print(t)
    if len(r["checkpoints_by_rank"]) > 1:
        t = Table(title="checkpoints per rank", title_justify="left")
        for col in ("rank", "count", "stall median", "stall p95", "persist median", "persist p95"):
            t.add_column(col, justify="right")
        for p in r["checkpoints_by_rank"]:
            t.add_row(markup(p["rank"]), markup(p["count"]), _s(p["stall_s"]["median"]), _s(p["stall_s"]["p95"]),
                      _s(p["persist_s"]["median"]), _s(p["persist_s"]["p95"]))
        _out.print(t)
    if r["per_interruption"]:
        t = Table(title="lost work per interruption", title_justify="left")
        ranks = r["world_size"] > 1
        for col in ("attempt", "source", "step reached", "resumed at", "replayed steps", "replayed", "restart",
                    *(["ranks"] if ranks else [])):
            t.add_column(col, justify="left" if col == "source" else "right")
        for p in r["per_interruption"]:
            t.add_row(markup(p["attempt"]), markup(p["source"]), markup(p["step"]),
                      "-" if p["resumed_step"] is None else markup(p["resumed_step"]),
                      "-" if p["replayed_steps"] is None else markup(p["replayed_steps"]), _s(p["replayed_s"]),
                      _s(p["restart_s"]), *([markup(world_change(p))] if ranks else []))
        _out.print(t)
    c = r["cost"]
    if c:
        verdict = (f"spot saved {c['savings']:.2f} ({c['savings_fraction']:.0%})" if c["savings"] >= 0
                   else f"spot cost {-c['savings']:.2f} more than on-demand")
        _out.print(f" cost: spot {c['spot_cost']:.2f} ({c['wall_h']:.3f} h x {c['spot_price']:g}/h) vs on-demand "
                   f"{c['on_demand_cost']:.2f} ({c['on_demand_h']:.3f} h x {c['on_demand_price']:g}/h): {verdict}")
    else:
        _out.print(" cost: pass --spot-price and --on-demand-price (per hour), or a --profile with prices.")
    if html_path:
        _out.print(f" wrote {markup(html_path)}")
