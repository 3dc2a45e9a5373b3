"""The test S3 server itself: env-only configuration, restart keeps data, servers side by side."""

from __future__ import annotations

import os
import uuid

import pytest

s3fs = pytest.importorskip("s3fs")
import fsspec  # noqa: E402


def test_put_get_through_env_only(s3_url, tmp_path):
    # no endpoint/key argument at all: AWS_ENDPOINT_URL and the keys come from the environment
    fs = fsspec.filesystem("s3")
    assert os.environ["AWS_ENDPOINT_URL"] in fs.s3._endpoint.host
    local = tmp_path / "blob"
    data = os.urandom(3 << 20)
    local.write_bytes(data)
    fs.put_file(str(local), f"{s3_url}/blob")
    fs.pipe_file(f"{s3_url}/small", b"hello")
    assert fs.cat_file(f"{s3_url}/blob") == data
    assert fs.cat_file(f"{s3_url}/small") == b"hello"
    assert sorted(fs.ls(s3_url, detail=False)) == sorted(
        [f"{s3_url[5:]}/blob", f"{s3_url[5:]}/small"]
    )


def test_restart_keeps_data(s3_private):
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_private.storage_options())
    bucket = s3_private.make_bucket("keep")
    fs.pipe_file(f"{bucket}/a/b", b"before restart")
    old = s3_private.endpoint
    s3_private.restart()
    assert s3_private.endpoint == old
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_private.storage_options())
    assert fs.cat_file(f"{bucket}/a/b") == b"before restart"
    fs.pipe_file(f"{bucket}/a/c", b"after restart")
    assert fs.cat_file(f"{bucket}/a/c") == b"after restart"


def test_two_servers_at_once(s3_server, s3_private):
    assert s3_server.running and s3_private.running
    assert s3_server.port != s3_private.port
    a = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options())
    b = s3fs.S3FileSystem(skip_instance_cache=True, **s3_private.storage_options())
    name = f"t-{uuid.uuid4().hex[:16]}"  # same bucket name on both servers
    s3_server.make_bucket(name)
    s3_private.make_bucket(name)
    a.pipe_file(f"{name}/x", b"A")
    b.pipe_file(f"{name}/x", b"B")
    assert a.cat_file(f"{name}/x") == b"A"
    assert b.cat_file(f"{name}/x") == b"B"
