"""manager.last_restore of a restore downloaded from the remote (SeaweedFS S3 on 127.0.0.1)."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import remote_sizes

import spotsafe
from spotsafe._format import step_dir
from spotsafe._names import Tier

pytestmark = pytest.mark.slow


def make_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(128, 64)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 128)).sum().backward()
    opt.step()
    return {"model": model, "optimizer": opt}


def test_a_restore_from_the_remote_reports_the_remote_tier_and_the_bytes_it_downloaded(s3_url, tmp_path):
    saved = make_state(0)
    with spotsafe.CheckpointManager(tmp_path / "node-a", remote=s3_url) as mgr:
        mgr.save(5, saved)
        assert mgr.wait(remote=True, timeout=60).step == 5
    shutil.rmtree(tmp_path / "node-a")  # the node is gone: only the remote holds step 5
    remote_bytes = sum(size for rel, size in remote_sizes(s3_url).items()
                       if rel.startswith(step_dir(5) + "/") and not rel.endswith("/manifest.json"))

    fresh = make_state(1)
    with spotsafe.CheckpointManager(tmp_path / "node-b", remote=s3_url) as mgr:
        assert mgr.restore(fresh) == 5
        stats = mgr.last_restore
    assert stats.tier == Tier.REMOTE == "remote"
    assert stats.step == 5 and stats.fallbacks == 0
    assert stats.bytes == remote_bytes > 0
    assert min(stats.select_s, stats.read_s, stats.load_s) >= 0
    assert stats.select_s + stats.read_s + stats.load_s <= stats.total_s
    assert torch.equal(fresh["model"].weight, saved["model"].weight)
