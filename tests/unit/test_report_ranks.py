"""The report of a multi-rank job: the world size of each attempt and the checkpoint times of each
rank, from events written by real processes (one per rank) through the real EventLog, with the
environment torchrun and ``spotsafe run`` give each rank (RANK, WORLD_SIZE, the run id, the attempt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spotsafe
from spotsafe._telemetry import build_report, read_events
from spotsafe._telemetry._html import render_html

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_report import three_attempts

REPO = Path(__file__).resolve().parents[2]

# One rank of one attempt: what spotsafe.Run writes, in the order it writes it.
_RANK = """
import json, sys
from spotsafe._names import Event
from spotsafe._telemetry import EventLog
spec = json.loads(sys.argv[1])
log = EventLog(spec["dir"])  # rank, run id and attempt from the environment, as Run's log
log.emit(Event.RUN_START, **({"world_size": spec["world_size"]} if spec["world_size"] else {}))
log.emit(Event.RESTORE, step=spec["restored"] or None, tier="local" if spec["restored"] else None, skipped=[])
for step, stall, persist in spec["checkpoints"]:
    log.emit(Event.METRICS, step=step, values={"loss": 1 / step})
    log.emit(Event.CHECKPOINT, step=step, reason="policy", stall_s=stall, persist_s=persist)
last = spec["checkpoints"][-1][0]
done = spec["completed"]
log.emit(Event.STOP, reason="completed" if done else "notice", exit_code=0 if done else 75, step=last,
         tier="local")
log.close()
"""


def write_job(events: Path, *, world_size: int = 2, record: bool = True) -> None:
    """Two attempts of a ``world_size``-rank job under one supervisor (one run id): attempt 1
    checkpoints steps 1-3 and stops for a notice, attempt 2 restores step 3 and finishes at 5.
    Rank r's stall at its k-th checkpoint of the job is (r + 1) * k * 10 ms, its persist 10x that."""
    for attempt, steps, restored in ((1, [1, 2, 3], 0), (2, [4, 5], 3)):
        procs = []
        for rank in range(world_size):
            cks = [(s, (rank + 1) * s * 0.01, (rank + 1) * s * 0.1) for s in steps]
            spec = {"dir": str(events), "world_size": world_size if record else None, "restored": restored,
                    "checkpoints": cks, "completed": attempt == 2}
            env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RANK": str(rank), "WORLD_SIZE": str(world_size),
                   "SPOTSAFE_RUN_ID": "job1", "SPOTSAFE_ATTEMPT": str(attempt)}
            procs.append(subprocess.Popen([sys.executable, "-c", _RANK, json.dumps(spec)], env=env))
        for p in procs:
            assert p.wait(timeout=60) == 0


def test_two_ranks_world_size_per_attempt_and_times_per_rank(tmp_path):
    write_job(tmp_path)
    events = read_events(tmp_path)
    assert sorted({(e["rank"], e["attempt"]) for e in events}) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    r = build_report(events, root=str(tmp_path))
    assert r["attempts"] == 2 and r["final_step"] == 5 and r["completed"]
    assert [(a["attempt"], a["world_size"], a["outcome"]) for a in r["per_attempt"]] == [
        (1, 2, "interrupted"), (2, 2, "finished")]
    assert r["world_size"] == 2
    # the job's checkpoints figures stay rank 0's (5 checkpoints, not 10)
    assert r["checkpoints"]["count"] == 5 and r["checkpoints"]["stall_s"]["median"] == pytest.approx(0.03)
    by_rank = r["checkpoints_by_rank"]
    assert [(x["rank"], x["count"], x["stall_s"]["count"], x["persist_s"]["count"]) for x in by_rank] == [
        (0, 5, 5, 5), (1, 5, 5, 5)]
    # stalls of steps 1..5: rank 0 10..50 ms, rank 1 20..100 ms; persist 10x
    assert by_rank[0]["stall_s"]["median"] == pytest.approx(0.03) and by_rank[1]["stall_s"]["median"] == pytest.approx(0.06)
    assert by_rank[0]["persist_s"]["median"] == pytest.approx(0.3) and by_rank[1]["persist_s"]["median"] == pytest.approx(0.6)
    assert by_rank[1]["stall_s"]["p95"] == pytest.approx(0.096) and by_rank[1]["persist_s"]["p95"] == pytest.approx(0.96)
    page = render_html(r)
    assert "ranks per attempt: 2, 2" in page
    assert "<tr><td>1</td><td>5</td><td>60.0 ms</td><td>96.0 ms</td><td>600 ms</td><td>960 ms</td></tr>" in page


def test_world_size_of_files_that_did_not_record_it_is_the_ranks_that_started(tmp_path):
    write_job(tmp_path, world_size=3, record=False)
    r = build_report(read_events(tmp_path))
    assert [a["world_size"] for a in r["per_attempt"]] == [3, 3] and r["world_size"] == 3
    assert [x["rank"] for x in r["checkpoints_by_rank"]] == [0, 1, 2]


def test_a_single_process_log_reads_as_world_size_one():
    r = build_report(three_attempts())  # written before world_size was recorded
    assert [a["world_size"] for a in r["per_attempt"]] == [1, 1, 1] and r["world_size"] == 1
    assert [a["outcome"] for a in r["per_attempt"]] == ["interrupted", "interrupted", "finished"]
    (only,) = r["checkpoints_by_rank"]  # one rank: the same figures as the job's
    assert only["rank"] == 0 and only["count"] == r["checkpoints"]["count"] == 6
    assert only["stall_s"] == r["checkpoints"]["stall_s"] and only["persist_s"] == r["checkpoints"]["persist_s"]
    page = render_html(r)
    assert "World size" not in page and "Per rank" not in page


def test_run_records_world_size_one_outside_torchrun(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with spotsafe.Run(tmp_path / "run", {"v": 0}, save_every=1, notices=None) as run:
        for _ in run.steps(2):
            pass
    events = read_events(tmp_path / "run" / "events")
    (start,) = [e for e in events if e["event"] == "run_start"]
    assert start["world_size"] == 1 and start["rank"] == 0
    r = build_report(events)
    assert [a["world_size"] for a in r["per_attempt"]] == [1]
    assert [(x["rank"], x["count"]) for x in r["checkpoints_by_rank"]] == [(0, 2)]
