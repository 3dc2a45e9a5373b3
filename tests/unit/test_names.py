"""The named vocabularies (spotsafe._names) and the environment variables (spotsafe._env): one
definition each, the same strings on disk as before, old event files read the same."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from test_report import three_attempts

from spotsafe import _env
from spotsafe._names import Cause, Event, SaveReason, StopReason, Tier
from spotsafe._telemetry import EventLog, build_report, parse_lines, read_events

SRC = Path(__file__).resolve().parents[2] / "src" / "spotsafe"
README = Path(__file__).resolve().parents[2] / "README.md"

# the strings every event file written so far holds: they may never change
ON_DISK = {
    Event: {"run_start", "restore", "checkpoint", "upload", "notice", "metrics", "stop", "supervisor_start",
            "spawn", "chaos", "exit", "restart", "advice", "supervisor_stop"},
    Tier: {"root", "local", "remote", "none"},
    SaveReason: {"policy", "notice", "final", "manual"},
    StopReason: {"notice", "completed", "exit", "error"},
    Cause: {"preempted", "done", "locked", "chaos_kill", "crash"},
}


@pytest.mark.parametrize("vocabulary", list(ON_DISK), ids=lambda v: v.__name__)
def test_each_vocabulary_keeps_the_strings_of_the_files_already_written(vocabulary):
    assert {m.value for m in vocabulary} == ON_DISK[vocabulary]
    for m in vocabulary:
        assert m == m.value and f"{m}" == m.value and json.dumps(m) == f'"{m.value}"'


def test_an_event_written_with_members_is_the_old_line_and_reads_back_equal(tmp_path):
    log = EventLog(tmp_path, run_id="r1", attempt=2, rank=0)
    log.emit(Event.STOP, reason=StopReason.NOTICE, tier=Tier.LOCAL, exit_code=75, step=7)
    log.emit("checkpoint", step=7, reason=SaveReason.NOTICE)  # a plain string of the vocabulary is accepted
    log.close()
    text = log.path.read_text()
    assert '"event":"stop"' in text and '"reason":"notice"' in text and '"tier":"local"' in text
    stop, ckpt = read_events(tmp_path)
    assert type(stop["event"]) is str and stop["event"] == Event.STOP and stop["tier"] == Tier.LOCAL
    assert ckpt["event"] == Event.CHECKPOINT and ckpt["step"] == 7


def test_an_event_name_outside_the_vocabulary_is_refused_at_the_writer(tmp_path):
    log = EventLog(tmp_path, run_id="r1", attempt=1, rank=0)
    with pytest.raises(ValueError, match="checkpointed"):
        log.emit("checkpointed", step=1)
    log.close()
    assert not log.path.exists()  # nothing written


def test_events_are_picked_by_their_parsed_name_not_by_the_text():
    lines = [
        {"ts": 1.0, "event": "metrics", "step": 1, "values": {"note": "stop"}},   # "stop" quoted, not a stop
        {"ts": 2.0, "event": "notice", "source": "stop", "step": 1},               # likewise
        {"ts": 3.0, "event": "stop", "reason": "notice", "step": 1, "tier": "local"},
    ]
    text = "\n".join(json.dumps(x) for x in lines)
    text += '\n{"ts": 4.0, "event": "st\\u006fp", "reason": "exit", "step": 2}'  # JSON's other spelling of "stop"
    text += '\n{"ts": 5.0, "event": "stop", "step": 3'                           # torn last line
    stops = parse_lines(text, (Event.STOP,))
    assert [(e["ts"], e["step"]) for e in stops] == [(3.0, 1), (4.0, 2)]
    assert [e["event"] for e in parse_lines(text, ("notice", "metrics"))] == ["metrics", "notice"]


def _as_members(events: list[dict]) -> list[dict]:
    """The same events with every vocabulary string replaced by its enum member."""
    fields = {"event": Event, "cause": Cause, "tier": Tier}
    out = []
    for e in events:
        e = dict(e)
        for k, enum in fields.items():
            if isinstance(e.get(k), str):
                e[k] = enum(e[k])
        if "reason" in e:
            e["reason"] = (StopReason if e["event"] == Event.STOP else SaveReason)(e["reason"])
        out.append(e)
    return out


def test_an_old_event_file_of_plain_strings_gives_the_same_report(tmp_path):
    events = three_attempts()
    (tmp_path / "h-1.jsonl").write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
    old = build_report(read_events(tmp_path), root="runs/x")
    new = build_report(_as_members(events), root="runs/x")
    assert old == new
    assert old["attempts"] == 3 and old["final_step"] == 30 and old["completed"]
    assert old["interruptions"] == {"total": 2, "by_source": {"aws": 1, "killed": 1}}
    assert old["crashes"] == 0 and old["drills"] == 1 and old["resume"]["restarts"] == 2
    assert old["checkpoints"]["by_reason"] == {"final": 1, "notice": 1, "policy": 4}


# -- environment variables ---------------------------------------------------------------------

def _env_names() -> dict[str, str]:
    return {k: v for k, v in vars(_env).items() if k.endswith("_ENV") and isinstance(v, str)}


def test_every_spotsafe_variable_is_a_constant_of_env_documented_there_and_in_the_readme():
    names = _env_names()
    assert len(set(names.values())) == len(names) >= 22  # one constant per variable
    readme = README.read_text()
    for value in names.values():
        assert value.startswith("SPOTSAFE_")
        assert f"``{value}``" in _env.__doc__, value
        assert value in readme, f"README.md does not list {value}"
    documented = set(re.findall(r"SPOTSAFE_[A-Z_]+", _env.__doc__))
    assert documented == set(names.values())


def test_no_module_spells_a_spotsafe_variable_outside_env():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "_env.py":
            continue
        text = path.read_text()
        found += [f"{path.relative_to(SRC)}:{text.count(chr(10), 0, m.start()) + 1}"
                  for m in re.finditer(r"[\"']SPOTSAFE_", text)]  # a literal that starts with the name
        found += [f"{path.relative_to(SRC)}:{node.lineno}" for node in ast.walk(ast.parse(text))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value.startswith("SPOTSAFE_")]  # also the parts of f-strings, any quoting
    assert not found, f"use the constant from spotsafe._env instead: {sorted(set(found))}"


def test_no_module_emits_an_event_by_a_string_literal():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("emit", "_emit") and node.args \
                    and isinstance(node.args[0], ast.Constant):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"emit an Event member: {found}"
