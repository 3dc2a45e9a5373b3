"""Telemetry events: one JSON object per line, one writer per file (no torch).

Every event carries ``ts`` (wall-clock seconds), ``event``, ``run_id``, ``attempt``,
``rank``, ``host`` and ``pid`` (../shared/DESIGN.md). A process writes
``<dir>/<host>-<pid>.jsonl``, appending, one ``write`` per line, flushed at once so a
killed process loses at most the line it was writing; readers skip a torn last line.

The run id and attempt come from ``SPOTSAFE_RUN_ID`` / ``SPOTSAFE_ATTEMPT`` (set by the
``spotsafe run`` supervisor), the rank from ``RANK`` (torchrun), the directory from
``SPOTSAFE_EVENTS_DIR`` or ``<run root>/events``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

from .._env import ATTEMPT_ENV, RUN_ID_ENV
from .._names import Event

logger = logging.getLogger(__name__)



def file_host(host: str | None = None) -> str:
    """``host`` (default: this machine's name) as it goes into a file name: ``[A-Za-z0-9._-]`` only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", host or socket.gethostname() or "localhost")


def _clean(value: Any) -> Any:
    """JSON-safe: numbers stay numbers (nan/inf become null), tensors and numpy scalars become floats."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _clean(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def _torchrun_job_id() -> str | None:
    """Under torchrun, an id of the job (its rendezvous id): the same on every rank and across
    the agent's restarts of its workers, so that a restarted rank 0 is the same run (the writer
    lease waits for a lost node's lease to expire instead of refusing the job its own root)."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    return None if not job else "tr-" + hashlib.sha256(job.encode()).hexdigest()[:9]


class EventLog:
    """Appends events to ``directory/<host>-<pid>.jsonl`` (or keeps them in memory only when None)."""

    def __init__(self, directory: str | os.PathLike | None, *, run_id: str | None = None,
                 attempt: int | None = None, rank: int | None = None, role: str | None = None) -> None:
        self.host = socket.gethostname() or "localhost"
        self.pid = os.getpid()
        self.run_id = run_id or os.environ.get(RUN_ID_ENV) or _torchrun_job_id() or uuid.uuid4().hex[:12]
        # torchrun's own restarts of its workers (an elastic job after a lost node) are attempts too
        self.attempt = attempt if attempt is not None else \
            int(os.environ.get(ATTEMPT_ENV) or 1) + int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
        self.rank = rank if rank is not None else int(os.environ.get("RANK") or 0)
        self.role = role
        self.events: list[dict[str, Any]] = []
        self.path: Path | None = None
        self._fd: int | None = None
        if directory is not None:
            d = Path(directory)
            self.path = d / f"{file_host(self.host)}-{self.pid}.jsonl"
        self._closed = False  # the file is created by the first event: a process refused at start leaves none

    def emit(self, event: Event, **fields: Any) -> dict[str, Any]:
        """Append one event: ``event`` is a member of :class:`~spotsafe._names.Event` (or its string;
        any other name raises ``ValueError``, so a writer cannot invent one its readers do not know)."""
        record = {"ts": time.time(), "event": Event(event), "run_id": self.run_id, "attempt": self.attempt,
                  "rank": self.rank, "host": self.host, "pid": self.pid}
        if self.role is not None:
            record["role"] = self.role
        record.update({k: _clean(v) for k, v in fields.items()})
        self.events.append(record)
        del self.events[:-1000]
        if self.path is not None and not self._closed:
            try:
                if self._fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
            except OSError as e:  # telemetry must never stop training
                logger.warning("Cannot write event %s to %s (%s)", event, self.path, e)
        return record

    def close(self, *, fsync: bool = True) -> None:
        self._closed = True
        if self._fd is None:
            return
        try:
            if fsync:
                os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def events_dir_of(root: str | os.PathLike) -> Path | None:
    """``<root>/events`` for a local root (a path or ``file://``), None for an object store URL."""
    s = os.fspath(root)
    if s.startswith("file://"):
        s = s[len("file://"):]
    elif "://" in s:
        return None
    return Path(s) / "events"


MAX_SECONDS = 1e12
"""The largest time or duration an event may carry (far past any clock; sums of many stay finite)."""
_NUMBER = (int, float)

# Fields the report and the supervisor compute with, and the types each may have (numbers: finite,
# within MAX_SECONDS); a field of another type (a hand-edited or foreign file) is dropped as the
# line is read, so it reads as absent.
_FIELDS: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("step", "attempt", "rank", "pid", "exit_code", "world_size", "saved_world_size"), (int,)),
    **dict.fromkeys(("ts", "stall_s", "persist_s", "upload_s", "seconds_left", "backoff_s", "duration_s",
                     "lr_scale"), _NUMBER),
    **dict.fromkeys(("run_id", "host", "role"), (str,)),
    "skipped": (list,), "values": (dict,), "profile": (dict,),
}


def parse_lines(text: str, kinds: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The events of one file's text; torn or foreign lines skipped, and fields of the wrong type
    dropped (a ``step`` that is no integer, a ``stall_s`` that is no finite number, ...).

    ``kinds``: only events of these names (:class:`~spotsafe._names.Event` members or their
    strings), matched on the parsed ``event`` field, never on the text. A line is left undecoded
    only when it cannot hold one: JSON spells the string ``stop`` as ``"stop"`` or with a
    backslash escape, so a line with neither is skipped after a substring search, and picking the
    few ``stop`` events out of a long file of ``metrics`` does not decode every line.
    """
    lines = text.splitlines()
    if kinds is not None:
        kinds = tuple(kinds)  # compared with ==: an event name of any JSON type is simply no match
        quoted = [f'"{k}"' for k in kinds]
        lines = [line for line in lines if "\\" in line or any(q in line for q in quoted)]
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "event" not in rec or (kinds is not None and rec["event"] not in kinds):
            continue
        for k, types in _FIELDS.items():
            v = rec.get(k)
            if v is not None and (type(v) not in types or types is _NUMBER and not -MAX_SECONDS <= v <= MAX_SECONDS):
                del rec[k]  # (NaN fails the comparison too)
        if rec.get("ts") is not None:
            out.append(rec)
    return out


def read_events(directory: str | os.PathLike, kinds: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Every event under ``directory`` (all writers; only ``kinds`` when given), oldest first; torn or
    foreign lines skipped."""
    out = []
    for p in sorted(Path(directory).glob("*.jsonl")):
        out += parse_lines(p.read_text(errors="replace"), kinds)
    out.sort(key=lambda r: r["ts"])
    return out
