"""Benchmark: spotsafe's synchronous, durable save and its verified restore against its peers.

What is compared, for a model plus its Adam state (model params + exp_avg + exp_avg_sq, about
3x the parameter bytes) built from a stack of ``nn.Linear`` layers sized to hit each target
(``--sizes``, default ``100M,1G``; one optimizer step is run so the Adam state exists):

Durable save (every method returns only once its bytes are on disk):

* ``raw write+fsync`` - the baseline: the same tensor bytes (every model and optimizer tensor,
  back to back) written to one file with ``os.write`` in chunks of up to 64 MiB straight from
  tensor memory, then ``os.fsync`` of the file and of its directory. Nothing can be much faster.
* ``spotsafe save`` - ``CheckpointManager(root, async_save=False).save(step, {"model": model, "optimizer": opt})``
  (synchronous: it returns durable; ``bench_async.py`` measures the asynchronous save)
  with the RNG capture left on (the default). The manager is built before the clock starts.
  By default every repeat saves into an empty root, so ``keep_last`` never deletes anything
  inside ``save``; ``--steady`` keeps one root for all repeats (``keep_last=1``), so that from
  the second repeat on each save also prunes the previous checkpoint, as in a training loop.
* ``torch.save+fsync`` - ``torch.save({"model": model.state_dict(), "optimizer":
  opt.state_dict()}, f)``, then ``f.flush()``, ``os.fsync(f.fileno())`` and an fsync of the
  directory.
* ``DCP save`` - ``torch.distributed.checkpoint.save`` of ``get_state_dict(model, opt)`` with a
  ``FileSystemWriter`` (``sync_files=True``, its default), single process without a process
  group, then an fsync of the checkpoint directory and of its parent.

Saves run in the benchmark process, which holds the model, as a training job would.

Restore (into a fresh model and optimizer of the same shapes, built and zero-filled before the
clock starts; every restored tensor is checked against the saved ones after the clock stops):

* ``raw readinto`` - the baseline: the raw file read back with ``readinto`` (64 MiB per call)
  into one buffer allocated (not touched) before the clock starts.
* ``spotsafe restore`` - ``CheckpointManager(root)`` + ``.restore(state)``: reads every file,
  checks its size and xxh3 checksum, then loads model and optimizer (and the RNGs) in place.
* ``torch.load`` - ``torch.load(f, weights_only=True)`` + ``model.load_state_dict`` +
  ``opt.load_state_dict``.
* ``torch.load mmap`` - the same with ``mmap=True``. Lazy: the optimizer state stays file-backed
  and is paged in on first use (the model's bytes are copied into its parameters, so those
  are read), so this row reads less than the others inside its timing.
* ``DCP load`` - ``get_state_dict(model, opt)`` (which allocates the fresh optimizer's state),
  ``dcp.load`` with a ``FileSystemReader``, then ``set_state_dict``.

Every restore runs in a fresh child process (timed inside the child, after its imports and
model build), as a restarting job would: in one long-lived process the allocator's history
decides the cost instead (glibc keeps freed 16 MiB blocks mapped, so torch.load's per-tensor
buffers come back already faulted in while one big buffer is always a fresh mapping).
``--in-process`` runs them in the benchmark process instead (faster, but biased that way).

Restores are measured with a cold page cache when this process may write
``/proc/sys/vm/drop_caches`` (``sync`` then ``echo 3``, before each restore); otherwise they read
from the warm page cache and the table title says so. ``--cache both`` adds warm rows (the same
restore again in another fresh process), which show the CPU cost with no disk in the way.

Pre-faulting (on by default; ``--no-prefault`` to skip): some VMs (Firecracker with free page
reporting, ballooning) hand freed guest memory back to the host, so the first touch of a page
costs a host page fault; on such a VM buffered writes and fresh read buffers run at a fraction
of the disk's speed, and how often that hits one measurement is random (seen here: the same
1 GiB save taking 0.7 s or 4 s). Before every measurement the benchmark therefore allocates,
touches and frees about 2.5x the state size of anonymous memory (not timed), so that the page
cache and the buffers of the measured method land on pages the host already backs, as on a
bare-metal or ordinary cloud machine.

Settling (``--settle``): on a virtual disk with a write-back cache on the host, fsync returns
once the host has the bytes, and a write right after another one waits for the host to drain
the previous one (seen here: back-to-back 1 GiB saves at 3 s, the same save after a pause at
0.8 s). Before every save the benchmark sleeps ``--settle`` seconds (default: the state size
at 0.4 GB/s, at most 5 s; not timed) so that every method starts from the same drained state.

Each measurement is repeated (``--repeats``, default 4 for sizes of 512 MiB and more, else 8:
multiples of the 4 save methods, so that each method runs first, second, third and last in
a repeat equally often); within a repeat the methods run one after the other in an order
rotated every repeat, so slow spells of the disk hit all of them alike. The tables report
the median, the spread, the ratio of medians and the median of the per-repeat ratios (the
steadier estimate when the disk drifts over the run; the goals are judged on it).
Files go under ``--dir`` (default ``bench/results/tmp-<pid>`` in this repository, on the same
file system as the checkout, not ``/tmp``) and are deleted after every repeat.

Tables: median seconds, GB/s (10^9 bytes of state per second), the time ratio against the raw
baseline and against torch.save / torch.load (method time / reference time: above 1 is slower),
and the bytes each method left on disk. At the end, whether spotsafe met its two goals:
"durable save within 1.1x of the raw write+fsync of the same bytes" and "restore no slower
than torch.load".

Run it from the repository root::

    .venv/bin/python bench/bench_save_restore.py
    .venv/bin/python bench/bench_save_restore.py --sizes 100M --repeats 2
    .venv/bin/python bench/bench_save_restore.py --sizes 1G --cache both --json bench/results/run.json

This is a benchmark, not a test: it checks nothing beyond the restored tensors being equal
to the saved ones. It needs about 4x the largest size in free memory and 4x on disk; the
default run took about 9 minutes on a 2-core VM (most of it settling, pre-faulting and
starting the restore processes, none of which is timed).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import xxhash

REPO = Path(__file__).resolve().parent.parent
try:
    import spotsafe
except ImportError:  # not installed in this interpreter: use the checkout
    sys.path.insert(0, str(REPO / "src"))
    import spotsafe
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (byte_view, fsync_dir, med, mem_available, nbytes, peak_rss,  # noqa: E402
                     plan_layers, prefault, try_drop_caches)

import spotsafe._engine._manager as _mgr_mod  # only to time the phases of save and restore
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

warnings.filterwarnings("ignore", message=r".*torch\.distributed is disabled.*")
warnings.filterwarnings("ignore", category=FutureWarning)

THREADS = 2
CHUNK = 64 << 20
SAVE_METHODS = ["raw", "spotsafe", "torch", "dcp"]
RESTORE_METHODS = ["raw", "spotsafe", "torch", "torch_mmap", "dcp"]
LABELS = {
    ("save", "raw"): "raw write+fsync (baseline)",
    ("save", "spotsafe"): "spotsafe CheckpointManager.save",
    ("save", "torch"): "torch.save + fsync",
    ("save", "dcp"): "DCP save (FileSystemWriter)",
    ("restore", "raw"): "raw readinto (baseline)",
    ("restore", "spotsafe"): "spotsafe CheckpointManager.restore",
    ("restore", "torch"): "torch.load + load_state_dict",
    ("restore", "torch_mmap"): "torch.load mmap=True (lazy, see doc)",
    ("restore", "dcp"): "DCP load + set_state_dict",
}
SAVE_GOAL = 1.10


# -- sizes and models ------------------------------------------------------------------
def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 100M or 1G")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def make_model(width: int, layers: int, *, fresh: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    if fresh:  # what a restarting job has: initialized (touched) params, no optimizer state
        with torch.device("meta"):
            model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    else:
        model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt


def train_one_step(model: torch.nn.Module, opt: torch.optim.Optimizer, width: int) -> None:
    loss = model(torch.randn(8, width)).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def state_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every model and optimizer tensor in a fixed order (module order, then params x sorted keys)."""
    ts = [t for t in model.state_dict().values() if isinstance(t, torch.Tensor)]
    for p in model.parameters():
        st = opt.state.get(p, {})
        ts += [st[k] for k in sorted(st) if isinstance(st[k], torch.Tensor)]
    return ts


