"""Prometheus text exposition (format 0.0.4) of the report's counters (no torch).

Two ways out, both computed from the events on each call: a textfile for node_exporter's
textfile collector (written to a temporary name and renamed, so a scrape never reads half
a file), and an HTTP endpoint (``GET /metrics``) served from a daemon thread.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float | int | None) -> str:
    return "NaN" if v is None else repr(float(v))


def prometheus_text(report: dict[str, Any]) -> str:
    """The report's counters and gauges as Prometheus text, labelled with the run's root."""
    run = f'run="{_label(report.get("root") or "")}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float | int | None]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{{{run}{labels}}} {_num(value)}")

    metric("spotsafe_attempts_total", "counter", "Training processes started.", [("", report["attempts"])])
    metric("spotsafe_interruptions_total", "counter", "Interruptions (notices and kills), by source.",
           [(f',source="{_label(k)}"', v) for k, v in report["interruptions"]["by_source"].items()]
           or [(',source="none"', 0)])
    metric("spotsafe_crashes_total", "counter", "Attempts that crashed.", [("", report["crashes"])])
    metric("spotsafe_drills_total", "counter", "Interruptions injected by spotsafe run --chaos.", [("", report["drills"])])
    res = report["resume"]
    metric("spotsafe_restarts_total", "counter", "Restarts.", [("", res["restarts"])])
    metric("spotsafe_resumes_total", "counter", "Restarts that resumed from the newest durable checkpoint.",
           [("", res["resumed"])])
    metric("spotsafe_resume_success_ratio", "gauge", "Resumed restarts / restarts.", [("", res["rate"])])
    metric("spotsafe_restore_fallbacks_total", "counter", "Invalid checkpoints skipped at restore.",
           [("", res["fallbacks"])])
    rep = report["replayed"]
    metric("spotsafe_replayed_steps_total", "counter", "Steps run again after interruptions.", [("", rep["steps"]["total"])])
    metric("spotsafe_replayed_steps_max", "gauge", "Most steps replayed after one interruption.",
           [("", rep["steps"]["worst"])])
    metric("spotsafe_replayed_seconds_total", "counter", "Time spent on steps run again.", [("", rep["seconds"]["total"])])
    rm = rep.get("metrics") or {}
    metric("spotsafe_replayed_metrics_compared_total", "counter", "Values logged by replayed steps, compared with "
           "the same step's earlier values.", [("", rm.get("compared", 0))])
    metric("spotsafe_replayed_metrics_identical_total", "counter", "Compared values of replayed steps that were "
           "identical.", [("", rm.get("identical", 0))])
    metric("spotsafe_restart_lost_seconds_total", "counter", "Time from an interrupted attempt's last step to the "
           "next attempt's first.", [("", report["restart_lost_s"])])
    for key, help_ in (("stall_s", "Training stall per checkpoint."), ("persist_s", "Background write per checkpoint."),
                       ("upload_s", "Upload per checkpoint.")):
        q = report["checkpoints"][key]
        name = f"spotsafe_checkpoint_{key[:-2]}_seconds"
        metric(name, "summary", help_, [(',quantile="0.5"', q["median"]), (',quantile="0.95"', q["p95"])])
        lines.append(f"{name}_sum{{{run}}} {_num(q['sum'])}")
        lines.append(f"{name}_count{{{run}}} {_num(q['count'])}")
    metric("spotsafe_useful_seconds_total", "counter", "Time of final step executions, stalls excluded.",
           [("", report["useful_s"])])
    metric("spotsafe_wall_seconds", "gauge", "Wall time of the run so far.", [("", report["wall_s"])])
    metric("spotsafe_goodput_ratio", "gauge", "Useful time / wall time.", [("", report["goodput"])])
    metric("spotsafe_step", "gauge", "Newest step reached.", [("", report["final_step"])])
    cost = report.get("cost")
    if cost:
        metric("spotsafe_cost_spot", "gauge", "What the run cost on spot (price x wall hours).", [("", cost["spot_cost"])])
        metric("spotsafe_cost_on_demand", "gauge", "What it would have cost on demand, without interruptions.",
               [("", cost["on_demand_cost"])])
        metric("spotsafe_savings_ratio", "gauge", "Share of the on-demand cost saved.", [("", cost["savings_fraction"])])
    return "\n".join(lines) + "\n"


def write_textfile(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def serve_metrics(text: Callable[[], str], port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` with ``text()`` from a daemon thread; ``server.shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "Only /metrics is served here.")
                return
            try:
                body = text().encode()
            except Exception as e:
                self.send_error(500, f"Cannot compute the metrics: {e}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="spotsafe-metrics", daemon=True).start()
    return server
