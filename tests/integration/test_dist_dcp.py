"""One verified checkpoint for a whole torchrun job (spotsafe._dist._dcp): DCP's planners under spotsafe's commit.

Real torchrun, two ranks, gloo on CPU: DDP (Linear + Adam) and FSDP2 (AdamW). Each worker
writes one JSON result per rank; the test reads those and the files on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

from spotsafe._format import check_checkpoint, digest_file, read_manifest
from spotsafe._storage import open_storage

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

COMMON = r'''
import json, os, sys, warnings
from datetime import timedelta
import torch, torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.utils._pytree import tree_map
from spotsafe._dist._dcp import load_global, own_rank_values, rank_local, save_global
from spotsafe.errors import CorruptCheckpointError, UnsupportedStateError

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank()
mode, root, out = sys.argv[1], sys.argv[2], sys.argv[3]
result = {"rank": rank}

def flat(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flat(v, f"{path}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from flat(v, f"{path}.{i}")
    else:
        yield path, tree

def local(v):
    return v.to_local() if hasattr(v, "to_local") else v

def same(a, b):
    fa, fb = dict(flat(a)), dict(flat(b))
    if fa.keys() != fb.keys():
        return sorted(set(fa) ^ set(fb))
    bad = [k for k in fa if not (torch.equal(local(fa[k]), local(fb[k])) if isinstance(fa[k], torch.Tensor)
                                 else fa[k] == fb[k])]
    return bad or True

def snapshot(model, opt):
    msd, osd = get_state_dict(model, opt)
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, {"model": msd, "optim": osd})

def restore(sd, model, opt):
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])

def leave(result):
    """Write this rank's result, then leave together and at once."""
    with open(f"{out}/result-{mode}-{rank}.json", "w") as f:
        json.dump(result, f)
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip C++ static destructors: gloo's at interpreter exit abort now and then ("terminate called")
'''

DDP = COMMON + r'''
def build(seed):
    torch.manual_seed(seed)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(256, 256))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)

def train(model, opt, start, n):
    for s in range(start, start + n):
        x = torch.randn(8, 256, generator=torch.Generator().manual_seed(s * 10 + rank))
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

def state(model, opt, step):
    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd,
            **rank_local({"rank_tensor": torch.full((3,), float(rank + step)), "seen": 100 * step + rank})}

class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("this value cannot be pickled")

if mode == "save":
    model, opt = build(0)
    for step in (1, 2):
        train(model, opt, step * 10, 2)
        save_global(state(model, opt, step), root, step)
        torch.save(snapshot(model, opt), f"{out}/ref-{step}-rank{rank}.pt")
    ref = snapshot(model, opt)
    result["state_nbytes"] = sum(t.numel() * t.element_size() for _, t in flat(ref) if isinstance(t, torch.Tensor))

    model2, opt2 = build(1)
    sd = state(model2, opt2, 0)
    result["loaded"] = load_global(sd, root)
    restore(sd, model2, opt2)
    result["equal"] = same(snapshot(model2, opt2), ref)
    mine = own_rank_values(sd)
    result["own"] = {"rank_tensor": mine["rank_tensor"].tolist(), "seen": mine["seen"]}

    sd = state(model, opt, 3)
    sd["epoch_seed"] = 1000 + rank  # a per-rank value at a shared key: refused
    try:
        save_global(sd, root, 3)
    except UnsupportedStateError as e:
        result["guard"] = str(e)

    sd = state(model, opt, 4)
    if rank == 1:
        sd.update(rank_local({"bad": Unpicklable()}))  # rank 1 fails inside DCP's write
    try:
        save_global(sd, root, 4)
    except CheckpointException as e:
        result["write_failed"] = type(e).__name__
    model3, opt3 = build(2)
    sd = state(model3, opt3, 0)
    result["after_failure_loaded"] = load_global(sd, root)
    restore(sd, model3, opt3)
    result["after_failure_equal"] = same(snapshot(model3, opt3), ref)

elif mode == "corrupt":
    ref1 = torch.load(f"{out}/ref-1-rank{rank}.pt", weights_only=True)
    model, opt = build(1)
    sd = state(model, opt, 0)
    try:
        load_global(sd, root, step=2)
    except CorruptCheckpointError as e:
        result["asked"] = str(e)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result["loaded"] = load_global(sd, root)
    result["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    restore(sd, model, opt)
    result["equal"] = same(snapshot(model, opt), ref1)
    result["own"] = own_rank_values(sd)["seen"]
    try:
        load_global(state(model, opt, 0), root + "-only")
    except CorruptCheckpointError as e:
        result["only"] = str(e)

leave(result)
'''

FSDP2 = COMMON + r'''
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

mesh = init_device_mesh("cpu", (2,))

def build(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.ReLU(), torch.nn.Linear(33, 5))
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)

