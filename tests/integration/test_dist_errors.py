"""A save that fails on one rank of a torchrun job: nothing is committed, the rank at fault
raises, the others say so and go on, and the next save works (real torchrun, gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env
from helpers import communicate_or_kill

from spotsafe._format import read_manifest
from spotsafe._storage import open_storage

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

WORKER = r'''
import os
from datetime import timedelta
import torch, torch.distributed as dist
from spotsafe._dist._global import GlobalCheckpointManager

def say(line):
    os.write(1, (line + "\n").encode())  # one write a line: the ranks share torchrun's stdout

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank()
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
opt = torch.optim.Adam(model.parameters())
state = {"model": model, "optimizer": opt, "v": {"rank": rank}}
m = GlobalCheckpointManager(os.environ["TEST_ROOT"])
m.save(1, state)
m.wait()
try:  # rank 1 fails before its copy (a value no manifest holds): it tells rank 0 through the store
    m.save(2, state, metadata={"x": object()} if rank == 1 else {})
except Exception as e:
    say(f"rank {rank} save 2: {type(e).__name__}: {e}")
try:  # rank 1 fails while copying (a value spotsafe cannot store): rank 0's commit learns it from the store
    m.save(3, dict(state, v=object()) if rank == 1 else state)
    m.wait()
except Exception as e:
    say(f"rank {rank} save 3: {type(e).__name__}: {e}")
m.save(4, state)
m.wait()
say(f"rank {rank} save 4 ok")
model.module.register_buffer("extra", torch.full((3,), 7.0))  # the state changes shape (on every rank)
st = m.save(5, state)
say(f"rank {rank} save 5 skipped {st.skipped}")
m.save(6, state)  # the job's plan is made again, together
m.wait()
say(f"rank {rank} save 6 ok")
m.close()
dist.barrier()
dist.destroy_process_group()
os._exit(0)
'''


def test_a_save_that_fails_on_one_rank_commits_nothing_and_the_next_one_commits(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    root = tmp_path / "run"
    env = child_env()
    env["TEST_ROOT"] = str(root)
    p = subprocess.Popen([TORCHRUN, "--nproc-per-node", "2", "--standalone", str(worker)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = communicate_or_kill(p, 120)
    assert p.returncode == 0, err[-3000:]
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    # the rank at fault raises; rank 0 says it, and goes on (raising there would fail its next save in turn)
    assert lines["rank 1 save 2"].startswith("UnsupportedStateError: metadata['x'] is a builtins.object")
    assert lines["rank 1 save 3"].startswith("UnsupportedStateError: state['v']")
    assert "rank 0 save 2" not in lines and "rank 0 save 3" not in lines
    for step, why in ((2, "metadata['x']"), (3, "state['v']")):
        assert (f"Rank 0: step-00000000000{step} was not committed: rank 1 failed to write its files "
                f"(UnsupportedStateError: {why}") in err, err[-3000:]
    assert "rank 0 save 4 ok" in out and "rank 1 save 4 ok" in out
    assert "rank 0 save 5 skipped True" in out and "rank 1 save 5 skipped True" in out
    assert "state changed shape since the job's plan was made" in err
    assert "rank 0 save 6 ok" in out and "rank 1 save 6 ok" in out
    names = sorted(n for n in os.listdir(root) if n.startswith("step-"))
    assert names == [f"step-00000000000{s}" for s in (1, 4, 6)]  # nothing of 2, 3 or 5, not even a temp directory
    manifest = read_manifest(open_storage(str(root)), "step-000000000006")
    assert "model.extra" in manifest.shards["entries"]  # the new plan holds the new buffer
