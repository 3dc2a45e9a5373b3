"""Telemetry layer: the JSON-lines event log (schema in ../shared/DESIGN.md), the report, Prometheus text."""

from .._env import ATTEMPT_ENV, EVENTS_DIR_ENV, RUN_ID_ENV
from ._events import EventLog, events_dir_of, parse_lines, read_events
from ._measure import Measured, measure
from ._mirror import EventMirror, read_remote_events
from ._prometheus import prometheus_text, serve_metrics, write_textfile
from ._report import build_report

__all__ = ["ATTEMPT_ENV", "EVENTS_DIR_ENV", "RUN_ID_ENV", "EventLog", "EventMirror", "Measured", "build_report",
           "events_dir_of", "measure", "parse_lines", "prometheus_text", "read_events", "read_remote_events",
           "serve_metrics", "write_textfile"]
