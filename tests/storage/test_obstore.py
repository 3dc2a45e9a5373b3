"""What the S3 store (obstore) adds to the conformance suite, against a real SeaweedFS.

Settings from every place a user keeps them (botocore's chain when boto3 is installed,
obstore's own without it), the abandoned multipart uploads obstore cannot list (through
boto3), the conditional PUTs of the writer lease, and a missing credential that reads as one
sentence instead of a network error, found without contacting anything but loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import AWS_LOOPBACK, child_env
from helpers import incomplete_uploads, read_remote, remote_objects
from s3server import ACCESS_KEY, SECRET_KEY

from spotsafe._format import digest_bytes
from spotsafe._storage import ObstoreStorage, PreconditionFailedError, open_storage
from spotsafe.errors import RemoteAccessError


def bare_env(monkeypatch, **env: str) -> None:
    """No AWS_* variable but ``env`` (no credentials file, no config file) and the loopback
    metadata endpoints of conftest."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    for name, value in {**AWS_LOOPBACK, **env}.items():
        monkeypatch.setenv(name, value)


def test_settings_from_options_in_either_spelling_and_from_a_profile(s3_server, tmp_path, monkeypatch):
    bucket = s3_server.make_bucket(f"o-{uuid.uuid4().hex[:16]}")
    url = f"s3://{bucket}/run"
    bare_env(monkeypatch)
    s3fs_style = {"endpoint_url": s3_server.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY,
                  "client_kwargs": {"region_name": "us-east-1"}}
    obstore_style = {"endpoint": s3_server.endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                     "region": "us-east-1"}
    open_storage(url, s3fs_style).put_bytes("a.txt", b"one")
    open_storage(url, obstore_style).put_bytes("b.txt", b"two")
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[ci]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    config = tmp_path / "config"
    config.write_text("[profile ci]\nregion = eu-west-3\n")
    bare_env(monkeypatch, AWS_PROFILE="ci", AWS_SHARED_CREDENTIALS_FILE=str(credentials),
             AWS_CONFIG_FILE=str(config), AWS_ENDPOINT_URL=s3_server.endpoint)
    st = open_storage(url)  # the profile, read by botocore, handed to obstore by its Boto3CredentialProvider
    assert (st.read_bytes("a.txt"), st.read_bytes("b.txt")) == (b"one", b"two")
    assert st.store.config["region"] == "eu-west-3"  # the profile's region
    assert ACCESS_KEY not in repr(st) and ACCESS_KEY not in repr(st._settings)
    with pytest.raises(ValueError, match="config_kwargs 'signature_version' is not understood"):
        open_storage(url, {"config_kwargs": {"signature_version": "s3v4"}})


