"""Benchmark: the object-store client, side by side (boto3, s3fs, obstore, spotsafe's own store).

Issue 17, section 8: should the remote tier ride on obstore (Rust's ``object_store``)
instead of s3fs? Three measurements, each printed as a table:

``throughput`` (default): a real SeaweedFS S3 server on 127.0.0.1 (``tests/s3server.py``);
one large file (``--big``, 256 MiB) and ``--count`` small ones (64 x 1 MiB), uploaded one
file after the other (as spotsafe's replicator does) and downloaded into memory, by

* ``boto3``: ``upload_file`` / ``download_fileobj`` with ``TransferConfig(max_concurrency=8)``:
  the reference peer;
* ``s3fs``: ``put_file(chunksize=16 MiB, max_concurrency=8)`` / ranged ``cat_file`` on 4
  threads, the library under spotsafe's S3 store before the switch to obstore;
* ``obstore``: ``put(Path, chunk_size=16 MiB, max_concurrency=8)`` / ``get_range`` of 16 MiB
  pieces on 4 threads (``get_ranges`` coalesces adjacent ranges into one request: 40% slower);
* ``spotsafe``: whatever ``open_storage("s3://...")`` returns (``ObstoreStorage`` since the
  switch; ``FsspecStorage`` over s3fs at the commit before it), through the store's own
  ``upload_file(fd, rel, size=, checksum=)`` (every byte hashed as it is read) and
  ``read_files`` (every byte hashed as it arrives): what a checkpoint's upload and restore
  cost.

A client whose package is not installed (s3fs is no longer a dependency) is left out.

Medians of ``--repeats`` runs, interleaved (each repeat rotates the order); MB/s and the
ratio against boto3's median.

``footprint``: fresh virtual environments under /tmp (``python3 -m venv``): ``pip install
s3fs`` vs ``pip install obstore`` (seconds, distributions installed, MB on disk of
site-packages), and the resolution test of the issue: the latest boto3 first, then s3fs
(which s3fs does pip pick, and how long does it take?) vs obstore. Needs PyPI.

``features``: the S3 requests spotsafe needs, through obstore against SeaweedFS
(multipart upload, an upload aborted by an error in its source, ranged reads, list with a
delimiter, delete, head, create-only and If-Match PUTs), one line each.

    .venv/bin/python bench/bench_client.py [throughput] [--big 256M] [--count 64] [--small 1M] [--repeats 3]
    .venv/bin/python bench/bench_client.py footprint
    .venv/bin/python bench/bench_client.py features
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from _common import parse_size, scratch_dir, write_json

_PART = 16 << 20
_MB = 1e6


# -- throughput -------------------------------------------------------------------------


def _obstore(server, bucket: str):
    from obstore.store import S3Store
    from s3server import ACCESS_KEY, REGION, SECRET_KEY

    return S3Store(bucket, endpoint=server.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                   region=REGION, virtual_hosted_style_request=False,
                   client_options={"allow_http": True, "connect_timeout": timedelta(seconds=5),
                                   "timeout": timedelta(seconds=120)})


class Clients:
    """One upload and one download function per client, all against ``bucket`` on ``server``."""

    def __init__(self, server, bucket: str) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        from spotsafe._storage import open_storage

        self.bucket = bucket
        self.boto = boto3.client("s3")
        self.transfer = TransferConfig(max_concurrency=8)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="bench-io")  # the manager's io_executor
        self.names = ["boto3"]
        try:
            import s3fs

            self.fs = s3fs.S3FileSystem(skip_instance_cache=True)
            self.names.append("s3fs")
        except ImportError:
            self.fs = None
        try:
            self.obs = _obstore(server, bucket)
            self.names.append("obstore")
        except ImportError:
            self.obs = None
        self.spotsafe = open_storage(f"s3://{bucket}")
        self.names.append("spotsafe")

    def upload(self, name: str, path: Path, key: str, checksum: str) -> None:
        if name == "boto3":
            self.boto.upload_file(str(path), self.bucket, key, Config=self.transfer)
        elif name == "s3fs":
            self.fs.put_file(str(path), f"{self.bucket}/{key}", chunksize=_PART, max_concurrency=8)
        elif name == "obstore":
            import obstore

            obstore.put(self.obs, key, path, chunk_size=_PART, max_concurrency=8)
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                self.spotsafe.upload_file(fd, key, size=os.fstat(fd).st_size, checksum=checksum)
            finally:
                os.close(fd)

    def download(self, name: str, key: str, size: int) -> int:
        if name == "boto3":
            out = io.BytesIO()
            self.boto.download_fileobj(self.bucket, key, out, Config=self.transfer)
            return out.getbuffer().nbytes
        if name == "s3fs":
            buf = memoryview(bytearray(size))

            def fetch(start: int) -> int:
                data = self.fs.cat_file(f"{self.bucket}/{key}", start=start, end=min(start + _PART, size))
                buf[start:start + len(data)] = data
                return len(data)

            return sum(self.pool.map(fetch, range(0, size, _PART)))
        if name == "obstore":
            import obstore

            buf = memoryview(bytearray(size))

            def get(start: int) -> int:
                data = obstore.get_range(self.obs, key, start=start, end=min(start + _PART, size))
                buf[start:start + len(data)] = data
                return len(data)

            return sum(self.pool.map(get, range(0, size, _PART)))
        ((n, _),) = self.spotsafe.read_files([(key, memoryview(bytearray(size)))], self.pool)
        return n

    def clear(self, prefix: str) -> None:
        keys = [o["Key"] for page in self.boto.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                                        Prefix=prefix)
                for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            self.boto.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def throughput(args: argparse.Namespace) -> dict:
    with scratch_dir("client") as work:
        return _throughput(args, work)


def _throughput(args: argparse.Namespace, work: Path) -> dict:
    import xxhash
    from s3server import SeaweedS3

    server = SeaweedS3(work / "weed", volume_size_mb=1024)
    server.start()
    try:
        os.environ.update(server.env())
        bucket = server.make_bucket("bench")
        big, count, small = args.big, args.count, args.small
        data = work / "data"
        (data / "small").mkdir(parents=True)
        sets = {"big": [data / "big.bin"], "small": [data / "small" / f"{i:03d}.bin" for i in range(count)]}
        with open(sets["big"][0], "wb") as f:
            f.writelines(os.urandom(min(_PART, big - start)) for start in range(0, big, _PART))
        for p in sets["small"]:
            p.write_bytes(os.urandom(small))
        sums = {p: xxhash.xxh3_64(p.read_bytes()).hexdigest() for ps in sets.values() for p in ps}
        sizes = {name: sum(p.stat().st_size for p in ps) for name, ps in sets.items()}
        c = Clients(server, bucket)
        print(f"spotsafe store: {c.spotsafe!r}; files: 1 x {big >> 20} MiB, {count} x {small >> 20} MiB; "
              f"{args.repeats} repeats")
        # seconds[(set, op, client)] = [..]
        seconds: dict[str, list[float]] = {}
        for r in range(args.repeats):
            names = c.names[r % len(c.names):] + c.names[:r % len(c.names)]
            for name in names:
                prefix = f"{name}-{r}-{uuid.uuid4().hex[:6]}"
                for set_name, paths in sets.items():
                    keys = [f"{prefix}/{set_name}/{p.name}" for p in paths]
                    t = time.perf_counter()
                    for p, k in zip(paths, keys):
                        c.upload(name, p, k, sums[p])
                    seconds.setdefault(f"{set_name} up {name}", []).append(time.perf_counter() - t)
                    t = time.perf_counter()
                    got = sum(c.download(name, k, p.stat().st_size) for p, k in zip(paths, keys))
                    seconds.setdefault(f"{set_name} down {name}", []).append(time.perf_counter() - t)
                    assert got == sizes[set_name], (name, set_name, got)
                c.clear(prefix)
            print(f"repeat {r + 1}/{args.repeats} done")
        print(f"\n== SeaweedFS on 127.0.0.1, median of {args.repeats}; MB/s and ratio to boto3 ==")
        print("| client | " + " | ".join(f"{op} {s}" for s in sets for op in ("up", "down")) + " |")
        print("| --- " * (1 + 2 * len(sets)) + "|")
        table = {}
        for name in c.names:
            cells = []
            for s in sets:
                for op in ("up", "down"):
                    med = statistics.median(seconds[f"{s} {op} {name}"])
                    ref = statistics.median(seconds[f"{s} {op} boto3"])
                    table[f"{s} {op} {name}"] = sizes[s] / med / _MB
                    cells.append(f"{sizes[s] / med / _MB:.0f} ({ref / med:.2f}x)")
            print(f"| {name} | " + " | ".join(cells) + " |")
        return {"seconds": seconds, "mbs": table, "sizes": sizes, "store": repr(c.spotsafe)}
    finally:
        server.close()


# -- install footprint ------------------------------------------------------------------


def _venv(path: Path, python: str) -> Path:
    subprocess.run([python, "-m", "venv", str(path)], check=True)
    py = path / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-U", "pip"], check=True)
    return py


def _pip(py: Path, *pkgs: str) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir", *pkgs],
                         check=False, capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - t
    if out.returncode != 0:
        return took, "FAILED: " + (out.stderr.strip().splitlines() or ["?"])[-1]
    return took, "ok"


def _inventory(py: Path) -> tuple[dict[str, str], float]:
    out = subprocess.run([str(py), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True)
    dists = {d["name"].lower(): d["version"] for d in json.loads(out.stdout)}
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    du = subprocess.run(["du", "-sk", site], capture_output=True, text=True, check=True).stdout.split()[0]
    return dists, int(du) / 1024


def footprint(args: argparse.Namespace) -> dict:
    python = args.python or sys.executable
    work = Path(tempfile.mkdtemp(prefix="spotsafe-bench-venvs-"))
    rows = []
    try:
        base_py = _venv(work / "empty", python)
        base_dists, base_mb = _inventory(base_py)
        for label, first, then in [("s3fs", None, "s3fs"), ("obstore", None, "obstore"),
                                   ("boto3, then s3fs", "boto3", "s3fs"), ("boto3, then obstore", "boto3", "obstore")]:
            py = _venv(work / label.replace(", ", "-").replace(" ", "_"), python)
            if first:
                _pip(py, first)
            before, before_mb = _inventory(py)
            took, status = _pip(py, then)
            after, after_mb = _inventory(py)
            new = {k: v for k, v in after.items() if before.get(k) != v}
            check = subprocess.run([str(py), "-m", "pip", "check", "--disable-pip-version-check"], check=False,
                                   capture_output=True, text=True).stdout.strip().splitlines()
            status += "; pip check: " + ("; ".join(check) if check and "No broken" not in check[0] else "clean")
            rows.append({"case": label, "seconds": round(took, 1), "status": status,
                         "dists": len(new), "mb": round(after_mb - before_mb, 1),
                         "picked": after.get(then), "boto3": after.get("boto3"), "botocore": after.get("botocore"),
                         "new": new})
            print(f"{label}: {status} in {took:.1f}s, {len(new)} distributions, +{after_mb - before_mb:.1f} MB; "
                  f"{then} {after.get(then)}; botocore {after.get('botocore')}")
        version = subprocess.run([str(base_py), "-V"], capture_output=True, text=True, check=True).stdout.split()[1]
        print(f"\n== pip install into a fresh venv (python {version}, empty venv {base_mb:.0f} MB) ==")
        print("| install | seconds | distributions | MB on disk | version picked | result |")
        print("| --- | --- | --- | --- | --- | --- |")
        for row in rows:
            print(f"| {row['case']} | {row['seconds']} | {row['dists']} | {row['mb']} | {row['picked']} | "
                  f"{row['status']} |")
        return {"rows": rows, "empty_venv_mb": base_mb, "empty_venv_dists": len(base_dists)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- features ---------------------------------------------------------------------------


def features(args: argparse.Namespace) -> dict:
    import obstore
    from s3server import SeaweedS3

    work = Path(tempfile.mkdtemp(prefix="spotsafe-bench-features-"))
    server = SeaweedS3(work / "weed")
    server.start()
    results: dict[str, str] = {}

    def check(name: str, fn) -> None:
        try:
            results[name] = f"ok: {fn()}"
        except Exception as e:
            results[name] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        print(f"- {name}: {results[name]}")

    try:
        bucket = server.make_bucket("features")
        st = _obstore(server, bucket)
        boto = server.client()
        blob = os.urandom(40 << 20)
        pieces = [blob[i:i + _PART] for i in range(0, len(blob), _PART)]

        def multipart() -> str:
            etag = obstore.put(st, "r/big", iter(pieces), chunk_size=_PART)["e_tag"]
            assert bytes(obstore.get(st, "r/big").bytes()) == blob and etag.endswith('-3"')
            return f"40 MiB from an iterator in 3 parts, ETag {etag}"

        def aborted() -> str:
            def failing():
                yield pieces[0]
                yield pieces[1]
                raise ValueError("checksum mismatch")

            try:
                obstore.put(st, "r/bad", failing(), chunk_size=_PART)
            except ValueError:
                pass
            else:
                raise AssertionError("the upload completed")
            left = boto.list_multipart_uploads(Bucket=bucket, Prefix="r/").get("Uploads") or []
            assert not left, left
            try:
                obstore.head(st, "r/bad")
            except FileNotFoundError:
                return "an error raised by the source aborts the multipart upload: no object, no parts left"
            raise AssertionError("object exists")

        def ranged() -> str:
            one = bytes(obstore.get_range(st, "r/big", start=5, end=1 << 20))
            many = obstore.get_ranges(st, "r/big", starts=[0, 20 << 20], ends=[1 << 20, 40 << 20])
            assert one == blob[5:1 << 20] and bytes(many[1]) == blob[20 << 20:]
            return "get_range and get_ranges return the right bytes"

        def listing() -> str:
            obstore.put(st, "r/step-1/manifest.json", b"{}")
            obstore.put(st, "r/step-2/a.bin", b"a")
            out = obstore.list_with_delimiter(st, "r/")
            return f"common prefixes {out['common_prefixes']}, objects {[o['path'] for o in out['objects']]}"

        def head() -> str:
            return f"size {obstore.head(st, 'r/big')['size']}"

        def delete() -> str:
            obstore.delete(st, ["r/step-2/a.bin", "r/missing"])
            kept = obstore.list_with_delimiter(st, "r/")["common_prefixes"]
            obstore.delete(st, "r/step-2/")  # SeaweedFS keeps an emptied prefix until its "dir/" key goes
            now = obstore.list_with_delimiter(st, "r/")["common_prefixes"]
            return f"batch delete (a missing key is fine); prefixes then {kept}, after deleting 'r/step-2/' {now}"

        def create_only() -> str:
            obstore.put(st, "r/lease", b"1", mode="create")
            try:
                obstore.put(st, "r/lease", b"2", mode="create")
            except obstore.exceptions.AlreadyExistsError:
                return "If-None-Match: * refused the second create (AlreadyExistsError)"
            raise AssertionError("second create succeeded")

        def if_match() -> str:
            etag = obstore.head(st, "r/lease")["e_tag"]
            new = obstore.put(st, "r/lease", b"3", mode={"e_tag": etag})["e_tag"]
            try:
                obstore.put(st, "r/lease", b"4", mode={"e_tag": etag})
            except obstore.exceptions.PreconditionError:
                return f"If-Match on the current ETag replaced it ({new}); on the old one refused (PreconditionError)"
            raise AssertionError("stale If-Match succeeded")

        def timeouts() -> str:
            import socket

            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)  # accepts connections, never answers
            from obstore.store import S3Store
            from s3server import ACCESS_KEY, SECRET_KEY

            silent = S3Store(bucket, endpoint=f"http://127.0.0.1:{sock.getsockname()[1]}", access_key_id=ACCESS_KEY,
                             secret_access_key=SECRET_KEY, region="us-east-1", virtual_hosted_style_request=False,
                             client_options={"allow_http": True, "connect_timeout": timedelta(seconds=5),
                                             "read_timeout": timedelta(seconds=2), "timeout": timedelta(seconds=120)},
                             retry_config={"max_retries": 1, "retry_timeout": timedelta(seconds=60)})
            t = time.perf_counter()
            try:
                obstore.put(silent, "x", os.urandom(1 << 20))
            except Exception as e:
                took = time.perf_counter() - t
                return f"a PUT to a server that never answers fails after {took:.1f}s ({type(e).__name__})"
            finally:
                sock.close()
            raise AssertionError("answered")

        for name, fn in [("multipart upload", multipart), ("upload aborted by its source", aborted),
                         ("ranged GET", ranged), ("list with delimiter", listing), ("head", head),
                         ("delete", delete), ("conditional create", create_only), ("conditional replace", if_match),
                         ("bounded wait (read_timeout 2 s, max_retries 1)", timeouts)]:
            check(name, fn)
        return results
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="throughput", choices=["throughput", "footprint", "features"])
    ap.add_argument("--big", type=parse_size, default="256M")
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--small", type=parse_size, default="1M")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--python", help="interpreter for the footprint venvs (default: this one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = {"throughput": throughput, "footprint": footprint, "features": features}[args.what](args)
    write_json(args.json, out)


if __name__ == "__main__":
    main()
