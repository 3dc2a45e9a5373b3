"""``spotsafe run``: start the command, forward signals, classify its end, restart it (no torch).

One loop in the main thread, polling the child every 50 ms: signal handlers only append
to a list, so everything (forwarding, drills, deadlines, the budget) happens in one place
and in one order. The child runs in its own session and process group: a hard kill
(a drill, or the end of a grace period) takes its DataLoader workers or ``torchrun``'s
workers with it, while forwarded signals go to the child process alone, as Kubernetes and
the clouds deliver them (``torchrun`` relays them to its workers).

How an attempt ended decides what happens next. Preemption is read from spotsafe's own
records first (the command's ``stop`` events), then from the exit code: ``torchrun`` exits
1, and Lightning and the HF Trainer exit 0, after a notice.

==========================================  ==============  ====================================
child ended                                 cause           next
==========================================  ==============  ====================================
exit 75, or every ``stop`` event says it    ``preempted``   a machine-level notice (aws, gcp,
stopped for a notice, checkpoint durable                    azure, kubernetes, slurm): exit 75,
(any exit code)                                             so the job moves; otherwise restart
exit 0                                      ``done``        exit 0
exit 6 before any ``run_start`` (a ``Run``  ``locked``      exit 6: restarting would meet the
refused by another writer's lock)                           same refusal
killed by a drill                           ``chaos_kill``  restart at once
anything else                               ``crash``       restart after backoff (with jitter)
==========================================  ==============  ====================================

A drill's notice (``--chaos``) always restarts here; a signal the supervisor itself got
ends it with 75 once the command's checkpoint is durable.

Progress is read from the checkpoints: the newest committed checkpoint (manifest present,
sizes right) of the run's root and remote, before and after each attempt.

Where the events go: ``--events``, else ``<root>/events``. Without a root the supervisor
learns it from the command (telemetry/_identity.py): until then its records are kept in a
per-user state directory, and nothing is written into the current directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._backoff import Backoff
from .._env import (
    ATTEMPT_ENV,
    EVENTS_DIR_ENV,
    REMOTE_ENV,
    ROOT_ENV,
    RUN_ID_ENV,
    SAVE_EVERY_ENV,
    SIGNAL_GRACE_ENV,
    STATE_DIR_ENV,
    SUPERVISED_ENV,
    SUPERVISOR_DIR_ENV,
    SUPERVISOR_ID_ENV,
)
from .._exitcodes import (
    EXIT_BUDGET,
    EXIT_CRASH_LOOP,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_ROOT_LOCKED,
    EXIT_STOP_UNSAFE,
)
from .._names import Cause, Event
from .._storage import is_url
from .._telemetry import EventLog, events_dir_of, parse_lines, read_events
from .._telemetry._events import file_host
from .._telemetry._identity import announcements, kept_run_id
from .._telemetry._measure import MACHINE_SOURCES, SUPERVISOR, preempted_stop
from .._telemetry._mirror import EventMirror
from .._units import format_duration
from ._chaos import KILL, Chaos
from ._profile import Profile

logger = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
POLL_S = 0.05
MIRROR_EVERY_S = 30.0
LEARN_EVERY_S = 0.25


def state_dir() -> Path:
    """Where the supervisor keeps what it cannot (yet) keep beside the run's checkpoints:
    ``$SPOTSAFE_STATE_DIR``, else ``$XDG_STATE_HOME/spotsafe``, else ``~/.local/state/spotsafe``;
    a per-user directory under the system's temp dir when none of those can be made."""
    xdg = os.environ.get("XDG_STATE_HOME")
    candidates = [Path(p) for p in (os.environ.get(STATE_DIR_ENV),) if p]
    candidates.append(Path(xdg) / "spotsafe" if xdg else Path.home() / ".local" / "state" / "spotsafe")
    candidates.append(Path(tempfile.gettempdir()) / f"spotsafe-{os.getuid()}")
    for c in candidates:
        try:
            c.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(c, os.W_OK | os.X_OK):
            return c
    raise ValueError(f"No writable directory for the supervisor's records ({', '.join(map(str, candidates))}); "
                     f"pass --root or --events DIR, or set ${STATE_DIR_ENV}.")


