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
The server's data and the checkpoint go under ``bench/results/tmp-upload-<pid>``, removed at
the end.

    .venv/bin/python bench/bench_upload.py [--size 512M] [--repeats 3] [--json out.json]
    .venv/bin/python bench/bench_upload.py --size 64M --repeats 2      # quick
"""


from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

from _common import build_model, med, paired, parse_size, print_goals, print_table, scratch_dir, setup_torch, write_json

GOAL = 0.85
LABELS = {"boto3": "boto3 upload_file (8 threads)", "s3fs": "s3fs put_file (8 parts)",
          "spotsafe": "spotsafe replication"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=parse_size, default="512M", help="state size (default 512M)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import boto3
    from boto3.s3.transfer import TransferConfig
    from s3server import SeaweedS3

    import spotsafe
    from spotsafe._format import step_dir

    print(setup_torch(2))
    with scratch_dir("upload") as work:
        server = SeaweedS3(work / "weed", volume_size_mb=1024)
        server.start()
        try:
            server.make_bucket("bench")
            os.environ.update(server.env())
            local = work / "local"
            with spotsafe.CheckpointManager(local, async_save=False) as mgr:
                stats = mgr.save(1, build_model(args.size, width=2048).state)
            ckpt = local / step_dir(1)
            files = sorted(p for p in ckpt.iterdir())
            nbytes = sum(p.stat().st_size for p in files)
            print(f"checkpoint: {len(files)} files, {nbytes / (1 << 20):.0f} MiB (state {stats.bytes / (1 << 20):.0f} MiB)")

            client = boto3.client("s3")
            config = TransferConfig(max_concurrency=8, use_threads=True)
            try:  # no longer one of spotsafe's dependencies: measured when installed
                import s3fs

                fs = s3fs.S3FileSystem(skip_instance_cache=True)
            except ImportError:
                fs = None
            res: dict[str, list[float]] = {"boto3": [], "s3fs": [], "spotsafe": []} if fs else {"boto3": [],
                                                                                               "spotsafe": []}

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
                    if not m.wait_uploaded(1, timeout=600):
                        raise RuntimeError(f"step 1 was not uploaded to s3://bench/{prefix}")
                    up = m.uploads[-1]
                if not (up.step == 1 and up.bytes == stats.bytes):
                    raise RuntimeError(f"spotsafe uploaded {up}, not step 1 of {stats.bytes} bytes")
                return up.upload_s

            runners = [("boto3", run_boto3), ("s3fs", run_s3fs), ("spotsafe", run_spotsafe)]
            runners = [(name, fn) for name, fn in runners if name in res]
            for r in range(args.repeats):
                for name, fn in runners[r % len(runners):] + runners[:r % len(runners)]:
                    prefix = f"{name}-{r}-{uuid.uuid4().hex[:6]}"
                    res[name].append(fn(prefix))
                    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
                        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                        if keys:
                            client.delete_objects(Bucket="bench", Delete={"Objects": keys})
                print(f"repeat {r + 1}: " + ", ".join(f"{n} {res[n][-1]:.2f}s" for n in res), flush=True)
        finally:
            server.close()

    print_table(f"== Upload to SeaweedFS on 127.0.0.1, {nbytes / (1 << 20):.0f} MiB checkpoint, median of "
                f"{args.repeats} ==", {LABELS[k]: xs for k, xs in res.items()}, peers=[LABELS["boto3"]],
                nbytes=nbytes, rate=("MB/s", 1e6))
    share, share_paired = med(res["boto3"]) / med(res["spotsafe"]), paired(res["boto3"], res["spotsafe"])
    print_goals([{"goal": f"spotsafe >= {GOAL * 100:.0f}% of boto3's throughput", "met": share >= GOAL,
                  "estimates_agree": (share >= GOAL) == (share_paired >= GOAL),
                  "detail": f"{share * 100:.0f}% of medians ({share_paired * 100:.0f}% paired)"}])
    write_json(args.json, {"bytes": nbytes, "seconds": res, "median_mbs": {k: nbytes / med(v) / 1e6
                                                                          for k, v in res.items()}})


if __name__ == "__main__":
    main()