def digest_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> str:
    """xxh3 of the bytes of state_tensors(), i.e. also of the raw baseline's file."""
    h = xxhash.xxh3_64()
    for t in state_tensors(model, opt):
        h.update(byte_view(t))
    return h.hexdigest()


# -- file-system and memory helpers ----------------------------------------------------
def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under path (like du)."""
    if path.is_file():
        return os.stat(path).st_blocks * 512
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def source_fingerprint() -> str:
    """xxh3 over spotsafe's Python sources, to tell which code a run measured (and catch edits mid-run)."""
    h = xxhash.xxh3_64()
    pkg = Path(spotsafe.__file__).resolve().parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# -- phase timing of spotsafe (wraps the names the manager module calls; no source change) ---
PHASES: dict[str, float] = {}
PERSIST = "save.persist (write+hash+fsync files)"


def _timed(name: str, fn, materialize: bool = False):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        if materialize:
            out = list(out)
        PHASES[name] = PHASES.get(name, 0.0) + time.perf_counter() - t0
        return iter(out) if materialize else out
    return wrapper


_mgr_mod.persist = _timed(PERSIST, _mgr_mod.persist)
_mgr_mod.read_manifest = _timed("restore.read_manifest", _mgr_mod.read_manifest)
_mgr_mod.read_verified = _timed("restore.read_verified (read+xxh3)", _mgr_mod.read_verified)
_mgr_mod.decode_components = _timed("restore.decode_components", _mgr_mod.decode_components, materialize=True)
_mgr_mod.apply_checkpoint = _timed("restore.apply_checkpoint (load_state_dict)", _mgr_mod.apply_checkpoint)


