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
  By default every repeat saves into an empty root, so retention never deletes anything
  inside ``save``; ``--steady`` keeps one root for all repeats (``keep=1``), so that from
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
Files go under ``--dir`` (default ``bench/results/tmp-save-restore-<pid>`` in this repository,
on the same file system as the checkout, not ``/tmp``) and are deleted after every repeat.

Tables: median seconds, GB/s (10^9 bytes of state per second), the time ratio against the raw
baseline and against torch.save / torch.load (method time / reference time: above 1 is slower),
and the bytes each method left on disk. Below them, spotsafe's own phases: ``SaveStats``
(stage, persist, after the commit) and ``manager.last_restore`` (``RestoreStats``: select,
read+verify, load). At the end, whether spotsafe met its two goals:
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
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import xxhash
from _common import (
    CHUNK,
    Model,
    build_model,
    byte_view,
    dir_arg,
    disk_bytes,
    fsync_dir,
    med,
    paired,
    parse_sizes,
    peak_rss,
    prefault,
    prefault_budget,
    print_goals,
    print_table,
    scratch_dir,
    settle_s,
    setup_torch,
    try_drop_caches,
    write_fsync,
    write_json,
)
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import spotsafe

THREADS = 2
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


def digest_state(m: Model) -> str:
    """xxh3 of the bytes of every state tensor, in order: also the digest of the raw baseline's file."""
    h = xxhash.xxh3_64()
    for t in m.tensors():
        h.update(byte_view(t))
    return h.hexdigest()


def source_fingerprint() -> str:
    """xxh3 over spotsafe's Python sources, to tell which code a run measured (and catch edits mid-run)."""
    h = xxhash.xxh3_64()
    pkg = Path(spotsafe.__file__).resolve().parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# -- save methods: each returns the path it wrote -----------------------------------------
def save_raw(base: Path, m: Model) -> Path:
    path = base / "raw.bin"
    write_fsync(path, (byte_view(t) for t in m.tensors()))
    return path


def save_spotsafe(base: Path, m: Model, extra: dict, root: Path | None = None, step: int = 1) -> Path:
    root = root or base / "spotsafe"
    mgr = spotsafe.CheckpointManager(root, keep=1, async_save=False)
    try:
        t0 = time.perf_counter()
        stats = mgr.save(step, m.state)
        extra["time"] = time.perf_counter() - t0
        extra["stats"] = {"stage_s": stats.stage_s, "persist_s": stats.persist_s, "total_s": stats.total_s,
                          "bytes": stats.bytes}
    finally:
        mgr.close()
    return root