model, opt = build(0)
for s in range(3):
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(s * 10 + rank))
    model(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
ref = snapshot(model, opt)
msd, osd = get_state_dict(model, opt)
save_global({"model": msd, "optim": osd}, root, 3)

model2, opt2 = build(1)
result["differs_before"] = same(snapshot(model2, opt2), ref) is not True
msd, osd = get_state_dict(model2, opt2)
sd = {"model": msd, "optim": osd}
result["loaded"] = load_global(sd, root)
restore(sd, model2, opt2)
result["equal"] = same(snapshot(model2, opt2), ref)
result["sharded"] = type(next(iter(msd.values()))).__name__
leave(result)
'''


def torchrun(tmp: Path, script: str, *args: str, timeout: float = 180) -> dict[int, dict]:
    """Run ``script MODE ROOT OUT`` under ``torchrun --standalone --nproc-per-node 2``; each rank's result, by rank."""
    worker = tmp / "worker.py"
    worker.write_text(script)
    p = subprocess.Popen([TORCHRUN, "--standalone", "--nproc-per-node", "2", "--monitor-interval", "0.1",
                          str(worker), *args], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    assert p.returncode == 0, err[-12000:]
    mode, out_dir = args[0], Path(args[2])
    return {r: json.loads((out_dir / f"result-{mode}-{r}.json").read_text()) for r in (0, 1)}


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, Path, dict[int, dict]]:
    tmp = tmp_path_factory.mktemp("ddp")
    root, out = tmp / "run", tmp / "out"
    out.mkdir()
    return root, out, torchrun(tmp, DDP, "save", str(root), str(out))


def test_ddp_writes_replicated_state_once_and_its_manifest_lists_every_rank_file(ddp):
    root, _, results = ddp
    manifest = read_manifest(open_storage(str(root)), "step-000000000002")
    assert manifest.world_size == 2 and manifest.step == 2
    data = {n: f for n, f in manifest.files.items() if n != ".metadata"}
    assert ".metadata" in manifest.files and {f.rank for f in data.values()} == {0, 1}
    for name, entry in manifest.files.items():
        assert digest_file(root / "step-000000000002" / name) == (entry.size, entry.checksum), name
    assert sorted(os.listdir(root / "step-000000000002")) == sorted([*manifest.files, "manifest.json"])
    ratio = sum(f.size for f in data.values()) / results[0]["state_nbytes"]
    print(f"data bytes / model+optimizer nbytes = {ratio:.3f}")
    assert 0.98 < ratio < 1.1  # DCP's dedup: one copy of DDP's replicated state, not one per rank (2.0)
    assert check_checkpoint(open_storage(str(root)), 2).valid  # spotsafe verify judges it like any other
    for r in (0, 1):
        assert results[r]["loaded"] == 2 and results[r]["equal"] is True, results[r]


def test_per_rank_values_come_back_to_their_own_rank_and_a_differing_shared_value_is_refused(ddp):
    root, _, results = ddp
    for r in (0, 1):
        assert results[r]["own"] == {"rank_tensor": [float(r + 2)] * 3, "seen": 200 + r}
        assert results[r]["guard"] == (
            "State key 'epoch_seed' holds a different value on rank 0 and rank 1, and DCP saves a shared key from "
            "one rank only; put per-rank values under rank_local(...) (ranks/<rank>/epoch_seed).")
    assert not any(n.startswith("step-000000000003") for n in os.listdir(root))  # refused before writing


def test_a_rank_that_raises_during_write_commits_nothing_and_the_previous_step_loads(ddp):
    root, _, results = ddp
    names = os.listdir(root)
    assert "step-000000000004" not in names
    assert [n for n in names if n.startswith("step-000000000004.tmp-")]  # left for cleanup
    for r in (0, 1):
        assert results[r]["write_failed"] == "CheckpointException"
        assert results[r]["after_failure_loaded"] == 2 and results[r]["after_failure_equal"] is True


def test_a_flipped_byte_skips_that_step_and_the_previous_one_loads(ddp, tmp_path):
    src, out, _ = ddp
    root = tmp_path / "run"
    shutil.copytree(src / "step-000000000001", root / "step-000000000001")
    shutil.copytree(src / "step-000000000002", root / "step-000000000002")
    victim = root / "step-000000000002" / "__0_0.distcp"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    shutil.copytree(root / "step-000000000002", tmp_path / "run-only" / "step-000000000002")
    results = torchrun(tmp_path, DDP, "corrupt", str(root), str(out))
    listed = read_manifest(open_storage(str(root)), "step-000000000002").files["__0_0.distcp"].checksum
    for r in (0, 1):
        res = results[r]
        assert res["loaded"] == 1 and res["equal"] is True and res["own"] == 100 + r, res
        assert res["warnings"] == [f"CheckpointSkippedWarning: Checkpoint step-000000000002 in {root} is corrupt: "
                                   f"__0_0.distcp fails its checksum ({digest_file(victim)[1]}, manifest says "
                                   f"{listed}). "
                                   "Falling back to step-000000000001."], res
        assert res["asked"].startswith(f"Checkpoint step-000000000002 in {root} is corrupt: __0_0.distcp fails")
        assert res["only"].startswith(f"Checkpoint step-000000000002 in {tmp_path / 'run-only'} is corrupt: ")
        assert res["only"].endswith("and no older checkpoint verifies; start from scratch or restore the files.")


def test_fsdp2_sharded_state_saved_at_two_ranks_loads_bit_exact(tmp_path):
    root = tmp_path / "run"
    results = torchrun(tmp_path, FSDP2, "fsdp2", str(root), str(tmp_path))
    for r in (0, 1):
        assert results[r]["sharded"] == "DTensor"
        assert results[r]["differs_before"] and results[r]["loaded"] == 3 and results[r]["equal"] is True, results[r]
    manifest = read_manifest(open_storage(str(root)), "step-000000000003")
    assert manifest.world_size == 2 and {f.rank for n, f in manifest.files.items() if n != ".metadata"} == {0, 1}
