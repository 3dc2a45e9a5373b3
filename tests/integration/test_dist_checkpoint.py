"""One checkpoint for a whole torchrun job (GlobalCheckpointManager, made by ``spotsafe.Run``).

Real torchrun, two ranks, gloo on CPU: DDP (Adam) and FSDP2 (AdamW, dimensions 257 and 33 that
split unevenly), a StepLR scheduler, a plain per-rank value and per-rank RNG streams. An
interrupted run must end bit-for-bit where an uninterrupted one does, on both ranks; a rank
SIGKILLed in either phase of a save, or a flipped byte, leaves the previous step to resume from.
One reference run per model kind serves every test of the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import child_env
from helpers import assert_same, communicate_or_kill

from spotsafe._format import check_checkpoint, committed_steps, digest_file, read_manifest, step_dir
from spotsafe._storage import open_storage

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
A, B = 6, 12  # the interrupted runs stop at A and go on to B; the reference runs to B at once
SAVE_EVERY = 4  # checkpoints at 4, then A (the final save of the first part), 8, 12

WORKER = r'''
import json, os, sys, warnings
from datetime import timedelta
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
import spotsafe
from spotsafe.errors import CheckpointSkippedWarning

def say(obj):
    os.write(1, (json.dumps(obj) + "\n").encode())  # one write a line: the ranks share torchrun's stdout

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank()
mode, total, save_every, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
kill_at = int(os.environ.get("TEST_KILL_AT", "0"))
torch.manual_seed(0)  # the same initial parameters on every rank
net = torch.nn.Sequential(torch.nn.Linear(64, 257), torch.nn.ReLU(), torch.nn.Linear(257, 33))
if mode == "ddp":
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
else:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (2,))
    for m in net:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m, mesh=mesh)
    model = fully_shard(net, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
torch.manual_seed(100 + rank)  # then one RNG stream per rank: each must come back to its own rank
sched = torch.optim.lr_scheduler.StepLR(opt, 3, 0.9)
state = {"model": model, "optimizer": opt, "scheduler": sched, "seen": {"rank": rank, "n": 0}}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", CheckpointSkippedWarning)
    with spotsafe.Run(os.environ["TEST_ROOT"], state, save_every=save_every, notices=None) as run:
        say({"rank": rank, "resumed": run.step, "seen": state["seen"],
             "skipped": [str(w.message) for w in caught if w.category is CheckpointSkippedWarning]})
        for step in run.steps(total):
            if step == kill_at:
                run.manager.wait()  # the previous save is committed: only this step's save meets the kill
                os.environ["SPOTSAFE_CHAOS_KILL"] = os.environ["TEST_KILL"]  # read when the save writes
            x = torch.randn(16, 64) + rank  # drawn from this rank's stream
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            state["seen"]["n"] += 1  # state["seen"]: a restore replaces the dict
full = StateDictOptions(full_state_dict=True)  # a collective under FSDP2: every rank gathers the whole state
torch.save({"model": get_model_state_dict(model, options=full),
            "optimizer": get_optimizer_state_dict(model, opt, options=full),
            "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "seen": state["seen"]},
           f"{out}.rank{rank}")
say({"rank": rank, "done": run.step})
dist.barrier()  # no rank tears gloo down while the other still talks to it
dist.destroy_process_group()
os._exit(0)  # skip C++ static destructors: gloo's at interpreter exit abort now and then ("terminate called")
'''


class Job:
    """One finished torchrun job: exit code, each rank's JSON lines, stderr, seconds taken."""

    def __init__(self, rc: int, out: str, err: str, seconds: float, result: Path) -> None:
        self.rc, self.err, self.seconds, self.result = rc, err, seconds, result
        self.lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def of(self, key: str) -> dict[int, object]:
        """{rank: value} of ``key`` from the lines that have it."""
        return {d["rank"]: d[key] for d in self.lines if key in d}

    def states(self) -> dict[int, dict]:
        return {r: torch.load(f"{self.result}.rank{r}", weights_only=True) for r in (0, 1)}


