"""Benchmark: upload throughput of spotsafe's background replication against boto3, side by side.

A real SeaweedFS S3 server runs on 127.0.0.1 (``tests/s3server.py``). One checkpoint of a
model + Adam state (``--size``, default 512M) is saved locally once; then, alternating
in every repeat:

* ``boto3 upload_file`` - every file of the checkpoint uploaded with
  ``boto3.client("s3").upload_file`` and ``TransferConfig(max_concurrency=8)`` (8 MiB
  multipart parts, boto3's default), one file after the other: the reference.
* ``s3fs put_file`` - the same files with ``S3FileSystem.put_file(chunksize=16 MiB,
  max_concurrency=8)``: the library spotsafe uses, without spotsafe's bookkeeping.
* ``spotsafe`` - a ``CheckpointManager(local, remote=...)`` on a fresh prefix; its
  replicator uploads the newest local checkpoint (every file, a size check of each, then
  the manifest) and ``UploadStats.upload_s`` is the time of that upload.

Throughput is the checkpoint's bytes over the time. Goal: spotsafe >= 85% of boto3.
Reads come from the page cache (the files were just written), as they do right after a save.

    .venv/bin/python bench/bench_upload.py [--size 512M] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1].upper() in units else int(s)


def build_state(nbytes: int):
    import torch

    torch.manual_seed(0)
    width = 2048
    layers = max(1, round(nbytes / 3 / (width * width * 4)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    return {"model": model, "optimizer": opt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="512M")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    import boto3
    import s3fs
    import torch
    from boto3.s3.transfer import TransferConfig

    import spotsafe
    from s3server import SeaweedS3
    from spotsafe._format import step_dir

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="spotsafe-bench-upload-"))
    server = SeaweedS3(work / "weed", volume_size_mb=1024)
    server.start()
    try:
        server.make_bucket("bench")
        os.environ.update(server.env())
        local = work / "local"
        with spotsafe.CheckpointManager(local, async_save=False) as mgr:
            stats = mgr.save(1, build_state(parse_size(args.size)))
        ckpt = local / step_dir(1)
        files = sorted(p for p in ckpt.iterdir())
        nbytes = sum(p.stat().st_size for p in files)
        print(f"checkpoint: {len(files)} files, {nbytes / (1 << 20):.0f} MiB (state {stats.bytes / (1 << 20):.0f} MiB)")

        client = boto3.client("s3")
        config = TransferConfig(max_concurrency=8, use_threads=True)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        res: dict[str, list[float]] = {"boto3": [], "s3fs": [], "spotsafe": []}

        def run_boto3(prefix: str) -> float:
            t = time.perf_counter()
            for p in files:
                client.upload_file(str(p), "bench", f"{prefix}/{p.name}", Config=config)
            return time.perf_counter() - t

        def run_s3fs(prefix: str) -> float:
            t = time.perf_counter()
            for p in files:
                fs.put_file(str(p), f"bench/{prefix}/{p.name}", chunksize=16 << 20, max_concurrency=8)
            return time.perf_counter() - t

        def run_spotsafe(prefix: str) -> float:
            with spotsafe.CheckpointManager(local, remote=f"s3://bench/{prefix}") as m:
                m._replicator.wait(timeout=600)
                up = m.uploads[-1]
            assert up.step == 1 and up.bytes == stats.bytes
            return up.upload_s

        runners = [("boto3", run_boto3), ("s3fs", run_s3fs), ("spotsafe", run_spotsafe)]
        n_runners = len(runners)
        for r in range(args.repeats):
            order = runners[r % n_runners:] + runners[:r % n_runners]
            for name, fn in order:
                prefix = f"{name}-{r}-{uuid.uuid4().hex[:6]}"
                res[name].append(fn(prefix))
                fs.rm(f"bench/{prefix}", recursive=True)
            print(f"repeat {r + 1}: " + ", ".join(f"{n} {res[n][-1]:.2f}s" for n in res))

        med = {n: statistics.median(v) for n, v in res.items()}
        mbs = {n: nbytes / med[n] / 1e6 for n in med}
        paired = statistics.median(b / s for b, s in zip(res["boto3"], res["spotsafe"]))
        print(f"\n== Upload to SeaweedFS on 127.0.0.1, {nbytes / (1 << 20):.0f} MiB checkpoint, median of {args.repeats} ==")
        print("| method | seconds | MB/s | vs boto3 |")
        print("| --- | --- | --- | --- |")
        for n, label in [("boto3", "boto3 upload_file (8 threads)"), ("s3fs", "s3fs put_file (8 parts)"),
                         ("spotsafe", "**spotsafe replication**")]:
            print(f"| {label} | {med[n]:.2f} | {mbs[n]:.0f} | {mbs[n] / mbs['boto3'] * 100:.0f}% |")
        verdict = "MET" if mbs["spotsafe"] >= 0.85 * mbs["boto3"] else "NOT MET"
        print(f"Goal: spotsafe >= 85% of boto3's throughput: {verdict} "
              f"({mbs['spotsafe'] / mbs['boto3'] * 100:.0f}% of medians, {paired * 100:.0f}% paired)")
        if args.json:
            Path(args.json).write_text(json.dumps({"bytes": nbytes, "seconds": res, "median_mbs": mbs}, indent=1))
    finally:
        server.close()
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