# -- save methods: each returns the path it wrote -----------------------------------------
def save_raw(base: Path, model, opt) -> Path:
    path = base / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for t in state_tensors(model, opt):
            view = byte_view(t)
            for start in range(0, len(view), CHUNK):
                chunk = view[start:start + CHUNK]
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(base)
    return path


def save_spotsafe(base: Path, model, opt, extra: dict, root: Path | None = None, step: int = 1) -> Path:
    root = root or base / "spotsafe"
    mgr = spotsafe.CheckpointManager(root, keep_last=1, async_save=False)
    try:
        t0 = time.perf_counter()
        stats = mgr.save(step, {"model": model, "optimizer": opt})
        extra["time"] = time.perf_counter() - t0
        extra["stats"] = {"stage_s": stats.stage_s, "persist_s": stats.persist_s, "total_s": stats.total_s,
                          "bytes": stats.bytes}
    finally:
        mgr.close()
    return root


def save_torch(base: Path, model, opt) -> Path:
    path = base / "torch.pt"
    with open(path, "wb") as f:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(base)
    return path


def save_dcp(base: Path, model, opt) -> Path:
    path = base / "dcp"
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optimizer": osd}, storage_writer=dcp.FileSystemWriter(str(path)), no_dist=True)
    fsync_dir(path)
    fsync_dir(base)
    return path


# -- restore methods: each restores into a fresh (model, opt) ---------------------------
def restore_raw(path: Path, buf: torch.Tensor) -> None:
    mv = memoryview(buf.numpy())
    total = 0
    with open(path, "rb", buffering=0) as f:
        while total < len(mv):
            n = f.readinto(mv[total:total + CHUNK])
            if not n:
                break
            total += n
    if total != len(mv):
        raise RuntimeError(f"raw file ended after {total} bytes, expected {len(mv)}")


