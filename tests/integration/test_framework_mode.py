"""Run(root, None) with two real ranks, as a framework integration drives it.

Two processes form a gloo group through a file store (no torchrun, no MASTER_ADDR: spotsafe's
own stop agreement is unavailable, as under launchers that set only RANK and WORLD_SIZE), so
the stop is agreed through the framework's collective (``run.use_agreement``, here an
all-reduce of the flag, as Lightning's ``reduce_boolean_decision`` and Accelerate's trigger
are). Each rank's saver writes its own file into one folder; rank 0 commits the folder. A
SIGTERM to rank 1 alone must stop both ranks after the same step with exit 75, one committed
checkpoint holding both ranks' files, rank 1 told where it is durable; a second launch of
both resumes there on both ranks and finishes with exit 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import child_env

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent(r'''
    import datetime, json, os, signal, sys, time
    import torch, torch.distributed as dist
    import spotsafe

    root, store, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))

    def any_rank(flag):
        t = torch.tensor([int(flag)])
        dist.all_reduce(t)
        return bool(t.item())

    def saver(step, reason):
        folder = os.path.join(root, f"out-{step}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"part_{rank}.txt"), "w") as f:
            f.write(f"step {step} rank {rank}\n")
        dist.barrier()
        return run.manager.save_files(step, folder, kind="test") if run.writer else None

    code = 0
    try:
        with spotsafe.Run(root, None, save_every=3, notices="signals") as run:
            run.use_saver(saver)
            run.use_agreement(any_rank)
            print(f"rank {rank} resumed {run.resume_path() is not None} at {run.start_step}", flush=True)
            for step in run.steps(12):
                if step == stop_at and rank == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.02)
        print(f"rank {rank} done {run.step}", flush=True)
    except spotsafe.Preempted as p:
        print(f"rank {rank} preempted {p.step} tier {p.tier}", flush=True)
        code = 75
    dist.barrier()
    dist.destroy_process_group()
    os._exit(code)
''')


def launch(tmp_path, attempt: int, stop_at: int) -> list[subprocess.CompletedProcess]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = child_env()
    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    procs = []
    try:
        for rank in (0, 1):
            e = dict(env, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
            procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"),
                                           str(tmp_path / f"store-{attempt}"), str(stop_at)],
                                          env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate(timeout=30)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_two_ranks_agree_through_the_frameworks_collective_and_resume(tmp_path):
    first = launch(tmp_path, 1, stop_at=5)
    assert [r.returncode for r in first] == [75, 75], [r.stderr[-2000:] for r in first]
    stops = [re.search(r"preempted (\d+) tier (\S+)", r.stdout) for r in first]
    assert stops[0][1] == stops[1][1] == "5"  # rank 1's notice, the same step on rank 0
    assert stops[0][2] == stops[1][2] == "local"  # rank 1 learned where rank 0 made it durable
    ckpt = tmp_path / "run" / "step-000000000005"
    assert sorted(os.listdir(ckpt)) == ["manifest.json", "part_0.txt", "part_1.txt"]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["components"]["test"]["kind"] == "files" and manifest["world_size"] == 2

    second = launch(tmp_path, 2, stop_at=0)
    assert [r.returncode for r in second] == [0, 0], [r.stderr[-2000:] for r in second]
    for rank, r in enumerate(second):
        assert f"rank {rank} resumed True at 5" in r.stdout and f"rank {rank} done 12" in r.stdout
    assert (tmp_path / "run" / "step-000000000012" / "part_1.txt").read_text() == "step 12 rank 1\n"
