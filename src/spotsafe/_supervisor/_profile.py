"""Profiles: the supervisor's settings for a pool of a given criticality, from TOML (no torch).

A profile is a frozen :class:`Profile`. The built-ins (``default``, ``production``,
``experiment``) can be extended or overridden in a TOML file::

    # spotsafe.toml
    [profiles.nightly]
    extends = "experiment"          # start from a built-in (or another profile in the file)
    save_every = "20m"
    max_restarts = 30
    spot_price = 0.9
    on_demand_price = 3.06

Files are looked up in this order: ``--profiles FILE``, ``$SPOTSAFE_PROFILES``,
``./spotsafe.toml``. Command-line flags override the profile's fields one by one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .._env import PROFILES_ENV
from .._units import parse_duration, parse_interval

DEFAULT_FILE = "spotsafe.toml"
MAX_FILE_BYTES = 1 << 20  # a profiles file is a few hundred bytes; anything past this is not one


@dataclass(frozen=True)
class Profile:
    """What ``spotsafe run`` does for one pool. Every field is documented in the README.

    Durations are seconds here; TOML and flags accept ``"15m"``, ``"2h"``, ``90``.
    """

    name: str = "default"
    save_every: str | None = None
    """Checkpoint interval handed to the command as ``$SPOTSAFE_SAVE_EVERY`` (``"10m"``, ``"500steps"``).
    ``spotsafe.Run`` uses it when the code passes no ``save_every``. None: the code decides."""
    remote: str | None = None
    """Object store URL handed to the command as ``$SPOTSAFE_REMOTE`` (used when the code passes no ``remote``)."""
    remote_required: bool = False
    """Refuse to start without a remote: a spot machine's local disk goes with it."""
    max_restarts: int = 20
    """Restarts allowed, whatever their cause (notices, drills, crashes)."""
    max_total_time: float | None = None
    """Wall-clock budget for the whole supervised run, restarts and backoff included; None: no limit."""
    max_crashes_without_progress: int = 3
    """Give up when this many crashes in a row left no newer checkpoint than before them."""
    backoff_base: float = 1.0
    """First delay after a crash; it doubles with each crash in a row (jitter x0.5..1.5)."""
    backoff_cap: float = 60.0
    """Longest delay after a crash."""
    grace: float = 30.0
    """After the supervisor is told to stop (SIGTERM, SIGINT, SIGUSR1), how long it waits for the
    command's emergency checkpoint before killing it. Also the command's ``$SPOTSAFE_SIGNAL_GRACE``."""
    advise_on_demand_after: int | None = None
    """After this many interruptions, say (once) how spot compares with on-demand at the measured rate."""
    spot_price: float | None = None
    """Price per hour of the spot machine, for the advice and ``spotsafe report``."""
    on_demand_price: float | None = None
    """Price per hour of the same machine on demand."""

    def __post_init__(self) -> None:
        for name in ("max_total_time", "backoff_base", "backoff_cap", "grace", "spot_price", "on_demand_price"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"Profile {self.name!r}: {name} must be a finite number, got {v!r}.")
        for name in ("max_restarts", "max_crashes_without_progress", "advise_on_demand_after"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"Profile {self.name!r}: {name} must be a whole number, got {v!r}.")
        if self.max_restarts < 0:
            raise ValueError(f"Profile {self.name!r}: max_restarts must be 0 or more, got {self.max_restarts}.")
        if self.max_crashes_without_progress < 1:
            raise ValueError(f"Profile {self.name!r}: max_crashes_without_progress must be 1 or more, "
                             f"got {self.max_crashes_without_progress}.")
        if self.backoff_base <= 0 or self.backoff_cap < self.backoff_base:
            raise ValueError(f"Profile {self.name!r}: backoff_base must be > 0 and backoff_cap >= backoff_base "
                             f"(got {self.backoff_base} and {self.backoff_cap}).")
        if self.grace <= 0:
            raise ValueError(f"Profile {self.name!r}: grace must be more than 0 seconds, got {self.grace}.")
        if self.advise_on_demand_after is not None and self.advise_on_demand_after < 1:
            raise ValueError(f"Profile {self.name!r}: advise_on_demand_after must be 1 or more (or left out).")
        for name in ("spot_price", "on_demand_price"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"Profile {self.name!r}: {name} must be 0 or more per hour, got {v}.")
        if self.save_every is not None:
            parse_interval(self.save_every, what=f"profile {self.name!r} save_every")

    def with_overrides(self, **values: Any) -> Profile:
        """A copy with every value that is not None applied (flags override the profile)."""
        given = {k: _convert(self.name, k, v) for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **given)


BUILTINS: dict[str, Profile] = {
    "default": Profile(),
    "production": Profile(
        name="production", save_every="10m", remote_required=True, max_restarts=10,
        max_crashes_without_progress=2, backoff_base=10.0, backoff_cap=300.0, grace=30.0,
        advise_on_demand_after=3),
    "experiment": Profile(
        name="experiment", save_every="30m", max_restarts=100, max_crashes_without_progress=5,
        backoff_base=2.0, backoff_cap=120.0, grace=30.0),
}