def restore_spotsafe(root: Path, model, opt) -> None:
    mgr = spotsafe.CheckpointManager(root, keep_last=1)
    try:
        if mgr.restore({"model": model, "optimizer": opt}) is None:
            raise RuntimeError("spotsafe restored no checkpoint")
    finally:
        mgr.close()


def restore_torch(path: Path, model, opt, *, mmap: bool) -> None:
    sd = torch.load(path, weights_only=True, mmap=mmap)
    model.load_state_dict(sd["model"])
    opt.load_state_dict(sd["optimizer"])


def restore_dcp(path: Path, model, opt) -> None:
    msd, osd = get_state_dict(model, opt)
    sd = {"model": msd, "optimizer": osd}
    dcp.load(sd, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])


def measure_restore(spec: dict) -> dict:
    """One restore as described by ``spec``; returns its time, spotsafe phases and a digest."""
    method, path = spec["method"], Path(spec["path"])
    if method == "raw":
        buf = torch.empty(spec["total"], dtype=torch.uint8)
    else:
        model, opt = make_model(spec["width"], spec["layers"], fresh=True)
    gc.collect()
    if spec["cold"]:
        if not try_drop_caches():
            raise RuntimeError("cannot write /proc/sys/vm/drop_caches")
    else:
        os.sync()
    pf_s = prefault(spec["prefault"])
    PHASES.clear()
    t0 = time.perf_counter()
    if method == "raw":
        restore_raw(path, buf)
    elif method == "spotsafe":
        restore_spotsafe(path, model, opt)
    elif method in ("torch", "torch_mmap"):
        restore_torch(path, model, opt, mmap=method == "torch_mmap")
    elif method == "dcp":
        restore_dcp(path, model, opt)
    else:
        raise ValueError(method)
    dt = time.perf_counter() - t0
    digest = xxhash.xxh3_64(memoryview(buf.numpy())).hexdigest() if method == "raw" else digest_state(model, opt)
    return {"time": dt, "phases": dict(PHASES), "digest": digest, "prefault_s": pf_s, "peak_rss": peak_rss()}


