"""Shared fixtures. Everything runs on this machine: real files, real processes, no network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh run root on the same file system as the tests' temp dir."""
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spotsafe_cli() -> list[str]:
    """The installed ``spotsafe`` entry point next to this interpreter."""
    exe = Path(sys.executable).with_name("spotsafe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "spotsafe.cli"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env
