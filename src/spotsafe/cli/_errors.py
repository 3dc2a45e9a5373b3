"""Every error a command meets ends as one sentence on stderr and an exit code; never a traceback.

The one place that decides it is :class:`SafeGroup`, the ``spotsafe`` group: whatever a
command raises (a :class:`~spotsafe.errors.SpotsafeError`, an ``OSError`` from a file or a
store, a ``ValueError`` from a malformed file, a botocore error) becomes ``Error: <one
sentence>`` with

* exit 2 for a usage error: an option, an argument or the profile chosen is wrong (click's
  own usage errors, and a root URL with an unknown scheme);
* exit 1 for everything else: invalid or missing data, an unreadable file, an unreachable
  store, missing credentials, or a bug (then the sentence says so; ``SPOTSAFE_DEBUG=1``
  shows the traceback).

The sentence is cut to one line and its control characters shown as escapes
(:func:`spotsafe.cli._safe.plain`): it may quote a name from a file.
"""

from __future__ import annotations

import os
from typing import NoReturn

import click

from .._env import DEBUG_ENV
from ..errors import MissingDependencyError, SpotsafeError, UnsupportedURLError
from ._safe import plain


class CommandError(click.ClickException):
    """``Error: <message>`` on stderr, on one line with control characters escaped, and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(_sentence(message))
        self.exit_code = exit_code


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop the command with ``Error: <message>`` and exit ``code`` (1: data or failure, 2: usage)."""
    raise CommandError(message, code)


def _sentence(message: object) -> str:
    text = plain(" ".join(str(message).split()))
    if text and text[-1] not in ".!?)":
        text += "."
    return text


def as_command_error(e: BaseException) -> CommandError:
    """The one sentence and exit code for an exception a command did not handle."""
    if isinstance(e, UnsupportedURLError):
        return CommandError(str(e), 2)
    if isinstance(e, (SpotsafeError, MissingDependencyError)):
        return CommandError(str(e))
    if isinstance(e, OSError):
        if e.filename is not None and e.strerror:
            where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
            return CommandError(f"Cannot use {where}: {e.strerror}; check the path and its permissions.")
        return CommandError(str(e) or f"{type(e).__name__}; check the path or the store, and retry")
    if type(e).__module__.split(".")[0] in ("obstore", "gcsfs", "adlfs", "aiohttp"):
        first = str(e).split("\n", 1)[0]  # obstore appends a multi-line debug dump
        return CommandError(f"The object store failed ({type(e).__name__}: {first}); check its URL, endpoint and "
                            "credentials.")
    if isinstance(e, (ValueError, UnicodeError)):
        return CommandError(str(e) or type(e).__name__)
    if isinstance(e, MemoryError):
        return CommandError("Out of memory; free some, or ask for less.")
    return CommandError(f"Internal error ({type(e).__name__}: {e}); this is a bug in spotsafe: rerun with "
                        f"{DEBUG_ENV}=1 for the traceback and report it.")


class SafeGroup(click.Group):
    """A click group whose commands' unhandled exceptions become :class:`CommandError` (see the module)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # click shows these itself (a broken pipe: quietly, exit 1)
        except Exception as e:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            raise as_command_error(e) from None