def test_no_credentials_is_one_sentence_in_seconds_asking_loopback_only(monkeypatch):
    # conftest points botocore's and obstore's instance-metadata lookups at loopback (and turns
    # botocore's off); the socket guard fails the test if Python code tries the real address.
    bare_env(monkeypatch, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    t0 = time.monotonic()
    with pytest.raises(RemoteAccessError) as e:
        open_storage("s3://bucket/run").listdir()
    assert time.monotonic() - t0 < 5
    assert str(e.value).startswith("No AWS credentials found for s3://bucket/run; set AWS_ACCESS_KEY_ID")
    assert "\n" not in str(e.value)


def _without_boto3(script: str, url: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``script`` (``url`` in argv[1]) in a fresh interpreter where ``import boto3`` fails."""
    prelude = ("import logging, sys\nsys.modules['boto3'] = None\n"
               "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(levelname)s %(message)s')\n"
               "from spotsafe._storage import open_storage\nurl = sys.argv[1]\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script), url], env=env,
                          capture_output=True, text=True, timeout=60)


def test_without_boto3_no_credentials_asks_the_loopback_metadata_endpoint_only(s3_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once closed: the metadata service is absent
    env = {k: v for k, v in child_env().items() if not k.startswith("AWS_")}
    # botocore's switch is not obstore's: with it unset, obstore's chain goes on to the instance role
    env.update(AWS_ENDPOINT_URL=s3_server.endpoint, AWS_METADATA_ENDPOINT=f"http://127.0.0.1:{closed}",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    t0 = time.monotonic()
    out = _without_boto3("""
        from spotsafe.errors import RemoteAccessError
        try:
            open_storage(url).listdir()
        except RemoteAccessError as e:
            print("ERROR", e)
        """, "s3://bucket/run", env)
    took = time.monotonic() - t0
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("ERROR ")]
    assert line, out.stdout + out.stderr
    assert line[0].startswith("ERROR No AWS credentials found for s3://bucket/run (the instance metadata service")
    assert f"127.0.0.1:{closed}" in line[0] and "AWS_ACCESS_KEY_ID" in line[0]
    assert took < 10, f"{took:.1f} s"
    env["AWS_PROFILE"] = "ci"  # a profile is read through boto3 only: one sentence saying so
    out = _without_boto3("""
        from spotsafe.errors import MissingDependencyError
        try:
            open_storage(url)
        except MissingDependencyError as e:
            print("ERROR", e)
        """, "s3://bucket/run", env)
    assert ("ERROR The AWS profile 'ci' for s3://bucket/run is read through boto3, which is not installed; run "
            "`pip install boto3`, or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.\n") in out.stdout, out.stderr


@pytest.mark.slow  # a fresh interpreter and a 33 MiB multipart upload
def test_without_boto3_env_credentials_upload_and_read_and_the_cleanup_is_skipped(s3_url, s3_server):
    client = s3_server.client()
    bucket = s3_url.split("/")[2]
    key = "run/step-000000000001/model.bin"
    client.create_multipart_upload(Bucket=bucket, Key=key)
    out = _without_boto3("""
        import os
        from concurrent.futures import ThreadPoolExecutor
        data = os.urandom(33 << 20)  # past 32 MiB: a multipart upload
        st = open_storage(url)
        h = st.begin("step-000000000002", "tmp")
        with ThreadPoolExecutor(2) as ex:
            st.write_file(h, "model.bin", [memoryview(data)], ex)
        st.put_bytes("note.txt", b"hello")
        print("READ", st.read_bytes("step-000000000002/model.bin") == data, st.read_bytes("note.txt"))
        print("ABORTED", st.abort_incomplete_uploads(), st.abort_incomplete_uploads())
        print("LOADED", sorted(m for m in ("boto3", "botocore") if sys.modules.get(m)))
        """, s3_url, child_env())
    assert "READ True b'hello'" in out.stdout, out.stdout + out.stderr
    assert "ABORTED 0 0" in out.stdout and "LOADED []" in out.stdout
    said = [ln for ln in out.stdout.splitlines() if "AbortIncompleteMultipartUpload" in ln]
    assert said == [f"INFO Not aborting incomplete multipart uploads in {s3_url} (boto3 is not installed): a bucket "
                    "lifecycle rule (AbortIncompleteMultipartUpload) removes them, or `pip install boto3` lets "
                    "spotsafe abort them."]  # once per store, not on every call
    assert incomplete_uploads(s3_url) == [key]  # left for the lifecycle rule; with boto3 it goes:
    assert open_storage(s3_url).abort_incomplete_uploads() == 1 and incomplete_uploads(s3_url) == []


def test_abandoned_multipart_uploads_under_the_root_are_aborted_and_others_left(s3_url, s3_server):
    client = s3_server.client()
    bucket = s3_url.split("/")[2]
    ids = {}
    for key in ("run/step-000000000002/model.bin", "other/elsewhere.bin"):
        ids[key] = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=ids[key], PartNumber=1, Body=b"x" * (5 << 20))
    st = open_storage(s3_url)
    assert incomplete_uploads(s3_url) == ["run/step-000000000002/model.bin"]
    assert st.abort_incomplete_uploads("step-000000000002") == 1
    assert incomplete_uploads(s3_url) == []
    assert [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [
        "other/elsewhere.bin"]  # outside the root: not ours
    client.abort_multipart_upload(Bucket=bucket, Key="other/elsewhere.bin", UploadId=ids["other/elsewhere.bin"])


def test_conditional_puts_are_a_compare_and_swap(s3_url):
    st = open_storage(s3_url)
    assert isinstance(st, ObstoreStorage)
    first = st.put_object("lease.json", b"A", create_only=True)
    with pytest.raises(PreconditionFailedError):
        st.put_object("lease.json", b"B", create_only=True)  # it exists
    second = st.put_object("lease.json", b"C", expect=first)
    with pytest.raises(PreconditionFailedError):
        st.put_object("lease.json", b"D", expect=first)  # it changed since
    assert read_remote(s3_url, "lease.json") == b"C"
    assert st.read_object("lease.json", 16) == (b"C", second)
    assert st.read_object("lease.json", 0) == (None, second)  # larger than the limit: not read
    st.delete_object("lease.json")
    with pytest.raises(FileNotFoundError):
        st.read_object("lease.json", 16)


def test_a_large_file_goes_up_in_parts_and_comes_back_byte_exact(s3_url, tmp_path):
    data = os.urandom(40 << 20)  # 3 parts of 16 MiB
    path = tmp_path / "blob"
    path.write_bytes(data)
    st = open_storage(s3_url)
    handle = st.begin("step-000000000001", "tmp")
    with ThreadPoolExecutor(4) as ex:
        mv = memoryview(data)
        assert st.write_file(handle, "a.bin", [mv[:1000], mv[1000:]], ex) == (len(data), digest_bytes(data))
        fd = os.open(path, os.O_RDONLY)
        try:
            st.upload_file(fd, "step-000000000001/b.bin", size=len(data), checksum=digest_bytes(data))
        finally:
            os.close(fd)
        bufs = [bytearray(len(data)), bytearray(len(data) + 5)]  # the second expects 5 bytes more than there are
        got = st.read_files([("step-000000000001/a.bin", memoryview(bufs[0])),
                             ("step-000000000001/b.bin", memoryview(bufs[1]))], ex)
    assert got == [(len(data), digest_bytes(data))] * 2
    assert bytes(bufs[0]) == data and bytes(bufs[1][:len(data)]) == data
    assert st.digest("step-000000000001/b.bin") == (len(data), digest_bytes(data))
    assert remote_objects(s3_url) == ["step-000000000001/a.bin", "step-000000000001/b.bin"]
    st.remove("step-000000000001")
    assert remote_objects(s3_url) == [] and st.listdir() == []  # the emptied prefix is gone too