def save_torch(base: Path, m: Model) -> Path:
    path = base / "torch.pt"
    with open(path, "wb") as f:
        torch.save(m.state_dicts(), f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(base)
    return path


def save_dcp(base: Path, m: Model) -> Path:
    path = base / "dcp"
    msd, osd = get_state_dict(m.module, m.opt)
    dcp.save({"model": msd, "optimizer": osd}, storage_writer=dcp.FileSystemWriter(str(path)), no_dist=True)
    fsync_dir(path)
    fsync_dir(base)
    return path


# -- restore methods: each restores into a fresh model ------------------------------------
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


def restore_spotsafe(root: Path, m: Model) -> dict:
    """The restore, and its phases as the manager reports them (``last_restore``)."""
    mgr = spotsafe.CheckpointManager(root, keep=1)
    try:
        if mgr.restore(m.state) is None:
            raise RuntimeError("spotsafe restored no checkpoint")
        st = mgr.last_restore
    finally:
        mgr.close()
    return {"select": st.select_s, "read+verify": st.read_s, "load": st.load_s, "restore_total": st.total_s}


def restore_torch(path: Path, m: Model, *, mmap: bool) -> None:
    sd = torch.load(path, weights_only=True, mmap=mmap)
    m.module.load_state_dict(sd["model"])
    m.opt.load_state_dict(sd["optimizer"])


def restore_dcp(path: Path, m: Model) -> None:
    msd, osd = get_state_dict(m.module, m.opt)
    sd = {"model": msd, "optimizer": osd}
    dcp.load(sd, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
    set_state_dict(m.module, m.opt, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])


def measure_restore(spec: dict) -> dict:
    """One restore as described by ``spec``; returns its time, spotsafe's phases and a digest."""
    method, path = spec["method"], Path(spec["path"])
    if method == "raw":
        buf = torch.empty(spec["total"], dtype=torch.uint8)
    else:  # what a restarting job has: initialized (touched) params, no optimizer state
        m = build_model(width=spec["width"], layers=spec["layers"], fresh=True)
    gc.collect()
    if spec["cold"]:
        if not try_drop_caches():
            raise RuntimeError("cannot write /proc/sys/vm/drop_caches")
    else:
        os.sync()
    pf_s = prefault(spec["prefault"])
    spotsafe.CheckpointManager  # noqa: B018  (spotsafe loads its engine on first use: an import is not a restore)
    phases: dict = {}
    t0 = time.perf_counter()
    if method == "raw":
        restore_raw(path, buf)
    elif method == "spotsafe":
        phases = restore_spotsafe(path, m)
    elif method in ("torch", "torch_mmap"):
        restore_torch(path, m, mmap=method == "torch_mmap")
    elif method == "dcp":
        restore_dcp(path, m)
    else:
        raise ValueError(method)
    dt = time.perf_counter() - t0
    digest = xxhash.xxh3_64(memoryview(buf.numpy())).hexdigest() if method == "raw" else digest_state(m)
    return {"time": dt, "phases": phases, "digest": digest, "prefault_s": pf_s, "peak_rss": peak_rss()}


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
    t0 = time.perf_counter()
    m = build_model(target)
    tensors = m.tensors()
    total, n_tensors = m.nbytes, len(tensors)
    model_bytes = sum(t.numel() * t.element_size() for t in m.module.state_dict().values())
    del tensors
    expected = digest_state(m)
    pf_bytes = prefault_budget(total) if use_prefault else 0
    print(f"\n[{label}] {m.describe()}: {total / 1e9:.3f} GB ({total / 2**30:.3f} GiB; model {model_bytes / 1e6:.0f} MB, "
          f"{n_tensors} tensors), built in {time.perf_counter() - t0:.1f}s; {repeats} repeats; prefault "
          f"{pf_bytes / 2**30:.2f} GiB; settle {settle:.1f}s before each save", flush=True)

    res = {"label": label, "target_bytes": target, "bytes": total, "model_bytes": model_bytes, "width": m.width,
           "layers": m.layers, "tensors": n_tensors, "repeats": repeats,
           "save": {k: [] for k in SAVE_METHODS},
           "restore_cold": {k: [] for k in RESTORE_METHODS} if cold else {},
           "restore_warm": {k: [] for k in RESTORE_METHODS} if warm else {},
           "disk_bytes": {}, "spotsafe_save_stats": [], "spotsafe_phases": [], "peak_disk_bytes": 0,
           "prefault_bytes": pf_bytes, "prefault_s": [], "child_peak_rss": 0, "settle_s": settle, "steady": steady}

    for r in range(repeats):
        base = workdir / f"{label}-r{r}"
        base.mkdir(parents=True)
        rot = r % len(SAVE_METHODS)
        paths = {}
        for k in SAVE_METHODS[rot:] + SAVE_METHODS[:rot]:
            os.sync()
            gc.collect()
            time.sleep(settle)
            res["prefault_s"].append(prefault(pf_bytes))
            extra: dict = {}
            t0 = time.perf_counter()
            if k == "raw":
                paths[k] = save_raw(base, m)
            elif k == "spotsafe":
                paths[k] = save_spotsafe(base, m, extra, workdir / f"{label}-spotsafe-steady" if steady else None, r + 1)
            elif k == "torch":
                paths[k] = save_torch(base, m)
            else:
                paths[k] = save_dcp(base, m)
            res["save"][k].append(extra.get("time", time.perf_counter() - t0))
            if k == "spotsafe":
                res["spotsafe_save_stats"].append(extra["stats"])
            res["disk_bytes"][k] = disk_bytes(paths[k])
        res["peak_disk_bytes"] = max(res["peak_disk_bytes"], disk_bytes(workdir))

        rot = r % len(RESTORE_METHODS)
        for k in RESTORE_METHODS[rot:] + RESTORE_METHODS[:rot]:
            for kind in (["cold"] if cold else []) + (["warm"] if warm else []):
                spec = {"method": k, "path": str(paths["torch" if k == "torch_mmap" else k]), "width": m.width,
                        "layers": m.layers, "total": total, "prefault": pf_bytes, "cold": kind == "cold"}
                out = run_restore(spec, in_process)
                if out["digest"] != expected:
                    raise RuntimeError(f"{k} restored bytes that differ from the saved state")
                res[f"restore_{kind}"][k].append(out["time"])
                res["prefault_s"].append(out["prefault_s"])
                res["child_peak_rss"] = max(res["child_peak_rss"], out["peak_rss"])
                if k == "spotsafe":
                    res["spotsafe_phases"].append({"cache": kind, "total_s": out["time"], **out["phases"]})
        shutil.rmtree(base)
        os.sync()
        print(f"  repeat {r + 1}/{repeats} done", flush=True)
    del m
    gc.collect()
    return res


# -- reporting -------------------------------------------------------------------------
def table(title: str, rows: dict[str, list[float]], side: str, nbytes_: int, ref: str, disk: dict | None) -> None:
    print_table(title, {LABELS[(side, k)]: xs for k, xs in rows.items()}, nbytes=nbytes_,
                peers=[LABELS[(side, "raw")], LABELS[(side, ref)]],
                extra={LABELS[(side, k)]: {"disk MB": f"{b / 1e6:.1f}"} for k, b in disk.items()} if disk else None)


def report(results: list[dict], in_process: bool) -> list[dict]:
    goals = []
    where = "in the benchmark process" if in_process else "each in a fresh process"
    for res in results:
        n = res["bytes"]
        print(f"\n=== {res['label']}: {n / 1e9:.3f} GB state ({n / 2**30:.3f} GiB), {res['layers']} x "
              f"Linear({res['width']},{res['width']}) + Adam, {res['tensors']} tensors, median of {res['repeats']} ===")
        steady = "; spotsafe also prunes the previous checkpoint, --steady" if res.get("steady") else ""
        table(f"Durable save ({res['label']}{steady})", res["save"], "save", n, "torch", res["disk_bytes"])
        if res["restore_cold"]:
            table(f"Restore ({res['label']}, cold page cache: sync + drop_caches before each; {where})",
                  res["restore_cold"], "restore", n, "torch", None)
        if res["restore_warm"]:
            table(f"Restore ({res['label']}, warm page cache; {where})", res["restore_warm"], "restore", n, "torch",
                  None)
        if res["prefault_bytes"]:
            print(f"  prefaulted {res['prefault_bytes'] / 2**30:.2f} GiB before each measurement "
                  f"(median {med(res['prefault_s']):.2f}s, not timed)")
        else:
            print("  no prefault: this machine's cost of fresh memory is in the times")
        print(f"  disk used by one repeat (all methods' files at once): {res['peak_disk_bytes'] / 1e6:.1f} MB; "
              f"peak RSS of a restore child: {res['child_peak_rss'] / 2**30:.2f} GiB")
        st = res["spotsafe_save_stats"]
        if st:
            print("  spotsafe save phases (SaveStats, median s): "
                  f"stage {med(s['stage_s'] for s in st):.3f}, "
                  f"persist (write+hash+fsync+commit) {med(s['persist_s'] for s in st):.3f}, "
                  f"after commit (prune) {med(s['total_s'] - s['stage_s'] - s['persist_s'] for s in st):.3f}, "
                  f"total {med(s['total_s'] for s in st):.3f}")
        for kind in ("cold", "warm"):
            ph = [p for p in res["spotsafe_phases"] if p["cache"] == kind]
            if ph:
                parts = ", ".join(f"{k} {med(p[k] for p in ph):.3f}" for k in ("select", "read+verify", "load"))
                print(f"  spotsafe restore phases, {kind} (manager.last_restore, median s): {parts}; restore() "
                      f"{med(p['restore_total'] for p in ph):.3f} of {med(p['total_s'] for p in ph):.3f} with the "
                      "manager's open and close")

        restore_rows = res["restore_cold"] or res["restore_warm"]
        for goal, xs, refs, limit in (
                (f"durable save within {SAVE_GOAL}x of the raw write+fsync of the same bytes",
                 res["save"]["spotsafe"], res["save"]["raw"], SAVE_GOAL),
                ("restore no slower than torch.load" + ("" if res["restore_cold"] else " (warm page cache)"),
                 restore_rows["spotsafe"], restore_rows["torch"], 1.0)):
            pr, mr = paired(xs, refs), med(xs) / med(refs)
            goals.append({"size": res["label"], "goal": f"{res['label']}: {goal}", "limit": limit, "paired_ratio": pr,
                          "ratio_of_medians": mr, "met": pr <= limit, "estimates_agree": (pr <= limit) == (mr <= limit),
                          "detail": f"{pr:.2f}x paired ({mr:.2f}x of medians)"})
    print_goals(goals)
    return goals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_sizes, default="100M,1G", help="comma-separated state sizes (default 100M,1G)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats per size (default 4 for sizes >= 512M, else 8)")
    dir_arg(ap, "save-restore")
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

    env = setup_torch(THREADS)
    if args._child:
        print(json.dumps(measure_restore(json.loads(args._child))))
        return 0

    can_drop = try_drop_caches()
    if args.cache in ("cold", "both") and not can_drop:
        ap.error("cannot write /proc/sys/vm/drop_caches here; use --cache warm or auto")
    cold = args.cache in ("cold", "both") or (args.cache == "auto" and can_drop)
    warm = args.cache in ("warm", "both") or (args.cache == "auto" and not can_drop)
    print(env)
    fingerprint = source_fingerprint()
    print(f"spotsafe sources fingerprint xxh3 {fingerprint}")
    t_start = time.perf_counter()
    results = []
    with scratch_dir("save-restore", args.dir) as workdir:
        free = shutil.disk_usage(workdir).free
        need = 4.2 * max(t for _, t in args.sizes)
        print(f"scratch dir {workdir} ({free / 1e9:.1f} GB free, a repeat needs about {need / 1e9:.1f} GB)")
        print(f"drop_caches permitted: {can_drop}; restores from a "
              + " and a ".join((["cold"] if cold else []) + (["warm"] if warm else [])) + " page cache, "
              + ("in the benchmark process" if args.in_process else "each in a fresh process")
              + ("; prefault on" if args.prefault else "; prefault off")
              + ("; spotsafe saves prune the previous checkpoint (--steady)" if args.steady else ""))
        if free < need:
            print("not enough free disk space", file=sys.stderr)
            return 1
        for label, target in args.sizes:
            repeats = args.repeats or (4 if target >= 512 << 20 else 8)
            settle = args.settle if args.settle is not None else settle_s(target)
            results.append(run_size(label, target, repeats, workdir, cold, warm, args.prefault, args.in_process,
                                    settle, args.steady))
    goals = report(results, args.in_process)
    changed = source_fingerprint() != fingerprint
    if changed:
        print("\nWARNING: spotsafe's sources changed during the run; restores (fresh processes) may have "
              "measured different code than saves. Run again.")
    elapsed = time.perf_counter() - t_start
    print(f"\npeak RSS of the benchmark process {peak_rss() / 2**30:.2f} GiB; total benchmark time {elapsed:.0f}s")
    write_json(args.json, {"env": {"line": env, "torch_threads": THREADS, "drop_caches": can_drop, "cache": args.cache,
                                   "cold": cold, "warm": warm, "prefault": args.prefault, "in_process": args.in_process,
                                   "steady": args.steady, "source_fingerprint": fingerprint,
                                   "sources_changed_during_run": changed},
                           "results": results, "goals": goals, "peak_rss_bytes": peak_rss(), "elapsed_s": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
