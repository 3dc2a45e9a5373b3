"""One stop step under torchrun: a SIGTERM to one worker of a DDP job (2 and 3 ranks) or of an
FSDP2 job with AdamW (gloo on CPU).

Every rank stops after the same step, checkpoints it and exits 75, and the restart continues
bit-for-bit against an uninterrupted run of the same kind and size. Real torchrun, real
processes, real signals.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import child_env
from helpers import assert_same, communicate_or_kill
from test_notices_run import _env as metadata_env

from spotsafe._format import committed_steps, read_manifest, step_dir
from spotsafe._storage import open_storage
from spotsafe._telemetry import read_events

pytestmark = pytest.mark.slow

RESUMED = re.compile(r"rank (\d) pid (\d+) resumed")
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
STEPS = 60

WORKER = r'''
import os, sys, time
from datetime import timedelta
import torch, torch.distributed as dist
import spotsafe

def say(line):
    os.write(1, (line + "\n").encode())  # one write a line: the ranks share torchrun's stdout

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank()
mode = os.environ.get("TEST_MODE", "ddp")
torch.manual_seed(0)
if mode == "ddp":
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
else:  # FSDP2: each Linear, then the whole model, sharded over every rank (33 rows split unevenly)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    net = torch.nn.Sequential(torch.nn.Linear(8, 33), torch.nn.ReLU(), torch.nn.Linear(33, 4))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for m in net:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m, mesh=mesh)
    model = fully_shard(net, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
state = {"model": model, "optimizer": opt}
total, out = int(sys.argv[1]), sys.argv[2]
with spotsafe.Run(os.environ["TEST_ROOT"], state, save_every=os.environ.get("TEST_SAVE_EVERY") or 10,
                  remote=os.environ.get("TEST_REMOTE"),
                  notices=os.environ.get("TEST_NOTICES", "signals")) as run:
    say(f"rank {rank} pid {os.getpid()} resumed {run.step}")
    for step in run.steps(total):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step * 10 + rank))  # data of (step, rank)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(0.02 * (1 + rank))  # rank 1 is slower: the ranks are not in step between all-reduces
say(f"rank {rank} done {run.step}")
if mode == "ddp":
    result = {"model": model.module.state_dict(), "optimizer": opt.state_dict()}
else:  # a collective: every rank gathers the whole state
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    full = StateDictOptions(full_state_dict=True)
    result = {"model": get_model_state_dict(model, options=full),
              "optimizer": get_optimizer_state_dict(model, opt, options=full)}
if rank == 0:
    torch.save(result, out)
dist.barrier()  # no rank tears gloo down while the other still talks to it (an abort at exit otherwise)
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # skip C++ static destructors: gloo's at interpreter exit abort now and then ("terminate called")
'''


def last_stops(root: Path) -> dict[int, dict]:
    """The last stop event of each rank (the ranks share the root and its events directory)."""
    stops: dict[int, dict] = {}
    for e in read_events(root / "events"):
        if e["event"] == "stop":
            stops[e["rank"]] = e
    return stops


def assert_one_checkpoint(root: Path, step: int, nproc: int = 2) -> None:
    """The newest checkpoint is ``step``: one manifest for every rank, listing every rank's files."""
    storage = open_storage(str(root))
    assert committed_steps(storage)[-1] == step
    manifest = read_manifest(storage, step_dir(step))
    assert manifest.world_size == nproc and manifest.step == step
    assert {f.rank for f in manifest.files.values()} == set(range(nproc))
    assert not [n for n in storage.listdir() if ".tmp-" in n]  # no rank left a half-written directory


