"""manager.last_restore: the phases, size, tier and fallbacks of a real restore."""

import dataclasses
import warnings

import pytest
import torch

import spotsafe
from spotsafe.errors import CheckpointSkippedWarning


def make_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 64)).square().mean().backward()
    opt.step()
    return {"model": model, "optimizer": opt}


def file_bytes(step_path) -> int:
    """Bytes of the checkpoint's files on disk, the manifest aside (what restore reads and verifies)."""
    return sum(p.stat().st_size for p in step_path.iterdir() if p.name != "manifest.json")


def check_phases(stats: spotsafe.RestoreStats) -> None:
    phases = (stats.select_s, stats.read_s, stats.load_s)
    assert all(x >= 0 for x in phases)
    assert sum(phases) <= stats.total_s


def test_restore_reports_its_step_tier_bytes_and_phases(root):
    saved = make_state(0)
    with spotsafe.CheckpointManager(root, async_save=False) as mgr:
        mgr.save(7, saved)
    fresh = make_state(1)
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.last_restore is None
        assert mgr.restore(fresh) == 7
        stats = mgr.last_restore
        tier = mgr.restored_tier
    assert isinstance(stats, spotsafe.RestoreStats)
    assert stats.step == 7 and stats.fallbacks == 0
    assert stats.tier == tier == "root"
    assert stats.bytes == file_bytes(root / "step-000000000007") > 0
    assert stats.read_s > 0 and stats.load_s > 0
    check_phases(stats)
    assert torch.equal(fresh["model"][0].weight, saved["model"][0].weight)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.step = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        spotsafe.RestoreStats(7, "root", 1, 0, 0.0, 0.0, 0.0, 0.0)  # keyword-only


def test_a_skipped_newer_corrupt_checkpoint_is_counted_and_timed_as_selection(root):
    with spotsafe.CheckpointManager(root, async_save=False, keep=5) as mgr:
        for step in (1, 2, 3):
            mgr.save(step, make_state(step))
    for step in (2, 3):  # both newer ones damaged: one byte flipped in every file but the manifest
        for p in (root / f"step-00000000000{step}").iterdir():
            if p.name != "manifest.json":
                data = bytearray(p.read_bytes())
                data[len(data) // 2] ^= 0x01
                p.write_bytes(bytes(data))
    fresh = make_state(9)
    with spotsafe.CheckpointManager(root) as mgr:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert mgr.restore(fresh) == 1
        stats = mgr.last_restore
    assert sum(issubclass(w.category, CheckpointSkippedWarning) for w in seen) == 2
    assert stats.step == 1 and stats.fallbacks == 2
    assert stats.bytes == file_bytes(root / "step-000000000001")
    assert stats.select_s > 0  # the two skipped checkpoints were read and hashed before step 1
    check_phases(stats)


def test_a_fresh_start_reports_no_step_and_no_bytes(root):
    with spotsafe.CheckpointManager(root) as mgr:
        assert mgr.restore(make_state(0)) is None
        stats = mgr.last_restore
    assert (stats.step, stats.tier, stats.bytes, stats.fallbacks) == (None, None, 0, 0)
    assert stats.read_s == stats.load_s == 0.0
    check_phases(stats)
