"""One storage conformance suite, run against local disk, memory:// and s3:// (a real SeaweedFS).

What every storage must do for checkpoints to be safe: a save is invisible until its
commit, committed bytes read back exactly with the right checksum, a retired checkpoint
vanishes at once, missing things read as missing, the call order of a write is enforced,
a commit strategy passed in is the one used, and the manager works on top of it.

Only the protocol (:class:`spotsafe._storage.Storage`) is used here: each backend supplies a
URL, nothing else.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import spotsafe
from spotsafe._engine._pipeline import persist, stage
from spotsafe._format import MANIFEST, committed_steps, digest_bytes, step_dir, tmp_dir, trash_dir
from spotsafe._storage import CommitStrategy, SaveNotBegunError, Storage, open_storage

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


def test_every_store_satisfies_the_protocol(url):
    st = open_storage(url)
    assert isinstance(st, Storage)
    assert isinstance(st.commit_strategy, CommitStrategy)
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
    with spotsafe.CheckpointManager(url, keep=2) as mgr:
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
        st.put_bytes(rel, bytes(data))
        fresh = torch.nn.Linear(64, 32)
        with pytest.warns(spotsafe.CheckpointSkippedWarning, match=r"step-000000000003 .* fails its checksum"):
            assert mgr.restore({"model": fresh}) == 2
    assert torch.equal(fresh.weight, expected)


# -- the seam: the call order of a write, and a commit strategy chosen by the caller ----------------

@pytest.fixture
def hasher():
    with ThreadPoolExecutor(1) as ex:  # write_file hashes a stream: one worker, in order
        yield ex


class Recording:
    """A commit strategy that records each call and delegates to the store's own."""

    def __init__(self, inner: CommitStrategy) -> None:
        self.inner = inner
        self.calls: list[tuple] = []

    def commit(self, storage, handle, final_name, manifest_name, manifest) -> None:
        self.calls.append((storage, final_name, manifest_name, manifest))
        self.inner.commit(storage, handle, final_name, manifest_name, manifest)


class Crash(BaseException):
    """The process dies here: nothing on the way handles it, nothing is aborted."""


class CrashBeforeCommit:
    """A commit strategy whose process dies just before the atomic step."""

    def commit(self, storage, handle, final_name, manifest_name, manifest) -> None:
        raise Crash


def save_state(storage, step: int, state: dict, hasher) -> bytes:
    """A real checkpoint of ``state`` written and committed through the protocol alone; its manifest."""
    staged = stage(step, state, rng=True)
    handle = storage.begin(step_dir(step), tmp_dir(step))
    raw = persist(staged, storage, handle, hasher).to_json_bytes()
    storage.commit(handle, step_dir(step), MANIFEST, raw)
    return raw


def test_a_commit_strategy_passed_in_is_the_one_used_and_its_checkpoint_restores_bit_exactly(url, hasher):
    rec = Recording(open_storage(url).commit_strategy)
    st = open_storage(url, commit=rec)
    assert st.commit_strategy is rec
    st.make_root()
    model = torch.nn.Linear(32, 16)
    raw = save_state(st, 5, {"model": model}, hasher)
    assert rec.calls == [(st, step_dir(5), MANIFEST, raw)]
    assert committed_steps(open_storage(url)) == [5]
    fresh = torch.nn.Linear(32, 16)
    with spotsafe.CheckpointManager(url, read_only=True) as mgr:
        assert mgr.restore({"model": fresh}) == 5
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)


def test_a_manager_and_a_run_handed_an_open_store_commit_through_its_strategy(url, tmp_path):
    """The caller chooses the strategy: ``open_storage(root, commit=...)`` handed to a manager
    (and that manager to a Run) commits every save through it, and the steps restore exactly."""
    rec = Recording(open_storage(url).commit_strategy)
    model = torch.nn.Linear(8, 4)
    with spotsafe.CheckpointManager(open_storage(url, commit=rec), keep=5, async_save=False) as mgr:
        mgr.save(1, {"model": model})
    with spotsafe.Run(None, {"model": model}, save_every=1, notices=None,
                      manager=spotsafe.CheckpointManager(open_storage(url, commit=rec), keep=5)) as run:
        for _ in run.steps(3):
            with torch.no_grad():
                model.weight.add_(1.0)
    assert [c[1] for c in rec.calls] == [step_dir(1), step_dir(2), step_dir(3)]
    assert committed_steps(open_storage(url)) == [1, 2, 3]
    fresh = torch.nn.Linear(8, 4)
    with spotsafe.CheckpointManager(url, read_only=True) as mgr:
        assert mgr.restore({"model": fresh}) == 3
    assert torch.equal(fresh.weight, model.weight)
    with pytest.raises(ValueError, match="open store"):
        open_storage(open_storage(url), commit=rec)


def test_a_commit_without_its_begin_is_refused_and_changes_nothing(storage, executor):
    with pytest.raises(SaveNotBegunError, match=r"begin\(\)"):
        storage.commit(step_dir(1), step_dir(1), MANIFEST, b"{}")
    assert committed_steps(storage) == [] and storage.listdir() == []
    name = step_dir(2)
    handle = storage.begin(name, tmp_dir(2))
    storage.write_file(handle, "a.bin", [memoryview(b"2" * 10)], executor)
    storage.commit(handle, name, MANIFEST, b'{"first": true}')
    with pytest.raises(SaveNotBegunError):
        storage.commit(handle, name, MANIFEST, b'{"second": true}')  # the same save twice
    aborted = storage.begin(step_dir(3), tmp_dir(3))
    storage.abort(aborted)
    with pytest.raises(SaveNotBegunError):
        storage.commit(aborted, step_dir(3), MANIFEST, b"{}")  # an aborted save
    assert committed_steps(storage) == [2] and storage.listdir() == [name]
    assert storage.read_bytes(f"{name}/{MANIFEST}") == b'{"first": true}'


def test_a_crash_before_the_commit_point_leaves_no_committed_step(url, hasher):
    model = torch.nn.Linear(32, 16)
    st = open_storage(url)
    st.make_root()
    save_state(st, 1, {"model": model}, hasher)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(Crash):
        save_state(open_storage(url, commit=CrashBeforeCommit()), 2, {"model": model}, hasher)
    reader = open_storage(url)
    assert committed_steps(reader) == [1]
    assert {n for n in reader.listdir() if n.startswith("step-")} - {step_dir(1)}  # step 2's files are there
    fresh = torch.nn.Linear(32, 16)
    with spotsafe.CheckpointManager(url) as mgr:  # the next writer cleans up and resumes from step 1
        assert [n for n in reader.listdir() if n.startswith("step-")] == [step_dir(1)]
        assert mgr.restore({"model": fresh}) == 1
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())
