"""The benchmarks' harness: set-up, sizes, the model, scratch directories, tables, memory control.

Every ``bench_*.py`` imports this first. Importing it:

* makes ``spotsafe`` importable from this checkout when the interpreter has not installed it,
  and ``tests/`` importable (the SeaweedFS and metadata servers the benchmarks start);
* turns the cloud metadata endpoints off in this process and every child it starts
  (``SPOTSAFE_{AWS,GCP,AZURE}_METADATA_URL=off``): a benchmark never contacts a real metadata
  address, only the loopback server it starts itself;
* silences torch's warnings about checkpointing without a process group (DCP runs
  single-process here on purpose).

The rest is what the benchmarks share, once: :func:`parse_size` (the one size grammar),
:func:`build_model` (the sized model + Adam state, or a small MLP to train),
:func:`scratch_dir` (where files go and how they are removed), :func:`print_table` (one
table layout, with ratios against the peers measured in the same run), and the memory and
page-cache control that makes measurements on a shared VM repeatable.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CHUNK = 64 << 20  # bytes per write / readinto call of the raw baselines


def _bootstrap() -> None:
    if importlib.util.find_spec("spotsafe") is None:  # not installed in this interpreter: the checkout's
        sys.path.insert(0, str(REPO / "src"))
    if str(REPO / "tests") not in sys.path:
        sys.path.append(str(REPO / "tests"))
    from spotsafe.notices import AWS, GCP, Azure

    for source in (AWS, GCP, Azure):
        os.environ[source.env] = "off"
    warnings.filterwarnings("ignore", message=r".*torch\.distributed is disabled.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed.*")


_bootstrap()


def setup_torch(threads: int) -> str:
    """Fix torch's thread count (the benchmarks compare methods on the same cores); an environment line."""
    import torch

    import spotsafe

    torch.set_num_threads(threads)
    return (f"spotsafe {spotsafe.__version__} ({Path(spotsafe.__file__).resolve().parent}), torch {torch.__version__}, "
            f"python {platform.python_version()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")


