"""Resume on another world size: a checkpoint written by 2 torchrun ranks (DDP, and FSDP2 with
AdamW) restored by 3 ranks, by 1 rank under torchrun, and by one plain process.

The full state dicts (model and optimizer, gathered after the restore) are bit-equal to those
of the job that saved; DCP's load planner reshards (FSDP2's 4-row weight splits 2/2 on 2
ranks and 2/2/0 on 3). Per-rank state: ranks the checkpoint has get their own back (their
RNG draws repeat the saving job's); a rank it does not have gets rank 0's other per-rank
values, RNG streams of its own and one warning. Real torchrun, gloo on CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_env
from helpers import assert_same, communicate_or_kill

from spotsafe._format import committed_steps, read_manifest, step_dir
from spotsafe._storage import open_storage

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
STEP = 5

WORKER = r'''
import os, sys, warnings
from datetime import timedelta
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

phase, mode, root, out = sys.argv[1:5]
plain = "WORLD_SIZE" not in os.environ  # one process, no torchrun, no process group
if not plain:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, world = (0, 1) if plain else (dist.get_rank(), dist.get_world_size())
torch.manual_seed(0 if phase == "save" else 123)  # the restoring job starts from other weights
net = torch.nn.Sequential(torch.nn.Linear(8, 33), torch.nn.ReLU(), torch.nn.Linear(33, 4))
if plain:
    model = net
elif mode == "ddp":
    model = torch.nn.parallel.DistributedDataParallel(net)
else:  # FSDP2: each Linear, then the whole model, sharded over every rank
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world,))
    for m in net:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m, mesh=mesh)
    model = fully_shard(net, mesh=mesh)
opt = torch.optim.AdamW(model.parameters(), lr=0.01)
sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
state = {"model": model, "optimizer": opt, "scheduler": sched, "seen": {"rank": rank}}
if plain:
    from spotsafe import CheckpointManager as Manager
else:
    from spotsafe._dist._global import GlobalCheckpointManager as Manager
mgr = Manager(root, async_save=False)
if phase == "save":
    for step in range(1, int(os.environ["TEST_STEP"]) + 1):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step * 10 + rank))
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    mgr.save(step, state)
    restored = step
else:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        restored = mgr.restore(state)
    for w in seen:
        os.write(2, f"rank {rank} warned: {w.message}\n".encode())
mgr.close()
full = StateDictOptions(full_state_dict=True)
result = {"model": get_model_state_dict(model, options=full),
          "optimizer": get_optimizer_state_dict(model, opt, options=full)}
mine = {"step": restored, "draws": torch.rand(4), "seen": dict(state["seen"]), "lr": sched.get_last_lr()}
ranks = [mine]
if not plain:
    ranks = [None] * world
    dist.all_gather_object(ranks, mine)
if rank == 0:
    torch.save({"full": result, "ranks": ranks}, out)
if not plain:
    dist.barrier()
    dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)
'''


def job(worker: Path, phase: str, mode: str, root: Path, out: Path, nproc: int | None) -> str:
    """The worker under ``torchrun --standalone`` with ``nproc`` ranks, or as one plain process (None)."""
    env = dict(child_env(), TEST_STEP=str(STEP))
    args = [str(worker), phase, mode, str(root), str(out)]
    cmd = [sys.executable, *args] if nproc is None else \
        [TORCHRUN, "--nproc-per-node", str(nproc), "--standalone", "--monitor-interval", "0.1", *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    _, err = communicate_or_kill(p, 120)
    assert p.returncode == 0, err[-3000:]
    return err


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_a_checkpoint_of_two_ranks_resumes_on_three_on_one_and_in_one_plain_process(tmp_path, mode):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    root = tmp_path / "run"
    job(worker, "save", mode, root, tmp_path / "saved.pt", 2)
    storage = open_storage(str(root))
    assert committed_steps(storage) == [STEP] and read_manifest(storage, step_dir(STEP)).world_size == 2
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    assert [r["seen"] for r in saved["ranks"]] == [{"rank": 0}, {"rank": 1}]

    for nproc in (3, 1, None):
        out = tmp_path / f"loaded-{nproc}.pt"
        err = job(worker, "load", mode, root, out, nproc)
        got = torch.load(out, weights_only=True)
        assert_same(got["full"], saved["full"])  # resharded by DCP, bit-equal
        ranks = got["ranks"]
        assert [r["step"] for r in ranks] == [STEP] * len(ranks)
        for r, mine in enumerate(ranks):
            assert mine["lr"] == saved["ranks"][0]["lr"]
            if r < 2:  # the checkpoint has this rank: its own values and RNG back
                assert mine["seen"] == {"rank": r}
                assert torch.equal(mine["draws"], saved["ranks"][r]["draws"]), r
                assert f"rank {r} warned" not in err
            else:  # a new rank: rank 0's values, RNG streams of its own, one warning
                assert mine["seen"] == {"rank": 0}
                assert not any(torch.equal(mine["draws"], s["draws"]) for s in saved["ranks"])
                assert err.count("rank 2 warned: Rank 2 did not exist in step-000000000005 (written by 2 "
                                 "ranks): its RNG streams are seeded from") == 1, err[-2000:]
        assert len(ranks) == (nproc or 1)

    again = tmp_path / "again.pt"  # a new rank's streams are the same on every restart
    job(worker, "load", mode, root, again, 3)
    assert torch.equal(torch.load(again, weights_only=True)["ranks"][2]["draws"],
                       torch.load(tmp_path / "loaded-3.pt", weights_only=True)["ranks"][2]["draws"])