_DURATIONS = {"max_total_time", "backoff_base", "backoff_cap", "grace"}
_FIELDS = {f.name: f for f in fields(Profile)}


def _convert(profile: str, key: str, value: Any) -> Any:
    """A TOML or flag value, checked and turned into the field's type."""
    what = f"profile {profile!r} field {key}"
    if key not in _FIELDS or key == "name":
        known = ", ".join(sorted(k for k in _FIELDS if k != "name"))
        raise ValueError(f"Unknown field {key!r} in profile {profile!r}; the fields are: {known}.")
    if key in _DURATIONS:
        return parse_duration(value, what=what)
    if key == "remote_required":
        if not isinstance(value, bool):
            raise ValueError(f"The {what} must be true or false, got {value!r}.")
        return value
    if key in ("max_restarts", "max_crashes_without_progress", "advise_on_demand_after"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"The {what} must be a whole number, got {value!r}.")
        return value
    if key in ("spot_price", "on_demand_price"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"The {what} must be a finite number (price per hour), got {value!r}.")
        return float(value)
    if key == "save_every":
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"The {what} must be a string, got {value!r}.")
    return value


def profiles_file(path: str | os.PathLike | None = None) -> Path | None:
    """The profiles file in use: ``path``, ``$SPOTSAFE_PROFILES``, or ``./spotsafe.toml`` when it exists."""
    if path is not None:
        return Path(path)
    env = os.environ.get(PROFILES_ENV)
    if env:
        return Path(env)
    local = Path(DEFAULT_FILE)
    return local if local.is_file() else None


def load_profiles(path: str | os.PathLike | None = None) -> dict[str, Profile]:
    """The built-ins, then every ``[profiles.NAME]`` table of the file (``extends`` resolved)."""
    out = dict(BUILTINS)
    file = profiles_file(path)
    if file is None:
        return out
    data = _read_toml(file)
    tables = data.get("profiles", {})
    extra = set(data) - {"profiles"}
    if extra or not isinstance(tables, dict):
        raise ValueError(f"Profiles file {file} may only hold [profiles.NAME] tables; found {sorted(extra)}.")
    pending = dict(tables)
    for _ in range(len(pending) + 1):  # bounded: each round resolves at least one, or fails
        if not pending:
            break
        progressed = False
        for name, table in list(pending.items()):
            if not isinstance(table, dict):
                raise ValueError(f"Profile {name!r} in {file} must be a table ([profiles.{name}]).")
            base_name = table.get("extends", "default" if name not in BUILTINS else name)
            if not isinstance(base_name, str):
                raise ValueError(f"Profile {name!r} in {file} has extends = {base_name!r}; it must be the name of one "
                                 "profile, e.g. extends = \"experiment\".")
            if base_name in pending and base_name != name:
                continue
            if base_name not in out:
                raise ValueError(f"Profile {name!r} in {file} extends unknown profile {base_name!r}; "
                                 f"known: {', '.join(sorted(set(out) | set(pending)))}.")
            values = {k: v for k, v in table.items() if k != "extends"}
            try:
                out[name] = dataclasses.replace(out[base_name], name=name).with_overrides(**values)
            except ValueError as e:
                raise ValueError(f"{str(e).rstrip('.')} (in {file}).") from None
            del pending[name]
            progressed = True
        if not progressed:
            raise ValueError(f"Profiles {sorted(pending)} in {file} extend each other in a circle.")
    return out


def _read_toml(file: Path) -> dict[str, Any]:
    """The parsed profiles file; every way it can be unreadable is one sentence (a ValueError)."""
    where = f"; pass a TOML file to --profiles or fix ${PROFILES_ENV}"
    try:
        # O_NONBLOCK: a FIFO given by mistake must not block the open; it is refused below.
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ValueError(f"Profiles file {file} does not exist; pass an existing file to --profiles "
                         f"or unset ${PROFILES_ENV}.") from None
    except OSError as e:
        raise ValueError(f"Profiles file {file} cannot be opened ({e.strerror}){where}.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ValueError(f"Profiles file {file} is {kind}{where}.")
        if st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"Profiles file {file} is {st.st_size} bytes, more than a profiles file holds{where}.")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"Profiles file {file} cannot be read ({e.strerror}){where}.") from None
    finally:
        os.close(fd)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"Profiles file {file} is not UTF-8 text{where}.") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"Profiles file {file} is not valid TOML ({e}); fix it or pass another --profiles.") from None


def get_profile(name: str | None = None, path: str | os.PathLike | None = None) -> Profile:
    """Profile ``name`` (``default`` when None) from the built-ins and the profiles file."""
    profiles = load_profiles(path)
    name = name or "default"
    if name not in profiles:
        raise ValueError(f"Unknown profile {name!r}; choose one of: {', '.join(sorted(profiles))} "
                         f"(built-ins, and [profiles.NAME] tables in spotsafe.toml or --profiles FILE).")
    return profiles[name]
