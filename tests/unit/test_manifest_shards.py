"""The shards index of a multi-rank checkpoint: what the validator accepts, what it refuses,
and what a single process, `spotsafe inspect` and `spotsafe verify` make of such a checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import run_cli

from spotsafe import CheckpointManager
from spotsafe._format import FileEntry, Manifest, ManifestError, digest_bytes, parse_manifest
from spotsafe.errors import StateMismatchError

SHARDS = "__shards.rank-00000.bin"


def index() -> dict:
    """Rank 0 wrote a 4x3 float32 weight (48 bytes) and a pickled value; rank 1 a 2-element chunk."""
    return {"components": {"model": "module", "optimizer": "optimizer"},
            "entries": {
                "model.weight": {"dtype": "float32", "size": [4, 3], "chunks": [
                    {"offsets": [0, 0], "sizes": [4, 3], "file": SHARDS, "offset": 0, "length": 48}]},
                "model.bias": {"dtype": "float32", "size": [4], "chunks": [
                    {"offsets": [0], "sizes": [2], "file": SHARDS, "offset": 64, "length": 8},
                    {"offsets": [2], "sizes": [2], "file": "__shards.rank-00001.bin", "offset": 0, "length": 8}]},
                "optimizer.param_groups": {"bytes": {"file": SHARDS, "offset": 128, "length": 20}}}}


def manifest(shards: dict | None, world: int = 2) -> Manifest:
    return Manifest(step=7, world_size=world, components={}, shards=shards,
                    files={SHARDS: FileEntry(size=148, checksum="0" * 16, rank=0),
                           "__shards.rank-00001.bin": FileEntry(size=8, checksum="0" * 16, rank=1)})


def test_the_manifest_bytes_are_json_dumps_of_its_body_whether_the_index_was_written_before_or_not():
    import json

    from spotsafe._format._manifest import _canonical

    shards = index()
    for change in (None, None, "moved", None, "in place"):  # a new index, the same again, another one
        if change == "moved":
            shards = copy.deepcopy(shards)
            shards["entries"]["model.weight"]["chunks"][0]["offset"] = 80
        elif change == "in place":  # the same object, changed: its cached JSON must not be reused
            shards["entries"]["model.bias"]["chunks"][0]["offset"] = 72
        raw = manifest(shards).to_json_bytes()
        body = json.loads(raw)
        claimed = body.pop("manifest_checksum")
        assert claimed == digest_bytes(_canonical(body))
        assert raw == json.dumps(dict(body, manifest_checksum=claimed)).encode()
        assert parse_manifest(raw).shards == shards


def test_a_valid_index_round_trips():
    m = parse_manifest(manifest(index()).to_json_bytes())
    assert m.shards == index() and m.world_size == 2
    assert m.files["__shards.rank-00001.bin"].rank == 1


def broken(path: list, value) -> dict:
    shards = copy.deepcopy(index())
    node = shards
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return shards


CHUNK = ["entries", "model.weight", "chunks", 0]


@pytest.mark.parametrize(("path", "value", "words"), [
    ([*CHUNK, "length"], 47, "whose length is not 12 elements of float32"),
    ([*CHUNK, "offset"], 120, "lies outside its file"),
    ([*CHUNK, "file"], "other.bin", "points into 'other.bin', which is not listed"),
    ([*CHUNK, "offsets"], [1, 0], "has a chunk outside its size"),
    (["entries", "model.weight", "dtype"], "float128", "has dtype 'float128'"),
    (["entries", "optimizer.param_groups", "bytes", "length"], 10**9, "lies outside its file"),
    (["components", "model"], "tensor", "names its components badly"),
])
def test_a_malformed_index_is_refused_with_the_defect_named(path, value, words):
    raw = manifest(broken(path, value)).to_json_bytes()
    with pytest.raises(ManifestError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_manifest(raw)


def test_an_index_of_one_rank_is_a_torchrun_job_at_one_rank_and_valid():
    shards = index()
    del shards["entries"]["model.bias"]  # rank 0's file only
    one = Manifest(step=7, world_size=1, components={}, shards=shards,
                   files={SHARDS: FileEntry(size=148, checksum="0" * 16, rank=0)})
    assert parse_manifest(one.to_json_bytes()).shards == shards  # an elastic job that shrank to one rank
    two_ranks_file = Manifest(step=7, world_size=1, components={}, shards=index(),
                              files={SHARDS: FileEntry(size=148, checksum="0" * 16, rank=0),
                                     "__shards.rank-00001.bin": FileEntry(size=8, checksum="0" * 16, rank=1)})
    with pytest.raises(ManifestError):  # a rank the world size does not have
        parse_manifest(two_ranks_file.to_json_bytes())


def write_checkpoint(root, m: Manifest, data: dict[str, bytes]) -> None:
    d = root / "step-000000000007"
    d.mkdir(parents=True)
    files = {}
    for name, blob in data.items():
        (d / name).write_bytes(blob)
        files[name] = FileEntry(size=len(blob), checksum=digest_bytes(blob), rank=m.files[name].rank)
    (d / "manifest.json").write_bytes(Manifest(step=m.step, world_size=m.world_size, components={}, files=files,
                                               shards=m.shards).to_json_bytes())


def test_a_single_process_reads_a_multi_rank_checkpoint_only_into_the_same_modules_and_the_cli_reads_it(tmp_path):
    root = tmp_path / "run"
    weight = torch.arange(12, dtype=torch.float32).numpy().tobytes()
    data = {SHARDS: weight + bytes(16) + bytes(8) + bytes(56) + bytes(20), "__shards.rank-00001.bin": bytes(8)}
    write_checkpoint(root, manifest(index()), data)
    model = torch.nn.Linear(3, 4)
    before = model.weight.detach().clone()
    with pytest.raises(StateMismatchError, match=r"holds modules and optimizers \['model', 'optimizer'\], and the "
                                                 r"state has \['model'\]; make the state match"):
        CheckpointManager(root).restore({"model": model})
    assert torch.equal(model.weight, before)  # nothing loaded
    r = run_cli("inspect", str(root))
    assert r.returncode == 0, r.stderr
    assert "sharded through DCP" in r.stdout and "optimizer" in r.stdout and "world size 2" in r.stdout
    assert run_cli("verify", str(root)).returncode == 0
    (root / "step-000000000007" / "__shards.rank-00001.bin").write_bytes(b"\x01" * 8)  # one rank's file flipped
    bad = run_cli("verify", str(root))
    assert bad.returncode != 0 and "__shards.rank-00001.bin" in bad.stdout + bad.stderr
