"""Polling sources: a daemon thread per source, HTTP to a metadata server, no proxies.

Metadata servers must be reached directly (a corporate ``HTTP_PROXY`` would swallow the
request), so the client ignores proxy settings. Every request has a short timeout and
the thread never touches the training loop: it only ``post()``s a notice.

In ``auto`` mode a source first *probes*: a cloud it is not on does not answer its
protocol (connection refused, a timeout, or a 404 from another cloud's server), and the
source then ends quietly (a debug line in the log). But a metadata server can be slow to
answer at boot, or blocked for a moment: when the machine's firmware says it *is* on that
cloud (the DMI vendor strings, :func:`dmi_cloud`), a failed probe is retried with backoff
(1 s doubling to 60 s) until it answers or the run ends. A source asked for by name keeps
trying and logs a warning once. Each source tells the watcher how its first probe went,
so that one INFO line says which sources are watching.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .._env import DMI_DIR_ENV, NOTICE_POLL_ENV
from .._units import parse_duration
from ._notice import Notice, NoticeSource

if TYPE_CHECKING:  # pragma: no cover
    from ._watcher import NoticeWatcher

logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 2.0
MAX_POLL_S = 5.0
PROBE_BACKOFF = (1.0, 60.0)  # first delay and cap of the probes on a machine that is on the source's cloud

DMI_DIR = "/sys/class/dmi/id"
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"  # every Azure VM's chassis asset tag (Hyper-V alone lacks it)


def _dmi(directory: Path, name: str) -> str:
    try:
        with open(directory / name, "rb") as f:  # sysfs attributes: a few bytes, never blocking
            return f.read(256).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def dmi_cloud(directory: str | os.PathLike | None = None) -> str | None:
    """The cloud the machine's firmware names, from local facts only: "aws", "gcp", "azure" or None.

    Reads ``sys_vendor``, ``product_name``, ``bios_vendor``, ``board_vendor`` (and Azure's
    ``chassis_asset_tag``) under ``directory``, else ``$SPOTSAFE_DMI_DIR``, else
    /sys/class/dmi/id. Nothing is asked over the network.
    """
    d = Path(directory or os.environ.get(DMI_DIR_ENV) or DMI_DIR)
    vendors = {_dmi(d, n) for n in ("sys_vendor", "bios_vendor", "board_vendor")}
    product = _dmi(d, "product_name")
    if "Amazon EC2" in vendors or product.startswith("Amazon EC2") or "amazon" in _dmi(d, "bios_version").lower():
        return "aws"
    if "Google" in vendors or product == "Google Compute Engine":
        return "gcp"
    if "Microsoft Corporation" in vendors and _dmi(d, "chassis_asset_tag") == AZURE_ASSET_TAG:
        return "azure"
    return None

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unreachable(Exception):
    """The metadata server did not answer (refused, timed out, reset)."""


@dataclass(frozen=True, kw_only=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body.decode("utf-8"))


def http(method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
         timeout: float = 1.0) -> Response:
    """One request; any HTTP status is returned, a network failure raises :class:`Unreachable`."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return Response(status=r.status, headers={k.lower(): v for k, v in r.headers.items()}, body=r.read(1 << 20))
    except urllib.error.HTTPError as e:
        try:
            data = e.read(1 << 20)
        except Exception:
            data = b""
        return Response(status=e.code, headers={k.lower(): v for k, v in (e.headers or {}).items()}, body=data)
    except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: http.client's bad status line
        raise Unreachable(f"{method} {url}: {getattr(e, 'reason', e)}") from e


def poll_interval(value: float | str | timedelta | None) -> float:
    """The polling period: the argument, else ``$SPOTSAFE_NOTICE_POLL_S``, else 2 s; at most 5 s."""
    if value is None:
        value = os.environ.get(NOTICE_POLL_ENV) or DEFAULT_POLL_S
    seconds = parse_duration(value, what="poll interval")
    if not 0 < seconds <= MAX_POLL_S:
        raise ValueError(f"A notice poll interval of {seconds:g}s is outside (0, {MAX_POLL_S:g}] s; notices "
                         "give 30 s to 2 min, so poll at least every 5 s.")
    return seconds