# -- sizes ---------------------------------------------------------------------------------
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"512"``, ``"64K"``, ``"100M"``, ``"1.5G"``, ``"1GiB"``, ``"2TB"`` (binary units, any case).

    Used as an argparse ``type=``: a bad size is a usage error naming the text.
    """
    m = _SIZE.fullmatch(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use bytes or a number with K, M, G or T, e.g. 100M or 1G")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def parse_sizes(text: str) -> list[tuple[str, int]]:
    """``"100M,1G"`` -> ``[("100M", 104857600), ("1G", 1073741824)]``: each label as written, and its bytes."""
    sizes = [(s.strip(), parse_size(s)) for s in text.split(",") if s.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"no size in {text!r}; use e.g. 100M,1G")
    return sizes


# -- the model -------------------------------------------------------------------------------
@dataclass
class Model:
    """A stack of ``Linear`` layers and its Adam optimizer: the state every benchmark saves."""

    module: Any
    opt: Any
    width: int
    layers: int

    @property
    def state(self) -> dict[str, Any]:
        """What spotsafe saves: ``{"model": module, "optimizer": opt}``."""
        return {"model": self.module, "optimizer": self.opt}

    def state_dicts(self) -> dict[str, Any]:
        """What torch.save and DCP save: the same two as state dicts."""
        return {"model": self.module.state_dict(), "optimizer": self.opt.state_dict()}

    def tensors(self) -> list:
        """Every model and optimizer tensor in a fixed order (module order, then params x sorted keys)."""
        import torch

        ts = [t for t in self.module.state_dict().values() if isinstance(t, torch.Tensor)]
        for p in self.module.parameters():
            st = self.opt.state.get(p, {})
            ts += [st[k] for k in sorted(st) if isinstance(st[k], torch.Tensor)]
        return ts

    @property
    def nbytes(self) -> int:
        return nbytes(self.tensors())

    def describe(self) -> str:
        return f"{self.layers} x Linear({self.width},{self.width}) + Adam"

    def step_fn(self, batch: int) -> Callable[[], None]:
        """One training step (forward, backward, Adam) on a fixed random batch."""
        import torch

        device = next(self.module.parameters()).device
        x = torch.randn(batch, self.width, device=device)

        def step() -> None:
            loss = self.module(x).square().mean()
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return step


def plan_layers(target: int, width: int | None = None, *, bias: bool = True) -> tuple[int, int]:
    """(width, layers) of a stack of Linear(width, width) whose params + Adam state ~ ``target`` bytes."""
    width = width or (2048 if target >= 512 << 20 else 1024)
    per_layer = (width * width + (width if bias else 0)) * 4 * 3
    return width, max(1, round(target / per_layer))


def build_model(target: int = 0, *, width: int | None = None, layers: int | None = None,
                dims: Sequence[int] | None = None, bias: bool = True, relu: bool = False, device: str = "cpu",
                fresh: bool = False, seed: int = 0, lr: float = 1e-3) -> Model:
    """The one model builder.

    By default a stack of float32 ``Linear(width, width)`` whose parameters and Adam state
    come to about ``target`` bytes (about 3x the parameters), after one training step so the
    Adam state exists. ``width``/``layers`` fix the shape instead; ``dims`` builds an MLP of
    those widths (``relu`` between layers) to train rather than to size. ``fresh`` is what a
    restarting job holds before it restores: parameters allocated and zeroed, no optimizer
    state, nothing random.
    """
    import torch

    if dims is None:
        width, layers = (width, layers) if layers else plan_layers(target, width, bias=bias)
        dims = [width] * (layers + 1)
    torch.manual_seed(seed)

    def make():
        mods: list = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            mods += ([torch.nn.ReLU()] if relu and i else []) + [torch.nn.Linear(a, b, bias=bias)]
        return torch.nn.Sequential(*mods)

    if fresh:
        with torch.device("meta"):
            module = make().to_empty(device=device)
        with torch.no_grad():
            for p in module.parameters():
                p.zero_()
    else:
        module = make().to(device)
    model = Model(module, torch.optim.Adam(module.parameters(), lr=lr), dims[0], len(dims) - 1)
    if not fresh:
        model.step_fn(8)()  # creates the Adam state
    return model


# -- scratch directories ----------------------------------------------------------------------
@contextlib.contextmanager
def scratch_dir(name: str, where: Path | None = None) -> Iterator[Path]:
    """An empty directory for one benchmark's files, removed with everything in it at the end.

    The default is ``bench/results/tmp-<name>-<pid>``, on the repository's file system rather
    than ``/tmp`` (often a RAM disk, which would measure memory, not the disk). ``where``
    (a ``--dir``) must be new or empty. A SIGTERM ends the benchmark through the same cleanup.
    """
    path = (where or RESULTS / f"tmp-{name}-{os.getpid()}").resolve()
    if path.exists() and any(path.iterdir()):
        raise SystemExit(f"{path} exists and is not empty; pass an empty or new --dir")
    path.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield path
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(path, ignore_errors=True)


def dir_arg(ap: argparse.ArgumentParser, name: str) -> None:
    ap.add_argument("--dir", type=Path, default=None,
                    help=f"scratch directory on the disk to measure (default bench/results/tmp-{name}-<pid>; "
                         "must be new or empty; removed at the end)")


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (like du)."""
    if path.is_file():
        return os.stat(path).st_blocks * 512
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(path) for f in files)


def write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    print(f"results written to {path}")


