"""Benchmark: spotsafe's synchronous, durable save and its verified restore against its peers.

What is compared, for a model plus its Adam state (model params + exp_avg + exp_avg_sq, about
3x the parameter bytes) built from a stack of ``nn.Linear`` layers sized to hit each target
(``--sizes``, default ``100M,1G``; one optimizer step is run so the Adam state exists):

Durable save (every method returns only once its bytes are on disk):

* ``raw write+fsync`` - the baseline: the same tensor bytes (every model and optimizer tensor,
  back to back) written to one file with ``os.write`` in chunks of up to 64 MiB straight from
  tensor memory, then ``os.fsync`` of the file and of its directory. Nothing can be much faster.
* ``spotsafe save`` - ``CheckpointManager(root).save(step, {"model": model, "optimizer": opt})``
  with the RNG capture left on (the default). The manager is built before the clock starts.
* ``torch.save+fsync`` - ``torch.save({"model": model.state_dict(), "optimizer":
  opt.state_dict()}, f)``, then ``f.flush()``, ``os.fsync(f.fileno())`` and an fsync of the
  directory.
* ``DCP save`` - ``torch.distributed.checkpoint.save`` of ``get_state_dict(model, opt)`` with a
  ``FileSystemWriter`` (``sync_files=True``, its default), single process without a process
  group, then an fsync of the checkpoint directory and of its parent.

Restore (into a fresh model and optimizer of the same shapes, built and zero-filled before the
clock starts; every restored tensor is checked against the original after the clock stops):

* ``raw readinto`` - the baseline: the raw file read back with ``readinto`` (64 MiB per call)
  into a buffer allocated (not touched) before the clock starts.
* ``spotsafe restore`` - ``CheckpointManager(root).restore(state)``: reads every file, checks
  its size and xxh3 checksum, then loads model and optimizer (and the RNGs) in place.
* ``torch.load`` - ``torch.load(f, weights_only=True)`` + ``model.load_state_dict`` +
  ``opt.load_state_dict``.
* ``torch.load mmap`` - the same with ``mmap=True``. Lazy: the optimizer state stays file-backed
  and is paged in on first use (the model's bytes are copied into its parameters, so those
  are read), so this row reads less than the others inside its timing.
* ``DCP load`` - ``get_state_dict(model, opt)`` (which allocates the fresh optimizer's state),
  ``dcp.load`` with a ``FileSystemReader``, then ``set_state_dict``.

Restores are measured with a cold page cache when this process may write
``/proc/sys/vm/drop_caches`` (``sync`` then ``echo 3``, before each restore); otherwise they read
from the warm page cache and the table title says so. ``--cache both`` adds warm rows (the same
restore again right after the cold one), which show the CPU cost with no disk in the way.

Each measurement is repeated (``--repeats``, default 3 for sizes of 512 MiB and more, else 5);
within a repeat the methods run one after the other in an order rotated every repeat, so slow
spells of the disk hit all of them alike, and the tables report the median (and the spread).
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

This is a benchmark, not a test: it asserts nothing beyond the restored tensors being equal
to the saved ones, and it needs about 3x the largest size in free memory plus 4x on disk.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
try:
    import spotsafe
except ImportError:  # not installed in this interpreter: use the checkout
    sys.path.insert(0, str(REPO / "src"))
    import spotsafe

import spotsafe.engine._manager as _mgr_mod  # only to time the phases of save and restore
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

warnings.filterwarnings("ignore", message=r".*torch\.distributed is disabled.*")
warnings.filterwarnings("ignore", category=FutureWarning)

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


def plan_layers(target: int) -> tuple[int, int]:
    """(width, layers) of a stack of Linear(width, width) whose params + Adam state ~ target bytes."""
    width = 2048 if target >= 512 << 20 else 1024
    per_layer = (width * width + width) * 4 * 3
    return width, max(1, round(target / per_layer))


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
    ts = [t for t in model.state_dict().values() if isinstance(t, torch.Tensor)]
    for st in opt.state.values():
        ts += [v for v in st.values() if isinstance(v, torch.Tensor)]
    return ts


def nbytes(ts: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def same_state(a: tuple, b: tuple) -> bool:
    (ma, oa), (mb, ob) = a, b
    for x, y in zip(ma.state_dict().values(), mb.state_dict().values()):
        if not torch.equal(x, y):
            return False
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        sa, sb = oa.state.get(pa, {}), ob.state.get(pb, {})
        if sa.keys() != sb.keys():
            return False
        for k in sa:
            va, vb = sa[k], sb[k]
            if isinstance(va, torch.Tensor):
                if not torch.equal(va, vb.to(va.dtype)):
                    return False
            elif va != vb:
                return False
    return True


# -- file-system helpers -------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under path (like du)."""
    if path.is_file():
        return os.stat(path).st_blocks * 512
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def try_drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# -- phase timing of spotsafe (wraps the names the manager module calls; no source change) ---
PHASES: dict[str, float] = {}


