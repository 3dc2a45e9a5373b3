"""Names inside a run root: the only code that knows how checkpoint directories are called.

A run root holds one directory per committed checkpoint, ``step-<12 digits>``, whose
``manifest.json`` is the commit point. In-flight or abandoned saves live in
``step-<12 digits>.tmp-<id>`` and are never loaded. A checkpoint moved aside because it
failed verification when the same step was saved again becomes ``.trash-<id>``. The one
writer of a root marks it with a lock file (local) or a lease object (remote).
"""

from __future__ import annotations

import re
import uuid

MANIFEST = "manifest.json"
DCP_METADATA = ".metadata"
"""In a checkpoint of a multi-rank job: torch.distributed.checkpoint's own index, listed and checksummed."""
WRITER_LOCK = ".spotsafe-writer.lock"
"""In a local root: the file the writing process holds locked (``flock``), naming it."""
WRITER_LEASE = ".spotsafe-lease.json"
"""In a remote root: the lease object of the writing job (owner, heartbeat, expiry)."""
STEP_DIGITS = 12
MAX_STEP = 10**STEP_DIGITS - 1
ALIGN = 64  # every tensor starts at a multiple of this in its file, so it can be viewed in place

_COMMITTED = re.compile(r"^step-(\d{12})$")
_LEFTOVER = re.compile(r"^step-\d{12}\.(tmp|trash)-[0-9a-f]+$")
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def step_dir(step: int) -> str:
    """Directory name of the committed checkpoint of ``step``."""
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"Step {step!r} is not an integer between 0 and {MAX_STEP}; pass the training step as an int.")
    return f"step-{step:0{STEP_DIGITS}d}"


def tmp_dir(step: int) -> str:
    """A fresh, unique name for an in-flight save of ``step``."""
    return f"{step_dir(step)}.tmp-{uuid.uuid4().hex[:12]}"


def trash_dir(step: int) -> str:
    """A fresh, unique name to move an invalid checkpoint of ``step`` aside."""
    return f"{step_dir(step)}.trash-{uuid.uuid4().hex[:12]}"


def parse_step_dir(name: str) -> int | None:
    """The step of a committed checkpoint directory name, or None for any other name."""
    m = _COMMITTED.match(name)
    return int(m.group(1)) if m else None


def is_leftover(name: str) -> bool:
    """True for in-flight or abandoned directories (``.tmp-`` / ``.trash-``)."""
    return bool(_LEFTOVER.match(name))


def component_file(component: str, rank: int = 0, world_size: int = 1) -> str:
    """File name holding the tensors of ``component`` (per rank once sharded)."""
    base = component if _SAFE_COMPONENT.match(component) else "c-" + component.encode().hex()[:64]
    if world_size == 1:
        return f"{base}.bin"
    return f"{base}.rank-{rank:05d}.bin"
