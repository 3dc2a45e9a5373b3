"""Helpers shared by the benchmarks: model sizing, raw tensor bytes, page cache and memory control."""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path

import torch


def plan_layers(target: int) -> tuple[int, int]:
    """(width, layers) of a stack of Linear(width, width) whose params + Adam state ~ target bytes."""
    width = 2048 if target >= 512 << 20 else 1024
    per_layer = (width * width + width) * 4 * 3
    return width, max(1, round(target / per_layer))


def nbytes(ts: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def byte_view(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_drop_caches() -> bool:
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


def prefault(nbytes_: int) -> float:
    """Allocate, touch and free ``nbytes_`` of memory (see the module docstring); seconds taken."""
    if nbytes_ <= 0:
        return 0.0
    t0 = time.perf_counter()
    x = torch.empty(nbytes_, dtype=torch.uint8)
    x.fill_(1)
    del x
    return time.perf_counter() - t0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
