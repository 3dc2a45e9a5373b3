"""One storage conformance suite, run against local disk, memory:// and s3:// (a real SeaweedFS).

What every storage must do for checkpoints to be safe: a save is invisible until its
commit, committed bytes read back exactly with the right checksum, a retired checkpoint
vanishes at once, missing things read as missing, and the manager works on top of it.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import spotsafe
from spotsafe._format import MANIFEST, committed_steps, digest_bytes, step_dir, tmp_dir, trash_dir
from spotsafe._storage import FsspecStorage, LocalStorage, open_storage

BACKENDS = ["local", "memory", "s3"]


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    if request.param == "memory":
        return f"memory://conf-{uuid.uuid4().hex[:8]}/run"
    return request.getfixturevalue("s3_url")


@pytest.fixture
def storage(url):
    st = open_storage(url)
    st.make_root()
    return st


@pytest.fixture
def executor():
    with ThreadPoolExecutor(4) as ex:
        yield ex


def payload(n: int, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).numpy().tobytes()


def save_raw(storage, step: int, files: dict[str, bytes], executor, commit: bool = True) -> dict[str, tuple]:
    name = step_dir(step)
    handle = storage.begin(name, tmp_dir(step))
    out = {}
    for fname, data in files.items():
        mv = memoryview(data)
        out[fname] = storage.write_file(handle, fname, [mv[: len(mv) // 2], mv[len(mv) // 2:]], executor)
    if commit:
        storage.commit(handle, name, MANIFEST, b'{"fake": true}')
    return out


def test_the_url_picks_the_storage(url):
    st = open_storage(url)
    assert isinstance(st, LocalStorage if "://" not in url else FsspecStorage)
    assert st.url == url.rstrip("/") or st.url == os.path.abspath(url)


def test_written_bytes_read_back_exactly_with_their_checksum(storage, executor):
    files = {"model.bin": payload(3 << 20, 1), "small.bin": b"abc", "empty.bin": b""}
    written = save_raw(storage, 7, files, executor)
    for fname, data in files.items():
        assert written[fname] == (len(data), digest_bytes(data))
        assert storage.size(f"{step_dir(7)}/{fname}") == len(data)
        assert storage.digest(f"{step_dir(7)}/{fname}") == (len(data), digest_bytes(data))
    bufs = {f: bytearray(len(d)) for f, d in files.items()}
    got = storage.read_files([(f"{step_dir(7)}/{f}", memoryview(b)) for f, b in bufs.items()], executor)
    assert got == [(len(d), digest_bytes(d)) for d in files.values()]
    assert {f: bytes(b) for f, b in bufs.items()} == files
    assert storage.read_bytes(f"{step_dir(7)}/{MANIFEST}") == b'{"fake": true}'


def test_a_save_is_invisible_until_its_commit(storage, executor):
    save_raw(storage, 1, {"a.bin": b"1" * 100}, executor)
    name = step_dir(2)
    handle = storage.begin(name, tmp_dir(2))
    storage.write_file(handle, "a.bin", [memoryview(b"2" * 100)], executor)
    assert committed_steps(storage) == [1]
    storage.commit(handle, name, MANIFEST, b"{}")
    assert committed_steps(storage) == [1, 2]


def test_an_aborted_save_leaves_nothing(storage, executor):
    handle = storage.begin(step_dir(3), tmp_dir(3))
    storage.write_file(handle, "a.bin", [memoryview(b"x" * 1000)], executor)
    storage.abort(handle)
    assert storage.listdir() == [] and committed_steps(storage) == []


def test_a_retired_checkpoint_vanishes_at_once_and_is_removed_later(storage, executor):
    save_raw(storage, 1, {"a.bin": b"1" * 10}, executor)
    save_raw(storage, 2, {"a.bin": b"2" * 10}, executor)
    gone = storage.retire(step_dir(1), trash_dir(1))
    assert committed_steps(storage) == [2]
    storage.remove(gone, strict=True)
    assert storage.listdir() == [step_dir(2)]
    assert storage.read_bytes(f"{step_dir(2)}/a.bin") == b"2" * 10


def test_missing_things_read_as_missing(storage):
    assert storage.size("step-000000000001/model.bin") is None
    assert storage.listdir("nothing-here") == []
    assert committed_steps(storage) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("step-000000000001/manifest.json")
    storage.remove("nothing-here")  # removing what is not there is fine


def test_the_manager_round_trips_and_rejects_a_flipped_byte(url):
    model = torch.nn.Linear(64, 32)
    with spotsafe.CheckpointManager(url, keep_last=2) as mgr:
        for step in (1, 2, 3):
            with torch.no_grad():
                model.weight.add_(1.0)
            mgr.save(step, {"model": model})
            if step == 2:
                expected = model.weight.detach().clone()
        mgr.wait()
        assert [c.step for c in mgr.checkpoints()] == [2, 3]
        st = mgr.storage
        rel = f"{step_dir(3)}/model.bin"
        data = bytearray(st.read_bytes(rel))
        data[100] ^= 1
        if isinstance(st, LocalStorage):
            st.path(rel).write_bytes(bytes(data))
        else:
            st.fs.pipe_file(st._p(rel), bytes(data))
        fresh = torch.nn.Linear(64, 32)
        with pytest.warns(spotsafe.CheckpointSkippedWarning, match=r"step-000000000003 .* fails its checksum"):
            assert mgr.restore({"model": fresh}) == 2
    assert torch.equal(fresh.weight, expected)
