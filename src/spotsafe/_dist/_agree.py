"""One stop step for every rank of a ``torchrun`` job: JAX's preemption sync point, on torchrun's store.

A notice reaches one rank (a SIGTERM to one worker, a cloud notice polled on one node,
SLURM's signal on one node); every rank must finish the same step, checkpoint it and exit
75. Asking every step with a collective costs 0.3 to 3 ms on gloo (research notes, section
2); this protocol costs the training loop two attribute accesses per step (well under 1 µs)
and makes no collective at all. It runs on the TCPStore every ``torchrun`` job already has
(``MASTER_ADDR:MASTER_PORT``), under ``spotsafe/<job>/<restart>/``, from one daemon thread
per rank with a client of its own (a TCPStore client serialises its operations):

1. A rank that sees a notice marks itself stopping (its loop will wait at the end of its
   step), and its thread adds 1 to ``requests`` and records the notice (first one wins)
   under ``notice``. Never from a signal handler: the handler only sets a flag.
2. Every rank's thread checks ``requests`` every ``poll`` seconds. Once it is set, the
   thread marks the rank stopping, *then* reads the last step its loop finished, publishes
   it under ``at/<rank>`` and waits for every rank's.
3. The stop step is ``max(at) + 1``, the same on every rank. The loop writes the step it
   finished *before* it reads "stopping" (and the thread the other way round), so a rank
   finishes at most one step past what it published before it waits: no rank passes the
   stop step, and ranks behind it (or blocked in a collective with a waiting rank) get
   there, since each one waiting is released as soon as the step is known.

Save points, the same way: a checkpoint of a multi-rank job must be taken at the same step
on every rank, and a time-based policy (``save_every="15m"``) or an early warning fires on
one rank at its own step. :meth:`StopAgreement.request_save` asks for one; round ``n`` uses
the keys ``save/<n>/requests`` and ``save/<n>/at/<rank>``, and every rank saves after step
``max(at) + 1`` (:meth:`StopAgreement.should_save`). Policies that depend on the step alone
(``save_every=500``) need no round: every rank decides the same.

A rank that never answers (dead, hung) fails the agreement after ``timeout`` seconds on
every rank that waits: :class:`AgreementFailed`, and the caller stops without a new
checkpoint (the previous one is intact). Where the store cannot be reached at all (a job
set up without one), a warning says so and each rank stops on its own notice, as before.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from .._env import ATTEMPT_ENV

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""Seconds every rank's answer is waited for once a stop is asked (research notes: min(10 s, grace/3))."""
DEFAULT_POLL = 0.05
"""Seconds between two looks at the store for a stop asked elsewhere (a background call)."""


class AgreementFailed(RuntimeError):
    """The ranks could not agree on a stop step in time (a rank dead or hung)."""