def torchrun(tmp: Path, root: Path, mode: str, total: int, *, timeout: float = 120, **env: str) -> Job:
    """``worker.py MODE TOTAL`` under ``torchrun --standalone --nproc-per-node 2`` on ``root``, bounded in time."""
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    result = tmp / f"result-{root.name}-{total}"
    full_env = {**child_env(), "TEST_ROOT": str(root), **env}
    t0 = time.monotonic()
    p = subprocess.Popen([TORCHRUN, "--standalone", "--nproc-per-node", "2", "--monitor-interval", "0.1",
                          str(worker), mode, str(total), str(SAVE_EVERY), str(result)],
                         env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    out, err = communicate_or_kill(p, timeout)
    return Job(p.returncode, out, err, time.monotonic() - t0, result)


def finished(tmp: Path, root: Path, mode: str, total: int, **env: str) -> Job:
    job = torchrun(tmp, root, mode, total, **env)
    assert job.rc == 0, job.err[-6000:]
    assert job.of("done") == {0: total, 1: total}
    return job


def assert_same_states(job: Job, reference: dict[int, dict]) -> None:
    """Both ranks end where the uninterrupted run ended: model, optimizer, scheduler, RNG, plain value."""
    states = job.states()
    for r in (0, 1):
        assert_same(states[r], reference[r], f"rank{r}")


def tensor_bytes(tree: object) -> int:
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return tree.numel() * tree.element_size() if isinstance(tree, torch.Tensor) else 0


def shard_bytes(root: Path, step: int) -> dict[int, int]:
    """{rank: size} of the ``__shards`` files the manifest of ``step`` lists, checked against the disk."""
    manifest = read_manifest(open_storage(str(root)), step_dir(step))
    sizes = {}
    for name, f in manifest.files.items():
        assert digest_file(root / step_dir(step) / name) == (f.size, f.checksum), name
        if name.startswith("__shards."):
            sizes[f.rank] = f.size
    return sizes


def reference(tmp_path_factory, mode: str) -> dict[int, dict]:
    tmp = tmp_path_factory.mktemp(f"{mode}-reference")
    states = finished(tmp, tmp / "run", mode, B).states()
    assert not torch.equal(states[0]["rng"], states[1]["rng"])  # per-rank streams: a swap would show
    return states


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory) -> dict[int, dict]:
    return reference(tmp_path_factory, "ddp")


@pytest.fixture(scope="module")
def fsdp_reference(tmp_path_factory) -> dict[int, dict]:
    return reference(tmp_path_factory, "fsdp")


@pytest.fixture(scope="module")
def fsdp_first_part(tmp_path_factory) -> tuple[Path, Path]:
    """An FSDP2 root run to step A (checkpoints 4 and A), and an untouched copy of it."""
    tmp = tmp_path_factory.mktemp("fsdp-first")
    finished(tmp, tmp / "run", "fsdp", A)
    shutil.copytree(tmp / "run", tmp / "copy", ignore=shutil.ignore_patterns("events"))
    return tmp / "run", tmp / "copy"


def test_ddp_restart_is_bit_exact_and_one_manifest_holds_both_ranks_with_one_copy_of_the_state(tmp_path,
                                                                                             ddp_reference):
    root = tmp_path / "run"
    first = finished(tmp_path, root, "ddp", A)
    assert first.of("resumed") == {0: 0, 1: 0}
    storage = open_storage(str(root))
    assert committed_steps(storage) == [SAVE_EVERY, A]
    manifest = read_manifest(storage, step_dir(A))
    assert manifest.world_size == 2 and manifest.step == A
    ranks = {name: f.rank for name, f in manifest.files.items()}
    assert ranks == {"__shards.rank-00000.bin": 0, "__rng__.rank-00000.bin": 0, "__rng__.rank-00001.bin": 1}
    assert sorted(os.listdir(root / step_dir(A))) == sorted([*manifest.files, "manifest.json"])
    for r in (0, 1):  # the plain value of each rank, saved as that rank's own component
        assert manifest.components[f"seen@{r}"].tree == {"rank": r, "n": A}
    shards = shard_bytes(root, A)  # checks every file's size and checksum too
    true = tensor_bytes(ddp_reference[0]["model"]) + tensor_bytes(ddp_reference[0]["optimizer"])
    ratio = sum(shards.values()) / true
    assert set(shards) == {0}  # DDP's replicated state: written by rank 0 alone
    assert 1.0 <= ratio < 1.15, ratio  # one copy of the replicated state, not one per rank (2.0)

    second = finished(tmp_path, root, "ddp", B)
    assert second.of("resumed") == {0: A, 1: A}
    assert second.of("seen") == {0: {"rank": 0, "n": A}, 1: {"rank": 1, "n": A}}  # each rank's own value
    assert second.of("skipped") == {0: [], 1: []}
    assert_same_states(second, ddp_reference)
    assert committed_steps(storage)[-1] == B