def torchrun(worker: Path, root: Path, out: Path, nproc: int = 2, **extra: str) -> subprocess.Popen:
    """``worker.py STEPS OUT`` under ``torchrun --standalone`` with ``nproc`` ranks on ``root`` (TEST_MODE in
    ``extra``: ddp, the default, or fsdp2)."""
    env = child_env()
    env["TEST_ROOT"] = str(root)
    env.update(extra)
    return subprocess.Popen([TORCHRUN, "--nproc-per-node", str(nproc), "--standalone", "--monitor-interval", "0.1",
                             str(worker), str(STEPS), str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(p: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    return communicate_or_kill(p, timeout)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Callable[[str, int], dict]:
    """``get(mode, nproc)``: rank 0's final state of an uninterrupted run of that kind and size, run once
    per module the first time it is asked for."""
    cache: dict[tuple[str, int], dict] = {}

    def get(mode: str, nproc: int) -> dict:
        if (mode, nproc) not in cache:
            d = tmp_path_factory.mktemp(f"reference-{mode}-{nproc}")
            worker = d / "worker.py"
            worker.write_text(WORKER)
            p = torchrun(worker, d / "run", d / "ref.pt", nproc, TEST_MODE=mode)
            out, err = finish(p)
            assert p.returncode == 0, err[-3000:]
            cache[mode, nproc] = torch.load(d / "ref.pt", weights_only=True)
        return cache[mode, nproc]

    return get


@pytest.fixture(scope="module")
def reference(references) -> dict:
    return references("ddp", 2)


@pytest.mark.parametrize(("mode", "nproc", "victim", "seed", "remote"), [
    ("ddp", 2, 1, 1, False),
    ("ddp", 3, 2, 2, True),  # a shared root and a remote: rank 0 uploads, every rank waits for it
    ("fsdp2", 2, 1, 3, False),  # AdamW, each rank holds its own shards
])
def test_sigterm_to_one_worker_stops_every_rank_after_the_same_step_then_resumes_bit_exact(
        tmp_path, references, request, mode, nproc, victim, seed, remote):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    root = tmp_path / "run"
    extra = {"TEST_REMOTE": request.getfixturevalue("s3_url")} if remote else {}
    p = torchrun(worker, root, tmp_path / "int.pt", nproc, TEST_MODE=mode, **extra)
    try:
        pids = {}
        for line in p.stdout:  # bounded: the job ends by itself after STEPS steps
            pids.update({int(r): int(pid) for r, pid in RESUMED.findall(line)})
            if len(pids) == nproc:
                break
        assert len(pids) == nproc
        time.sleep(random.Random(seed).uniform(0.2, 1.2))  # a random step
        os.kill(pids[victim], signal.SIGTERM)  # one worker only: the others hear nothing from their own machine
        out, err = finish(p)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    assert p.returncode != 0  # torchrun turns a worker's 75 into its own failure (research notes, section 2)
    stops = last_stops(root)
    ranks = set(range(nproc))
    assert set(stops) == ranks and {s["exit_code"] for s in stops.values()} == {75}, (stops, err[-3000:])
    stop = stops[0]["step"]
    assert {s["step"] for s in stops.values()} == {stop}, stops
    assert 0 < stop < STEPS
    assert {s["reason"] for s in stops.values()} == {"notice"}
    assert {r: s["source"] for r, s in stops.items()} == {
        r: "signal" if r == victim else f"signal on rank {victim}" for r in ranks}
    assert_one_checkpoint(root, stop, nproc)
    if remote:  # rank 0 replicated the step, and every rank waited for it: the same tier everywhere
        assert {s["tier"] for s in stops.values()} == {"remote"}, stops
        on_remote = open_storage(extra["TEST_REMOTE"])
        assert committed_steps(on_remote)[-1] == stop
        assert {f.rank for f in read_manifest(on_remote, step_dir(stop)).files.values()} == set(range(nproc))

    p = torchrun(worker, root, tmp_path / "int.pt", nproc, TEST_MODE=mode, **extra)
    out, err = finish(p)
    assert p.returncode == 0, err[-3000:]
    resumed_at = {int(r): int(at) for r, at in re.findall(r"rank (\d) pid \d+ resumed (\d+)", out)}
    assert resumed_at == dict.fromkeys(ranks, stop)  # every rank, from the stop step
    assert all(f"rank {r} done {STEPS}" in out for r in ranks), out
    assert_same(torch.load(tmp_path / "int.pt", weights_only=True), references(mode, nproc))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(worker: Path, roots: list[Path], out: Path, port: int, envs: list[dict],
              nprocs: tuple[int, int] = (1, 1)) -> list[subprocess.Popen]:
    """Two torchrun agents, ``nprocs[i]`` workers each, meeting at a c10d rendezvous on 127.0.0.1: two
    "nodes", each with its own disk (``roots[i]``, the same path on a real cluster)."""
    procs = []
    for extra, root, nproc in zip(envs, roots, nprocs, strict=True):
        env = dict(extra, TEST_ROOT=str(root))
        procs.append(subprocess.Popen(
            [TORCHRUN, "--nnodes", "2", "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"job-{port}", "--max-restarts", "0",
             "--monitor-interval", "0.1", str(worker), str(STEPS), str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True))
    return procs


def test_a_cloud_notice_on_one_of_two_nodes_stops_both_then_a_lost_node_disk_restores_from_the_remote(
        tmp_path, reference, metadata, s3_url):
    """Only node 1 polls a metadata server that announces an AWS spot interruption; node 0 hears nothing.

    Each node has its own disk and the job a remote (the real S3 server): the global commit is
    the manifest on the remote; each node keeps its own files as a cache. Node 1's disk is then
    lost with the node; the restart reads its files from the remote, bit-exact.
    """
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    roots = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    quiet = metadata_env(metadata, TEST_NOTICES="signals", TEST_REMOTE=s3_url)
    warned = metadata_env(metadata, TEST_NOTICES="signals,aws", TEST_REMOTE=s3_url)
    procs = two_nodes(worker, roots, tmp_path / "int.pt", free_port(), [quiet, warned])
    try:
        seen = 0
        for line in procs[0].stdout:  # bounded: the job ends by itself after STEPS steps
            if " resumed " in line:
                seen += 1
                break
        for line in procs[1].stdout:
            if " resumed " in line:
                seen += 1
                break
        assert seen == 2
        metadata.aws_interrupt(seconds=120)
        errs = [finish(p)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    stops = {r: last_stops(root)[r] for r, root in enumerate(roots)}  # each node's own events
    assert {s["exit_code"] for s in stops.values()} == {75}, (stops, errs[0][-2000:], errs[1][-2000:])
    assert stops[0]["step"] == stops[1]["step"] and 0 < stops[0]["step"] < STEPS, stops
    stop = stops[0]["step"]
    by_source = {s["source"] for s in stops.values()}
    assert by_source == {"aws", "aws on rank 1"} or by_source == {"aws", "aws on rank 0"}, by_source
    assert {s["tier"] for s in stops.values()} == {"remote"}  # durable only once committed on the remote
    remote = open_storage(s3_url)
    kept = committed_steps(remote)
    assert kept[-1] == stop and len(kept) == min(3, stop // 10 + (stop % 10 > 0)), kept  # keep=3 on the remote
    manifest = read_manifest(remote, step_dir(stop))
    assert manifest.world_size == 2 and {f.rank for f in manifest.files.values()} == {0, 1}
    for r, root in enumerate(roots):  # each node's copy: the global manifest, and only that node's files
        node = open_storage(str(root))
        assert committed_steps(node) == kept  # each node's copies follow the same retention
        here = {n for n in node.listdir(step_dir(stop)) if n != "manifest.json"}
        assert here == {n for n, f in manifest.files.items() if f.rank == r}, (r, here)

    import shutil
    shutil.rmtree(roots[1])  # node 1 is gone with its disk; its replacement starts empty
    metadata.reset()  # the job restarts on new machines: no notice
    procs = two_nodes(worker, roots, tmp_path / "int.pt", free_port(), [quiet, quiet])
    outs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert all(f"resumed {stop}" in out for out, _ in outs), outs
    restores = {e["rank"]: e for root in roots for e in read_events(root / "events")
                if e["event"] == "restore" and e["step"] == stop}
    assert restores[0]["tier"] == restores[1]["tier"] == "remote"
    resumed = torch.load(tmp_path / "int.pt", weights_only=True)
    for k, v in reference["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    for pid, st in reference["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(resumed["optimizer"]["state"][pid][k], v), (pid, k)


def test_a_time_based_policy_saves_the_same_steps_on_every_rank(tmp_path, reference):
    """save_every="0.4s" fires on rank 0 at its own step; both ranks checkpoint the same steps (a save point)."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    root = tmp_path / "run"
    p = torchrun(worker, root, tmp_path / "int.pt", TEST_SAVE_EVERY="0.4s")
    out, err = finish(p)
    assert p.returncode == 0, err[-3000:]
    saved: dict[int, list[int]] = {0: [], 1: []}
    for e in read_events(root / "events"):
        if e["event"] == "checkpoint":
            saved[e["rank"]].append(e["step"])
    assert saved[0] == saved[1] and len(saved[0]) >= 3, saved  # 60 steps of 40 ms or more: several saves
    assert saved[0][-1] == STEPS and set(committed_steps(open_storage(str(root)))) <= set(saved[0])
    resumed = torch.load(tmp_path / "int.pt", weights_only=True)
    for k, v in reference["model"].items():  # saving at other steps changes nothing in the training
        assert torch.equal(resumed["model"][k], v), k


def test_two_ranks_on_one_node_share_its_disk_and_the_restart_after_losing_it_is_bit_exact(
        tmp_path, references, s3_url):
    """Node-local disks with two ranks on one node (3 ranks on 2 "nodes"), the remote the commit point.

    The node's first rank keeps the node's copy of each committed step (the global manifest, and
    the files of that node's ranks only). A SIGTERM to the lone rank of the other node stops the
    job; then the two-rank node's disk is lost: its ranks restore from the remote, and the job
    finishes bit-exact against an uninterrupted 3-rank run.
    """
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    roots = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    env = dict(child_env(), TEST_REMOTE=s3_url)
    procs = two_nodes(worker, roots, tmp_path / "int.pt", free_port(), [env, env], nprocs=(2, 1))
    try:
        pids: list[dict[int, int]] = [{}, {}]
        for i, want in ((0, 2), (1, 1)):
            for line in procs[i].stdout:  # bounded: the job ends by itself after STEPS steps
                m = RESUMED.search(line)
                if m:
                    pids[i][int(m.group(1))] = int(m.group(2))
                    if len(pids[i]) == want:
                        break
        assert [len(p) for p in pids] == [2, 1], pids
        time.sleep(random.Random(7).uniform(0.3, 1.0))
        os.kill(next(iter(pids[1].values())), signal.SIGTERM)  # the lone rank of the second node
        errs = [finish(p)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    stops = {r: e for root in roots for r, e in last_stops(root).items()}
    assert sorted(stops) == [0, 1, 2], (stops, errs[0][-2000:], errs[1][-2000:])
    assert {e["exit_code"] for e in stops.values()} == {75} and len({e["step"] for e in stops.values()}) == 1, \
        (stops, errs[0][-3000:], errs[1][-3000:])
    stop = stops[0]["step"]
    remote = open_storage(s3_url)
    manifest = read_manifest(remote, step_dir(stop))
    assert manifest.world_size == 3 and {f.rank for f in manifest.files.values()} == {0, 1, 2}
    for i, root in enumerate(roots):  # each node's copy holds the files of its own ranks, no other
        node = open_storage(str(root))
        assert committed_steps(node)[-1] == stop
        here = {n for n in node.listdir(step_dir(stop)) if n != "manifest.json"}
        assert here == {n for n, f in manifest.files.items() if f.rank in pids[i]}, (i, here)
        assert read_manifest(node, step_dir(stop)).files == manifest.files  # the global manifest

    import shutil
    shutil.rmtree(roots[0])  # the two-rank node is gone with its disk
    procs = two_nodes(worker, roots, tmp_path / "int.pt", free_port(), [env, env], nprocs=(2, 1))
    outs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    resumed = [int(m.group(1)) for out, _ in outs for m in RESUMED.finditer(out)]
    assert sorted(resumed) == [0, 1, 2] and all(f"resumed {stop}" in out for out, _ in outs)
    wiped = [e for e in read_events(roots[0] / "events") if e["event"] == "restore" and e["step"] == stop]
    assert len(wiped) == 2 and {e["tier"] for e in wiped} == {"remote"}, wiped
    assert_same(torch.load(tmp_path / "int.pt", weights_only=True), references("ddp", 3))