class StopAgreement:
    """The stop step of one rank of a job; see the module docstring.

    Args:
        rank, world_size: This process's rank and the job's size.
        host, port: The job's TCPStore (``MASTER_ADDR``, ``MASTER_PORT``).
        prefix: The keys' namespace: one per job and restart, so that a restarted job never
            reads the last one's stop.
        timeout: Seconds to wait for every rank's step once a stop is asked.
        poll: Seconds between two looks at the store.
    """

    def __init__(self, *, rank: int, world_size: int, host: str, port: int, prefix: str,
                 timeout: float = DEFAULT_TIMEOUT, poll: float = DEFAULT_POLL) -> None:
        self.rank, self.world_size = rank, world_size
        self.host, self.port, self.prefix = host, port, prefix
        self.timeout, self.poll = timeout, poll
        # Written by the loop, read by the thread (and the other way round): see the module docstring.
        self.finished = -1  # the last step the loop finished
        self.stopping = False  # a stop was asked, here or anywhere: the loop waits at the end of its step
        self.stop_at: int | None = None  # the agreed step, once known
        self.failure: str | None = None
        self.unavailable: str | None = None  # why the store could not be reached: each rank stops on its own
        self.notice: dict[str, Any] | None = None  # the notice that asked for it, as its rank published it
        self._local: dict[str, Any] | None = None  # this rank's notice, to publish
        self.saving = False  # a save point was asked, here or anywhere: the loop waits at the end of its step
        self.save_at: int | None = None  # the agreed save step of the current round, once known
        self._save_wanted = False  # this rank asked for a save point not taken yet
        self._save_decided = threading.Event()
        self._decided = threading.Event()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spotsafe-agree", daemon=True)

    @classmethod
    def from_env(cls, *, timeout: float = DEFAULT_TIMEOUT, poll: float = DEFAULT_POLL) -> StopAgreement | None:
        """The agreement of this process when it is one rank of several (``torchrun``, or
        ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT`` set as for ``env://``); else None."""
        env = os.environ
        try:
            world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
            host, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
        except (KeyError, ValueError):
            return None
        if world <= 1:
            return None
        job = env.get("TORCHELASTIC_RUN_ID") or "job"
        prefix = f"spotsafe/{job}/{env.get(ATTEMPT_ENV, '0')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        return cls(rank=rank, world_size=world, host=host, port=port, prefix=prefix, timeout=timeout, poll=poll)

    # -- the loop's side --------------------------------------------------------------------
    def start(self) -> StopAgreement:
        self._thread.start()
        return self

    def request(self, source: str, reason: str, deadline: float | None) -> None:
        """This rank saw a notice: ask every rank to stop (returns at once; the thread tells them)."""
        if self._local is None:
            self._local = {"rank": self.rank, "source": source, "reason": reason, "deadline": deadline}
            self.stopping = True
            self._wake.set()

    def should_stop(self, step: int) -> bool:
        """Called by the loop at the end of ``step``: True when every rank stops after this step.

        Costs two attribute accesses while no stop is asked. Once one is, waits here (at most
        ``timeout`` and a little) until the step is agreed; raises :class:`AgreementFailed` when
        it cannot be.
        """
        self.finished = step  # first: see the module docstring
        if not self.stopping:
            return False
        if self.unavailable is not None:
            return self._local is not None  # no store: this rank's own notice, as in a single process
        self._await_decision(self._decided, "stop")
        assert self.stop_at is not None
        return step >= self.stop_at

    def _await_decision(self, decided: threading.Event, what: str) -> None:
        """Wait (bounded) for the thread to agree on a ``what`` step; raise :class:`AgreementFailed` when it could not."""
        if not decided.wait(self.timeout + 5 * self.poll + 5.0):
            self.failure = self.failure or f"no {what} step was agreed within {self.timeout:.0f}s"
        if self.failure is not None:
            raise AgreementFailed(f"Rank {self.rank} could not agree on a {what} step with the other "
                                  f"{self.world_size - 1} rank(s): {self.failure}; stopping without a new checkpoint "
                                  "(the previous one is intact).")

    def request_save(self) -> None:
        """This rank wants a checkpoint (its policy is due, or an early warning came): ask every rank
        to save at one step (returns at once). Asking again before that save is taken changes nothing."""
        if not self._save_wanted:
            self._save_wanted = True
            self.saving = True
            self._wake.set()

    def should_save(self, step: int) -> bool:
        """Called by the loop at the end of ``step`` (after :meth:`should_stop`): True on the agreed
        save step of a round, on every rank. One attribute access while no save point is asked;
        otherwise waits here (bounded, like :meth:`should_stop`) until the step is agreed."""
        if not self.saving:
            return False
        if self.unavailable is not None:  # no store: this rank's own wish (as a single process)
            take, self._save_wanted, self.saving = self._save_wanted, False, False
            return take
        self._await_decision(self._save_decided, "save")
        if self.save_at is None:  # a stop cut the round short: the emergency checkpoint replaces the save
            self.saving = False
            return False
        if step < self.save_at:
            return False
        self._save_wanted = False
        self._save_decided.clear()
        self.saving = False  # last: the thread may start the next round once it sees the save taken
        self._wake.set()
        return True

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.poll + 1.0)

    # -- the thread's side --------------------------------------------------------------------
    def _connect(self) -> Any:
        from torch.distributed import PrefixStore, TCPStore

        store = TCPStore(self.host, self.port, is_master=False, wait_for_workers=False,
                         timeout=timedelta(seconds=self.timeout))  # the connect, and every call but the wait
        return PrefixStore(self.prefix, store)

    def _run(self) -> None:
        try:
            store = self._connect()
        except Exception as e:  # no store (a job set up without one): each rank stops on its own notice
            self.unavailable = f"the job's store {self.host}:{self.port} could not be reached ({type(e).__name__}: {e})"
            logger.warning("No stop agreement on rank %d: %s; a notice stops only the rank that gets it.",
                           self.rank, self.unavailable)
            self._decided.set()
            return
        try:
            self._agree(store)
        except Exception as e:
            if not self._closed.is_set():
                self.failure = f"{type(e).__name__}: {e}"
                logger.warning("Stop agreement failed on rank %d: %s", self.rank, self.failure)
        finally:
            self._decided.set()
            self._save_decided.set()  # a loop waiting for a save point sees the failure (or the stop)

    def _agree(self, store: Any) -> None:
        published = False
        save_round, asked = 0, False
        while not self._closed.is_set():
            if self._local is not None and not published:
                store.compare_set("notice", "", json.dumps(self._local))
                store.add("requests", 1)
                published = True
            if store.check(["requests"]) and int(store.add("requests", 0)) > 0:
                break
            if self._save_decided.is_set():
                pass  # the loop has not taken the agreed save yet: the next round waits for it
            elif self._save_wanted and not asked:
                store.add(f"save/{save_round}/requests", 1)
                asked = True
            elif int(store.add(f"save/{save_round}/requests", 0)) > 0:
                self._agree_save(store, save_round)
                save_round, asked = save_round + 1, False
                continue
            self._wake.wait(self.poll)
            self._wake.clear()
        else:
            return
        self.stopping = True  # first: see the module docstring
        mine = self.finished
        t0 = time.monotonic()
        steps = self._publish_and_gather(store, "at/", mine, "")
        self.save_at = None  # a save round cut short by the stop: the emergency checkpoint replaces it
        self._save_decided.set()
        try:
            self.notice = json.loads(store.get("notice"))
        except Exception:
            self.notice = None
        self.stop_at = max(steps) + 1
        logger.info("Rank %d: every rank stops after step %d (steps finished when asked: %s; agreed in %.3fs)",
                    self.rank, self.stop_at, steps, time.monotonic() - t0)

    def _agree_save(self, store: Any, n: int) -> None:
        """Round ``n`` of save points: as the stop, under ``save/<n>/`` (see the module docstring)."""
        self.saving = True  # first: see the module docstring
        mine = self.finished
        steps = self._publish_and_gather(store, f"save/{n}/at/", mine, " a save point")
        self.save_at = max(steps) + 1
        self._save_decided.set()
        logger.debug("Rank %d: every rank saves after step %d (round %d, steps finished when asked: %s)", self.rank,
                     self.save_at, n, steps)

    def _publish_and_gather(self, store: Any, prefix: str, mine: int, what: str) -> list[int]:
        """Publish this rank's finished step under ``prefix<rank>`` and wait (bounded) for every rank's."""
        keys = [f"{prefix}{r}" for r in range(self.world_size)]
        store.set(keys[self.rank], str(mine))
        try:
            store.wait(keys, timedelta(seconds=self.timeout))
        except Exception as e:
            missing = [r for r in range(self.world_size) if not store.check([keys[r]])]
            raise AgreementFailed(f"rank(s) {', '.join(map(str, missing)) or '?'} did not answer{what} within "
                                  f"{self.timeout:.0f}s ({type(e).__name__})") from None
        return [int(store.get(k)) for k in keys]