def run_restore(spec: dict, in_process: bool) -> dict:
    if in_process:
        out = measure_restore(spec)
        gc.collect()
        return out
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"restore child for {spec['method']} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- one size ------------------------------------------------------------------------
def run_size(label: str, target: int, repeats: int, workdir: Path, cold: bool, warm: bool,
             use_prefault: bool, in_process: bool, settle: float, steady: bool = False) -> dict:
    width, layers = plan_layers(target)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, opt = make_model(width, layers, fresh=False)
    train_one_step(model, opt, width)
    tensors = state_tensors(model, opt)
    total = nbytes(tensors)
    model_bytes = nbytes(list(model.state_dict().values()))
    n_tensors = len(tensors)
    del tensors
    expected = digest_state(model, opt)
    pf_bytes = 0
    if use_prefault:  # the page cache of one file set plus the read buffers, within what is free
        pf_bytes = max(0, int(min(2.5 * total + (256 << 20), mem_available() - total - (2 << 30))))
    print(f"\n[{label}] {layers} x Linear({width},{width}) + Adam: {total / 1e9:.3f} GB "
          f"({total / 2**30:.3f} GiB; model {model_bytes / 1e6:.0f} MB, {n_tensors} tensors), "
          f"built in {time.perf_counter() - t0:.1f}s; {repeats} repeats; prefault {pf_bytes / 2**30:.2f} GiB; "
          f"settle {settle:.1f}s before each save",
          flush=True)

    res = {"label": label, "target_bytes": target, "bytes": total, "model_bytes": model_bytes, "width": width,
           "layers": layers, "tensors": n_tensors, "repeats": repeats,
           "save": {m: [] for m in SAVE_METHODS},
           "restore_cold": {m: [] for m in RESTORE_METHODS} if cold else {},
           "restore_warm": {m: [] for m in RESTORE_METHODS} if warm else {},
           "disk_bytes": {}, "spotsafe_save_stats": [], "spotsafe_phases": [], "peak_disk_bytes": 0,
           "prefault_bytes": pf_bytes, "prefault_s": [], "child_peak_rss": 0, "settle_s": settle, "steady": steady}

    for r in range(repeats):
        base = workdir / f"{label}-r{r}"
        base.mkdir(parents=True)
        rot = r % len(SAVE_METHODS)
        paths = {}
        for m in SAVE_METHODS[rot:] + SAVE_METHODS[:rot]:
            os.sync()
            gc.collect()
            time.sleep(settle)
            res["prefault_s"].append(prefault(pf_bytes))
            PHASES.clear()
            extra: dict = {}
            t0 = time.perf_counter()
            if m == "raw":
                paths[m] = save_raw(base, model, opt)
            elif m == "spotsafe":
                paths[m] = save_spotsafe(base, model, opt, extra, workdir / f"{label}-spotsafe-steady" if steady
                                         else None, r + 1)
            elif m == "torch":
                paths[m] = save_torch(base, model, opt)
            else:
                paths[m] = save_dcp(base, model, opt)
            res["save"][m].append(extra.get("time", time.perf_counter() - t0))
            if m == "spotsafe":
                extra["stats"]["persist_files_s"] = PHASES.get(PERSIST, 0.0)
                res["spotsafe_save_stats"].append(extra["stats"])
            res["disk_bytes"][m] = disk_bytes(paths[m])
        res["peak_disk_bytes"] = max(res["peak_disk_bytes"], disk_bytes(workdir))

        rot = r % len(RESTORE_METHODS)
        for m in RESTORE_METHODS[rot:] + RESTORE_METHODS[:rot]:
            for kind in (["cold"] if cold else []) + (["warm"] if warm else []):
                spec = {"method": m, "path": str(paths["torch" if m == "torch_mmap" else m]), "width": width,
                        "layers": layers, "total": total, "prefault": pf_bytes, "cold": kind == "cold"}
                out = run_restore(spec, in_process)
                if out["digest"] != expected:
                    raise RuntimeError(f"{m} restored bytes that differ from the saved state")
                res[f"restore_{kind}"][m].append(out["time"])
                res["prefault_s"].append(out["prefault_s"])
                res["child_peak_rss"] = max(res["child_peak_rss"], out["peak_rss"])
                if m == "spotsafe":
                    res["spotsafe_phases"].append({"cache": kind, "total_s": out["time"], **out["phases"]})
        shutil.rmtree(base)
        os.sync()
        print(f"  repeat {r + 1}/{repeats} done", flush=True)
    del model, opt
    gc.collect()
    return res


# -- reporting -------------------------------------------------------------------------
def paired(xs: list[float], refs: list[float]) -> float:
    """Median over repeats of xs[r] / refs[r]: the runs of one repeat are interleaved, so this
    cancels slow drifts of the disk that move whole repeats (which a ratio of medians does not)."""
    return med([x / y for x, y in zip(xs, refs)])


def print_table(title: str, rows: dict[str, list[float]], side: str, nbytes_: int, ref_name: str,
                disk: dict[str, int] | None) -> None:
    print(f"\n{title}")
    hdr = (f"  {'method':<38} {'median s':>9} {'min..max s':>15} {'GB/s':>6} {'vs raw':>13} "
           f"{'vs ' + ref_name:>15}")
    if disk is not None:
        hdr += f" {'disk MB':>8}"
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    base, ref = rows["raw"], rows["torch"]
    for m, xs in rows.items():
        t = med(xs)
        line = (f"  {LABELS[(side, m)]:<38} {t:>9.3f} {min(xs):>7.3f}..{max(xs):<7.3f} {nbytes_ / t / 1e9:>6.2f} "
                f"{t / med(base):>5.2f}x/{paired(xs, base):>5.2f}x {t / med(ref):>7.2f}x/{paired(xs, ref):>5.2f}x")
        if disk is not None:
            line += f" {disk.get(m, 0) / 1e6:>8.1f}"
        print(line)
    print("  (ratios: time / reference time, above 1 is slower; "
          "first the ratio of medians, then the median of per-repeat ratios)")


