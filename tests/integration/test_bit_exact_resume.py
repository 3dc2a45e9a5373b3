"""A real training process, SIGKILLed at random steps and resumed, ends bit-exact.

The training script (examples/train.py) has dropout, Adam, a one-cycle LR schedule,
shuffled mini-batches from two DataLoader workers with per-sample random augmentation
(python, numpy and torch draws), and numpy randomness in the loop. The reference runs
with *no* workers: equality also proves that the workers change nothing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import EXAMPLES, child_env
from preemption_demo import compare, run_with_kills

pytestmark = pytest.mark.slow

STEPS, SAVE_EVERY = 90, 7  # 16 batches per epoch: saves and kills land mid-epoch


def _train(args, env):
    subprocess.run([sys.executable, str(EXAMPLES / "train.py"), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, timeout=300)


def test_sigkill_at_random_steps_then_resume_is_bit_exact(tmp_path, monkeypatch):
    """Three SIGKILLs at steps drawn from seed 11 (tests/integration/test_chaos_run.py drills others)."""
    seed = 11
    env = child_env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    common = ["--steps", str(STEPS), "--save-every", str(SAVE_EVERY)]
    _train(["--root", str(tmp_path / "ref"), "--out", str(tmp_path / "ref.pt"), "--workers", "0", *common], env)

    history = run_with_kills(["--root", str(tmp_path / "int"), "--out", str(tmp_path / "int.pt"),
                              "--workers", "2", *common],
                             kills=3, seed=seed, save_every=SAVE_EVERY, total_steps=STEPS, timeout=400,
                             log=lambda *_: None)
    kills = [k for _, k, _ in history if k is not None]
    assert len(kills) == 3 and history[-1][1] is None
    # every restart resumed from a checkpoint taken before the kill, and made progress
    for i, (resumed, killed, durable) in enumerate(history[:-1]):
        resumed_next = history[i + 1][0]
        assert resumed_next % SAVE_EVERY == 0 and resumed_next > resumed
        # nothing reported durable is lost; saves are asynchronous with at most one in
        # flight, so replay is at most two save intervals (the kill lands a little after
        # the step the parent read, so the resumed step may even be past it)
        assert resumed_next >= durable
        assert killed - resumed_next <= 2 * SAVE_EVERY
    assert any(k % 16 not in (0, 15) for k in kills)  # mid-epoch
    assert compare(str(tmp_path / "ref.pt"), str(tmp_path / "int.pt")) == []


def test_compare_sees_a_single_changed_bit(tmp_path):
    """The comparison used above is not vacuous."""
    import torch

    env = child_env()
    _train(["--root", str(tmp_path / "a"), "--out", str(tmp_path / "a.pt"), "--steps", "5", "--workers", "0"], env)
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    w = state["model"]["0.weight"]
    w.view(torch.int32)[0, 0] ^= 1
    torch.save(state, tmp_path / "b.pt")
    assert compare(str(tmp_path / "a.pt"), str(tmp_path / "b.pt")) == ["0.weight"]