def test_fsdp2_restart_is_bit_exact_and_each_rank_writes_its_own_half(fsdp_first_part, fsdp_reference):
    root, _ = fsdp_first_part
    shards = shard_bytes(root, A)
    true = tensor_bytes(fsdp_reference[0]["model"]) + tensor_bytes(fsdp_reference[0]["optimizer"])
    assert set(shards) == {0, 1}
    assert 1.0 <= sum(shards.values()) / true < 1.15, shards
    for r in (0, 1):
        assert 0.4 < shards[r] / true < 0.6, shards  # rank 0's half has one row more of 257 and 33, and the
        # optimizer's plain values

    second = finished(root.parent, root, "fsdp", B)
    assert second.of("resumed") == {0: A, 1: A}
    assert second.of("seen") == {0: {"rank": 0, "n": A}, 1: {"rank": 1, "n": A}}
    assert_same_states(second, fsdp_reference)


def test_a_flipped_byte_in_one_ranks_shards_falls_back_to_the_previous_step_on_both_ranks(tmp_path,
                                                                                          fsdp_first_part,
                                                                                          fsdp_reference):
    root = tmp_path / "run"
    shutil.copytree(fsdp_first_part[1], root)
    victim = root / step_dir(A) / "__shards.rank-00001.bin"  # rank 0 never reads it: its shards are its own
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    listed = read_manifest(open_storage(str(root)), step_dir(A)).files[victim.name].checksum

    job = finished(tmp_path, root, "fsdp", B)
    assert job.of("resumed") == {0: SAVE_EVERY, 1: SAVE_EVERY}
    assert job.of("seen") == {0: {"rank": 0, "n": SAVE_EVERY}, 1: {"rank": 1, "n": SAVE_EVERY}}
    reason = f"{victim.name} fails its checksum ({digest_file(victim)[1]}, manifest says {listed})"
    tail = ". Skipping it and falling back to another copy or an older one."
    assert job.of("skipped") == {
        1: [f"Checkpoint {step_dir(A)} in {root} is invalid: {reason}{tail}"],
        0: [f"Checkpoint {step_dir(A)} in {root} is invalid: on rank 1: {reason}{tail}"],
    }
    assert_same_states(job, fsdp_reference)  # from step 4 on, still the reference's path


KILLED = 8  # the save that dies; the one at SAVE_EVERY is committed


@pytest.mark.parametrize(("kill", "dead", "written"), [
    ("write:1", 1, False),  # phase 1: rank 1 dies mid-write of its files
    ("commit", 0, True),  # between the phases: every rank's files are there, rank 0 dies before the manifest
])
def test_a_rank_killed_during_a_save_leaves_the_previous_step_and_both_ranks_resume_from_it(
        tmp_path, ddp_reference, kill, dead, written):
    root = tmp_path / "run"
    job = torchrun(tmp_path, root, "ddp", B, TEST_KILL_AT=str(KILLED), TEST_KILL=kill)
    assert job.rc != 0 and job.of("done") == {}
    assert re.search(rf"rank\s*: {dead} \(local_rank: {dead}\)\s*exitcode\s*: -9 ", job.err), job.err[-3000:]
    assert job.seconds < 60  # torchrun's agent ended the survivor: no wait for the commit timeout (300 s)
    storage = open_storage(str(root))
    assert committed_steps(storage) == [SAVE_EVERY]  # no step-8 directory, no manifest of it
    assert check_checkpoint(storage, SAVE_EVERY).valid
    tmps = [d for d in root.iterdir() if d.name.startswith(f"{step_dir(KILLED)}.tmp-")]  # left for cleanup
    assert not any((d / "manifest.json").exists() for d in tmps)
    assert sum((d / "__rng__.rank-00001.bin").exists() for d in tmps) == written  # rank 1's own file: the 2nd only

    again = finished(tmp_path, root, "ddp", B)
    assert again.of("resumed") == {0: SAVE_EVERY, 1: SAVE_EVERY}
    assert again.of("seen") == {0: {"rank": 0, "n": SAVE_EVERY}, 1: {"rank": 1, "n": SAVE_EVERY}}
    assert again.of("skipped") == {0: [], 1: []}
    assert_same_states(again, ddp_reference)
    assert committed_steps(storage)[-1] == B
    assert not [d for d in root.iterdir() if ".tmp-" in d.name]  # the leftover was cleaned up