def _timed(name: str, fn, materialize: bool = False):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        if materialize:
            out = list(out)
        PHASES[name] = PHASES.get(name, 0.0) + time.perf_counter() - t0
        return iter(out) if materialize else out
    return wrapper


_mgr_mod.persist = _timed("save.persist (write+hash+fsync files)", _mgr_mod.persist)
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
            view = memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
            for start in range(0, len(view), CHUNK):
                chunk = view[start:start + CHUNK]
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(base)
    return path


def save_spotsafe(base: Path, model, opt, extra: dict) -> Path:
    root = base / "spotsafe"
    mgr = spotsafe.CheckpointManager(root, keep_last=1)
    try:
        t0 = time.perf_counter()
        stats = mgr.save(1, {"model": model, "optimizer": opt})
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


# -- restore methods: each restores into ``target`` (fresh model, opt) --------------------
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
        if mgr.restore({"model": model, "optimizer": opt}) != 1:
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


# -- one size ------------------------------------------------------------------------
def run_size(label: str, target: int, repeats: int, workdir: Path, cache: str, can_drop: bool) -> dict:
    width, layers = plan_layers(target)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, opt = make_model(width, layers, fresh=False)
    train_one_step(model, opt, width)
    tensors = state_tensors(model, opt)
    total = nbytes(tensors)
    model_bytes = nbytes([t for t in model.state_dict().values()])
    n_tensors = len(tensors)
    del tensors
    print(f"\n[{label}] {layers} x Linear({width},{width}) + Adam: {total / 1e9:.3f} GB "
          f"({total / 2**30:.3f} GiB; model {model_bytes / 1e6:.0f} MB, {n_tensors} tensors), "
          f"built in {time.perf_counter() - t0:.1f}s; {repeats} repeats", flush=True)

    cold = cache in ("cold", "both") or (cache == "auto" and can_drop)
    warm_rows = cache in ("warm", "both") or (cache == "auto" and not can_drop)
    res = {"label": label, "target_bytes": target, "bytes": total, "model_bytes": model_bytes, "width": width,
           "layers": layers, "tensors": n_tensors, "repeats": repeats,
           "save": {m: [] for m in SAVE_METHODS}, "restore_cold": {m: [] for m in RESTORE_METHODS} if cold else {},
           "restore_warm": {m: [] for m in RESTORE_METHODS} if warm_rows and cold else {},
           "disk_bytes": {}, "spotsafe_save_stats": [], "spotsafe_phases": [], "peak_disk_bytes": 0}
    if not cold:  # warm only: put the warm numbers in the main restore table
        res["restore_warm"] = {m: [] for m in RESTORE_METHODS}
    original = (model, opt)

    for r in range(repeats):
        base = workdir / f"{label}-r{r}"
        base.mkdir(parents=True)
        rot = r % len(SAVE_METHODS)
        paths = {}
        for m in SAVE_METHODS[rot:] + SAVE_METHODS[:rot]:
            os.sync()
            gc.collect()
            PHASES.clear()
            extra: dict = {}
            t0 = time.perf_counter()
            if m == "raw":
                paths[m] = save_raw(base, model, opt)
            elif m == "spotsafe":
                paths[m] = save_spotsafe(base, model, opt, extra)
            elif m == "torch":
                paths[m] = save_torch(base, model, opt)
            else:
                paths[m] = save_dcp(base, model, opt)
            dt = extra.get("time", time.perf_counter() - t0)
            res["save"][m].append(dt)
            if m == "spotsafe":
                extra["stats"]["persist_files_s"] = PHASES.get("save.persist (write+hash+fsync files)", 0.0)
                res["spotsafe_save_stats"].append(extra["stats"])
            res["disk_bytes"][m] = disk_bytes(paths[m])
        res["peak_disk_bytes"] = max(res["peak_disk_bytes"], disk_bytes(base))

        rot = r % len(RESTORE_METHODS)
        for m in RESTORE_METHODS[rot:] + RESTORE_METHODS[:rot]:
            src = paths["torch" if m == "torch_mmap" else m]
            passes = (["cold"] if cold else []) + (["warm"] if warm_rows else [])
            for kind in passes:
                if m == "raw":
                    target_obj = torch.empty(total, dtype=torch.uint8)
                else:
                    fresh = make_model(width, layers, fresh=True)
                gc.collect()
                if kind == "cold":
                    if not try_drop_caches():
                        raise RuntimeError("drop_caches stopped working")
                else:
                    os.sync()
                PHASES.clear()
                t0 = time.perf_counter()
                if m == "raw":
                    restore_raw(src, target_obj)
                elif m == "spotsafe":
                    restore_spotsafe(src, *fresh)
                elif m == "torch":
                    restore_torch(src, *fresh, mmap=False)
                elif m == "torch_mmap":
                    restore_torch(src, *fresh, mmap=True)
                else:
                    restore_dcp(src, *fresh)
                dt = time.perf_counter() - t0
                key = "restore_cold" if kind == "cold" else "restore_warm"
                res[key][m].append(dt)
                if m == "spotsafe":
                    res["spotsafe_phases"].append({"cache": kind, "total_s": dt, **PHASES})
                if m == "raw":
                    del target_obj
                else:
                    if not same_state(original, fresh):
                        raise RuntimeError(f"{m} restored state differs from the saved one")
                    del fresh
                gc.collect()
        clear(base)
        os.sync()
        print(f"  repeat {r + 1}/{repeats} done", flush=True)
    del model, opt, original
    gc.collect()
    return res


