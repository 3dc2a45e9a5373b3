"""Single writer per job under torchrun: the ranks of one job share the root; a second job is refused.

Real torchrun, gloo on CPU, one shared root. The first 2-rank job holds the root (rank 0 holds
its writer lock) and pauses mid-training; a second 2-rank job started on the same root must fail
at start on both ranks with the one sentence naming the holder (rank 0 meets the lock, rank 1
hears of it through the all-gather of the manager's start), quickly, and leave the first job's
checkpoints alone: the first job then finishes and commits its final step. With node-local roots
and a remote, each node's lock refuses the second job's rank on that node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env
from helpers import communicate_or_kill

from spotsafe._format import check_checkpoint, committed_steps, read_manifest, step_dir
from spotsafe._format._layout import WRITER_LOCK
from spotsafe._storage import open_storage
from spotsafe._storage._owner import Owner

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TOTAL, PAUSE_AT = 8, 4  # the first job pauses after step 4 until the test lets it go on
PAUSE_LIMIT = 120  # seconds the first job waits at most for the go file

WORKER = r'''
import json, os, sys, time, traceback
from datetime import timedelta
import torch, torch.distributed as dist
import spotsafe

def say(obj):
    os.write(1, (json.dumps(obj) + "\n").encode())  # one write a line: the ranks share torchrun's stdout

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank()
total, pause_at, go, limit = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 4))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
try:
    with spotsafe.Run(os.environ["TEST_ROOT"], {"model": model, "optimizer": opt}, save_every=2,
                      remote=os.environ.get("TEST_REMOTE"), notices=None) as run:
        say({"rank": rank, "pid": os.getpid(), "resumed": run.step})
        for step in run.steps(total):
            loss = model(torch.randn(16, 8, generator=torch.Generator().manual_seed(step * 10 + rank))).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == pause_at:  # hold the root until the test says go (bounded)
                say({"rank": rank, "paused": step})
                deadline = time.monotonic() + limit
                while not os.path.exists(go) and time.monotonic() < deadline:
                    time.sleep(0.05)
except spotsafe.RootLockedError as e:
    say({"rank": rank, "refused": type(e).__name__, "message": str(e)})
    traceback.print_exc()
    dist.barrier()  # both ranks have said it before torchrun ends the job on the first exit
    dist.destroy_process_group()
    os._exit(1)
say({"rank": rank, "done": run.step})
dist.barrier()  # no rank tears gloo down while the other still talks to it
dist.destroy_process_group()
os._exit(0)  # skip C++ static destructors: gloo's at interpreter exit abort now and then ("terminate called")
'''


def torchrun(worker: Path, root: Path, go: Path) -> subprocess.Popen:
    env = {**child_env(), "TEST_ROOT": str(root)}
    return subprocess.Popen([TORCHRUN, "--nproc-per-node", "2", "--standalone", "--monitor-interval", "0.1",
                             str(worker), str(TOTAL), str(PAUSE_AT), str(go), str(PAUSE_LIMIT)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(worker: Path, roots: list[Path], go: Path, remote: str) -> list[subprocess.Popen]:
    """One job of two torchrun agents, one worker each, meeting on 127.0.0.1: two "nodes", each with its own
    disk (``roots[i]``) and the job's ``remote``."""
    port, procs = free_port(), []
    for root in roots:
        env = {**child_env(), "TEST_ROOT": str(root), "TEST_REMOTE": remote}
        procs.append(subprocess.Popen(
            [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"job-{port}", "--max-restarts", "0",
             "--monitor-interval", "0.1", str(worker), str(TOTAL), str(PAUSE_AT), str(go), str(PAUSE_LIMIT)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True))
    return procs


def wait_paused(p: subprocess.Popen, ranks: set[int]) -> dict[int, int]:
    """Read ``p``'s lines until every rank of ``ranks`` paused; {rank: pid}."""
    pids, paused = {}, set()
    for line in p.stdout:  # bounded: the first job goes on by itself after PAUSE_LIMIT seconds
        if line.startswith("{"):
            d = json.loads(line)
            pids.update({d["rank"]: d["pid"]} if "pid" in d else {})
            paused.update({d["rank"]} if "paused" in d else set())
        if paused == ranks:
            break
    assert pids.keys() == paused == ranks, (pids, paused)
    return pids


def refusal(root: Path) -> str:
    """The sentence that refuses a second writer of ``root``, naming the holder written in its lock."""
    holder = Owner.from_dict(json.loads((root / WRITER_LOCK).read_text()))
    assert holder is not None
    return (f"Run root {root} is being written by another process ({holder.describe()}); wait for it to stop, "
            "stop it, or use another root (readers need no lock: pass read_only=True).")


def finish(p: subprocess.Popen, timeout: float) -> tuple[list[dict], str]:
    """Wait for ``p`` (killed past ``timeout``); its JSON lines and its stderr."""
    out, err = communicate_or_kill(p, timeout)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def test_a_second_job_on_the_root_of_a_running_job_is_refused_on_every_rank_and_the_first_one_commits(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    root, go = tmp_path / "run", tmp_path / "go"
    first = torchrun(worker, root, go)
    second = None
    try:
        pids = wait_paused(first, {0, 1})
        sentence = refusal(root)  # the holder as the first job's rank 0 wrote it in the lock
        assert f"pid {pids[0]}," in sentence

        t0 = time.monotonic()
        second = torchrun(worker, root, go)
        lines, err = finish(second, timeout=90)
        seconds = time.monotonic() - t0
        assert second.returncode != 0, err[-3000:]
        assert seconds < 60, seconds  # refused at start: no wait for a timeout
        said = {d["rank"]: d for d in lines if "refused" in d}
        assert said == {r: {"rank": r, "refused": "RootLockedError", "message": sentence} for r in (0, 1)}, (
            lines, err[-3000:])
        assert not [d for d in lines if "resumed" in d]  # neither rank entered the loop
        assert err.count(f"spotsafe.errors.RootLockedError: {sentence}") == 2, err[-3000:]
        assert first.poll() is None  # the first job still runs, paused

        go.write_text("")
        rest, err = finish(first, timeout=120)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
    assert first.returncode == 0, err[-3000:]
    assert {d["rank"]: d["done"] for d in rest if "done" in d} == {0: TOTAL, 1: TOTAL}
    storage = open_storage(str(root))
    steps = committed_steps(storage)
    assert steps[-1] == TOTAL and PAUSE_AT in steps, steps  # the checkpoint taken across the pause, and the final one
    for step in steps:
        assert check_checkpoint(storage, step).valid, step
    manifest = read_manifest(storage, step_dir(TOTAL))
    assert manifest.world_size == 2 and {f.rank for f in manifest.files.values()} == {0, 1}
    assert not [n for n in storage.listdir() if ".tmp-" in n]


def test_node_local_roots_a_second_job_is_refused_on_every_node_by_that_nodes_lock(tmp_path, s3_url):
    """Two "nodes", each with its own root, and the job's remote: each node's lock is held by the first job's
    rank there, so the second job's rank 0 and rank 1 are each refused by their own node's lock."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    roots, go = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"], tmp_path / "go"
    first, second = two_nodes(worker, roots, go, s3_url), []
    try:
        pids = {**wait_paused(first[0], {0}), **wait_paused(first[1], {1})}
        sentences = [refusal(root) for root in roots]
        for r in (0, 1):
            assert f"pid {pids[r]}," in sentences[r]  # each node's lock: the first job's rank on that node

        t0 = time.monotonic()
        second = two_nodes(worker, roots, go, s3_url)
        ends = [finish(p, timeout=90) for p in second]
        assert time.monotonic() - t0 < 60  # refused at start: no wait for a timeout
        assert [p.returncode != 0 for p in second] == [True, True]
        for r in (0, 1):
            lines, err = ends[r]
            assert [d for d in lines if "refused" in d] == [
                {"rank": r, "refused": "RootLockedError", "message": sentences[r]}], (lines, err[-3000:])
            assert not [d for d in lines if "resumed" in d]
        assert [p.poll() for p in first] == [None, None]  # the first job still runs, paused

        go.write_text("")
        rest = [finish(p, timeout=120) for p in first]
    finally:
        for p in [*first, *second]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
    assert [p.returncode for p in first] == [0, 0], rest[0][1][-2000:] + rest[1][1][-2000:]
    assert [d["done"] for lines, _ in rest for d in lines if "done" in d] == [TOTAL, TOTAL]
    remote = open_storage(s3_url)
    steps = committed_steps(remote)
    assert steps[-1] == TOTAL and PAUSE_AT in steps, steps  # the global commits are the remote's manifests
    manifest = read_manifest(remote, step_dir(TOTAL))
    assert manifest.world_size == 2 and {f.rank for f in manifest.files.values()} == {0, 1}
    for root in roots:
        assert committed_steps(open_storage(str(root)))[-1] == TOTAL
