"""A loopback HTTP server that answers as the clouds' metadata services document.

One server speaks all three protocols on different paths (each client is given the same
base URL); ``clouds=`` limits which ones answer, so a test can play "on AWS" or "off-cloud".

* AWS IMDSv2: ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds``
  (1..21600) and returns a token; ``GET /latest/meta-data/...`` without a valid
  ``X-aws-ec2-metadata-token`` is 401. ``spot/instance-action`` and
  ``events/recommendations/rebalance`` are 404 until armed, then the documented JSON.
* GCP: ``GET /computeMetadata/v1/instance/preempted`` needs ``Metadata-Flavor: Google``
  (403 otherwise), answers ``FALSE``/``TRUE`` with ``Metadata-Flavor: Google``.
* Azure: ``GET /metadata/scheduledevents?api-version=...`` and
  ``/metadata/instance/compute/name`` need ``Metadata: true`` and an api-version (400
  otherwise); ``POST`` ``{"StartRequests": [{"EventId": ...}]}`` acknowledges events.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ENV_NAMES = {"aws": "SPOTSAFE_AWS_METADATA_URL", "gcp": "SPOTSAFE_GCP_METADATA_URL",
             "azure": "SPOTSAFE_AZURE_METADATA_URL"}


class MetadataServer:
    def __init__(self, clouds=("aws", "gcp", "azure"), vm_name: str = "spot-vm-0") -> None:
        self.clouds = set(clouds)
        self.vm_name = vm_name
        self.lock = threading.Lock()
        self.tokens: set[str] = set()
        self.aws_action: dict | None = None
        self.aws_rebalance: dict | None = None
        self.gcp_preempted = False
        self.azure_events: list[dict] = []
        self.azure_incarnation = 1
        self.azure_acks: list[tuple[float, str]] = []
        self.requests: list[tuple[float, str, str, int]] = []  # (time, method, path, status)
        self._httpd: ThreadingHTTPServer | None = None

    # -- control -------------------------------------------------------------------------
    def start(self) -> MetadataServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._answer(self, "GET")

            def do_PUT(self) -> None:
                server._answer(self, "PUT")

            def do_POST(self) -> None:
                server._answer(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def env(self) -> dict[str, str]:
        return {name: self.url for name in ENV_NAMES.values()}

    def aws_interrupt(self, seconds: float = 120.0, action: str = "terminate") -> None:
        when = datetime.fromtimestamp(time.time() + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.lock:
            self.aws_action = {"action": action, "time": when}

    def aws_rebalance_now(self) -> None:
        with self.lock:
            self.aws_rebalance = {"noticeTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

    def gcp_preempt(self) -> None:
        with self.lock:
            self.gcp_preempted = True

    def azure_preempt(self, seconds: float = 30.0, *, event_type: str = "Preempt", resources=None) -> str:
        event_id = str(uuid.uuid4()).upper()
        not_before = format_datetime(datetime.fromtimestamp(time.time() + seconds, UTC), usegmt=True)
        with self.lock:
            self.azure_events.append({
                "EventId": event_id, "EventType": event_type, "ResourceType": "VirtualMachine",
                "Resources": [self.vm_name] if resources is None else list(resources), "EventStatus": "Scheduled",
                "NotBefore": not_before, "Description": "Virtual machine is being preempted.",
                "EventSource": "Platform", "DurationInSeconds": -1})
            self.azure_incarnation += 1
        return event_id

    def reset(self) -> None:
        """A new machine: no notice pending anywhere (acks and the request log are kept)."""
        with self.lock:
            self.aws_action = self.aws_rebalance = None
            self.gcp_preempted = False
            self.azure_events = []
            self.azure_incarnation += 1

    def count(self, path_prefix: str, method: str = "GET") -> int:
        with self.lock:
            return sum(1 for _, m, p, _ in self.requests if m == method and p.startswith(path_prefix))

    # -- protocol ------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path, query = parts.path, parse_qs(parts.query)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        status, headers, out = self._route(method, path, query, h.headers, body)
        with self.lock:
            self.requests.append((time.time(), method, path, status))
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)

    def _route(self, method, path, query, headers, body):
        text = {"Content-Type": "text/plain"}
        if path == "/latest/api/token" and "aws" in self.clouds:
            if method != "PUT":
                return 405, text, b""
            try:
                ttl = int(headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
            except ValueError:
                return 400, text, b"missing or invalid TTL"
            if not 1 <= ttl <= 21600:
                return 400, text, b"invalid TTL"
            token = secrets.token_urlsafe(32)
            with self.lock:
                self.tokens.add(token)
            return 200, {**text, "X-aws-ec2-metadata-token-ttl-seconds": str(ttl)}, token.encode()
        if path.startswith("/latest/meta-data/") and "aws" in self.clouds:
            with self.lock:
                ok = headers.get("X-aws-ec2-metadata-token") in self.tokens
                action, rebalance = self.aws_action, self.aws_rebalance
            if not ok:
                return 401, text, b""
            if path == "/latest/meta-data/spot/instance-action" and action:
                return 200, {"Content-Type": "application/json"}, json.dumps(action).encode()
            if path == "/latest/meta-data/events/recommendations/rebalance" and rebalance:
                return 200, {"Content-Type": "application/json"}, json.dumps(rebalance).encode()
            return 404, text, b""
        if path.startswith("/computeMetadata/v1/") and "gcp" in self.clouds:
            if headers.get("Metadata-Flavor") != "Google":
                return 403, text, b"Missing Metadata-Flavor:Google header."
            g = {**text, "Metadata-Flavor": "Google"}
            if path == "/computeMetadata/v1/instance/preempted":
                return 200, g, b"TRUE" if self.gcp_preempted else b"FALSE"
            return 404, g, b""
        if path.startswith("/metadata/") and "azure" in self.clouds:
            if headers.get("Metadata") != "true" or "api-version" not in query:
                return 400, {"Content-Type": "application/json"}, b'{"error": "Bad request"}'
            if path == "/metadata/instance/compute/name" and method == "GET":
                return 200, text, self.vm_name.encode()
            if path == "/metadata/scheduledevents":
                if method == "POST":
                    try:
                        ids = [r["EventId"] for r in json.loads(body)["StartRequests"]]
                    except (ValueError, KeyError, TypeError):
                        return 400, text, b""
                    with self.lock:
                        for i in ids:
                            self.azure_acks.append((time.time(), i))
                        self.azure_events = [e for e in self.azure_events if e["EventId"] not in ids]
                        self.azure_incarnation += 1
                    return 200, text, b""
                with self.lock:
                    doc = {"DocumentIncarnation": self.azure_incarnation, "Events": list(self.azure_events)}
                return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()
            return 404, text, b""
        return 404, text, b""
