"""Cloud metadata sources: AWS IMDSv2, GCP's metadata server, Azure Scheduled Events.

What each provider documents, and what is used here:

* **AWS** (IMDSv2): ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``
  gives a token; ``GET /latest/meta-data/spot/instance-action`` with
  ``X-aws-ec2-metadata-token`` answers 404 until a spot interruption is scheduled, then
  ``{"action": "terminate"|"stop"|"hibernate", "time": "2026-11-23T08:22:00Z"}``; the time
  is the deadline (2 minutes after the notice). A 401 means the token expired: fetch a
  new one. ``GET /latest/meta-data/events/recommendations/rebalance`` answers
  ``{"noticeTime": ...}`` when the instance is at elevated risk: an *advisory* notice.
* **GCP**: ``GET /computeMetadata/v1/instance/preempted`` with ``Metadata-Flavor: Google``
  answers ``FALSE``, then ``TRUE`` once the VM is being preempted; 30 s remain.
* **Azure**: ``GET /metadata/scheduledevents?api-version=2020-07-01`` with ``Metadata: true``
  answers ``{"DocumentIncarnation": n, "Events": [...]}``; an event with ``EventType``
  ``Preempt`` (spot eviction) or ``Terminate`` for this VM is a notice and its
  ``NotBefore`` (RFC 1123) the deadline. Once the checkpoint is durable the event is
  acknowledged with ``POST`` ``{"StartRequests": [{"EventId": ...}]}`` so the platform
  may proceed at once. Azure's first Scheduled Events call can take up to 2 minutes (the
  service starts on demand), so the probe first asks the instance endpoint (1 s) and
  then waits for Scheduled Events with a long timeout, in the poller's own thread.

Base URLs come from the argument, else ``SPOTSAFE_AWS_METADATA_URL``,
``SPOTSAFE_GCP_METADATA_URL``, ``SPOTSAFE_AZURE_METADATA_URL``, else the real addresses;
``off`` turns a source off.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from .._env import AWS_METADATA_URL_ENV, AZURE_METADATA_URL_ENV, GCP_METADATA_URL_ENV
from ._notice import DEFAULT_GRACE, Notice
from ._poller import Poller, Unreachable, http

logger = logging.getLogger(__name__)


def _iso_time(text: str) -> float | None:
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _rfc1123_time(text: str) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class AWS(Poller):
    """AWS spot interruption notices (and rebalance recommendations) over IMDSv2."""

    name = "aws"
    env = AWS_METADATA_URL_ENV
    default_url = "http://169.254.169.254"
    TOKEN_TTL = 21600

    def __init__(self, url: str | None = None, *, rebalance: bool = True, **kwargs) -> None:
        super().__init__(url, **kwargs)
        self.rebalance = rebalance
        self._token: str | None = None
        self._token_at = 0.0
        self._rebalance_seen = False

    def _fetch_token(self) -> str | None:
        r = http("PUT", f"{self.url}/latest/api/token", timeout=self.timeout,
                 headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL)})
        if r.status != 200 or not r.body:
            return None
        self._token, self._token_at = r.body.decode("ascii", "replace").strip(), time.monotonic()
        return self._token

    def _get(self, path: str):
        token = self._token
        if token is None or time.monotonic() - self._token_at > self.TOKEN_TTL - 60:
            token = self._fetch_token()
            if token is None:
                raise Unreachable(f"{self.url} gave no IMDSv2 token")
        r = http("GET", f"{self.url}{path}", timeout=self.timeout, headers={"X-aws-ec2-metadata-token": token})
        if r.status == 401:  # expired or revoked token: once more with a new one
            token = self._fetch_token()
            if token is None:
                raise Unreachable(f"{self.url} gave no IMDSv2 token")
            r = http("GET", f"{self.url}{path}", timeout=self.timeout, headers={"X-aws-ec2-metadata-token": token})
        return r

    def probe(self) -> bool:
        return self._fetch_token() is not None

    def poll(self) -> bool:
        r = self._get("/latest/meta-data/spot/instance-action")
        if r.status == 200:
            try:
                doc = r.json()
                action, when = doc.get("action", "terminate"), doc.get("time", "")
            except (ValueError, AttributeError):
                action, when = "terminate", ""
            deadline = _iso_time(when) if when else None
            now = time.time()
            self.post(Notice(source="aws", deadline=deadline if deadline is not None else now + 120.0,
                             reason=f"spot instance-action: {action} at {when or 'unknown time'}", received=now))
            return True
        if self.rebalance and not self._rebalance_seen:
            r = self._get("/latest/meta-data/events/recommendations/rebalance")
            if r.status == 200:
                self._rebalance_seen = True
                try:
                    when = r.json().get("noticeTime", "")
                except (ValueError, AttributeError):
                    when = ""
                self.post(Notice(source="aws-rebalance", deadline=None,
                                 reason=f"rebalance recommendation at {when or 'unknown time'}", advisory=True))
        return False


class GCP(Poller):
    """GCP preemption (spot and preemptible VMs) from the metadata server; 30 s of notice."""

    name = "gcp"
    env = GCP_METADATA_URL_ENV
    default_url = "http://metadata.google.internal"
    HEADERS = {"Metadata-Flavor": "Google"}

    def _preempted(self):
        return http("GET", f"{self.url}/computeMetadata/v1/instance/preempted", headers=self.HEADERS,
                    timeout=self.timeout)

    def probe(self) -> bool:
        r = self._preempted()
        return r.status == 200 and r.headers.get("metadata-flavor", "").lower() == "google"

    def poll(self) -> bool:
        r = self._preempted()
        if r.status == 200 and r.body.strip().upper() == b"TRUE":
            now = time.time()
            self.post(Notice(source="gcp", deadline=now + DEFAULT_GRACE, reason="instance/preempted is TRUE",
                             received=now))
            return True
        return False


class Azure(Poller):
    """Azure spot evictions (``Preempt``) and ``Terminate`` from Scheduled Events, acknowledged once safe."""

    name = "azure"
    env = AZURE_METADATA_URL_ENV
    default_url = "http://169.254.169.254"
    HEADERS = {"Metadata": "true"}
    EVENTS = "/metadata/scheduledevents?api-version=2020-07-01"
    KINDS = ("Preempt", "Terminate")
    FIRST_CALL_TIMEOUT = 120.0

    def __init__(self, url: str | None = None, **kwargs) -> None:
        super().__init__(url, **kwargs)
        self.vm_name: str | None = None
        self.event_id: str | None = None
        self.acknowledged = False

    def probe(self) -> bool:
        r = http("GET", f"{self.url}/metadata/instance/compute/name?api-version=2021-02-01&format=text",
                 headers=self.HEADERS, timeout=self.timeout)
        if r.status != 200:
            return False
        self.vm_name = r.body.decode("utf-8", "replace").strip() or None
        r = http("GET", f"{self.url}{self.EVENTS}", headers=self.HEADERS, timeout=self.FIRST_CALL_TIMEOUT)
        return r.status == 200

    def poll(self) -> bool:
        r = http("GET", f"{self.url}{self.EVENTS}", headers=self.HEADERS, timeout=self.timeout)
        if r.status != 200:
            return False
        try:
            events = r.json().get("Events") or []
        except (ValueError, AttributeError):
            return False
        for ev in events:
            if ev.get("EventType") not in self.KINDS:
                continue
            resources = ev.get("Resources") or []
            if self.vm_name and resources and self.vm_name not in resources:
                continue  # scheduled for another VM of the scale set
            now = time.time()
            deadline = _rfc1123_time(ev.get("NotBefore") or "")
            self.event_id = ev.get("EventId")
            self.post(Notice(source="azure", deadline=deadline if deadline is not None else now + DEFAULT_GRACE,
                             reason=f"Scheduled Event {ev.get('EventType')} {self.event_id} not before "
                                    f"{ev.get('NotBefore') or 'now'}", received=now))
            return True
        return False

    def acknowledge(self) -> None:
        if self.event_id is None or self.acknowledged:
            return
        body = json.dumps({"StartRequests": [{"EventId": self.event_id}]}).encode()
        try:
            r = http("POST", f"{self.url}{self.EVENTS}", headers={**self.HEADERS, "Content-Type": "application/json"},
                     body=body, timeout=max(self.timeout, 2.0))
        except Unreachable as e:
            logger.warning("Could not acknowledge Azure Scheduled Event %s (%s); it starts at NotBefore instead",
                           self.event_id, e)
            return
        self.acknowledged = r.status == 200
        if self.acknowledged:
            logger.info("Acknowledged Azure Scheduled Event %s", self.event_id)
        else:
            logger.warning("Azure refused the acknowledgement of %s (HTTP %d)", self.event_id, r.status)