def base_url(url: str | None, env: str, default: str) -> str | None:
    """The argument, else ``$env``, else ``default``; None when set to ``off``."""
    value = url if url is not None else os.environ.get(env, default)
    value = value.strip()
    if value.lower() in ("off", "none", "0", ""):
        return None
    return value.rstrip("/")


class Poller(NoticeSource):
    """A source that polls an HTTP endpoint from a daemon thread.

    Subclasses set ``name`` and ``env`` (the base-URL variable) and ``default_url``, and
    implement ``probe()`` (True when the server speaks this protocol) and ``poll()``
    (post a notice when there is one; return True to stop polling).
    """

    env = ""
    default_url = ""

    def __init__(self, url: str | None = None, *, interval: float | str | timedelta | None = None,
                 timeout: float = 1.0, auto: bool = False,
                 probe_backoff: tuple[float, float] = PROBE_BACKOFF) -> None:
        self.url = base_url(url, self.env, self.default_url)
        self.interval = poll_interval(interval)
        self.timeout = timeout
        self.auto = auto
        self.probe_backoff = probe_backoff
        self.polls = 0
        self.probes = 0
        self._watcher: NoticeWatcher | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = False

    def start(self, watcher: NoticeWatcher) -> None:
        if self.url is None:
            logger.debug("%s notices are off (%s=off)", self.name, self.env)
            return
        self._watcher = watcher
        self._active = True
        self._thread = threading.Thread(target=self._run, name=f"spotsafe-notice-{self.name}", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return self._active

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1.0)
        self._active = False

    def post(self, notice: Notice) -> None:
        """Hand ``notice`` to the watcher (from the polling thread, which only runs after :meth:`start`)."""
        if self._watcher is None:
            raise RuntimeError(f"{type(self).__name__}.post() before start(): start the source with a NoticeWatcher.")
        self._watcher.post(notice)

    def probe(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def poll(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tell(self, state: str, detail: str = "") -> None:
        probed = getattr(self._watcher, "probed", None)
        if probed is not None:
            probed(self, state, detail)

    def _run(self) -> None:
        try:
            answered = self._probe_once()
            if not answered and self.auto:
                cloud = dmi_cloud()
                if cloud != self.name:
                    logger.debug("No %s metadata server at %s: %s notices off", self.name, self.url, self.name)
                    self._active = False
                    self._tell("off", "no metadata server")
                    return
                self._tell("probing", f"this machine is on {self.name} (DMI), no answer yet")
                logger.info("The %s metadata server at %s did not answer, but this machine is on %s (DMI): probing "
                            "again every %g s to %g s", self.name, self.url, self.name, *self.probe_backoff)
                if not self._probe_with_backoff():
                    return  # stopped
                logger.info("The %s metadata server at %s answers: watching for %s notices", self.name, self.url,
                            self.name)
            else:
                self._tell("on" if answered else "probing", "" if answered else "not answering yet")
            warned = not answered  # the probe has said so already
            while not self._stop.is_set():
                try:
                    self.polls += 1
                    if self.poll():
                        return
                    warned = False
                except Unreachable as e:
                    if not warned:
                        logger.warning("The %s metadata server at %s does not answer (%s); still trying every %gs",
                                       self.name, self.url, e, self.interval)
                        warned = True
                self._stop.wait(self.interval)
        except Exception:
            logger.exception("The %s notice poller failed; %s notices are off", self.name, self.name)
            self._active = False

    def _probe_with_backoff(self) -> bool:
        """Probe until the server answers (True) or the source is stopped (False); delays double
        from ``probe_backoff[0]`` up to ``probe_backoff[1]``."""
        delay, cap = self.probe_backoff
        while not self._stop.wait(delay):
            if self._probe_once():
                return True
            delay = min(cap, delay * 2.0)
        return False

    def _probe_once(self) -> bool:
        self.probes += 1
        try:
            return self.probe()
        except Unreachable as e:
            if not self.auto:
                logger.warning("The %s metadata server at %s does not answer (%s); still trying every %gs",
                               self.name, self.url, e, self.interval)
            return False
