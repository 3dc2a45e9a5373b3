"""Reusable host buffers for asynchronous saves: the only copy a save makes.

An asynchronous save must snapshot the state before ``save()`` returns, because the
training loop changes the parameters in place right after. Each component is copied into
one flat byte buffer laid out exactly as its file (64-byte aligned tensors), so the
background writer streams a single buffer per file and no second copy is ever made.

Buffers are kept between saves and reused while they are large enough, so a warm save
allocates nothing. A buffer that holds CUDA tensors is pinned (page-locked) so the
device-to-host copies run as DMA without a bounce buffer; they are issued non-blocking
and synchronized once, before ``save()`` returns.

CPU buffers are anonymous memory maps: page-aligned, so the writer can send them to disk
with ``O_DIRECT`` (no copy into the page cache, which on a small machine costs the
training loop more CPU than the copy into the buffer did). They are not advised to use
transparent huge pages: measured here, that made the first save's page faults 5x slower
(1.7 s instead of 0.3 s per GiB) for a 4% faster warm copy.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
import torch

from .._format._layout import ALIGN  # the reader checks every offset against the same alignment

PAGE = 4096


def _host_buffer(size: int, pin: bool) -> tuple[torch.Tensor, Any]:
    """A page-aligned uint8 host tensor of at least ``size`` bytes and the object owning its memory."""
    if pin:
        t = torch.empty(size, dtype=torch.uint8, pin_memory=True)  # page-locked, page-aligned
        return t, None
    n = max(PAGE, -(-size // PAGE) * PAGE)
    mm = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(mm, dtype=torch.uint8), mm


def aligned_offsets(nbytes: list[int]) -> tuple[list[int], int]:
    """Offsets of consecutive arrays of ``nbytes`` each aligned to ALIGN, and the total size."""
    offsets, offset = [], 0
    for n in nbytes:
        offset += -offset % ALIGN
        offsets.append(offset)
        offset += n
    return offsets, offset


def array_nbytes(a: Any) -> int:
    if isinstance(a, torch.Tensor):
        return a.numel() * a.element_size()
    return int(a.nbytes)


class StagingBuffers:
    """One reusable flat host buffer per component name."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._owners: dict[str, Any] = {}
        self._views: dict[str, tuple[tuple, torch.Tensor, list[int], int, list[Any]]] = {}  # the last layout's
        self.allocations = 0  # how many buffers were ever allocated (a warm save adds none)

    @property
    def capacity(self) -> int:
        """Bytes held in staging buffers (the extra host memory of asynchronous saves)."""
        return sum(b.numel() for b in self._buffers.values())

    def release(self) -> None:
        self._buffers.clear()
        self._owners.clear()
        self._views.clear()

    def _buffer(self, name: str, size: int, pin: bool) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < size or (pin and not buf.is_pinned()):
            self._buffers.pop(name, None)  # free the old one before allocating the new one
            self._owners.pop(name, None)
            buf, owner = _host_buffer(size, pin)
            self._buffers[name] = buf
            self._owners[name] = owner
            self.allocations += 1
        return buf

    def copy_in(self, name: str, arrays: list) -> tuple[torch.Tensor, list[int]]:
        """Copy ``arrays`` into the buffer of ``name``; (the filled bytes, each array's offset).

        CUDA copies are issued non-blocking: call :func:`synchronize` before trusting them.
        """
        # the destination views of the last copy under this name, while the layout is the same
        layout = tuple((a.dtype, a.shape, isinstance(a, torch.Tensor) and a.device.type == "cuda") for a in arrays)
        got = self._views.get(name)
        if got is not None and got[0] == layout and self._buffers.get(name) is got[1]:
            _, buf, offsets, total, views = got
        else:
            self._views.pop(name, None)  # its views hold the old buffer
            offsets, total = aligned_offsets([array_nbytes(a) for a in arrays])
            pin = any(cuda for _, _, cuda in layout) and torch.cuda.is_available()
            buf = self._buffer(name, total, pin)
            views: list[Any] = []
            for a, off in zip(arrays, offsets, strict=True):
                dst = buf[off:off + array_nbytes(a)]
                if not len(dst):
                    views.append(None)
                elif isinstance(a, torch.Tensor):
                    views.append(dst.view(a.dtype).view(a.shape))
                else:
                    views.append(dst.numpy().view(a.dtype).reshape(a.shape))
            self._views[name] = (layout, buf, offsets, total, views)
        with torch.no_grad():  # a parameter copied as it is: no detach() per tensor
            for a, dst in zip(arrays, views, strict=True):
                if dst is None:
                    continue
                if isinstance(a, torch.Tensor):
                    if a.is_conj():
                        a = a.resolve_conj()
                    if a.is_neg():
                        a = a.resolve_neg()
                    dst.copy_(a, non_blocking=a.device.type == "cuda")
                else:
                    np.copyto(dst, a, casting="no")
        return buf[:total], offsets


def synchronize(arrays_devices: set[str]) -> None:
    """Wait for the non-blocking device-to-host copies on every CUDA device in the set."""
    for dev in sorted(arrays_devices):
        if dev.startswith("cuda"):
            torch.cuda.synchronize(torch.device(dev))