# -- reporting -------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def print_table(title: str, rows: dict[str, list[float]], side: str, nbytes_: int, ref: str,
                ref_name: str, disk: dict[str, int] | None) -> None:
    print(f"\n{title}")
    hdr = f"  {'method':<38} {'median s':>9} {'min..max s':>15} {'GB/s':>6} {'vs raw':>7} {'vs ' + ref_name:>14}"
    if disk is not None:
        hdr += f" {'disk MB':>8}"
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    base, refv = med(rows["raw"]), med(rows[ref])
    for m, xs in rows.items():
        t = med(xs)
        line = (f"  {LABELS[(side, m)]:<38} {t:>9.3f} {min(xs):>7.3f}..{max(xs):<7.3f} {nbytes_ / t / 1e9:>6.2f} "
                f"{t / base:>6.2f}x {t / refv:>13.2f}x")
        if disk is not None:
            line += f" {disk.get(m, 0) / 1e6:>8.1f}"
        print(line)


def report(results: list[dict], cache_note: str) -> list[dict]:
    goals = []
    for res in results:
        n = res["bytes"]
        head = (f"=== {res['label']}: {n / 1e9:.3f} GB state ({n / 2**30:.3f} GiB), "
                f"{res['layers']} x Linear({res['width']},{res['width']}) + Adam, {res['tensors']} tensors, "
                f"median of {res['repeats']} ===")
        print("\n" + head)
        print_table(f"Durable save ({res['label']})", res["save"], "save", n, "torch", "torch.save", res["disk_bytes"])
        if res["restore_cold"]:
            print_table(f"Restore ({res['label']}, cold page cache: sync + drop_caches before each)",
                        res["restore_cold"], "restore", n, "torch", "torch.load", None)
        if res["restore_warm"]:
            t = ("warm page cache" if res["restore_cold"] else cache_note)
            print_table(f"Restore ({res['label']}, {t})", res["restore_warm"], "restore", n, "torch",
                        "torch.load", None)
        print(f"  disk used by one repeat (all methods' files at once): {res['peak_disk_bytes'] / 1e6:.1f} MB")
        st = res["spotsafe_save_stats"]
        if st:
            print("  spotsafe save phases (median s): "
                  f"stage {med([s['stage_s'] for s in st]):.3f}, "
                  f"persist files {med([s['persist_files_s'] for s in st]):.3f}, "
                  f"commit {med([s['persist_s'] - s['persist_files_s'] for s in st]):.3f}, "
                  f"total {med([s['total_s'] for s in st]):.3f}")
        for kind in ("cold", "warm"):
            ph = [p for p in res["spotsafe_phases"] if p["cache"] == kind]
            if ph:
                keys = [k for k in ph[0] if k.startswith("restore.")]
                parts = ", ".join(f"{k.removeprefix('restore.')} {med([p.get(k, 0.0) for p in ph]):.3f}" for k in keys)
                print(f"  spotsafe restore phases, {kind} (median s): {parts}, total {med([p['total_s'] for p in ph]):.3f}")

        restore_rows = res["restore_cold"] or res["restore_warm"]
        s_ratio = med(res["save"]["spotsafe"]) / med(res["save"]["raw"])
        r_ratio = med(restore_rows["spotsafe"]) / med(restore_rows["torch"])
        goals.append({"size": res["label"], "goal": f"durable save within {SAVE_GOAL}x of the raw write+fsync of the same bytes",
                      "ratio": s_ratio, "met": s_ratio <= SAVE_GOAL})
        goals.append({"size": res["label"], "goal": "restore no slower than torch.load"
                      + ("" if res["restore_cold"] else " (warm page cache)"),
                      "ratio": r_ratio, "met": r_ratio <= 1.0})
    print("\n=== Goals (spotsafe time / reference time) ===")
    for g in goals:
        print(f"  [{'MET' if g['met'] else 'NOT MET':>7}] {g['size']:>5}: {g['goal']}: {g['ratio']:.2f}x")
    return goals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100M,1G", help="comma-separated state sizes (default 100M,1G)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats per size (default 3 for sizes >= 512M, else 5)")
    ap.add_argument("--dir", type=Path, default=REPO / "bench" / "results" / f"tmp-{os.getpid()}",
                    help="scratch directory for the checkpoints, on the disk to measure "
                         "(default bench/results/tmp-<pid>; removed at the end)")
    ap.add_argument("--cache", choices=["auto", "cold", "warm", "both"], default="auto",
                    help="restore from a cold page cache (needs drop_caches), a warm one, or both; "
                         "auto: cold when drop_caches is permitted, else warm")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    sizes = [(s.strip(), parse_size(s)) for s in args.sizes.split(",") if s.strip()]
    can_drop = try_drop_caches()
    if args.cache in ("cold", "both") and not can_drop:
        ap.error("cannot write /proc/sys/vm/drop_caches here; use --cache warm or auto")
    cache_note = ("cold page cache (drop_caches permitted)" if can_drop and args.cache != "warm"
                  else "warm page cache")
    workdir = args.dir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        ap.error(f"{workdir} exists and is not empty; pass an empty or new --dir")
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    need = 4.2 * max(t for _, t in sizes)
    print(f"spotsafe {spotsafe.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")
    print(f"scratch dir {workdir} ({free / 1e9:.1f} GB free, a repeat needs about {need / 1e9:.1f} GB)")
    print(f"drop_caches permitted: {can_drop}; restores measured with a {cache_note}"
          + (" plus warm rows" if args.cache == "both" else ""))
    if free < need:
        print("not enough free disk space", file=sys.stderr)
        return 1

    t_start = time.perf_counter()
    results = []
    try:
        for label, target in sizes:
            repeats = args.repeats or (3 if target >= 512 << 20 else 5)
            results.append(run_size(label, target, repeats, workdir, args.cache, can_drop))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    goals = report(results, cache_note)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    elapsed = time.perf_counter() - t_start
    print(f"\npeak RSS {peak_rss / 2**30:.2f} GiB; total benchmark time {elapsed:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"env": {"spotsafe": spotsafe.__version__, "torch": torch.__version__,
                       "python": platform.python_version(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(), "dir": str(workdir),
                       "drop_caches": can_drop, "cache_mode": args.cache, "cache_note": cache_note},
               "results": results, "goals": goals, "peak_rss_bytes": peak_rss, "elapsed_s": elapsed}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
