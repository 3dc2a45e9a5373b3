"""Benchmark (GPU machines only): the CUDA path of a save, and notice-to-durable for a GPU state.

The state is a stack of ``nn.Linear`` float32 layers on ``cuda:0`` plus its Adam state (about
3x the parameter bytes), sized to each of ``--sizes``. Measured in the same process, medians
of ``--repeats`` warm rounds (one untimed warm-up round first):

* ``.cpu() (pageable)`` - ``t.cpu()`` of every tensor: what a plain ``torch.save`` of a CUDA
  state pays before it writes anything.
* ``pinned copy (floor)`` - ``dst.copy_(t, non_blocking=True)`` into preallocated pinned
  buffers, one synchronize: the fastest a GPU->host snapshot can be.
* ``spotsafe save() stall`` - ``CheckpointManager.save`` (async, RNG capture on): the time
  the training loop is blocked. The write runs in the background and is waited for untimed.
* ``dcp.async_save`` - ``torch.distributed.checkpoint.async_save(..., no_dist=True)`` stall.
* ``torch.save`` - to a file, until it returns (no fsync).

Then notice-to-durable: ``spotsafe.Run`` gets SIGUSR1 after a step and the emergency
checkpoint's ``notice_to_durable_s`` (from the stop event) is compared with a raw
write+fsync of the same bytes.

    python bench/bench_cuda.py --sizes 1G,4G --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fsync_dir  # noqa: E402

import spotsafe  # noqa: E402
from spotsafe.notices import Signals  # noqa: E402
from spotsafe._telemetry import read_events  # noqa: E402


def parse_size(text: str) -> int:
    units = {"M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def build(total: int):
    """Params + Adam state of about ``total`` bytes on cuda:0."""
    width = 4096
    layers = max(1, total // (3 * 4 * width * width))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)]).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(8, width, device="cuda")).sum().backward()
    opt.step()
    torch.cuda.synchronize()
    return model, opt


def tensors(model, opt) -> list[torch.Tensor]:
    out = [p.data for p in model.parameters()]
    for st in opt.state.values():
        out += [v for v in st.values() if isinstance(v, torch.Tensor) and v.is_cuda]
    return out


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def raw_write(path: Path, buf: torch.Tensor) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(memoryview(buf.numpy()))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)
    return time.perf_counter() - t0


def stalls(model, opt, work: Path, repeats: int) -> dict[str, list[float]]:
    import torch.distributed.checkpoint as dcp

    ts = tensors(model, opt)
    pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in ts]
    res: dict[str, list[float]] = {k: [] for k in ("cpu", "pinned", "spotsafe", "dcp", "torch.save")}
    state = {"model": model, "optimizer": opt}

    def pinned_copy():
        for d, t in zip(pinned, ts):
            d.copy_(t, non_blocking=True)
        torch.cuda.synchronize()

    with spotsafe.CheckpointManager(work / "spotsafe", keep_last=1) as mgr:
        for r in range(repeats + 1):
            cpu = timed(lambda: [t.cpu() for t in ts])
            pin = timed(pinned_copy)
            stats = mgr.save(r + 1, state)
            mgr.wait()
            fut = None
            t0 = time.perf_counter()
            fut = dcp.async_save({"model": model.state_dict(), "optimizer": opt.state_dict()},
                                 checkpoint_id=str(work / f"dcp{r}"), no_dist=True)
            dcp_s = time.perf_counter() - t0
            fut.result()
            shutil.rmtree(work / f"dcp{r}", ignore_errors=True)
            ts_s = timed(lambda: torch.save(state_dicts(model, opt), work / "t.pt"))
            os.unlink(work / "t.pt")
            if r:  # the first round warms every path up
                for k, v in zip(res, (cpu, pin, stats.stall_s, dcp_s, ts_s)):
                    res[k].append(v)
    return res


def state_dicts(model, opt):
    return {"model": model.state_dict(), "optimizer": opt.state_dict()}


def notice_to_durable(model, opt, work: Path, repeats: int) -> tuple[list[float], list[float], int]:
    n2d, raw, nbytes = [], [], 0
    for r in range(repeats):
        root = work / f"run{r}"
        try:
            with spotsafe.Run(root, {"model": model, "optimizer": opt}, notices=[Signals(["SIGUSR1"])]) as run:
                for step in run.steps(10**6):
                    model(torch.randn(8, 4096, device="cuda")).sum().backward()
                    if step == 2:
                        os.kill(os.getpid(), signal.SIGUSR1)
        except spotsafe.Preempted:
            pass
        ev = read_events(root / "events")
        n2d.append(ev[-1]["notice_to_durable_s"])
        nbytes = [e for e in ev if e["event"] == "checkpoint"][-1]["bytes"]
        shutil.rmtree(root)
        buf = torch.empty(nbytes, dtype=torch.uint8)
        buf.fill_(1)
        raw.append(raw_write(work / "raw.bin", buf))
        os.unlink(work / "raw.bin")
    return n2d, raw, nbytes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1G,4G")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device: nothing to measure.")
        return 0
    for name in ("SPOTSAFE_AWS_METADATA_URL", "SPOTSAFE_GCP_METADATA_URL", "SPOTSAFE_AZURE_METADATA_URL"):
        os.environ[name] = "off"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs")
    med = statistics.median
    for size in args.sizes.split(","):
        work = Path(tempfile.mkdtemp(prefix="spotsafe-cuda-", dir=args.dir))
        model, opt = build(parse_size(size))
        total = sum(t.numel() * t.element_size() for t in tensors(model, opt))
        res = stalls(model, opt, work, args.repeats)
        gb = total / 1e9
        print(f"\n== {size}: {total / 2**30:.2f} GiB of CUDA state (params + Adam), median of {args.repeats} ==")
        print(f"{'GPU -> host':32s} {'median s':>9s} {'GB/s':>7s} {'vs pinned floor':>16s}")
        floor = med(res["pinned"])
        for key, label in (("cpu", ".cpu() (pageable)"), ("pinned", "pinned copy (floor)"),
                           ("spotsafe", "spotsafe save() stall"), ("dcp", "dcp.async_save stall"),
                           ("torch.save", "torch.save (no fsync)")):
            m = med(res[key])
            print(f"{label:32s} {m:9.3f} {gb / m:7.1f} {m / floor:15.2f}x")
        n2d, raw, nbytes = notice_to_durable(model, opt, work, args.repeats)
        goal = 1.2 * med(raw) + 0.1
        print(f"notice-to-durable {med(n2d):.3f} s (min {min(n2d):.3f}) vs raw write+fsync of {nbytes / 2**30:.2f} "
              f"GiB {med(raw):.3f} s: {med(n2d) / med(raw):.2f}x  "
              f"[{'    MET' if med(n2d) <= goal else 'NOT MET'}] <= 1.2 x raw + 100 ms = {goal:.3f} s")
        del model, opt
        torch.cuda.empty_cache()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
