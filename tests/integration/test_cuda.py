"""CUDA paths: pinned staging with non-blocking copies, CUDA RNG capture, a preempted GPU run.

Skipped without a GPU (CI has none); run on a GPU machine whenever one is lent.
"""

from __future__ import annotations

import os
import signal

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts

import pytest
import torch

import spotsafe
from spotsafe.notices import Signals

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gpu_training(seed: int = 0, width: int = 256):
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(width, 8)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    scaler = torch.amp.GradScaler("cuda")
    return model, opt, sched, scaler


def gpu_step(model, opt, sched, scaler):
    x = torch.randn(128, 64, device="cuda")                     # CUDA RNG in the data
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().pow(2).mean()                   # CUDA RNG in dropout
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()


def test_async_save_of_cuda_tensors_is_a_snapshot_in_pinned_memory(tmp_path):
    model, opt, sched, scaler = gpu_training()
    gpu_step(model, opt, sched, scaler)
    state = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler}
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with spotsafe.CheckpointManager(tmp_path / "run") as mgr:
        mgr.save(1, state)
        staged = mgr._buffers._buffers
        assert staged["model"].is_pinned() and staged["optimizer"].is_pinned()  # page-locked for CUDA tensors
        with torch.no_grad():                                   # change everything at once
            for p in model.parameters():
                p.add_(1.0)
        mgr.wait()
        fresh, opt2, sched2, scaler2 = gpu_training(seed=5)
        mgr.restore({"model": fresh, "optimizer": opt2, "scheduler": sched2, "scaler": scaler2})
    for k, v in fresh.state_dict().items():
        assert v.device.type == "cuda" and torch.equal(v, expected[k]), k


def test_cuda_rng_is_captured_and_replays(tmp_path):
    torch.cuda.manual_seed_all(123)
    torch.randn(10, device="cuda")
    with spotsafe.CheckpointManager(tmp_path / "run", async_save=False) as mgr:
        mgr.save(1, {"v": 1})
        after = torch.randn(1000, device="cuda")
        torch.cuda.manual_seed_all(999)                        # move the generator elsewhere
        mgr.restore({"v": None})
    assert torch.equal(torch.randn(1000, device="cuda"), after)


def test_a_gpu_run_preempted_by_a_signal_resumes_bit_exact(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        model, opt, sched, scaler = gpu_training()
        state = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler}
        with spotsafe.Run(tmp_path / "ref", state, save_every=4, notices=None) as run:
            for _ in run.steps(20):
                gpu_step(model, opt, sched, scaler)
        reference = {k: v.clone() for k, v in model.state_dict().items()}

        model, opt, sched, scaler = gpu_training()
        state = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler}
        with pytest.raises(spotsafe.Preempted) as stop:
            with spotsafe.Run(tmp_path / "int", state, save_every=4, notices=[Signals(["SIGUSR1"])]) as run:
                for step in run.steps(20):
                    gpu_step(model, opt, sched, scaler)
                    if step == 7:
                        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.value.step == 7 and stop.value.tier == "local"

        torch.cuda.manual_seed_all(4242)                       # a new process would start elsewhere
        model, opt, sched, scaler = gpu_training(seed=3)
        state = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler}
        with spotsafe.Run(tmp_path / "int", state, save_every=4, notices=None) as run:
            assert run.start_step == 7
            for _ in run.steps(20):
                gpu_step(model, opt, sched, scaler)
        for k, v in model.state_dict().items():
            assert torch.equal(v, reference[k]), k
    finally:
        torch.use_deterministic_algorithms(False)


GPU_SCRIPT = '''
import os, sys, time
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
import torch, spotsafe
torch.use_deterministic_algorithms(True)
torch.manual_seed(0); torch.cuda.manual_seed_all(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                            torch.nn.Linear(256, 8)).cuda()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
scaler = torch.amp.GradScaler("cuda")
state = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler}
with spotsafe.Run(sys.argv[1], state, save_every=7, notices="signals") as run:
    print(f"resumed {run.step}", flush=True)
    for step in run.steps(300):
        x = torch.randn(128, 64, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        opt.zero_grad(); scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); sched.step()
        run.log(loss=loss.item())
        time.sleep(0.02)
torch.save({k: v.cpu() for k, v in model.state_dict().items()}, sys.argv[2])
'''


def test_a_gpu_run_under_spotsafe_run_chaos_ends_bit_exact(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import child_env, spotsafe_cli

    script = tmp_path / "gpu_train.py"
    script.write_text(GPU_SCRIPT)
    env = child_env()
    subprocess.run([sys.executable, str(script), str(tmp_path / "ref"), str(tmp_path / "ref.pt")], env=env,
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    r = subprocess.run([*spotsafe_cli(), "run", "--root", str(tmp_path / "int"), "--chaos", "1.5s", "--chaos-seed",
                        "1", "--chaos-max", "4", "--", sys.executable, str(script), str(tmp_path / "int"),
                        str(tmp_path / "int.pt")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "int.pt")
    for k, v in ref.items():
        assert torch.equal(v, got[k]), k
    rep = json.loads(subprocess.run([*spotsafe_cli(), "report", str(tmp_path / "int"), "--json"], env=env,
                                    capture_output=True, text=True, timeout=60, check=True).stdout)
    assert rep["drills"] == 4 and rep["interruptions"]["total"] == 4 and rep["resume"]["rate"] == 1.0
    print("GPU drill report:", json.dumps({k: rep[k] for k in ("attempts", "interruptions", "replayed", "goodput")}))
