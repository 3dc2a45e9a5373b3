"""``spotsafe recipe PLATFORM -- COMMAND``: print the platform's configuration for a spot-safe job."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from .._recipes import PLATFORMS, RecipeOptions, budget_from_events, render
from .._units import parse_duration


@click.command("recipe")
@click.argument("platform", type=click.Choice(PLATFORMS))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--name", default="spotsafe-job", show_default=True, help="The job's name.")
@click.option("--root", help="The checkpoint root inside the job (default: the platform's usual place).")
@click.option("--remote", help="Object store URL the checkpoints are replicated to (s3://bucket/run).")
@click.option("--profile", help="The spotsafe run profile (production, experiment, ...).")
@click.option("--budget", help="Time from a notice to a durable checkpoint (save + upload), e.g. 40s.")
@click.option("--from", "from_root", help="Measure the budget from this run root's events instead.")
@click.option("--image", help="Container image (kubernetes, aws-batch, gcp-batch, sagemaker).")
@click.option("--instance-type", "instance_types", multiple=True, help="An instance type to diversify over (repeat).")
@click.option("--region", "regions", multiple=True, help="A region to diversify over (repeat).")
@click.option("--pool", "pools", multiple=True, metavar="TYPE[@REGION]",
              help="An exact instance type (and region) to diversify over (repeat), as spotsafe plan --pool priced "
                   "it; instead of every --instance-type in every --region.")
@click.option("--max-restarts", type=click.IntRange(min=0), default=10, show_default=True,
              help="Platform retries a preemption may use, where the platform counts them.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
def recipe_cmd(platform, command, name, root, remote, profile, budget, from_root, image, instance_types, regions,
               pools, max_restarts, output):
    """Print a ready configuration that runs COMMAND on PLATFORM under `spotsafe run`, retried on exit 75.

    Options go before `--`; everything after it is the command, as given.

    \b
      spotsafe recipe kubernetes --image ghcr.io/me/train:1 --remote s3://b/exp1 -- python train.py
      spotsafe recipe skypilot --instance-type g5.xlarge --instance-type g6.xlarge -- python train.py
      spotsafe recipe slurm --from runs/exp1 -- python train.py     # the grace sized from a real run
    """
    if command and command[0] == "--":  # click keeps the separator after PLATFORM (as in spotsafe run)
        command = command[1:]
    pairs = []
    for spec in pools:
        kind, _, region = spec.partition("@")
        if not kind or (spec.endswith("@")) or "@" in region:
            raise click.BadParameter(f"{spec!r} is not TYPE or TYPE@REGION, e.g. g5.xlarge@us-east-1.",
                                     param_hint="--pool")
        pairs.append((kind, region or None))
    if pairs and (instance_types or regions):
        raise click.UsageError("Pass --pool, or --instance-type/--region, not both.")
    types = tuple(instance_types) or tuple(dict.fromkeys(t for t, _ in pairs))
    opts = RecipeOptions(command=tuple(command), name=name, root=root, remote=remote, profile=profile, image=image,
                         instance_types=types, regions=tuple(regions), pools=tuple(pairs), max_restarts=max_restarts)
    if budget is not None and from_root is not None:
        raise click.UsageError("Pass --budget or --from, not both.")
    if budget is not None:
        try:
            seconds = parse_duration(budget, what="--budget")
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--budget") from None
        opts = dataclasses.replace(opts, budget_s=seconds, budget_source="--budget")
    elif from_root is not None:
        from .._telemetry import events_dir_of, read_events

        events = read_events(events_dir_of(from_root))
        found = budget_from_events(events)
        if found is None:
            raise click.ClickException(f"No checkpoint or notice events under {from_root}/events to measure the "
                                       "budget from; pass the root a spotsafe run wrote to, or --budget.")
        opts = dataclasses.replace(opts, budget_s=found[0], budget_source=f"{found[1]} in {from_root}")
    text = render(platform, opts)
    if output:
        Path(output).write_text(text)
        click.echo(f"Wrote the {platform} recipe to {output}.", err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))
