"""The one place that turns pieces read in parallel into per-file (bytes read, digest)."""

from __future__ import annotations

from concurrent.futures import Future

from .._format._hash import new_hasher

Piece = tuple[int, int, Future]  # (start, stop, future of the bytes read into buf[start:stop])


def hash_in_order(bufs: list[memoryview], jobs: list[list[Piece]]) -> list[tuple[int, str]]:
    """Hash each buffer's pieces in order as their reads finish; (bytes read, digest) per buffer.

    A piece that comes back short means the file ended early: hashing stops there, and
    the byte count reports what was actually read.
    """
    results = []
    for buf, pieces in zip(bufs, jobs, strict=True):
        hasher, total = new_hasher(), 0
        for start, stop, fut in pieces:
            got = fut.result()
            hasher.update(buf[start:start + got])
            total += got
            if start + got < stop:
                break
        results.append((total, hasher.hexdigest()))
    return results
