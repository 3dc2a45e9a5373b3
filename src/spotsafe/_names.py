"""The named vocabularies that cross layers: tiers, checkpoint and stop reasons, attempt causes,
event names (no torch, no imports: every layer may use it).

Each is a :class:`enum.StrEnum`, as supervisord names its process states: one place says
what the words are, and a typo is an ``AttributeError`` at import instead of a silent
mismatch between the writer of an event and its reader. A member *is* its string
(``Event.STOP == "stop"``, ``json.dumps`` writes ``"stop"``), so the event files keep
exactly the strings they always had, old files read the same, and events parsed back from
JSON (plain strings) compare equal to the members.
"""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    """Where a checkpoint is (``restore`` and ``stop`` events, ``CheckpointManager.restored_tier``)."""

    ROOT = "root"
    """The manager's own root (local disk or a URL): what ``restored_tier`` says; events say
    ``local`` or ``remote`` instead (a URL root is remote)."""
    LOCAL = "local"
    """Durable on local disk only."""
    REMOTE = "remote"
    """Durable on the object store (the remote, or a URL root)."""
    NONE = "none"
    """Nothing to save: a notice came before any step ran (safe to restart all the same)."""


class SaveReason(StrEnum):
    """Why a checkpoint was taken (the ``checkpoint`` event's ``reason``)."""

    POLICY = "policy"
    """The save policy said it was due."""
    NOTICE = "notice"
    """An interruption notice (or an early warning) came."""
    FINAL = "final"
    """The run left its loop normally: the last step."""
    MANUAL = "manual"
    """``Run.save()`` without a reason (a caller may pass its own string)."""


class StopReason(StrEnum):
    """Why a training process stopped (the ``stop`` event's ``reason``)."""

    NOTICE = "notice"
    """An interruption notice: the checkpoint is taken care of (exit 75)."""
    COMPLETED = "completed"
    """Every step of ``steps(total)`` ran."""
    EXIT = "exit"
    """It left the loop early (``break``, ``sys.exit()``), no notice pending."""
    ERROR = "error"
    """An exception left the loop."""


class Cause(StrEnum):
    """How the supervisor classified the end of an attempt (``exit`` and ``restart`` events)."""

    PREEMPTED = "preempted"
    """Exit 75, or every ``stop`` event says it stopped for a notice with its checkpoint durable."""
    DONE = "done"
    """Exit 0."""
    LOCKED = "locked"
    """Exit 6 before any ``run_start``: another writer holds the run root."""
    CHAOS_KILL = "chaos_kill"
    """Killed by a ``--chaos`` drill."""
    CRASH = "crash"
    """Anything else (a non-zero exit, a signal, killed at the end of the grace period)."""


class Event(StrEnum):
    """The ``event`` field of every telemetry record (../shared/DESIGN.md)."""

    # written by the training process (spotsafe.Run)
    RUN_START = "run_start"
    RESTORE = "restore"
    CHECKPOINT = "checkpoint"
    UPLOAD = "upload"
    NOTICE = "notice"
    METRICS = "metrics"
    STOP = "stop"
    # written by the supervisor (spotsafe run; role "supervisor")
    SUPERVISOR_START = "supervisor_start"
    SPAWN = "spawn"
    CHAOS = "chaos"
    EXIT = "exit"
    RESTART = "restart"
    ADVICE = "advice"
    SUPERVISOR_STOP = "supervisor_stop"