# -- statistics and tables ---------------------------------------------------------------------
def med(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def paired(xs: Sequence[float], refs: Sequence[float]) -> float:
    """Median over repeats of ``xs[r] / refs[r]``: the methods of one repeat run back to back, so
    this cancels slow drifts of a shared machine that move whole repeats (a ratio of medians does not)."""
    return med(x / y for x, y in zip(xs, refs)) if xs and len(xs) == len(refs) else float("nan")


def span(xs: Sequence[float], unit: float = 1.0, digits: int = 3) -> str:
    """``median (min..max)``."""
    if not xs:
        return "-"
    return f"{med(xs) * unit:.{digits}f} ({min(xs) * unit:.{digits}f}..{max(xs) * unit:.{digits}f})"


def ratio(xs: Sequence[float], refs: Sequence[float]) -> str:
    """``xs`` against a peer: the ratio of medians, then the paired ratio when the runs were interleaved."""
    if not xs or not refs:
        return "-"
    of_medians = med(xs) / med(refs)
    if xs is refs:
        return "1.00x"
    if len(xs) == len(refs) and len(xs) > 1:
        return f"{of_medians:.2f}x / {paired(xs, refs):.2f}x"
    return f"{of_medians:.2f}x"


def print_table(title: str, rows: dict[str, Sequence[float]], *, peers: Sequence[str] = (), nbytes: int | None = None,
                rate: tuple[str, float] = ("GB/s", 1e9), unit: tuple[str, float, int] = ("s", 1.0, 3),
                extra: dict[str, dict[str, str]] | None = None, first: str = "method") -> None:
    """One markdown table: a row per method with its median, range, throughput and ratios to peers.

    ``rows`` maps a method's label to its times (seconds, one per repeat, in repeat order);
    ``peers`` names the rows to compare every row with (a column each: time / peer's time,
    above 1 is slower; ``a / b`` is the ratio of medians / the median of per-repeat ratios);
    ``nbytes`` adds a throughput column; ``extra`` adds columns, by row, in order.
    """
    name, scale, digits = unit
    cols = list(dict.fromkeys(c for cells in (extra or {}).values() for c in cells))
    header = [first, f"median {name}", f"min..max {name}"]
    header += [rate[0]] if nbytes else []
    header += [f"vs {p}" for p in peers] + cols
    print(f"\n{title}")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for label, xs in rows.items():
        cells = [label]
        if xs:
            cells += [f"{med(xs) * scale:.{digits}f}", f"{min(xs) * scale:.{digits}f}..{max(xs) * scale:.{digits}f}"]
        else:
            cells += ["-", "-"]
        if nbytes:
            cells.append(f"{nbytes / med(xs) / rate[1]:.2f}" if xs else "-")
        cells += [ratio(xs, rows[p]) for p in peers]
        cells += [(extra or {}).get(label, {}).get(c, "") for c in cols]
        print("| " + " | ".join(cells) + " |")
    if peers:
        print("(vs: time / the peer's time, above 1 is slower; 'a / b': ratio of medians / median of per-repeat ratios)")


def print_goals(goals: list[dict]) -> None:
    """Each goal as ``[    MET] goal: detail``; ``?`` where the second estimate disagrees (too noisy to call)."""
    print("\nGoals ('?': the two estimates disagree, too noisy to call; rerun with more repeats):")
    for g in goals:
        agree = g.get("estimates_agree", True)
        print(f"  [{'MET' if g['met'] else 'NOT MET':>7}{'' if agree else '?'}] {g['goal']}: {g['detail']}")


# -- memory, page cache and the raw baselines ----------------------------------------------------
def nbytes(ts: Iterable) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def byte_view(t) -> memoryview:
    import torch

    return memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_fsync(path: Path, views: Iterable[memoryview]) -> float:
    """The raw baseline of a durable save: ``os.write`` of every view in chunks of up to 64 MiB
    into a new file, ``fsync`` of the file and of its directory; the seconds it took."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for view in views:
            for start in range(0, len(view), CHUNK):
                chunk = view[start:start + CHUNK]
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return time.perf_counter() - t0


def try_drop_caches() -> bool:
    """``sync``, then drop the page cache when this process may; whether it could."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def prefault_budget(state_bytes: int) -> int:
    """How much memory to pre-fault around a measurement of ``state_bytes``: the page cache of one
    copy plus the read buffers (about 2.5x), within what is free (2 GiB kept spare)."""
    return max(0, int(min(2.5 * state_bytes + (256 << 20), mem_available() - state_bytes - (2 << 30))))


def prefault(nbytes_: int) -> float:
    """Allocate, touch and free ``nbytes_`` of memory; the seconds taken (never timed in a measurement).

    Some VMs (free page reporting, ballooning) hand freed guest memory back to the host, so the
    first touch of a page costs a host page fault, randomly slowing whatever allocates or writes
    through the page cache next; touching it first puts the measured method on host-backed pages.
    """
    import torch

    if nbytes_ <= 0:
        return 0.0
    t0 = time.perf_counter()
    x = torch.empty(nbytes_, dtype=torch.uint8)
    x.fill_(1)
    del x
    return time.perf_counter() - t0


def settle_s(state_bytes: int) -> float:
    """Seconds to let a virtual disk's host-side write-back cache drain before a save: the size at 0.4 GB/s, at most 5."""
    return min(5.0, state_bytes / 0.4e9)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
