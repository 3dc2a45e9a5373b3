"""Text from files, made safe to print: the one place the commands escape what they show.

Names and reasons that the commands print come from checkpoints, manifests and event
files, which anyone with write access to a run root or a bucket can fill. Printed as they
are, ``\\x1b]...`` or ``\\x1b[2J`` would drive the terminal, and ``[/bogus]`` or
``[link=...]`` would be read as rich markup (an error, or a forged link). So:

* :func:`plain` shows every control character (C0, DEL, C1, and the Unicode line
  separators and bidirectional overrides that reorder what a reader sees) as a Python
  escape (``\\x1b``, ``\\u202e``), keeping the text on one line; for ``click.echo`` and
  other output that rich does not parse;
* :func:`markup` is :func:`plain` with rich markup escaped as well; for anything put into
  a string or a table cell that rich renders.

JSON output needs neither: ``json.dumps`` escapes control characters itself.
"""

from __future__ import annotations

import re

from rich.markup import escape as _escape_markup

# C0 controls (tab and newline included: one value stays on one line), DEL, C1 controls,
# U+2028/U+2029 (line and paragraph separators) and the bidirectional embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069); lone surrogates (JSON can hold
# "\\ud800"), which no terminal encoding can print.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
MAX_CHARS = 2000  # a value longer than this is cut: a hostile file can make one arbitrarily long


def _show(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def plain(value: object, limit: int = MAX_CHARS) -> str:
    """``str(value)`` on one line with every control character shown as an escape, cut at ``limit``."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return _CONTROL.sub(_show, text)


def markup(value: object, limit: int = MAX_CHARS) -> str:
    """:func:`plain`, with rich markup escaped too: safe inside any string or cell rich renders."""
    return _escape_markup(plain(value, limit))
