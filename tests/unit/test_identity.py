"""Run id and attempt number of a command whose supervisor does not know the run root
(telemetry/_identity.py): every rank agrees, whenever it starts, and later supervisors count on."""

from __future__ import annotations

import json

from spotsafe._telemetry import read_events
from spotsafe._telemetry._identity import announcements, open_event_log


def _under(monkeypatch, sup_dir, supervisor: str, n: int, rank: int) -> None:
    monkeypatch.setenv("SPOTSAFE_SUPERVISOR_DIR", str(sup_dir))
    monkeypatch.setenv("SPOTSAFE_SUPERVISOR_ID", supervisor)
    monkeypatch.setenv("SPOTSAFE_ATTEMPT", str(n))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.delenv("SPOTSAFE_RUN_ID", raising=False)


def test_ranks_agree_and_later_supervisors_count_on(tmp_path, monkeypatch):
    events = tmp_path / "run" / "events"
    events.mkdir(parents=True)
    # an earlier supervisor (its records moved in) ran attempts 1-3 of run "r0"; its third never wrote an event
    (events / "h-1.jsonl").write_text("".join(json.dumps(
        {"ts": float(a), "event": "spawn", "run_id": "r0", "attempt": a, "role": "supervisor", "supervisor": "old"})
        + "\n" for a in (1, 2, 3)))
    (events / "run-id").write_text("r0\n")
    logs = []
    for rank in (0, 1):                                   # rank 1 starts after rank 0 wrote its run_start
        _under(monkeypatch, tmp_path / "sup", "new", 1, rank)
        log = open_event_log(events, root=str(tmp_path / "run"))
        log.emit("run_start", supervisor="new")
        logs.append(log)
    assert [(g.run_id, g.attempt) for g in logs] == [("r0", 4), ("r0", 4)]
    (said,) = announcements(tmp_path / "sup")           # one file per process (both "ranks" are this one)
    assert (said["run_id"], said["attempt"], said["events_dir"]) == ("r0", 4, str(events.resolve()))
    # the same supervisor's next attempt (its own spawn moved in beside them), then another supervisor
    with open(events / "h-1.jsonl", "a") as f:
        f.write(json.dumps({"ts": 9.0, "event": "spawn", "run_id": "r0", "attempt": 5, "role": "supervisor",
                            "supervisor": "new"}) + "\n")
    _under(monkeypatch, tmp_path / "sup", "new", 2, 0)
    assert open_event_log(events).attempt == 5
    _under(monkeypatch, tmp_path / "sup2", "newer", 1, 0)
    later = open_event_log(events)
    assert (later.run_id, later.attempt) == ("r0", 6)
    for g in logs:
        g.close()
    assert {e["attempt"] for e in read_events(events) if e["event"] == "run_start"} == {4}


def test_a_fresh_root_keeps_the_first_proposal(tmp_path, monkeypatch):
    events = tmp_path / "run" / "events"
    _under(monkeypatch, tmp_path / "sup", "abc123", 1, 0)
    first = open_event_log(events)
    _under(monkeypatch, tmp_path / "sup", "abc123", 1, 1)
    second = open_event_log(events)
    assert first.run_id == second.run_id == "abc123" == (events / "run-id").read_text().strip()
    assert first.attempt == second.attempt == 1


def test_a_second_run_in_the_same_process_keeps_the_attempt(tmp_path, monkeypatch):
    events = tmp_path / "run" / "events"
    _under(monkeypatch, tmp_path / "sup", "abc123", 1, 0)
    first = open_event_log(events)
    first.emit("run_start", supervisor="abc123")
    again = open_event_log(events)                       # e.g. a second training stage in the same script
    assert (again.run_id, again.attempt) == (first.run_id, first.attempt) == ("abc123", 1)
