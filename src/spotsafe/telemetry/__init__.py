"""Telemetry layer: the JSON-lines event log (schema in ../shared/DESIGN.md)."""

from ._events import ATTEMPT_ENV, EVENTS_DIR_ENV, RUN_ID_ENV, EventLog, read_events
from ._measure import Measured, measure

__all__ = ["ATTEMPT_ENV", "EVENTS_DIR_ENV", "RUN_ID_ENV", "EventLog", "Measured", "measure", "read_events"]