def newest_checkpoint(locations: list[str], storage_options: dict | None = None) -> int:
    """The newest step with a committed checkpoint (manifest present, sizes right) in any location; 0 if none."""
    from .._format import check_checkpoint, committed_steps
    from .._storage import open_storage

    best = 0
    for loc in locations:
        try:
            storage = open_storage(loc, storage_options if is_url(loc) else None)
            steps = committed_steps(storage)
            for step in reversed(steps[-5:]):
                if step <= best:
                    break
                if check_checkpoint(storage, step, deep=False).valid:
                    best = step
                    break
        except Exception as e:
            logger.warning("Cannot read the checkpoints at %s (%s); counting no progress there.", loc, e)
    return best


def _reap_orphans() -> int:
    """As a container's PID 1, reap the orphans the kernel handed us (never the attempt's child:
    this runs after it was waited for). Returns how many."""
    reaped = 0
    for _ in range(100_000):  # bounded; ends at the first "none left"
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped += 1
    return reaped


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


@dataclass(frozen=True, kw_only=True)
class AttemptEnd:
    """How one attempt of the command ended: what decides the next step (the ``exit`` event
    records the same)."""

    exit_code: int
    """The command's exit status; negative when a signal killed it (``Popen.returncode``)."""
    cause: Cause
    """The classification (the module docstring's table)."""
    detail: str
    """Why, in words: for the log line and the ``exit`` event."""
    duration_s: float
    """From the start of the command to its end (monotonic)."""
    restored: int = 0
    """The step the command restored (its ``restore`` event; 0 for none)."""
    source: str | None = None
    """The notices' source when every process recorded a stop for one (``aws``, ``signal``, ...)."""
    stop_signal: int | None = None
    """The first signal the supervisor itself got during the attempt (forwarded to the command)."""
    budget_spent: bool = False
    """``max_total_time`` ran out during the attempt (the command was sent SIGTERM)."""
    drill: str | None = None
    """The ``--chaos`` drill injected during the attempt (``kill`` or ``notice``), if any."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cause", Cause(self.cause))  # a word outside the vocabulary fails here

    @property
    def preempted(self) -> bool:
        """It stopped for a notice with its checkpoint durable: safe to restart."""
        return self.cause is Cause.PREEMPTED

    @property
    def signal_name(self) -> str | None:
        """The name of the signal that killed the command (``SIGKILL``), None when it exited."""
        return _signal_name(self.exit_code) if self.exit_code < 0 else None


class Supervisor:
    """Runs ``command`` until it finishes, under a profile's retry budget.

    Args:
        command: The argv to run (``["python", "train.py"]``, ``["torchrun", ...]``).
        profile: Settings (budget, backoff, grace, checkpoint interval, prices).
        root: The run's checkpoint root (a local directory or URL): handed to the command as
            ``$SPOTSAFE_ROOT``, read for progress, and home of the events (``<root>/events``).
        events_dir: Where events go (default ``$SPOTSAFE_EVENTS_DIR``, else ``<root>/events``:
            a URL root's are kept in the per-user state directory and copied there; without a
            root, the command's ``Run`` says where its root is, and the supervisor's records
            join its events there (until then they are kept in the state directory)).
        run_id: Stable id of the run (default ``$SPOTSAFE_RUN_ID``, else the one kept in the
            events directory, else a new one).
        chaos: Drills to inject, or None.
        seed: Seed of the backoff jitter (None: random).
        say: Where the supervisor's messages go (default: stderr, one line each).
        on_attempt_end: Called after each attempt with the events directory (metrics export).
    """

    def __init__(self, command: list[str], profile: Profile, *, root: str | None = None,
                 events_dir: str | os.PathLike | None = None, run_id: str | None = None,
                 chaos: Chaos | None = None, seed: int | None = None, storage_options: dict | None = None,
                 say: Callable[[str], None] | None = None,
                 on_attempt_end: Callable[[Path], None] | None = None, clock=time.monotonic) -> None:
        if not command:
            raise ValueError("No command to run; give it after --, e.g. spotsafe run -- python train.py.")
        if profile.remote_required and not profile.remote:
            raise ValueError(f"Profile {profile.name!r} requires a remote (remote_required): pass --remote "
                             "s3://bucket/run or set remote in the profile.")
        self.command = list(command)
        self.profile = profile
        self.root = root
        self.chaos = chaos
        self.storage_options = storage_options
        self._clock = clock
        self._rng = random.Random(seed)
        self._say = say or (lambda msg: print(f"spotsafe run: {msg}", file=sys.stderr, flush=True))
        self._on_attempt_end = on_attempt_end
        self.sup_id = uuid.uuid4().hex[:12]
        self._given_run_id = run_id or os.environ.get(RUN_ID_ENV) or None
        if events_dir is None:
            events_dir = os.environ.get(EVENTS_DIR_ENV) or None
        self._root_mirror: EventMirror | None = None
        self._sup_dir: Path | None = None  # while the run's events directory is not known: the command announces it here
        self._adopted = False
        if events_dir is None and root and events_dir_of(root) is not None:
            events_dir = events_dir_of(root)
        elif events_dir is None and root:  # a URL root: kept here, copied to <root>/events
            events_dir = state_dir() / "runs" / hashlib.sha256(root.encode()).hexdigest()[:16] / "events"
            self._root_mirror = EventMirror(root, storage_options)
        elif events_dir is None:
            self._sup_dir = events_dir = state_dir() / "supervisor" / f"{file_host()}-{os.getpid()}-{self.sup_id}"
        self.events_dir = Path(events_dir)
        self.events_dir.mkdir(parents=True, exist_ok=True)
        if self._sup_dir is None:
            self.run_id = self._given_run_id or kept_run_id(self.events_dir, uuid.uuid4().hex[:12])
            # every attempt has a spawn (supervised) or run_start event: only those lines are parsed
            past = [e for e in read_events(self.events_dir, (Event.SPAWN, Event.RUN_START))
                    if e.get("run_id") == self.run_id]
            self.attempt = max((e["attempt"] for e in past if type(e.get("attempt")) is int), default=0)
        else:  # both learned from the command (telemetry/_identity.py)
            self.run_id, past, self.attempt = self._given_run_id or self.sup_id, [], 0
        self._locations: list[str] = []  # where progress is read: given, and reported by attempts
        self._learn_locations([x for x in (root, profile.remote) if x], past)
        self.events = EventLog(self.events_dir, run_id=self.run_id, attempt=self.attempt, rank=0, role=SUPERVISOR)
        self.mirror = EventMirror(profile.remote, storage_options) if profile.remote else None
        self.backoff = Backoff(base=profile.backoff_base, cap=profile.backoff_cap)
        self.restarts = 0
        self.interruptions = 0
        self.crashes_in_a_row = 0        # crashes since the last progress
        self.ended: list[AttemptEnd] = []  # how each attempt of this supervisor ended, oldest first
        self._signals: list[int] = []
        self._advised = False

    # -- setup ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({ATTEMPT_ENV: str(self.attempt), SUPERVISED_ENV: "1", SUPERVISOR_ID_ENV: self.sup_id})
        if self._learned:
            env.update({RUN_ID_ENV: self.run_id, EVENTS_DIR_ENV: os.fspath(self.events_dir.resolve())})
            env.pop(SUPERVISOR_DIR_ENV, None)
        else:  # the command's Run takes the run id and attempt of its root, and says where that is
            env[SUPERVISOR_DIR_ENV] = os.fspath(self.events_dir.resolve())
            env.pop(EVENTS_DIR_ENV, None)
            env.pop(RUN_ID_ENV, None)
            if self._given_run_id:
                env[RUN_ID_ENV] = self._given_run_id
        if self.root:
            env[ROOT_ENV] = self.root
        if self.profile.remote:
            env[REMOTE_ENV] = self.profile.remote
        if self.profile.save_every:
            env[SAVE_EVERY_ENV] = self.profile.save_every
        env.setdefault(SIGNAL_GRACE_ENV, f"{self.profile.grace:g}")
        return env

    @property
    def _learned(self) -> bool:
        """Whether the supervisor knows where the run's events are (given, or announced by the command)."""
        return self._sup_dir is None or self._adopted

    def _mirrors(self) -> list[EventMirror]:
        return [m for m in (self._root_mirror, self.mirror) if m is not None]

    def _learn_events_dir(self) -> None:
        """Adopt what the command announced (its events directory, run id and attempt number) and
        move the supervisor's records beside its events, rewritten with them."""
        if self._learned:
            return
        found = announcements(self._sup_dir)
        if not found:
            return
        rec = found[0]
        base, self.run_id, self.attempt = rec["attempt"] - self.attempt, rec["run_id"], rec["attempt"]
        root = rec.get("root")
        if isinstance(root, str) and is_url(root) and self._root_mirror is None:
            self._root_mirror = EventMirror(root, self.storage_options)
        target = Path(rec["events_dir"])
        old = self.events.path
        self.events.close()
        records = parse_lines(old.read_text(errors="replace")) if old is not None and old.exists() else []
        for r in records:
            r["run_id"], r["attempt"] = self.run_id, base + int(r.get("attempt") or 0)
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{old.name}.tmp"
        tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        os.replace(tmp, target / old.name)
        if old.parent.resolve() != target.resolve():
            old.unlink(missing_ok=True)
        self.events_dir = target
        self.events = EventLog(target, run_id=self.run_id, attempt=self.attempt, rank=0, role=SUPERVISOR)
        self._adopted = True
        logger.info("The command keeps its events in %s: the supervisor's records are there too.", target)

    def _learn_locations(self, given: list[str], events: list[dict]) -> None:
        """Add the checkpoint locations ``given`` and those the ``run_start`` events report."""
        for e in events:
            if e.get("event") == Event.RUN_START:
                given += [x for x in (e.get("root"), e.get("remote")) if x]
        self._locations = list(dict.fromkeys(self._locations + given))

    def _emit(self, event: Event, **fields) -> None:
        fields.setdefault("attempt", self.attempt)
        self.events.emit(event, **fields)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until done or out of budget; returns the supervisor's exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in FORWARDED}
        start = self._clock()
        self._emit(Event.SUPERVISOR_START, command=self.command, profile=self.profile.__dict__,
                   chaos=None if self.chaos is None else {k: v for k, v in self.chaos.__dict__.items()
                                                          if not k.startswith("_")})
        try:
            code, reason = self._loop(start)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        self._say(reason)
        self._emit(Event.SUPERVISOR_STOP, exit_code=code, reason=reason, restarts=self.restarts,
                   interruptions=self.interruptions)
        self._export()
        self.events.close()
        for m in self._mirrors():
            if not m.close(timeout=10.0):
                self._say(f"could not copy every event file to {m.remote}/events in 10 s.")
        if self._sup_dir is not None and self.events_dir != self._sup_dir:
            shutil.rmtree(self._sup_dir, ignore_errors=True)  # its records moved beside the command's
        elif self._sup_dir is not None and not self._learned:
            self._say(f"the command reported no run root (it opened no spotsafe.Run): the supervisor's records are "
                      f"in {self._sup_dir}; pass --root to keep them beside the checkpoints.")
        return code

    def _on_signal(self, signum, frame) -> None:
        self._signals.append(signum)

    def _loop(self, start: float) -> tuple[int, str]:
        budget_end = start + self.profile.max_total_time if self.profile.max_total_time else None
        for _ in range(self.profile.max_restarts + 1):
            if self._signals:
                return EXIT_PREEMPTED, (f"stopped by {signal.Signals(self._signals[0]).name} before attempt "
                                        f"{self.attempt + 1}; the newest checkpoint is durable.")
            self.attempt += 1
            known = bool(self._locations)
            before = newest_checkpoint(self._locations, self.storage_options)
            try:
                ended = self._attempt(budget_end)
            except (FileNotFoundError, PermissionError) as e:
                return EXIT_NOT_FOUND, f"cannot start {self.command[0]!r} ({e.strerror}); check the command after --."
            if not known and self._locations:  # learned from the command: it resumed from what there was
                before = ended.restored
            self.ended.append(ended)
            after = newest_checkpoint(self._locations, self.storage_options)
            cause, rc = ended.cause, ended.exit_code
            self._emit(Event.EXIT, exit_code=rc if rc >= 0 else None, signal=ended.signal_name, cause=cause,
                       detail=ended.detail, duration_s=ended.duration_s, checkpoint_step=after,
                       progress=after > before, source=ended.source)
            self._export()
            if ended.stop_signal is not None:  # the supervisor was told to stop
                return self._stopped(ended)
            if ended.preempted and ended.drill is None and ended.source in MACHINE_SOURCES:
                self.interruptions += 1
                return EXIT_PREEMPTED, (f"the command stopped for a notice from {ended.source} (the machine is "
                                        f"being reclaimed) with its checkpoint durable at step {after}; exiting 75 "
                                        "so that the job moves to another machine.")
            if cause is Cause.LOCKED:
                return EXIT_ROOT_LOCKED, ("the command was refused at start: another process holds the run root "
                                          "(the command's last line names it); not restarting into the same "
                                          "refusal. Stop the other writer, or use another root.")
            if cause is Cause.DONE:
                return EXIT_OK, (f"the command finished (attempt {self.attempt}; {self.restarts} restart(s) by this "
                                 "supervisor).")
            if ended.budget_spent:
                return EXIT_BUDGET, (f"max_total_time ({format_duration(self.profile.max_total_time)}) is spent; "
                                     f"the command was stopped at step {after}. Raise --max-total-time to go on.")
            if cause in (Cause.PREEMPTED, Cause.CHAOS_KILL):
                self.interruptions += 1
                self._advise(start)
            delay = 0.0
            if after > before:
                self.crashes_in_a_row = 0
            if cause is Cause.CRASH:
                if after <= before:
                    self.crashes_in_a_row += 1
                limit = self.profile.max_crashes_without_progress
                if self.crashes_in_a_row >= limit:
                    return EXIT_CRASH_LOOP, (f"{self.crashes_in_a_row} crashes in a row with no new checkpoint "
                                             f"(last: {ended.detail}; newest checkpoint step {after}); "
                                             f"giving up (max_crashes_without_progress={limit}).")
                delay = self.backoff.delay(max(0, self.crashes_in_a_row - 1), self._rng)
            if self.restarts >= self.profile.max_restarts:
                return EXIT_BUDGET, (f"max_restarts ({self.profile.max_restarts}) is spent: the last attempt "
                                     f"ended by {cause} ({ended.detail}), newest checkpoint step {after}. "
                                     "Raise --max-restarts to go on.")
            if budget_end is not None and self._clock() + delay >= budget_end:
                return EXIT_BUDGET, (f"max_total_time ({format_duration(self.profile.max_total_time)}) would be "
                                     f"spent before the next attempt; newest checkpoint step {after}.")
            self.restarts += 1
            self._emit(Event.RESTART, cause=cause, backoff_s=delay, next_attempt=self.attempt + 1,
                       checkpoint_step=after)
            self._say(f"attempt {self.attempt} ended: {cause} ({ended.detail}); "
                      + (f"restarting in {delay:.1f} s" if delay else "restarting now")
                      + f" from step {after} (restart {self.restarts} of {self.profile.max_restarts}).")
            if delay and self._sleep(delay):
                return EXIT_PREEMPTED, (f"stopped by {signal.Signals(self._signals[0]).name} while waiting to "
                                        "restart; the newest checkpoint is durable.")
        raise AssertionError("unreachable: the restart loop is bounded by max_restarts")  # pragma: no cover

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early (True) when a signal arrives."""
        end = self._clock() + seconds
        while self._clock() < end:
            if self._signals:
                return True
            time.sleep(min(POLL_S, max(0.0, end - self._clock())))
        return bool(self._signals)

    def _attempt(self, budget_end: float | None) -> AttemptEnd:
        """Run the command once; how it ended."""
        seen = len(self._signals)
        t0 = self._clock()
        child = subprocess.Popen(self.command, env=self._env(), start_new_session=True)
        self._emit(Event.SPAWN, child_pid=child.pid, command=self.command, supervisor=self.sup_id)
        next_learn = t0
        drill = self.chaos.next() if self.chaos is not None else None
        armed_at = None           # drills count from the command's restore (its handlers are in place)
        next_look = t0
        stop_sig = None           # first signal the supervisor got
        stop_deadline = None      # SIGKILL the group after this (a stop, the budget, or a drill's notice)
        killed_by = None          # "drill", "deadline"
        drilled = None
        budget = False
        last_mirror = t0
        for _ in range(10**9):    # bounded by the child's life; every pass sleeps POLL_S
            rc = child.poll()
            if rc is not None:
                break
            now = self._clock()
            while seen < len(self._signals):
                sig = self._signals[seen]
                seen += 1
                try:
                    child.send_signal(sig)
                except ProcessLookupError:
                    pass
                if stop_sig is None:
                    stop_sig = sig
                    stop_deadline = now + self.profile.grace
                    self._say(f"{signal.Signals(sig).name} received: forwarded to the command; waiting up to "
                              f"{self.profile.grace:g} s for its checkpoint.")
            if budget_end is not None and now >= budget_end and stop_sig is None and not budget:
                budget = True
                child.send_signal(signal.SIGTERM)
                stop_deadline = now + self.profile.grace
                self._say("max_total_time is spent: sent SIGTERM to the command for its checkpoint.")
            if drill is not None and armed_at is None and now >= next_look:
                next_look = now + 0.25
                if self._restored(t0) or now - t0 >= self.chaos.ready_timeout:
                    armed_at = now
            if drill is not None and armed_at is not None and drilled is None and stop_sig is None \
                    and now - armed_at >= drill[0]:
                if self._attempt_events(t0, Event.STOP):
                    drill = None  # training is over (the process is only exiting): nothing left to drill
                    continue
                drilled = drill[1]
                self.chaos.injected += 1
                self._emit(Event.CHAOS, action=drilled, after_s=now - t0, after_ready_s=now - armed_at,
                           grace_s=self.chaos.grace)
                if drilled == KILL:
                    self._kill_group(child)
                    killed_by = "drill"
                else:
                    child.send_signal(signal.SIGTERM)
                    stop_deadline = min(stop_deadline or float("inf"), now + self.chaos.grace)
            if stop_deadline is not None and now >= stop_deadline and killed_by is None:
                self._kill_group(child)
                killed_by = "deadline"
            if not self._learned and now >= next_learn:
                next_learn = now + LEARN_EVERY_S
                self._learn_events_dir()
            if now - last_mirror >= MIRROR_EVERY_S:
                for m in self._mirrors():
                    m.push(self.events_dir)
                last_mirror = now
            time.sleep(POLL_S)
        self._kill_group(child)  # leftovers of the group (orphaned workers), if any
        duration = self._clock() - t0
        self._learn_events_dir()
        evs = self._attempt_events(t0, Event.RUN_START, Event.RESTORE, Event.STOP)  # this attempt's files, read once
        started = [e for e in evs if e["event"] == Event.RUN_START]
        self._learn_locations([], started)
        restored = max((e.get("step") or 0 for e in evs
                        if e["event"] == Event.RESTORE and isinstance(e.get("step") or 0, int)), default=0)
        # spotsafe's own records first: torchrun exits 1, Lightning and the HF Trainer 0 after a notice
        stops = [e for e in evs if e["event"] == Event.STOP]
        noticed = bool(stops) and all(preempted_stop(e) for e in stops)
        source = next((e.get("source") for e in stops if e.get("source")), None) if noticed else None
        if rc == EXIT_PREEMPTED:
            cause, detail = Cause.PREEMPTED, "exit 75, checkpoint durable"
        elif killed_by == "drill":
            cause, detail = Cause.CHAOS_KILL, "SIGKILL by --chaos"
        elif noticed:
            how = f"exit {rc}" if rc >= 0 else f"killed by {_signal_name(rc)}"
            cause, detail = Cause.PREEMPTED, (f"{how}, but every process recorded a stop for a notice with its "
                                              "checkpoint durable")
        elif rc == 0:
            cause, detail = Cause.DONE, "exit 0"
        elif rc == EXIT_ROOT_LOCKED and not started:
            cause, detail = Cause.LOCKED, "exit 6: refused at start, another process holds the run root"
        elif drilled is not None and rc == -signal.SIGTERM:
            cause, detail = Cause.CHAOS_KILL, "killed by the drill's SIGTERM (no handler installed at that moment)"
        elif killed_by == "deadline":
            cause, detail = Cause.CRASH, "killed at the end of the grace period"
        else:
            cause, detail = Cause.CRASH, f"exit {rc}" if rc > 0 else f"killed by {_signal_name(rc)}"
        if drilled is not None and cause is Cause.PREEMPTED:
            detail += " (--chaos notice)"
        return AttemptEnd(exit_code=rc, cause=cause, detail=detail, duration_s=duration, restored=restored,
                          source=source, stop_signal=stop_sig, budget_spent=budget, drill=drilled)

    def _attempt_events(self, since: float, *kinds: Event) -> list[dict]:
        """The events of ``kinds`` the current attempt's processes wrote (files touched since ``since``,
        on the monotonic clock): each line parsed, then matched on its event name, run id, attempt
        and role."""
        wall0 = time.time() - (self._clock() - since)
        out = []
        for path in self.events_dir.glob("*.jsonl"):
            try:
                if path.stat().st_mtime < wall0 - 1 or path == self.events.path:
                    continue
                text = path.read_text(errors="replace")
            except OSError:
                continue
            out += [e for e in parse_lines(text, kinds) if e.get("run_id") == self.run_id
                    and e.get("attempt") == self.attempt and e.get("role") != SUPERVISOR]
        return out

    def _restored(self, since: float) -> bool:
        """Whether this attempt's command has written its ``restore`` event (so it handles notices)."""
        return bool(self._attempt_events(since, Event.RESTORE))

    def _kill_group(self, child: subprocess.Popen) -> None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child.wait()
        if os.getpid() == 1:
            _reap_orphans()

    def _stopped(self, ended: AttemptEnd) -> tuple[int, str]:
        name = signal.Signals(ended.stop_signal).name
        if ended.cause is Cause.DONE:
            return EXIT_OK, f"{name} received, and the command finished."
        if ended.preempted:
            return EXIT_PREEMPTED, (f"{name} received: the command checkpointed and exited 75; exiting 75 "
                                    "(restart me to resume).")
        return EXIT_STOP_UNSAFE, (f"{name} received, and the command did not exit 0 or 75 within the "
                                  f"{self.profile.grace:g} s grace ({ended.detail}); its newest durable "
                                  "checkpoint is what a restart will resume from.")

    # -- advice and exports ------------------------------------------------------------------
    def _advise(self, start: float) -> None:
        n = self.profile.advise_on_demand_after
        if n is None or self._advised or self.interruptions < n:
            return
        self._advised = True
        hours = max(self._clock() - start, 1e-9) / 3600.0
        mtbf_h = hours / self.interruptions
        msg = (f"{self.interruptions} interruptions in {hours:.2f} h (one every {format_duration(mtbf_h * 3600)}); "
               "consider on-demand capacity for this job")
        p, d = self.profile.spot_price, self.profile.on_demand_price
        if p is not None and d is not None and d > 0:
            msg += (f": spot costs {p:g}/h against {d:g}/h on demand; `spotsafe plan --mtbf "
                    f"{format_duration(mtbf_h * 3600)} --spot-price {p:g} --on-demand-price {d:g}` prices it")
        msg += "."
        self._emit(Event.ADVICE, interruptions=self.interruptions, mtbf_s=mtbf_h * 3600, message=msg)
        self._say(msg)

    def _export(self) -> None:
        for m in self._mirrors():
            m.push(self.events_dir)
        if self._on_attempt_end is not None:
            try:
                self._on_attempt_end(self.events_dir)
            except Exception as e:
                logger.warning("Cannot export metrics (%s).", e)
