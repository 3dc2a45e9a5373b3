"""Benchmark: resuming a torchrun job on another world size (gloo on CPU, 127.0.0.1).

1. ``restore``: a checkpoint written by 2 ranks (DDP, and FSDP2 with Adam; ``--size`` of
   parameters + Adam state) restored by 1 rank (``torchrun --nproc-per-node 1``), in rotating
   order, ``--repeats`` times each, the page cache dropped before each when the machine allows:
   - ``spotsafe``: ``GlobalCheckpointManager.restore`` of spotsafe's checkpoint (the rank's
     files read and verified, then DCP's load planner reshards from the verified bytes); opening
     the manager (the root's lock, the ranks' probe of the root) is timed on its own row;
   - ``dcp.load``: ``get_model_state_dict`` / ``get_optimizer_state_dict``, ``dcp.load`` of a
     ``dcp.save`` of the same state written by the same 2 ranks, then ``set_*_state_dict``.
2. ``nodeloss``: two ``torchrun --nnodes 1:2`` agents (c10d rendezvous on 127.0.0.1, the first
   hosting the store), node-local roots and a real SeaweedFS S3 server as the remote, a DDP job
   of ``--size`` saving every 5 steps. At step 12 the second "node" (its agent and worker) is
   SIGKILLed; the survivor's agent restarts its worker at world size 1, which resumes from the
   newest global commit. The time from the kill to the first step at the new size, split into:
   - detection: the kill until the survivor's worker failed (its stop event: a collective
     failed);
   - rendezvous: until the new worker process started (the agent's restart, the dead node's
     keep-alive expiring, ``last_call_timeout``, and the spawn);
   - start-up: imports, ``init_process_group``, the model, until ``Run`` began its restore;
   - restore: ``Run``'s restore (listing both tiers, download + verify, DCP reshard);
   - warm-up: the first step at the new size over a steady step at that size.
   rdzv settings: ``last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=2``
   (torchrun's defaults, 30 s and 5 s x 3, give about 43 s; see the research notes).

    .venv/bin/python bench/bench_elastic.py [--parts restore,nodeloss] [--size 64M] [--repeats 3]

About 2.5 minutes on a 2-core VM with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, med, parse_size, print_table, try_drop_caches

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
RDZV_CONF = "last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=2,join_timeout=60"

MODEL = r'''
import os, sys, time
import torch, torch.distributed as dist

def build(kind, size, world):
    layers = max(1, round(size / (512 * 512 * 4 * 3)))
    net = torch.nn.Sequential(*[torch.nn.Linear(512, 512, bias=False) for _ in range(layers)])
    if kind == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(net)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (world,))
        for m in net:
            fully_shard(m, mesh=mesh)
        model = fully_shard(net, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 512)).sum().backward()
    opt.step()
    opt.zero_grad()
    return model, opt
'''

RESTORE_WORKER = MODEL + r'''
import json
from datetime import timedelta
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from spotsafe._dist._global import GlobalCheckpointManager

phase, kind, size, base, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
dist.init_process_group("gloo", timeout=timedelta(seconds=120))
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0 if phase == "save" else 1)
model, opt = build(kind, size, world)
state = {"model": model, "optimizer": opt}
if phase == "save":
    mgr = GlobalCheckpointManager(f"{base}/spotsafe", async_save=False)
    mgr.save(1, state)
    mgr.close()
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=f"{base}/dcp")
    dist.barrier()
else:
    out = {"spotsafe": [], "dcp.load": [], "open": [], "bytes": 0}
    for r in range(repeats):
        for method in (["spotsafe", "dcp.load"] if r % 2 == 0 else ["dcp.load", "spotsafe"]):
            if json.loads(sys.argv[6]):  # the page cache dropped: every byte read from disk
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            if method == "spotsafe":  # opening it (the root's lock, the ranks' probe) timed on its own
                t = time.perf_counter()
                mgr = GlobalCheckpointManager(f"{base}/spotsafe")
                out["open"].append(time.perf_counter() - t)
            t = time.perf_counter()
            if method == "spotsafe":
                assert mgr.restore(state) == 1
                out["bytes"] = mgr.last_restore.bytes
            else:
                sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
                dcp.load(sd, checkpoint_id=f"{base}/dcp")
                set_model_state_dict(model, sd["model"])
                set_optimizer_state_dict(model, opt, sd["optim"])
            out[method].append(time.perf_counter() - t)
            if method == "spotsafe":
                mgr.close()
    print("RESULT " + json.dumps(out), flush=True)
dist.barrier()
dist.destroy_process_group()
os._exit(0)
'''

NODE_WORKER = "import time\nSTARTED = time.time()\n" + MODEL + r'''
import spotsafe
from datetime import timedelta

def say(line):
    os.write(1, (line + "\n").encode())

size, total = int(sys.argv[1]), int(sys.argv[2])
say(f"spawned {STARTED}")
dist.init_process_group("gloo", timeout=timedelta(seconds=30))
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model, opt = build("ddp", size, world)
x = torch.randn(64, 512)
with spotsafe.Run(os.environ["BENCH_ROOT"], {"model": model, "optimizer": opt}, save_every=5,
                  remote=os.environ["BENCH_REMOTE"], notices="signals") as run:
    say(f"rank {rank} pid {os.getpid()} world {world} resumed {run.step} at {time.time()}")
    for step in run.steps(total):
        for _ in range(4):
            y = x @ x.T  # a fixed amount of compute a step
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        say(f"rank {rank} world {world} step {step} t {time.time()}")
os._exit(0)
'''


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {p.returncode}: {err[-3000:]}")
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def run_restore(args: argparse.Namespace, work: Path) -> None:
    script = work / "restore_worker.py"
    script.write_text(RESTORE_WORKER)
    drop = try_drop_caches()
    for kind in args.kinds:
        base = work / kind
        base.mkdir()
        torchrun = [TORCHRUN, "--standalone", "--monitor-interval", "0.1"]
        _run([*torchrun, "--nproc-per-node", "2", str(script), "save", kind, str(args.size), str(base), "0"],
             _env(), 600)
        out = _run([*torchrun, "--nproc-per-node", "1", str(script), "restore", kind, str(args.size), str(base),
                    str(args.repeats), json.dumps(drop)], _env(), 600)
        got = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        print_table(f"{kind.upper()}: a checkpoint of 2 ranks restored by 1 rank ({got['bytes'] / 2**20:.0f} MiB "
                    f"read by spotsafe; page cache {'dropped' if drop else 'warm'} before each), ms",
                    {"spotsafe restore() (read, verify, reshard)": got["spotsafe"], "dcp.load": got["dcp.load"],
                     "spotsafe: opening the manager first": got["open"]},
                    peers=["dcp.load"], unit=("ms", 1e3, 1))
        shutil.rmtree(base)


class _Agent:
    def __init__(self, script: Path, root: Path, port: int, remote: str, host: bool, size: int) -> None:
        env = dict(_env(), BENCH_ROOT=str(root), BENCH_REMOTE=remote)
        self.p = subprocess.Popen(
            [TORCHRUN, "--nnodes", "1:2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"bench-{port}",
             "--rdzv-conf", f"{RDZV_CONF},is_host={int(host)}", "--max-restarts", "3", "--monitor-interval", "0.1",
             str(script), str(size), "100000"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: [self.lines.append(x) for x in self.p.stdout], daemon=True).start()

    def kill(self) -> None:
        for line in list(self.lines):
            m = re.search(r" pid (\d+) ", line)
            if m:
                try:
                    os.kill(int(m.group(1)), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.01)


def _steps(lines: list[str], world: int) -> list[tuple[int, float]]:
    out = []
    for line in lines:
        m = re.search(rf"world {world} step (\d+) t ([\d.]+)", line)
        if m:
            out.append((int(m.group(1)), float(m.group(2))))
    return out


def _one_loss(script: Path, work: Path, remote: str, size: int) -> dict[str, float]:
    from spotsafe._telemetry import read_events

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    roots = [work / "node0", work / "node1"]
    survivor = _Agent(script, roots[0], port, remote, True, size)
    doomed = _Agent(script, roots[1], port, remote, False, size)
    try:
        _wait(lambda: any(s >= 12 for s, _ in _steps(survivor.lines, 2)), 120, "12 steps on 2 ranks")
        killed = time.time()
        doomed.kill()
        _wait(lambda: len(_steps(survivor.lines, 1)) >= 6, 120, "6 steps on the survivor alone")
    finally:
        survivor.kill()
        doomed.kill()
    before = _steps(survivor.lines, 2)
    after = _steps(survivor.lines, 1)
    spawned = [float(x.split()[1]) for x in survivor.lines if x.startswith("spawned ")]
    resumed = [x for x in survivor.lines if " world 1 resumed " in x]
    resumed_at = float(resumed[-1].split()[-1])
    events = read_events(roots[0] / "events")
    failed = [e["ts"] for e in events if e["event"] == "stop" and e.get("reason") == "error" and e["ts"] > killed]
    restore = [e for e in events if e["event"] == "restore" and e.get("world_size") == 1]
    r_end = restore[-1]["ts"]
    r_start = r_end - restore[-1]["seconds"]
    detected = failed[0] if failed else float("nan")
    steady_1 = med(b[1] - a[1] for a, b in zip(after[1:], after[2:]))
    steady_2 = med(b[1] - a[1] for a, b in zip(before, before[1:]))
    first = after[0][1] - resumed_at
    reached = max(s for s, _ in before)
    return {"detection": detected - killed, "rendezvous": spawned[-1] - detected,
            "start-up": r_start - spawned[-1], "restore": r_end - r_start, "warm-up": first - steady_1,
            "total": after[0][1] - killed, "step at 2 ranks": steady_2, "step at 1 rank": steady_1,
            "lost steps": float(reached - int(resumed[-1].split()[7]))}


def run_nodeloss(args: argparse.Namespace, work: Path) -> None:
    from s3server import SeaweedS3

    script = work / "node_worker.py"
    script.write_text(NODE_WORKER)
    server = SeaweedS3(work / "weed", volume_size_mb=1024)
    server.start()
    rows: dict[str, list[float]] = {}
    try:
        os.environ.update(server.env())
        for r in range(args.repeats):
            bucket = server.make_bucket(f"elastic-{r}")
            run = work / f"loss-{r}"
            got = _one_loss(script, run, f"s3://{bucket}/run", args.size)
            for k, v in got.items():
                rows.setdefault(k, []).append(v)
            shutil.rmtree(run, ignore_errors=True)
    finally:
        server.close()
    lost = rows.pop("lost steps")
    print_table(f"Node loss to the first step at world size 1 (DDP, {args.size / 2**20:.0f} MiB of parameters + "
                f"Adam, node-local roots + S3, {args.repeats} repeats), s", rows, unit=("s", 1.0, 3))
    print(f"steps lost (reached before the kill - resumed): {', '.join(str(int(x)) for x in lost)} "
          "(save_every=5)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="restore,nodeloss", help="restore, nodeloss (default both)")
    ap.add_argument("--size", type=parse_size, default=parse_size("64M"),
                    help="parameters + Adam state of the model (default 64M)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (default 3)")
    ap.add_argument("--kinds", default="ddp,fsdp2", help="jobs of the restore part: ddp, fsdp2 (default both)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not parts or set(parts) - {"restore", "nodeloss"}:
        ap.error(f"--parts {args.parts!r}: use restore, nodeloss or both")
    if not args.kinds or set(args.kinds) - {"ddp", "fsdp2"}:
        ap.error(f"--kinds {args.kinds!r}: use ddp, fsdp2 or both")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="spotsafe-bench-elastic-"))
    try:
        if "restore" in parts:
            run_restore(args, work)
        if "nodeloss" in parts:
            run_nodeloss(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
