"""The writer's hold on its run root: the local ``flock`` and the remote leases, taken together.

One writer per root (DESIGN.md). A manager that writes takes, before anything else writes
there, the lock of a local root (:mod:`spotsafe._storage._lock`: the kernel releases it when
the process dies) and a lease on every object store it writes to, the remote and a URL root
(:mod:`spotsafe._storage._lease`: owner, heartbeat, expiry). Each store's ``write_guard`` is
the lease's check, so a writer whose lease was taken over stops before its next commit or
deletion. Readers (``read_only=True``) hold nothing, and their guard refuses every write.
"""

from __future__ import annotations

import os

from .._env import ATTEMPT_ENV, RUN_ID_ENV
from .._format._layout import WRITER_LEASE, WRITER_LOCK
from .._storage import LeaseOptions, LocalFiles, Owner, RemoteLease, Storage, Uploadable, WriterLock
from ..errors import ReadOnlyRootError, RemoteError, RootLockedError
from ._replicate import is_transient


class RootHold:
    """The lock and leases one writer holds (none for a reader); :meth:`take` or :meth:`reader`
    builds it, :meth:`release` ends it.

    Called from the thread that creates and closes the manager; the checks from any thread.
    """

    def __init__(self, what: str, owner: Owner | None = None, *, read_only: bool = False) -> None:
        self.what = what  # the manager, as its repr names it in errors
        self.owner = owner
        self.read_only = read_only
        self.lock: WriterLock | None = None
        self.leases: list[RemoteLease] = []

    @classmethod
    def take(cls, what: str, stores: list[Storage | None], *, run_id: str | None, attempt: int | None,
             options: LeaseOptions) -> RootHold:
        """Lock the local root and lease every object store in ``stores``; raise RootLockedError
        naming the holder. A store unreachable now is leased later by the heartbeat (writes to it
        wait until then). On any failure, whatever was taken is released."""
        if run_id is None:
            run_id = os.environ.get(RUN_ID_ENV) or None
        if attempt is None:
            env = os.environ.get(ATTEMPT_ENV, "")
            attempt = int(env) if env.isdigit() else None
        hold = cls(what, Owner.this_process(run_id, attempt))
        try:
            for st in stores:
                if isinstance(st, LocalFiles):  # a directory of this machine: flock
                    st.make_root()
                    hold.lock = WriterLock(st.path(), WRITER_LOCK, hold.owner)
                    hold.lock.acquire()
                elif isinstance(st, Uploadable):  # an object store
                    hold._lease(st, options)
        except BaseException:
            hold.release(hurry=True)
            raise
        return hold

    @classmethod
    def reader(cls, what: str, stores: list[Storage | None]) -> RootHold:
        """No lock, no lease: every write to an object store in ``stores`` raises ReadOnlyRootError."""
        hold = cls(what, read_only=True)
        for st in stores:
            if isinstance(st, Uploadable):
                st.write_guard = hold.refuse
        return hold

    def _lease(self, st: Uploadable, options: LeaseOptions) -> None:
        lease = RemoteLease(st, WRITER_LEASE, self.owner, options, is_transient=is_transient)
        try:
            lease.acquire()
        except RootLockedError:
            raise
        except Exception as e:
            if not is_transient(e):
                raise RemoteError(f"Cannot take the writer lease {lease.url} ({type(e).__name__}: {e}); check "
                                  "the URL, the bucket and the credentials.") from e
            lease.defer(e)  # unreachable now: writes there wait until the heartbeat takes it
        self.leases.append(lease)
        st.write_guard = lease.guard
        lease.start()

    def unreachable(self, store: Storage) -> BaseException | None:
        """Why ``store`` could not be leased at start, while its lease is still pending (else None):
        a restore then falls back to the other tier at once instead of waiting on it again."""
        for lease in self.leases:
            if lease.storage is store and lease.state == "pending":
                return lease.deferred
        return None

    def refuse(self, strict: bool = False) -> None:
        """The write guard of a reader: every write raises."""
        raise ReadOnlyRootError(f"{self.what} was opened with read_only=True; open it without read_only to "
                                "write, once no other writer holds the root.")

    def check_writer(self) -> None:
        """Raise when this manager may not write: read-only, or a lease was lost."""
        if self.read_only:
            self.refuse()
        self.check_leases()

    def check_leases(self) -> None:
        """Raise :class:`LeaseLostError` when another writer took a lease over (a reader has none)."""
        for lease in self.leases:
            lease.check()

    def release(self, hurry: bool = False) -> None:
        """Release the leases (if still ours) and the lock; idempotent. ``hurry``: a hung store costs 1 s."""
        for lease in self.leases:
            lease.release(timeout=1.0 if hurry else 10.0)
        if self.lock is not None:
            self.lock.release()
