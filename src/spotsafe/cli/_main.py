"""The ``spotsafe`` command. It never imports torch, so it starts fast and can supervise.

Exit codes: 0 success; 1 a checkpoint is invalid or missing, or data, a file or the store
failed; 2 usage error (an option, an argument, the profile). Every error is one sentence on
stderr, never a traceback: see ``_errors.py``.
"""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from .._format import check_checkpoint, committed_steps, list_checkpoints, read_manifest_bytes, step_dir
from .._format._validate import load_json
from .._storage import Storage, open_storage
from .._version import __version__
from ._errors import SafeGroup, fail
from ._params import STEP
from ._safe import markup, plain

_out = Console(highlight=False, soft_wrap=True)  # one line per checkpoint, however long its reason


_err = fail  # Error: <one sentence> on stderr, and the exit code


def _storage(root: str) -> Storage:
    storage = open_storage(root)
    if not storage.exists():
        _err(f"{storage.url} does not exist; pass the run root you gave CheckpointManager.")
    return storage


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _age(created: float | None) -> str:
    if created is None:
        return "-"
    s = max(0.0, time.time() - created)
    for unit, div in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= div:
            return f"{s / div:.1f}{unit}"
    return f"{s:.0f}s"


@click.group(cls=SafeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spotsafe")
def main() -> None:
    """Make PyTorch training safe on spot and preemptible capacity."""


@main.command("ls")
@click.argument("root")
@click.option("--quick", is_flag=True, help="Check manifests and sizes only, not content checksums.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def ls_cmd(root: str, quick: bool, as_json: bool) -> None:
    """List the checkpoints under ROOT with size, age and validity."""
    infos = list_checkpoints(_storage(root), deep=not quick)
    if as_json:
        for i in infos:
            click.echo(json.dumps({"step": i.step, "name": i.name, "valid": i.valid, "reason": i.reason,
                                   "bytes": i.size, "created": i.created}))
        return
    if not infos:
        _out.print(f"No checkpoints in {markup(root)}.")
        return
    table = Table(title=f"Checkpoints in {markup(root)}")
    for col, just in (("step", "right"), ("size", "right"), ("age", "right"), ("status", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for i in infos:
        status = "[green]valid[/]" if i.valid else f"[red]invalid[/]: {markup(i.reason)}"
        table.add_row(str(i.step), _size(i.size), _age(i.created), status)
    _out.print(table)


@main.command("verify")
@click.argument("root")
@click.option("--step", type=STEP, default=None, help="Verify only this step (default: every checkpoint).")
def verify_cmd(root: str, step: int | None) -> None:
    """Check every checkpoint as restore would; exit 0 only when every one checked is valid.

    The manifest goes through the same validator restore uses (bounds, dtypes, tensor
    tables, state trees), every file must be a regular file with its size and checksum.
    """
    storage = _storage(root)
    steps = committed_steps(storage)
    if step is not None:
        if step not in steps:
            _err(f"Checkpoint {step_dir(step)} does not exist in {plain(storage.url)}; run `spotsafe ls {plain(root)}`.")
        steps = [step]
    if not steps:
        _err(f"No checkpoints in {plain(storage.url)}.")
    bad = 0
    for s in steps:
        info = check_checkpoint(storage, s)
        if info.valid:
            _out.print(f"[green]ok[/]      {info.name}  {_size(info.size)}")
        else:
            bad += 1
            _out.print(f"[red]INVALID[/] {info.name}  {markup(info.reason)}")
    if bad:
        _err(f"{bad} of {len(steps)} checkpoint(s) in {plain(storage.url)} are invalid; restore skips them.")


@main.command("inspect")
@click.argument("root")
@click.option("--step", type=STEP, default=None, help="The step to inspect (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect_cmd(root: str, step: int | None, as_json: bool) -> None:
    """Show the components, tensors and metadata of one checkpoint; exit 1 when it is invalid."""
    storage = _storage(root)
    steps = committed_steps(storage)
    if not steps:
        _err(f"No checkpoints in {plain(storage.url)}.")
    step = steps[-1] if step is None else step
    if step not in steps:
        _err(f"Checkpoint {step_dir(step)} does not exist in {plain(storage.url)}; run `spotsafe ls {plain(root)}`.")
    info = check_checkpoint(storage, step)
    if info.manifest is None:
        _err(f"Checkpoint {info.name} in {plain(storage.url)} is unreadable: {plain(info.reason)}.")
    if as_json:  # re-encoded: every non-ASCII or control character comes out as a JSON escape
        click.echo(json.dumps(load_json(read_manifest_bytes(storage, info.name))))
    else:
        _print_manifest(info, plain(storage.url))
    if not info.valid:
        _err(f"Checkpoint {info.name} in {plain(storage.url)} is invalid: {plain(info.reason)}.")


def _print_shards(m) -> None:
    """The state a multi-rank checkpoint saved through DCP's planners: per component, keys, chunks, bytes."""
    table = Table(title="sharded through DCP (every rank's chunks)")
    for col in ("component", "saved as", "keys", "chunks", "bytes", "ranks"):
        table.add_column(col)
    rank_of = {n: f.rank for n, f in m.files.items()}
    for comp, kind in m.shards["components"].items():
        keys = chunks = nbytes = 0
        ranks: set[int] = set()
        for key, e in m.shards["entries"].items():
            if key.split(".", 1)[0] != comp:
                continue
            keys += 1
            locs = [e["bytes"]] if "bytes" in e else e["chunks"]
            chunks += len(locs)
            nbytes += sum(c["length"] for c in locs)
            ranks.update(rank_of.get(c["file"], 0) for c in locs)
        table.add_row(markup(comp, 200), kind, str(keys), str(chunks), _size(nbytes),
                      ", ".join(map(str, sorted(ranks))) or "-")
    _out.print(table)


def _print_manifest(info, url: str) -> None:
    m = info.manifest
    status = "[green]valid[/]" if info.valid else f"[red]invalid[/]: {markup(info.reason)}"
    _out.print(f"[bold]{info.name}[/] in {markup(url)}: {status}")
    _out.print(f"step {m.step}  epoch {m.epoch if m.epoch is not None else '-'}  size {_size(m.total_bytes)}  "
               f"created {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m.created))}  world size {m.world_size}")
    _out.print("versions: " + ", ".join(f"{markup(k)} {markup(v)}" for k, v in sorted(m.versions.items())))
    if m.metadata:
        _out.print("metadata: " + markup(json.dumps(m.metadata, sort_keys=True)))
    table = Table(title="components")
    for col in ("component", "kind", "type", "tensors", "bytes", "file"):
        table.add_column(col)
    for name, c in m.components.items():
        # a framework's folder (kind "files"): its files are the component
        files = list(c.tree) if c.kind == "files" else sorted({t.file for t in c.tensors})
        nbytes = sum(m.files[f].size for f in files) if c.kind == "files" else c.nbytes
        table.add_row(markup(name, 200), c.kind, markup(c.type.rsplit(".", 1)[-1], 200), str(len(c.tensors)),
                      _size(nbytes), markup(", ".join(files) or "-", 200))
    _out.print(table)
    if m.shards is not None:
        _print_shards(m)
    tensors = Table(title="tensors (first 40)")
    for col in ("component", "#", "dtype", "shape", "bytes"):
        tensors.add_column(col)
    shown = 0
    for name, c in m.components.items():
        for i, t in enumerate(c.tensors):
            if shown >= 40:
                break
            tensors.add_row(markup(name, 200), str(i), t.dtype, str(list(t.shape)), _size(t.nbytes))
            shown += 1
    _out.print(tensors)


from ._plan import plan_cmd  # noqa: E402  (registered after the group exists)

main.add_command(plan_cmd)
from ._run import report_cmd, run_cmd  # noqa: E402

main.add_command(run_cmd)
from ._recipe import recipe_cmd  # noqa: E402

main.add_command(recipe_cmd)
main.add_command(report_cmd)
