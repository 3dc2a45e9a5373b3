"""SIGKILL inside a save, at every file-system call and at random times.

After each kill a fresh CheckpointManager must restore the newest fully committed step
with exactly its bytes, never a partial one, and clean up what the dead save left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_env

import spotsafe

pytestmark = pytest.mark.slow
CHILD = Path(__file__).with_name("crash_child.py")
sys.path.insert(0, str(CHILD.parent))
from crash_child import make_state  # noqa: E402


def run_child(*args) -> list[dict]:
    out = subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, text=True,
                         env=child_env(), timeout=300, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def check_restores_exactly(root: str) -> int:
    """The step a fresh manager restores (0 for none), after checking every restored byte."""
    state = {"model": None, "optimizer": None, "meta": None}
    with spotsafe.CheckpointManager(root, keep=1) as mgr:
        step = mgr.restore(state)
        infos = mgr.checkpoints()
    assert sorted(os.listdir(root)) == [".spotsafe-writer.lock"] + [i.name for i in infos]  # leftovers cleaned
    if step is None:
        assert infos == []
        return 0
    expected = make_state(step)
    for comp in ("model", "optimizer"):
        for k, v in expected[comp].items():
            assert torch.equal(state[comp][k], v), (root, step, comp, k)
    assert state["meta"] == expected["meta"]
    assert infos and all(i.valid for i in infos), [(i.name, i.reason) for i in infos]
    return step


def test_kill_at_every_file_system_call_of_a_save(tmp_path):
    results = run_child(tmp_path, "syscall")
    dry, trials = results[0], results[1:]
    assert dry["committed"] == [1, 2] and dry["total_calls"] >= 20
    assert len(trials) == dry["total_calls"]
    outcomes = []
    for t in trials:
        assert t["killed"], t
        assert t["committed"] == [1]  # save(2) never returned
        outcomes.append(check_restores_exactly(t["root"]))
    # kills before the rename leave step 1; kills after it (fsync of the root, pruning
    # step 1) leave step 2: both happened, and never anything else
    assert set(outcomes) == {1, 2}
    first_two = outcomes.index(2)
    assert outcomes[:first_two] == [1] * first_two and set(outcomes[first_two:]) == {2}


def test_kill_at_random_times_during_back_to_back_saves(tmp_path):
    trials = run_child(tmp_path, "timed", 12, 2024)
    assert len(trials) == 12
    for t in trials:
        assert t["killed"], t
        step = check_restores_exactly(t["root"])
        last = t["committed"][-1] if t["committed"] else 0
        assert step in (last, last + 1), (step, t)
    assert sum(len(t["committed"]) for t in trials) > 24  # kills landed deep into the save loop
