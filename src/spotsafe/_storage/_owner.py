"""Who writes a run root: the identity kept in the writer lock and the remote lease.

A holder is named by host, pid, run id, attempt and the time it took the root, which is
what a refused writer prints. Three more facts let another process on the same machine
tell, without waiting for any expiry, whether that holder is still alive: the kernel's
boot id and pid namespace (so a pid is only compared with a pid of the same kernel and
namespace: a container restart or a second container on the host is not "this
machine"), and the process's start time (so a recycled pid is not taken for the holder).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(256).strip() or None
    except OSError:
        return None


def boot_id() -> str | None:
    """This kernel's boot id (Linux), or None."""
    return _read("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str | None:
    """This process's pid namespace, as ``pid:[inode]`` (Linux), or None."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux), or None when unknown or gone."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:  # the command name in field 2 may hold spaces and parentheses: split after its last ")"
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True, kw_only=True)
class Owner:
    """A writer of a run root, as recorded in its lock file or lease."""

    host: str
    pid: int
    run_id: str | None = None
    attempt: int | None = None
    since: str = field(default_factory=utc_now)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    boot: str | None = None
    pidns: str | None = None
    start: int | None = None

    @classmethod
    def this_process(cls, run_id: str | None = None, attempt: int | None = None) -> Owner:
        pid = os.getpid()
        return cls(host=socket.gethostname(), pid=pid, run_id=run_id, attempt=attempt, boot=boot_id(),
                   pidns=pid_namespace(), start=process_start(pid))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Owner | None:
        """The owner a lock file or lease names, or None when it names none (empty, garbage)."""
        if not isinstance(d, dict) or not isinstance(d.get("host"), str) or type(d.get("pid")) is not int:
            return None

        def opt(key: str, kind: type) -> Any:
            v = d.get(key)
            return v if isinstance(v, kind) and not isinstance(v, bool) else None

        return cls(host=d["host"], pid=d["pid"], run_id=opt("run_id", str), attempt=opt("attempt", int),
                   since=opt("since", str) or "unknown", token=opt("token", str) or "", boot=opt("boot", str),
                   pidns=opt("pidns", str), start=opt("start", int))

    def same_machine(self, other: Owner) -> bool:
        """Whether ``other``'s pid can be looked up here: same host, kernel boot and pid namespace."""
        if self.host != other.host:
            return False
        if self.boot and other.boot and self.boot != other.boot:
            return False
        return not (self.pidns and other.pidns and self.pidns != other.pidns)

    def is_gone(self, viewer: Owner) -> bool:
        """Whether this owner's process is known to be dead, as seen from ``viewer``'s machine.

        False when it cannot be told (another machine, another pid namespace): the caller
        then waits for the holder to release or let its lease expire.
        """
        if not viewer.same_machine(self):
            return False
        if not (self.boot and viewer.boot) and not (self.pidns and viewer.pidns):
            # hostname alone: trust it only as far as a live pid goes
            return not pid_alive(self.pid)
        if not pid_alive(self.pid):
            return True
        now = process_start(self.pid)
        return self.start is not None and now is not None and now != self.start

    def describe(self) -> str:
        """``host H, pid P, run R, attempt A, since T`` (the parts that are known)."""
        parts = [f"host {self.host}", f"pid {self.pid}"]
        if self.run_id:
            parts.append(f"run {self.run_id}")
        if self.attempt is not None:
            parts.append(f"attempt {self.attempt}")
        parts.append(f"since {self.since}")
        return ", ".join(parts)
