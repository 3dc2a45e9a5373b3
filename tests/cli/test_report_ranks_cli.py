"""``spotsafe report`` of a two-rank job (the events of tests/unit/test_report_ranks.py): the world size
of each attempt and the checkpoint times per rank, as text and in ``--json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_report_cli import write_log
from test_report_ranks import write_job


def test_two_rank_job_text_and_json(tmp_path):
    write_job(tmp_path / "events")
    r = run_cli("report", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["world_size"] == 2 and [a["world_size"] for a in rep["per_attempt"]] == [2, 2]
    assert [(x["rank"], x["count"]) for x in rep["checkpoints_by_rank"]] == [(0, 5), (1, 5)]
    assert rep["checkpoints_by_rank"][1]["stall_s"]["median"] == pytest.approx(0.06)
    assert rep["checkpoints_by_rank"][1]["persist_s"]["median"] == pytest.approx(0.6)
    assert rep["checkpoints"]["count"] == 5  # the existing keys keep rank 0's figures
    out = run_cli("report", tmp_path).stdout
    assert "world size per attempt: 2, 2" in out
    assert "checkpoints per rank" in out
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out[out.index("checkpoints per rank"):].splitlines()]
    assert ["1", "5", "60.0 ms", "96.0 ms", "600.0 ms", "960.0 ms"] in rows  # rank, count, stall, persist


def test_single_process_log_shows_no_ranks(tmp_path):
    write_log(tmp_path)
    rep = json.loads(run_cli("report", tmp_path, "--json").stdout)
    assert rep["world_size"] == 1 and [a["world_size"] for a in rep["per_attempt"]] == [1, 1, 1]
    assert [x["rank"] for x in rep["checkpoints_by_rank"]] == [0]
    out = run_cli("report", tmp_path).stdout
    assert "world size" not in out and "per rank" not in out
