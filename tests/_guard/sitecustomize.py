"""Test guard, loaded by every Python process of the test suite (this folder is on PYTHONPATH).

Nothing here may contact the real cloud metadata addresses. When SPOTSAFE_TEST_GUARD_LOG
names a file, any connection to (or name lookup of) one of them is refused and recorded
there; tests/conftest.py fails the test that caused it, whichever process it ran in.
"""

from __future__ import annotations

import os
import socket

FORBIDDEN = ("169.254.169.254", "fd00:ec2::254", "metadata.google.internal", "metadata.google.internal.",
             "metadata")
LOG_ENV = "SPOTSAFE_TEST_GUARD_LOG"


def _host(address) -> str | None:
    if isinstance(address, tuple) and address:
        return str(address[0]).lower()
    return None


def _check(host: str | None, what: str) -> None:
    if host is None or host not in FORBIDDEN:
        return
    log = os.environ.get(LOG_ENV)
    msg = f"pid {os.getpid()} tried to {what} {host}"
    if log:
        with open(log, "a") as f:
            f.write(msg + "\n")
    raise ConnectionRefusedError(f"spotsafe test guard: {msg}; point SPOTSAFE_*_METADATA_URL at loopback.")


def install() -> None:
    if getattr(socket, "_spotsafe_guard", False):
        return
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self, address):
        _check(_host(address), "connect to")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check(_host(address), "connect to")
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        _check(str(host).lower() if host is not None else None, "resolve")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo
    socket._spotsafe_guard = True


if os.environ.get(LOG_ENV):
    install()
