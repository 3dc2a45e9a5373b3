"""What the S3 store (obstore) adds to the conformance suite, against a real SeaweedFS.

Settings from every place a user keeps them, the abandoned multipart uploads obstore cannot
list (signed here), the conditional PUTs of the writer lease, and a missing credential that
reads as one sentence instead of a network error.
"""

from __future__ import annotations

import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import incomplete_uploads, read_remote, remote_objects
from s3server import ACCESS_KEY, SECRET_KEY

from spotsafe._format import digest_bytes
from spotsafe._storage import ObstoreStorage, PreconditionFailedError, open_storage
from spotsafe.errors import RemoteAccessError


def bare_env(monkeypatch, **env: str) -> None:
    """No AWS_* variable but ``env`` (no credentials file, no config file)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    for name, value in env.items():
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
    bare_env(monkeypatch, AWS_PROFILE="ci", AWS_SHARED_CREDENTIALS_FILE=str(credentials),
             AWS_ENDPOINT_URL=s3_server.endpoint)
    st = open_storage(url)
    assert (st.read_bytes("a.txt"), st.read_bytes("b.txt")) == (b"one", b"two")
    with pytest.raises(ValueError, match="config_kwargs 'signature_version' is not understood"):
        open_storage(url, {"config_kwargs": {"signature_version": "s3v4"}})


def test_no_credentials_and_no_instance_role_is_one_sentence_not_a_network_error(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once closed: the metadata service is absent
    bare_env(monkeypatch, AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_METADATA_ENDPOINT=f"http://127.0.0.1:{closed}")
    with pytest.raises(RemoteAccessError) as e:
        open_storage("s3://bucket/run").listdir()
    assert str(e.value).startswith("No AWS credentials found for s3://bucket/run (the instance metadata service")
    assert "AWS_ACCESS_KEY_ID" in str(e.value) and "\n" not in str(e.value)


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
