"""``spotsafe run``: start the command, forward signals, classify its end, restart it (no torch).

One loop in the main thread, polling the child every 50 ms: signal handlers only append
to a list, so everything (forwarding, drills, deadlines, the budget) happens in one place
and in one order. The child runs in its own session and process group: a hard kill
(a drill, or the end of a grace period) takes its DataLoader workers or ``torchrun``'s
workers with it, while forwarded signals go to the child process alone, as Kubernetes and
the clouds deliver them (``torchrun`` relays them to its workers).

How an attempt ended decides what happens next:

====================  ==========================  =====================================
child ended           cause                       next
====================  ==========================  =====================================
exit 0                ``done``                    exit 0
exit 75               ``preempted``               restart at once
killed by a drill     ``chaos_kill``              restart at once
anything else         ``crash``                   restart after backoff (with jitter)
====================  ==========================  =====================================

Progress is read from the checkpoints: the newest committed checkpoint (manifest present,
sizes right) of the run's root and remote, before and after each attempt.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .._backoff import Backoff
from .._env import REMOTE_ENV, ROOT_ENV, SAVE_EVERY_ENV, SUPERVISED_ENV
from .._exitcodes import (EXIT_BUDGET, EXIT_CRASH_LOOP, EXIT_NOT_FOUND, EXIT_OK, EXIT_PREEMPTED,
                          EXIT_STOP_UNSAFE)
from .._units import format_duration
from ..storage import is_url
from ..telemetry import ATTEMPT_ENV, EVENTS_DIR_ENV, RUN_ID_ENV, EventLog, parse_lines, read_events
from ..telemetry._mirror import EventMirror
from ._chaos import KILL, Chaos
from ._profile import Profile

logger = logging.getLogger(__name__)

GRACE_ENV = "SPOTSAFE_SIGNAL_GRACE"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
POLL_S = 0.05
MIRROR_EVERY_S = 30.0
RUN_ID_FILE = "run-id"


def newest_checkpoint(locations: list[str], storage_options: dict | None = None) -> int:
    """The newest step with a committed checkpoint (manifest present, sizes right) in any location; 0 if none."""
    from ..format import check_checkpoint, committed_steps
    from ..storage import open_storage

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
        except Exception as e:  # noqa: BLE001 - an unreachable tier is no progress, not a failure
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


class Supervisor:
    """Runs ``command`` until it finishes, under a profile's retry budget.

    Args:
        command: The argv to run (``["python", "train.py"]``, ``["torchrun", ...]``).
        profile: Settings (budget, backoff, grace, checkpoint interval, prices).
        root: The run's checkpoint root (a local directory or URL): handed to the command as
            ``$SPOTSAFE_ROOT``, read for progress, and home of the events (``<root>/events``).
        events_dir: Where events go (default ``$SPOTSAFE_EVENTS_DIR``, ``<root>/events`` for a
            local root, else ``./spotsafe-events``).
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
        if events_dir is None:
            events_dir = os.environ.get(EVENTS_DIR_ENV) or (
                os.path.join(root, "events") if root and not is_url(root) else "spotsafe-events")
        self.events_dir = Path(events_dir)
        self.events_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id or os.environ.get(RUN_ID_ENV) or self._kept_run_id()
        past = [e for e in read_events(self.events_dir) if e.get("run_id") == self.run_id]
        self.attempt = max((int(e.get("attempt") or 0) for e in past), default=0)
        self._locations: list[str] = []  # where progress is read: given, and reported by attempts
        self._learn_locations([x for x in (root, profile.remote) if x], past)
        self.events = EventLog(self.events_dir, run_id=self.run_id, attempt=self.attempt, rank=0, role="supervisor")
        self.mirror = EventMirror(profile.remote, storage_options) if profile.remote else None
        self.backoff = Backoff(base=profile.backoff_base, cap=profile.backoff_cap)
        self.restarts = 0
        self.interruptions = 0
        self.crashes_in_a_row = 0        # crashes since the last progress
        self._signals: list[int] = []
        self._advised = False

    # -- setup ---------------------------------------------------------------------------
    def _kept_run_id(self) -> str:
        path = self.events_dir / RUN_ID_FILE
        try:
            kept = path.read_text().strip()
            if kept:
                return kept
        except OSError:
            pass
        new = uuid.uuid4().hex[:12]
        path.write_text(new + "\n")
        return new

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({RUN_ID_ENV: self.run_id, ATTEMPT_ENV: str(self.attempt),
                    EVENTS_DIR_ENV: os.fspath(self.events_dir.resolve()), SUPERVISED_ENV: "1"})
        if self.root:
            env[ROOT_ENV] = self.root
        if self.profile.remote:
            env[REMOTE_ENV] = self.profile.remote
        if self.profile.save_every:
            env[SAVE_EVERY_ENV] = self.profile.save_every
        env.setdefault(GRACE_ENV, f"{self.profile.grace:g}")
        return env

    def _learn_locations(self, given: list[str], events: list[dict]) -> None:
        """Add the checkpoint locations ``given`` and those the ``run_start`` events report."""
        for e in events:
            if e.get("event") == "run_start":
                given += [x for x in (e.get("root"), e.get("remote")) if x]
        self._locations = list(dict.fromkeys(self._locations + given))

    def _emit(self, event: str, **fields) -> None:
        fields.setdefault("attempt", self.attempt)
        self.events.emit(event, **fields)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until done or out of budget; returns the supervisor's exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in FORWARDED}
        start = self._clock()
        self._emit("supervisor_start", command=self.command, profile=self.profile.__dict__,
                   chaos=None if self.chaos is None else {k: v for k, v in self.chaos.__dict__.items()
                                                          if not k.startswith("_")})
        try:
            code, reason = self._loop(start)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        self._say(reason)
        self._emit("supervisor_stop", exit_code=code, reason=reason, restarts=self.restarts,
                   interruptions=self.interruptions)
        self._export()
        self.events.close()
        if self.mirror is not None and not self.mirror.close(timeout=10.0):
            self._say(f"could not copy every event file to {self.profile.remote}/events in 10 s.")
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
            before = newest_checkpoint(self._locations, self.storage_options)
            try:
                ended = self._attempt(budget_end)
            except (FileNotFoundError, PermissionError) as e:
                return EXIT_NOT_FOUND, f"cannot start {self.command[0]!r} ({e.strerror}); check the command after --."
            after = newest_checkpoint(self._locations, self.storage_options)
            cause, rc = ended["cause"], ended["rc"]
            self._emit("exit", exit_code=rc if rc >= 0 else None, signal=_signal_name(rc) if rc < 0 else None,
                       cause=cause, detail=ended["detail"], duration_s=ended["duration_s"], checkpoint_step=after,
                       progress=after > before)
            self._export()
            if ended["stop"] is not None:  # the supervisor was told to stop
                return self._stopped(ended)
            if cause == "done":
                return EXIT_OK, (f"the command finished (attempt {self.attempt}; {self.restarts} restart(s) by this "
                                 "supervisor).")
            if ended["budget"]:
                return EXIT_BUDGET, (f"max_total_time ({format_duration(self.profile.max_total_time)}) is spent; "
                                     f"the command was stopped at step {after}. Raise --max-total-time to go on.")
            if cause in ("preempted", "chaos_kill"):
                self.interruptions += 1
                self._advise(start)
            delay = 0.0
            if after > before:
                self.crashes_in_a_row = 0
            if cause == "crash":
                if after <= before:
                    self.crashes_in_a_row += 1
                limit = self.profile.max_crashes_without_progress
                if self.crashes_in_a_row >= limit:
                    return EXIT_CRASH_LOOP, (f"{self.crashes_in_a_row} crashes in a row with no new checkpoint "
                                             f"(last: {ended['detail']}; newest checkpoint step {after}); "
                                             f"giving up (max_crashes_without_progress={limit}).")
                delay = self.backoff.delay(max(0, self.crashes_in_a_row - 1), self._rng)
            if self.restarts >= self.profile.max_restarts:
                return EXIT_BUDGET, (f"max_restarts ({self.profile.max_restarts}) is spent: the last attempt "
                                     f"ended by {cause} ({ended['detail']}), newest checkpoint step {after}. "
                                     "Raise --max-restarts to go on.")
            if budget_end is not None and self._clock() + delay >= budget_end:
                return EXIT_BUDGET, (f"max_total_time ({format_duration(self.profile.max_total_time)}) would be "
                                     f"spent before the next attempt; newest checkpoint step {after}.")
            self.restarts += 1
            self._emit("restart", cause=cause, backoff_s=delay, next_attempt=self.attempt + 1,
                       checkpoint_step=after)
            self._say(f"attempt {self.attempt} ended: {cause} ({ended['detail']}); "
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

    def _attempt(self, budget_end: float | None) -> dict:
        """Run the command once; how it ended."""
        seen = len(self._signals)
        t0 = self._clock()
        child = subprocess.Popen(self.command, env=self._env(), start_new_session=True)
        self._emit("spawn", child_pid=child.pid, command=self.command)
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
                if any(e["event"] == "stop" for e in self._attempt_events(t0, '"event":"stop"')):
                    drill = None  # training is over (the process is only exiting): nothing left to drill
                    continue
                drilled = drill[1]
                self.chaos.injected += 1
                self._emit("chaos", action=drilled, after_s=now - t0, after_ready_s=now - armed_at,
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
            if self.mirror is not None and now - last_mirror >= MIRROR_EVERY_S:
                self.mirror.push(self.events_dir)
                last_mirror = now
            time.sleep(POLL_S)
        self._kill_group(child)  # leftovers of the group (orphaned workers), if any
        duration = self._clock() - t0
        self._learn_locations([], self._attempt_events(t0, '"event":"run_start"'))  # this attempt's files only
        if rc == 0:
            cause, detail = "done", "exit 0"
        elif rc == EXIT_PREEMPTED:
            cause, detail = "preempted", "exit 75, checkpoint durable"
        elif killed_by == "drill":
            cause, detail = "chaos_kill", "SIGKILL by --chaos"
        elif drilled is not None and rc == -signal.SIGTERM:
            cause, detail = "chaos_kill", "killed by the drill's SIGTERM (no handler installed at that moment)"
        elif killed_by == "deadline":
            cause, detail = "crash", "killed at the end of the grace period"
        elif rc > 0 and self._all_ranks_preempted(t0):
            cause, detail = "preempted", f"exit {rc}, but every process reported exit 75 with a durable checkpoint"
        else:
            cause, detail = "crash", f"exit {rc}" if rc > 0 else f"killed by {_signal_name(rc)}"
        if drilled is not None and cause == "preempted":
            detail += " (--chaos notice)"
        return {"rc": rc, "cause": cause, "detail": detail, "duration_s": duration, "stop": stop_sig,
                "budget": budget}

    def _attempt_events(self, since: float, needle: str | None = None) -> list[dict]:
        """Events the current attempt's processes wrote (files touched since ``since``, on the monotonic clock).

        ``needle``: skip files whose text does not contain it (a cheap pre-filter).
        """
        wall0 = time.time() - (self._clock() - since)
        out = []
        for path in self.events_dir.glob("*.jsonl"):
            try:
                if path.stat().st_mtime < wall0 - 1 or path == self.events.path:
                    continue
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if needle is not None and needle not in text:
                continue
            out += [e for e in parse_lines(text) if e.get("run_id") == self.run_id
                    and e.get("attempt") == self.attempt and e.get("role") != "supervisor"]
        return out

    def _restored(self, since: float) -> bool:
        """Whether this attempt's command has written its ``restore`` event (so it handles notices)."""
        return any(e["event"] == "restore" for e in self._attempt_events(since, '"event":"restore"'))

    def _all_ranks_preempted(self, since: float) -> bool:
        """Whether every process of the attempt that wrote a ``stop`` stopped with exit 75.

        ``torchrun`` turns its workers' exit 75 into its own exit 1 (a failed worker group);
        the workers' own ``stop`` events say they checkpointed for a notice.
        """
        stops = [e for e in self._attempt_events(since, '"event":"stop"') if e["event"] == "stop"]
        return bool(stops) and all(e.get("exit_code") == EXIT_PREEMPTED for e in stops)

    def _kill_group(self, child: subprocess.Popen) -> None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child.wait()
        if os.getpid() == 1:
            _reap_orphans()

    def _stopped(self, ended: dict) -> tuple[int, str]:
        name = signal.Signals(ended["stop"]).name
        if ended["cause"] == "done":
            return EXIT_OK, f"{name} received, and the command finished."
        if ended["cause"] == "preempted":
            return EXIT_PREEMPTED, (f"{name} received: the command checkpointed and exited 75; exiting 75 "
                                    "(restart me to resume).")
        return EXIT_STOP_UNSAFE, (f"{name} received, and the command did not exit 0 or 75 within the "
                                  f"{self.profile.grace:g} s grace ({ended['detail']}); its newest durable "
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
        self._emit("advice", interruptions=self.interruptions, mtbf_s=mtbf_h * 3600, message=msg)
        self._say(msg)

    def _export(self) -> None:
        if self.mirror is not None:
            self.mirror.push(self.events_dir)
        if self._on_attempt_end is not None:
            try:
                self._on_attempt_end(self.events_dir)
            except Exception as e:  # noqa: BLE001 - an export must not end the run
                logger.warning("Cannot export metrics (%s).", e)
