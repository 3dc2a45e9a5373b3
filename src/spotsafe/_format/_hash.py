"""Content checksums: xxh3-64, streamed, computed beside the write or the read.

xxh3 runs at ~20 GiB/s on one core and releases the GIL, so hashing on a helper thread
hides under the disk write (or under fsync) instead of adding to it.
"""

from __future__ import annotations

import os

import xxhash

ALGORITHM = "xxh3_64"
_READ_CHUNK = 16 << 20


def new_hasher() -> xxhash.xxh3_64:
    """A fresh streaming hasher."""
    return xxhash.xxh3_64()


def digest_bytes(data) -> str:
    """Hex digest of a bytes-like object."""
    return xxhash.xxh3_64(data).hexdigest()


def digest_file(path: str | os.PathLike, size_hint: int | None = None) -> tuple[int, str]:
    """(size, hex digest) of a file, read in chunks into one reused buffer."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return digest_fd(fd, size_hint)
    finally:
        os.close(fd)


def digest_fd(fd: int, size_hint: int | None = None) -> tuple[int, str]:
    """(bytes read, hex digest) of an open file from its current position to its end."""
    h = new_hasher()
    buf = bytearray(min(_READ_CHUNK, size_hint) if size_hint else _READ_CHUNK) or bytearray(1)
    mv = memoryview(buf)
    size = 0
    while True:
        n = os.readv(fd, [mv])
        if not n:
            break
        h.update(mv[:n])
        size += n
    return size, h.hexdigest()
