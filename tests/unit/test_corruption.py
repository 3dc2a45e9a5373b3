"""Damaged checkpoints are detected, named and skipped; never loaded."""

import json
import os
import pickle
import warnings

import pytest
import torch

import spotsafe
from spotsafe.errors import CheckpointSkippedWarning

NEW = "step-000000000002"


@pytest.fixture
def two_checkpoints(root):
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        for s in (1, 2):
            mgr.save(s, {"model": {"w": torch.full((64, 64), float(s))}, "opt": {"m": torch.full((10,), s * 2.0)}})
    return root


def flip_byte(path, at=100):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def delete(path):
    path.unlink()


def garbage_manifest(path):
    (path.parent / "manifest.json").write_bytes(b"\x00{not json")


def edit_manifest_value(path):
    # still valid JSON, still parses: the manifest's own checksum catches it
    m = path.parent / "manifest.json"
    body = json.loads(m.read_text())
    body["metadata"] = {"tampered": True}
    m.write_text(json.dumps(body))


CASES = {
    "flipped byte": (flip_byte, r"model.bin fails its checksum"),
    "truncated file": (truncate, r"model.bin is \d+ bytes, manifest says \d+"),
    "deleted file": (delete, r"model.bin is missing"),
    "garbage manifest": (garbage_manifest, r"manifest.json is not valid JSON"),
    "edited manifest": (edit_manifest_value, r"manifest.json fails its own checksum"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damage_is_detected_named_and_skipped(two_checkpoints, case):
    damage, reason = CASES[case]
    damage(two_checkpoints / NEW / "model.bin")
    state = {"model": None, "opt": None}
    with spotsafe.CheckpointManager(two_checkpoints) as mgr:
        with pytest.warns(CheckpointSkippedWarning, match=rf"{NEW} .* is invalid: {reason}"):
            assert mgr.restore(state) == 1
        infos = {c.step: c for c in mgr.checkpoints()}
    assert torch.equal(state["model"]["w"], torch.full((64, 64), 1.0))
    assert infos[1].valid and not infos[2].valid
    assert infos[2].reason and __import__("re").search(reason, infos[2].reason)


def test_flipped_byte_in_the_tensor_region_of_a_valid_looking_file(two_checkpoints):
    # a bit flip deep inside the data, where only the checksum can see it
    flip_byte(two_checkpoints / NEW / "opt.bin", at=8)
    with spotsafe.CheckpointManager(two_checkpoints) as mgr:
        with pytest.warns(CheckpointSkippedWarning, match="opt.bin fails its checksum"):
            assert mgr.restore({"model": None, "opt": None}) == 1


def test_no_valid_checkpoint_raises_unless_fresh_start_allowed(two_checkpoints):
    for s in ("step-000000000001", NEW):
        truncate(two_checkpoints / s / "model.bin")
    with spotsafe.CheckpointManager(two_checkpoints) as mgr:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointSkippedWarning)
            with pytest.raises(spotsafe.CorruptCheckpointError, match="all 2 failed verification"):
                mgr.restore({"model": None, "opt": None})
            assert mgr.restore({"model": None, "opt": None}, fresh_if_invalid=True) is None


def test_asking_for_a_corrupt_step_raises_instead_of_falling_back(two_checkpoints):
    flip_byte(two_checkpoints / NEW / "model.bin")
    with spotsafe.CheckpointManager(two_checkpoints) as mgr:
        with pytest.raises(spotsafe.CorruptCheckpointError, match=f"{NEW} .* is invalid: model.bin fails"):
            mgr.restore({"model": None, "opt": None}, step=2)


def test_hostile_pickle_is_never_executed(two_checkpoints, tmp_path):
    """A file holding a pickle that would run code, listed with correct checksums."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps({"w": Evil()})
    ckpt = two_checkpoints / NEW
    (ckpt / "model.bin").write_bytes(payload)
    # an attacker who can write files can also rewrite the manifest consistently
    body = json.loads((ckpt / "manifest.json").read_text())
    from spotsafe._format import digest_bytes
    from spotsafe._format._manifest import _canonical

    body.pop("manifest_checksum")
    body["files"]["model.bin"] = {"size": len(payload), "checksum": digest_bytes(payload), "rank": 0}
    body["components"]["model"]["tensors"][0].update(offset=0, nbytes=len(payload) - len(payload) % 4,
                                                     shape=[(len(payload) - len(payload) % 4) // 4])
    body["manifest_checksum"] = digest_bytes(_canonical(body))
    (ckpt / "manifest.json").write_text(json.dumps(body))

    state = {"model": None, "opt": None}
    with spotsafe.CheckpointManager(two_checkpoints) as mgr:
        assert mgr.restore(state) == 2  # loads the bytes as plain numbers ...
    assert not marker.exists()  # ... and nothing ran
    assert state["model"]["w"].dtype == torch.float32


def test_torch_save_file_passed_off_as_a_checkpoint_is_refused(two_checkpoints, tmp_path):
    marker = tmp_path / "pwned2"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = two_checkpoints / NEW
    torch.save({"w": Evil()}, ckpt / "model.bin")
    with spotsafe.CheckpointManager(two_checkpoints) as mgr:
        with pytest.warns(CheckpointSkippedWarning, match="model.bin"):
            assert mgr.restore({"model": None, "opt": None}) == 1
    assert not marker.exists()


def test_manifest_naming_an_unknown_dtype_is_invalid(two_checkpoints):
    ckpt = two_checkpoints / NEW
    from spotsafe._format import digest_bytes
    from spotsafe._format._manifest import _canonical

    body = json.loads((ckpt / "manifest.json").read_text())
    body.pop("manifest_checksum")
    body["components"]["model"]["tensors"][0]["dtype"] = "__class__"
    body["manifest_checksum"] = digest_bytes(_canonical(body))
    (ckpt / "manifest.json").write_text(json.dumps(body))
    with spotsafe.CheckpointManager(two_checkpoints) as mgr:
        with pytest.warns(CheckpointSkippedWarning, match="unknown tensor dtype '__class__'"):
            assert mgr.restore({"model": None, "opt": None}) == 1


def test_saving_over_a_corrupt_checkpoint_of_the_same_step_replaces_it(two_checkpoints):
    flip_byte(two_checkpoints / NEW / "model.bin")  # sizes still match: only the checksum can tell
    new_state = {"model": {"w": torch.full((64, 64), 9.0)}, "opt": {"m": torch.zeros(10)}}
    with spotsafe.CheckpointManager(two_checkpoints, keep=5) as mgr:
        assert not mgr.save(2, new_state).skipped
        state = {"model": None, "opt": None}
        assert mgr.restore(state) == 2
    assert torch.equal(state["model"]["w"], torch.full((64, 64), 9.0))
    assert sorted(p.name for p in two_checkpoints.iterdir()) == [".spotsafe-writer.lock", "step-000000000001", NEW]