def report(results: list[dict], in_process: bool) -> list[dict]:
    goals = []
    where = "in the benchmark process" if in_process else "each in a fresh process"
    for res in results:
        n = res["bytes"]
        print(f"\n=== {res['label']}: {n / 1e9:.3f} GB state ({n / 2**30:.3f} GiB), {res['layers']} x "
              f"Linear({res['width']},{res['width']}) + Adam, {res['tensors']} tensors, median of {res['repeats']} ===")
        print_table(f"Durable save ({res['label']}" + ("; spotsafe also prunes the previous checkpoint, --steady"
                                                       if res.get("steady") else "") + ")", res["save"], "save", n, "torch.save", res["disk_bytes"])
        if res["restore_cold"]:
            print_table(f"Restore ({res['label']}, cold page cache: sync + drop_caches before each; {where})",
                        res["restore_cold"], "restore", n, "torch.load", None)
        if res["restore_warm"]:
            print_table(f"Restore ({res['label']}, warm page cache; {where})", res["restore_warm"], "restore", n,
                        "torch.load", None)
        if res["prefault_bytes"]:
            print(f"  prefaulted {res['prefault_bytes'] / 2**30:.2f} GiB before each measurement "
                  f"(median {med(res['prefault_s']):.2f}s, not timed)")
        else:
            print("  no prefault: this machine's cost of fresh memory is in the times")
        print(f"  disk used by one repeat (all methods' files at once): {res['peak_disk_bytes'] / 1e6:.1f} MB; "
              f"peak RSS of a restore child: {res['child_peak_rss'] / 2**30:.2f} GiB")
        st = res["spotsafe_save_stats"]
        if st:
            print("  spotsafe save phases (median s): "
                  f"stage {med([s['stage_s'] for s in st]):.3f}, "
                  f"persist files {med([s['persist_files_s'] for s in st]):.3f}, "
                  f"commit {med([s['persist_s'] - s['persist_files_s'] for s in st]):.3f}, "
                  f"after commit (prune) {med([s['total_s'] - s['stage_s'] - s['persist_s'] for s in st]):.3f}, "
                  f"total {med([s['total_s'] for s in st]):.3f}")
        for kind in ("cold", "warm"):
            ph = [p for p in res["spotsafe_phases"] if p["cache"] == kind]
            if ph:
                keys = [k for k in ph[0] if k.startswith("restore.")]
                parts = ", ".join(f"{k.removeprefix('restore.')} {med([p.get(k, 0.0) for p in ph]):.3f}" for k in keys)
                print(f"  spotsafe restore phases, {kind} (median s): {parts}, total {med([p['total_s'] for p in ph]):.3f}")

        restore_rows = res["restore_cold"] or res["restore_warm"]
        for goal, xs, refs, limit in (
                (f"durable save within {SAVE_GOAL}x of the raw write+fsync of the same bytes",
                 res["save"]["spotsafe"], res["save"]["raw"], SAVE_GOAL),
                ("restore no slower than torch.load" + ("" if res["restore_cold"] else " (warm page cache)"),
                 restore_rows["spotsafe"], restore_rows["torch"], 1.0)):
            pr, mr = paired(xs, refs), med(xs) / med(refs)
            goals.append({"size": res["label"], "goal": goal, "limit": limit, "paired_ratio": pr,
                          "ratio_of_medians": mr, "met": pr <= limit, "estimates_agree": (pr <= limit) == (mr <= limit)})
    print("\n=== Goals (spotsafe time / reference time; verdict on the median of per-repeat ratios) ===")
    for g in goals:
        note = "" if g["estimates_agree"] else "  <- the two estimates disagree: too noisy to call, rerun with more --repeats"
        print(f"  [{'MET' if g['met'] else 'NOT MET':>7}] {g['size']:>5}: {g['goal']}: {g['paired_ratio']:.2f}x paired "
              f"({g['ratio_of_medians']:.2f}x of medians){note}")
    return goals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100M,1G", help="comma-separated state sizes (default 100M,1G)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats per size (default 4 for sizes >= 512M, else 8)")
    ap.add_argument("--dir", type=Path, default=REPO / "bench" / "results" / f"tmp-{os.getpid()}",
                    help="scratch directory for the checkpoints, on the disk to measure "
                         "(default bench/results/tmp-<pid>; removed at the end)")
    ap.add_argument("--cache", choices=["auto", "cold", "warm", "both"], default="auto",
                    help="restore from a cold page cache (needs drop_caches), a warm one, or both; "
                         "auto: cold when drop_caches is permitted, else warm")
    ap.add_argument("--no-prefault", dest="prefault", action="store_false",
                    help="do not touch fresh memory before each measurement (see the module docstring)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds to sleep before each save (default: state size / 0.4 GB/s, at most 5)")
    ap.add_argument("--steady", action="store_true",
                    help="spotsafe saves into one root for all repeats, so each save also prunes the previous one")
    ap.add_argument("--in-process", action="store_true",
                    help="run restores in this process instead of a fresh one each (see the module docstring)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    torch.set_num_threads(THREADS)
    if args._child:
        print(json.dumps(measure_restore(json.loads(args._child))))
        return 0

    sizes = [(s.strip(), parse_size(s)) for s in args.sizes.split(",") if s.strip()]
    can_drop = try_drop_caches()
    if args.cache in ("cold", "both") and not can_drop:
        ap.error("cannot write /proc/sys/vm/drop_caches here; use --cache warm or auto")
    cold = args.cache in ("cold", "both") or (args.cache == "auto" and can_drop)
    warm = args.cache in ("warm", "both") or (args.cache == "auto" and not can_drop)
    workdir = args.dir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        ap.error(f"{workdir} exists and is not empty; pass an empty or new --dir")
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    need = 4.2 * max(t for _, t in sizes)
    print(f"spotsafe {spotsafe.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")
    print(f"scratch dir {workdir} ({free / 1e9:.1f} GB free, a repeat needs about {need / 1e9:.1f} GB)")
    print(f"drop_caches permitted: {can_drop}; restores from a "
          + " and a ".join((["cold"] if cold else []) + (["warm"] if warm else [])) + " page cache, "
          + ("in the benchmark process" if args.in_process else "each in a fresh process")
          + ("; prefault on" if args.prefault else "; prefault off")
          + ("; spotsafe saves prune the previous checkpoint (--steady)" if args.steady else ""))
    if free < need:
        print("not enough free disk space", file=sys.stderr)
        return 1

    fingerprint = source_fingerprint()
    print(f"spotsafe sources {Path(spotsafe.__file__).resolve().parent} fingerprint xxh3 {fingerprint}")
    t_start = time.perf_counter()
    results = []
    try:
        for label, target in sizes:
            repeats = args.repeats or (4 if target >= 512 << 20 else 8)
            settle = args.settle if args.settle is not None else min(5.0, target / 0.4e9)
            results.append(run_size(label, target, repeats, workdir, cold, warm, args.prefault, args.in_process,
                                    settle, args.steady))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    goals = report(results, args.in_process)
    changed = source_fingerprint() != fingerprint
    if changed:
        print("\nWARNING: spotsafe's sources changed during the run; restores (fresh processes) may have "
              "measured different code than saves. Run again.")
    elapsed = time.perf_counter() - t_start
    print(f"\npeak RSS of the benchmark process {peak_rss() / 2**30:.2f} GiB; total benchmark time {elapsed:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"env": {"spotsafe": spotsafe.__version__, "torch": torch.__version__,
                       "python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": THREADS,
                       "dir": str(workdir), "drop_caches": can_drop, "cache": args.cache, "cold": cold,
                       "warm": warm, "prefault": args.prefault, "in_process": args.in_process,
                       "steady": args.steady, "source_fingerprint": fingerprint, "sources_changed_during_run": changed},
               "results": results, "goals": goals, "peak_rss_bytes": peak_rss(), "elapsed_s": elapsed}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
