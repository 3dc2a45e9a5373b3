"""Resume on another world size: a checkpoint written by 2 torchrun ranks (DDP, and FSDP2 with
AdamW) restored by 3 ranks, by 1 rank under torchrun, and by one plain process.

The full state dicts (model and optimizer, gathered after the restore) are bit-equal to those
of the job that saved; DCP's load planner reshards (FSDP2's 4-row weight splits 2/2 on 2
ranks and 2/2/0 on 3). Per-rank state: ranks the checkpoint has get their own back (their
RNG draws repeat the saving job's); a rank it does not have gets rank 0's other per-rank
values, RNG streams of its own and one warning. Real torchrun, gloo on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_env
from helpers import assert_same, communicate_or_kill

from spotsafe._format import committed_steps, read_manifest, step_dir
from spotsafe._storage import open_storage
from spotsafe._telemetry import read_events

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
if plain or os.environ.get("TEST_SINGLE_FORMAT"):  # the format of one process (earlier releases under torchrun too)
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


def job(worker: Path, phase: str, mode: str, root: Path, out: Path, nproc: int | None, rc: int = 0,
        **extra: str) -> str:
    """The worker under ``torchrun --standalone`` with ``nproc`` ranks, or as one plain process (None)."""
    env = dict(child_env(), TEST_STEP=str(STEP), **extra)
    args = [str(worker), phase, mode, str(root), str(out)]
    cmd = [sys.executable, *args] if nproc is None else \
        [TORCHRUN, "--nproc-per-node", str(nproc), "--standalone", "--monitor-interval", "0.1", *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    _, err = communicate_or_kill(p, 120)
    assert p.returncode == rc, err[-3000:]
    return err


def test_a_single_process_checkpoint_resumes_under_torchrun_at_one_rank_and_is_refused_at_two(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    root = tmp_path / "run"
    job(worker, "save", "ddp", root, tmp_path / "saved.pt", 1, TEST_SINGLE_FORMAT="1")
    assert read_manifest(open_storage(str(root)), step_dir(STEP)).shards is None  # one process's format
    job(worker, "load", "ddp", root, tmp_path / "loaded.pt", 1)  # the job's manager, at one rank
    got, saved = torch.load(tmp_path / "loaded.pt", weights_only=True), torch.load(tmp_path / "saved.pt",
                                                                                  weights_only=True)
    assert_same(got["full"], saved["full"])
    assert torch.equal(got["ranks"][0]["draws"], saved["ranks"][0]["draws"])
    err = job(worker, "load", "ddp", root, tmp_path / "refused.pt", 2, rc=1)
    assert "was written by a single process, and this job has 2 ranks; resume it with one rank" in err


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
        if nproc == 3:
            got3 = got
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

    # a new rank's streams are the same on every restart: its seed depends on the checkpoint only
    from spotsafe._state._sharded import derived_seed

    manifest = read_manifest(storage, step_dir(STEP))
    torch.manual_seed(derived_seed(manifest, 2))
    assert torch.equal(torch.rand(4), got3["ranks"][2]["draws"])


STREAM_WORKER = r'''
import json, os, signal, sys
from datetime import timedelta
import torch, torch.distributed as dist
import spotsafe
from spotsafe.data import ResumableDataLoader

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
total, stop_at, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
g = torch.Generator().manual_seed(5)
xs, ws = torch.randn(64, 4, generator=g), torch.randn(4, 1, generator=g)
dataset = [(i, xs[i], xs[i] @ ws) for i in range(64)]  # each sample carries its index
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 3, gamma=0.5)
keep = os.environ["TEST_GLOBAL_BATCH"] == "keep"
loader = ResumableDataLoader(dataset, batch_size=4, global_batch_size=8 if keep else None, num_replicas=world,
                             rank=rank, seed=1)
state = {"model": model, "optimizer": opt, "scheduler": sched, "data": loader}
log = open(f"{out}.rank{rank}", "a")
batches = None
with spotsafe.Run(os.environ["TEST_ROOT"], state, save_every=100, notices="signals",
                  scale_lr=None if keep else "linear") as run:
    log.write(json.dumps({"resumed": run.step, "world": world, "lr": opt.param_groups[0]["lr"],
                          "base_lrs": sched.base_lrs, "last_lr": sched.get_last_lr()}) + "\n")
    for step in run.steps(total):
        seen = []
        assert run.grad_accum == loader.grad_accum == (8 // (4 * world) if keep else 1)
        for k in range(run.grad_accum):
            batch = next(batches, None) if batches is not None else None
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            idx, x, y = batch
            seen += idx.tolist()
            ((model(x) - y).pow(2).mean() / loader.grad_accum).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        log.write(json.dumps({"step": step, "idx": seen, "lr": opt.param_groups[0]["lr"]}) + "\n")
        log.flush()
        if step == stop_at and rank == world - 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a notice on the last rank: the job stops together
if rank == 0:
    with torch.no_grad():
        loss = ((model.module(xs) - xs @ ws).pow(2).mean()).item()
    log.write(json.dumps({"final_loss": loss, "weight": model.module.weight.flatten().tolist()}) + "\n")
log.close()
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)
'''


def stream_job(worker: Path, root: Path, out: Path, nproc: int, total: int, stop_at: int, keep: str) -> int:
    env = dict(child_env(), TEST_ROOT=str(root), TEST_GLOBAL_BATCH=keep)
    p = subprocess.Popen([TORCHRUN, "--nproc-per-node", str(nproc), "--standalone", "--monitor-interval", "0.1",
                          str(worker), str(total), str(stop_at), str(out)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = communicate_or_kill(p, 120)
    assert p.returncode in (0, 1), err[-3000:]  # torchrun exits 1 when its workers exit 75
    return p.returncode


def read_log(out: Path, ranks: int) -> tuple[list[dict], dict[int, list[int]], dict]:
    """(each attempt's start line on rank 0, the global indices of each step by step, rank 0's final line)."""
    starts, steps, final = [], {}, {}
    per_rank = [[json.loads(line) for line in Path(f"{out}.rank{r}").read_text().splitlines()]
                for r in range(ranks) if Path(f"{out}.rank{r}").exists()]
    for r, lines in enumerate(per_rank):
        for e in lines:
            if "resumed" in e and r == 0:
                starts.append(e)
            elif "step" in e:
                steps.setdefault(e["step"], {})[r] = e  # a step redone after a restart: the last one counts
            elif "final_loss" in e:
                final = e
    seen = {s: [i for r in sorted(by) for i in by[r]["idx"]] for s, by in sorted(steps.items())}
    return starts, seen, final


STREAM_STEPS = 16


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict[int, list[int]], dict]:
    """The stream job on 2 ranks throughout (the same with either flag at 2 ranks: 4 samples a rank
    a step, the global batch 8): each step's global sample indices, and rank 0's final line."""
    d = tmp_path_factory.mktemp("stream-reference")
    worker = d / "worker.py"
    worker.write_text(STREAM_WORKER)
    assert stream_job(worker, d / "ref", d / "ref.log", 2, STREAM_STEPS, -1, "keep") == 0
    _, whole, final = read_log(d / "ref.log", 2)
    return whole, final


@pytest.mark.parametrize("keep", ["keep", "scale_lr"])
def test_losing_a_rank_mid_epoch_and_getting_it_back_keeps_the_global_sample_stream(tmp_path, keep,
                                                                                    uninterrupted):
    """2 ranks, then 1 (a node lost), then 2 again, against 2 ranks throughout, mid-epoch each time.

    ``keep``: the global batch stays 8 (1 rank accumulates 2 micro-batches of 4): the same samples
    in the same optimizer steps, and the final loss within 1e-6 relative. ``scale_lr``: the per-rank
    batch stays 4 (the global batch halves on 1 rank), the learning rates are scaled by 1/2 and
    back by 2, exactly, and the sample stream is still the same, only in smaller steps.
    """
    worker = tmp_path / "worker.py"
    worker.write_text(STREAM_WORKER)
    total = STREAM_STEPS
    whole, ref_final = uninterrupted
    out, root = tmp_path / "el.log", tmp_path / "run"
    assert stream_job(worker, root, out, 2, total, 3, keep) == 1  # stopped by the notice after step 3
    assert stream_job(worker, root, out, 1, total, 6 if keep == "keep" else 9, keep) == 1  # one rank
    assert stream_job(worker, root, out, 2, total, -1, keep) == 0  # two again, to the end
    starts, seen, final = read_log(out, 2)
    assert [s["world"] for s in starts] == [2, 1, 2]
    assert 3 < starts[1]["resumed"] < starts[2]["resumed"]  # each stop committed a checkpoint the next one took
    flat, whole_flat = [i for s in sorted(seen) for i in seen[s]], [i for s in sorted(whole) for i in whole[s]]
    # no sample lost, none repeated: the same stream (shorter with smaller steps on 1 rank)
    assert flat == whole_flat[:len(flat)]
    if keep == "keep":
        assert seen == whole and flat == whole_flat  # the same samples in the same optimizer steps
        assert final["final_loss"] == pytest.approx(ref_final["final_loss"], rel=1e-6)
        assert [s["lr"] for s in starts[1:]] == [whole_lr(out, s["resumed"]) for s in starts[1:]]
    else:
        shrink, grow = starts[1], starts[2]
        one_rank = grow["resumed"] - shrink["resumed"]  # steps of 4 samples; 8 on 2 ranks, and the short one
        assert len(flat) == 8 * (total - one_rank) - 4 + 4 * one_rank, (len(flat), shrink, grow)
        saved_lr = whole_lr(out, shrink["resumed"])
        assert shrink["lr"] == saved_lr * 0.5 and shrink["last_lr"] == [saved_lr * 0.5]
        assert shrink["base_lrs"] == [0.1 * 0.5] and grow["base_lrs"] == [0.1 * 0.5 * 2.0]
        assert grow["lr"] == whole_lr(out, grow["resumed"]) * 2.0
        events = [e for e in read_events(root / "events") if e["event"] == "restore" and e.get("step")
                  and e["rank"] == 0]
        assert sorted((e["saved_world_size"], e["world_size"], e["lr_scale"]) for e in events) == [(1, 2, 2.0),
                                                                                                   (2, 1, 0.5)]


def whole_lr(out: Path, step: int) -> float:
    """The learning rate rank 0 logged after ``step`` (the last time it ran that step)."""
    lr = None
    for line in Path(f"{out}.rank0").read_text().splitlines():
        e = json.loads(line)
        if e.get("step") == step:
            lr = e["lr"]
    assert lr is not None, step
    return lr


NODE_WORKER = r'''
import os, sys, time
from datetime import timedelta
import torch, torch.distributed as dist
import spotsafe

def say(line):
    os.write(1, (line + "\n").encode())

dist.init_process_group("gloo", timeout=timedelta(seconds=30))
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 4))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
state = {"model": model, "optimizer": opt}
total = int(sys.argv[1])
with spotsafe.Run(os.environ["TEST_ROOT"], state, save_every=5, remote=os.environ["TEST_REMOTE"],
                  notices="signals", leave_on_notice=True) as run:
    say(f"rank {rank} pid {os.getpid()} world {world} resumed {run.step}")
    for step in run.steps(total):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step * 10 + rank))
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        time.sleep(0.1)
        say(f"rank {rank} world {world} step {step}")
say(f"rank {rank} world {world} done {run.step}")
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)
'''
NODE_STEPS = 40
RDZV_CONF = "last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=2,join_timeout=60"


class Agent:
    """One ``torchrun --nnodes 1:2`` agent (a "node"): its output read on a thread, line by line."""

    def __init__(self, worker: Path, root: Path, port: int, remote: str, host: bool) -> None:
        import queue
        import threading

        env = dict(child_env(), TEST_ROOT=str(root), TEST_REMOTE=remote)
        self.p = subprocess.Popen(
            [TORCHRUN, "--nnodes", "1:2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"job-{port}",
             "--rdzv-conf", f"{RDZV_CONF},is_host={int(host)}", "--max-restarts", "3", "--monitor-interval", "0.1",
             str(worker), str(NODE_STEPS)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.p.stdout], daemon=True).start()
        threading.Thread(target=lambda: [self.err.append(x) for x in self.p.stderr], daemon=True).start()

    def drain(self) -> list[str]:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def kill(self, sig: int = 9) -> None:
        """The node dies: its agent and its workers (torchrun starts each worker in a session of its own)."""
        import os

        for line in self.drain():
            if " resumed " in line:
                try:
                    os.kill(int(line.split()[3]), sig)
                except ProcessLookupError:
                    pass
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)


def steps_of(lines: list[str]) -> list[int]:
    import re

    return [int(m.group(1)) for line in lines for m in [re.search(r" step (\d+)$", line.strip())] if m]


def wait_until(cond, timeout: float, what: str, agents: list[Agent] = ()) -> None:
    import time

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= end:
            logs = "".join(f"\n--- agent {i}:\n{''.join(a.drain()[-20:])}{''.join(a.err[-40:])}"
                           for i, a in enumerate(agents))
            raise AssertionError(f"timed out waiting for {what}{logs}")
        time.sleep(0.02)


@pytest.mark.parametrize("notice", [False, True])
def test_a_lost_node_leaves_the_survivor_to_resume_alone_from_the_remote(tmp_path, s3_url, notice):
    """Two agents (``--nnodes 1:2``, c10d rendezvous on 127.0.0.1), node-local roots, the real S3 server.

    Without notice, the second node's whole process group is SIGKILLed mid-run: the survivor's
    agent restarts it at world size 1, it resumes from the newest global commit (on the remote:
    the dead node's disk is gone) and finishes; the steps lost are those since that commit. With a
    notice first (SIGTERM to the second node's worker), the job checkpoints together and that
    worker ends its own agent (``leave_on_notice``): the survivor resumes at the stop step, losing none.
    """
    import os
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    worker = tmp_path / "worker.py"
    worker.write_text(NODE_WORKER)
    roots = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    # both at once: the first round closes 3 s (last_call_timeout) after the first agent joins
    survivor = Agent(worker, roots[0], port, s3_url, host=True)
    doomed = Agent(worker, roots[1], port, s3_url, host=False)
    agents = [survivor, doomed]
    try:
        remote = open_storage(s3_url)
        wait_until(lambda: max(steps_of(survivor.drain()) or [0]) >= 12, 60, "12 steps at world size 2", agents)
        if notice:  # the node's notice: the job checkpoints together, then the node's rank ends its agent
            pid = next(int(x.split()[3]) for x in doomed.drain() if " resumed " in x)
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: doomed.p.poll() is not None, 30, "the noticed node to leave", agents)
            assert doomed.p.returncode == -signal.SIGKILL  # its worker ended it (leave_on_notice)
        doomed.kill()
        reached = max(steps_of(survivor.drain()) + steps_of(doomed.drain()))
        committed = committed_steps(remote)[-1]  # the survivor's new attempt needs a rendezvous (> 3 s) first
        assert reached < NODE_STEPS - 10, reached  # the node went mid-run
        wait_until(lambda: survivor.p.poll() is not None, 90, "the survivor to finish", agents)
        survivor.drain()
    finally:
        for a in agents:
            a.kill()
    assert survivor.p.returncode == 0, "".join(survivor.err)[-3000:]
    starts = [x.split() for x in survivor.seen if " resumed " in x]
    assert [s[5] for s in starts] == ["2", "1"], starts  # world size 2, then the survivor alone
    resumed = int(starts[1][7])
    assert committed <= resumed <= reached
    lost = reached - resumed
    if notice:
        assert lost == 0 and resumed == committed  # the notice's checkpoint: not one step lost
    else:
        assert lost <= 5 + 1  # at most the steps since the last commit (save_every=5; one in flight)
    assert any(f"world 1 done {NODE_STEPS}" in x for x in survivor.seen)
    restores = [e for e in read_events(roots[0] / "events") if e["event"] == "restore" and e.get("step") == resumed]
    assert restores and restores[-1]["world_size"] == 1 and restores[-1]["saved_world_size"] == 2
    # the report: one interruption, the job going on at 1 rank after it (both nodes' event files)
    from spotsafe._telemetry import build_report
    from spotsafe._telemetry._html import render_html

    report = build_report(read_events(roots[0] / "events") + read_events(roots[1] / "events"))
    (hit,) = report["per_interruption"]
    assert (hit["world_size"], hit["next_world_size"], hit["resumed_step"]) == (2, 1, resumed)
    if notice:
        assert "signal" in hit["source"]
    else:  # rank 0 on the survivor: its collective failed; rank 0 on the lost node: killed
        assert hit["source"] in ("node lost", "killed")
    assert [a["world_size"] for a in report["per_attempt"]] == [2, 1]
    assert "<td>2 → 1</td>" in render_html(report)

