"""Whose events these are, when the supervisor cannot know where the run keeps them (no torch).

``spotsafe run -- python train.py`` with the root given only inside the script: the
supervisor learns the run's root only once the command has opened its ``Run``. Until then
it keeps its own records in a per-user state directory and hands the command
``$SPOTSAFE_SUPERVISOR_DIR`` instead of ``$SPOTSAFE_EVENTS_DIR``. The command's ``Run``
then writes its events beside its checkpoints (``<root>/events``) and:

1. takes the run id kept there (``<events>/run-id``; the first writer creates it, with
   ``O_EXCL``, from the supervisor's proposal, so every rank reads the same id), unless
   the supervisor was given one;
2. numbers its attempt ``n`` past the attempts already recorded there for that run id:
   ``spawn`` and ``run_start`` events of *other* supervisors (those of this supervisor,
   and of the other ranks of this attempt, carry its id and are left out, so every rank
   computes the same number, whenever it starts);
3. announces ``{events_dir, root, run_id, attempt, rank}`` in ``$SPOTSAFE_SUPERVISOR_DIR``,
   where the supervisor reads it, adopts the run id and attempt number, and moves its own
   records beside the command's.

So run ids and attempt numbers stay stable across supervisor restarts, on this machine or
another that sees the same root, and nothing is written into the current directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from .._env import ATTEMPT_ENV, RUN_ID_ENV, SUPERVISOR_DIR_ENV, SUPERVISOR_ID_ENV
from .._names import Event
from ._events import EventLog, file_host, parse_lines

logger = logging.getLogger(__name__)

RUN_ID_FILE = "run-id"
ANNOUNCE = "announce"


def kept_run_id(events_dir: str | os.PathLike, proposal: str) -> str:
    """The run id kept in ``<events_dir>/run-id``; the first caller writes ``proposal`` there."""
    path = Path(events_dir) / RUN_ID_FILE
    for _ in range(50):  # bounded: another writer may be between its create and its write
        try:
            kept = path.read_text().strip()
        except FileNotFoundError:
            kept = ""
        if kept:
            return kept
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            time.sleep(0.01)
            continue
        try:
            os.write(fd, (proposal + "\n").encode())
        finally:
            os.close(fd)
        return proposal
    return proposal


def attempts_before(events_dir: str | os.PathLike, run_id: str, supervisor: str | None) -> int:
    """The highest attempt of ``run_id`` that the events in ``events_dir`` record (``spawn``
    and ``run_start`` events), those tagged with ``supervisor`` left out; 0 when none."""
    best = 0
    for p in Path(events_dir).glob("*.jsonl"):
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        for e in parse_lines(text, (Event.RUN_START, Event.SPAWN)):
            if e.get("run_id") == run_id and (supervisor is None or e.get("supervisor") != supervisor) \
                    and isinstance(e.get("attempt"), int):
                best = max(best, e["attempt"])
    return best


def open_event_log(events_dir: str | os.PathLike | None, *, root: str | None = None) -> EventLog:
    """The command's event log: as asked, or, under a supervisor that does not know the run's
    events directory, with the run id and attempt number of this run root, announced to it."""
    sup_dir = os.environ.get(SUPERVISOR_DIR_ENV)
    if not sup_dir:
        return EventLog(events_dir)
    supervisor = os.environ.get(SUPERVISOR_ID_ENV) or None
    directory = Path(events_dir if events_dir is not None else sup_dir)  # a URL root: the supervisor copies them
    directory.mkdir(parents=True, exist_ok=True)
    given = os.environ.get(RUN_ID_ENV)
    kept = kept_run_id(directory, given or supervisor or uuid.uuid4().hex[:12])
    run_id = given or kept  # an id the supervisor was given wins; the first one is kept for later supervisors
    attempt = attempts_before(directory, run_id, supervisor) + int(os.environ.get(ATTEMPT_ENV) or 1)
    # this process's later Runs and its children: these are the run's own now (announced once)
    os.environ[RUN_ID_ENV], os.environ[ATTEMPT_ENV] = run_id, str(attempt)
    os.environ.pop(SUPERVISOR_DIR_ENV, None)
    log = EventLog(directory, run_id=run_id, attempt=attempt)
    announce(sup_dir, {"events_dir": os.fspath(directory.resolve()), "root": root, "run_id": run_id,
                       "attempt": attempt, "rank": log.rank, "host": log.host, "pid": log.pid})
    return log


def announce(sup_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Tell the supervisor where this process's events are (one small file, written then renamed)."""
    d = Path(sup_dir) / ANNOUNCE
    name = f"{file_host()}-{os.getpid()}.json"
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, d / name)
    except OSError as e:  # the supervisor then reads progress from the root it was given, if any
        logger.warning("Cannot tell the supervisor where the events are (%s: %s); its records stay in %s.",
                       d, e.strerror, sup_dir)


def announcements(sup_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """What the commands announced in ``sup_dir``, rank 0 first."""
    out = []
    for p in sorted((Path(sup_dir) / ANNOUNCE).glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("events_dir"), str) and isinstance(rec.get("run_id"), str) \
                and isinstance(rec.get("attempt"), int):
            out.append(rec)
    out.sort(key=lambda r: (r.get("rank") or 0) != 0)
    return out
