"""Small builders shared by the tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def make_training(seed: int = 0, width: int = 8):
    """A model with dropout and batch norm, Adam, a scheduler and a GradScaler, after 3 steps."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.BatchNorm1d(width), torch.nn.ReLU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(width, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(6, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def fresh_training(width: int = 8):
    torch.manual_seed(123)
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.BatchNorm1d(width), torch.nn.ReLU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(width, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_same_optimizer(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        for k, v in sa["state"][pid].items():
            assert torch.equal(v, sb["state"][pid][k]), (pid, k)


def wait_for(cond, timeout: float = 5.0) -> bool:
    """Poll ``cond`` every 20 ms until it holds or ``timeout`` seconds pass; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


RAW = "@RAW@"


def resign_manifest(ckpt, edit, raw: str | None = None) -> None:
    """Change the manifest of the checkpoint directory ``ckpt`` with ``edit(body)`` and give it a
    matching self-checksum, as anyone with write access to the root can: bytes that pass the
    checksum, so that only the validator can tell. ``raw`` text replaces the string "@RAW@" (RAW)
    in the body afterwards: JSON no Python value produces (a NaN literal, 5000 digits, deep nesting)."""
    from spotsafe._format import digest_bytes
    from spotsafe._format._manifest import _SELF_SUM, _canonical

    m = Path(ckpt) / "manifest.json"
    body = json.loads(m.read_bytes())
    body.pop(_SELF_SUM)
    edit(body)
    body[_SELF_SUM] = digest_bytes(_canonical(body))
    text = json.dumps(body)
    if raw is not None:
        text = text.replace(json.dumps(RAW), raw)
    m.write_text(text)


def _s3(url: str, client=None):
    """(boto3 client, bucket, key prefix) for an ``s3://`` URL: a client of its own, independent of
    spotsafe's, from the environment (the ``s3_url`` fixture sets it) unless one is given."""
    import boto3

    bucket, _, prefix = url.split("://", 1)[1].partition("/")
    return client or boto3.client("s3"), bucket, prefix.strip("/")


def remote_objects(url: str, client=None) -> list[str]:
    """Every object under ``url`` (relative paths, sorted), listed afresh; [] when there are none."""
    return sorted(remote_sizes(url, client))


def remote_sizes(url: str, client=None) -> dict[str, int]:
    """{relative path: size} of every object under ``url``, listed by a client of its own."""
    if url.startswith("s3://"):
        s3, bucket, prefix = _s3(url, client)
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            out.update({o["Key"][len(prefix) + 1:]: o["Size"] for o in page.get("Contents", [])})
        return out
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    try:
        return {p[len(root) + 1:]: int(fs.size(p)) for p in fs.find(root)}
    except FileNotFoundError:
        return {}


def read_remote(url: str, rel: str, client=None) -> bytes:
    """The bytes of ``rel`` under ``url``, read by a client of its own; FileNotFoundError when missing."""
    if url.startswith("s3://"):
        s3, bucket, prefix = _s3(url, client)
        try:
            return s3.get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read()
        except s3.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{url}/{rel}") from None
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs.cat_file(f"{root}/{rel}")


def write_remote(url: str, rel: str, data: bytes, client=None) -> None:
    """Write ``data`` as ``rel`` under ``url`` behind spotsafe's back (no lease, no checks)."""
    if url.startswith("s3://"):
        s3, bucket, prefix = _s3(url, client)
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/{rel}", data)


def incomplete_uploads(url: str, client=None) -> list[str]:
    """Keys (from the bucket) of the unfinished multipart uploads under ``url``."""
    s3, bucket, prefix = _s3(url, client)
    return sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads") or [])


def assert_same(a: object, b: object, path: str = "") -> None:
    """Equal trees, tensors compared with torch.equal (bit for bit)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a.keys(), getattr(b, "keys", lambda: b)())
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    else:
        assert a == b, (path, a, b)


def communicate_or_kill(p, timeout: float) -> tuple[str, str]:
    """``p.communicate(timeout)``; past it (or on any error) its whole process group is SIGKILLed."""
    import os
    import signal

    try:
        return p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
