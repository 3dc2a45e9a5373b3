"""One validator: a malformed checkpoint is refused by `spotsafe verify` and skipped by restore alike.

Every case below is a real run root with two checkpoints, step 1 valid and step 2 damaged
on disk as an attacker or an unlucky operator would (the manifest's own checksum
recomputed, so that only the validator can tell). For each, `spotsafe verify` exits 1 with
one line and no traceback, and restore skips step 2 with a warning and loads step 1.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import RAW, resign_manifest

import spotsafe
from spotsafe._format import digest_bytes
from spotsafe._format._manifest import _canonical
from spotsafe.cli._main import main
from spotsafe.errors import CheckpointSkippedWarning

OLD, NEW = "step-000000000001", "step-000000000002"


def make_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": model, "opt": opt,
            "extra": {"count": np.int64(5 + seed), "arr": np.arange(4.0) * seed, "t": (1, 2.5)}}


@pytest.fixture
def two(root):
    """Step 1 and step 2 saved; returns (root, the parameters of step 1)."""
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        s1 = make_state(1)
        mgr.save(1, s1, metadata={"loss": 0.5})
        mgr.save(2, make_state(2), metadata={"loss": 0.25})
    return root, {k: v.clone() for k, v in s1["model"].state_dict().items()}


rewrite = resign_manifest  # edit a manifest, re-sign it; raw text where the body holds RAW


def comp(body, name):
    return body["components"][name]


def set_meta(body):
    body["metadata"]["x"] = RAW


def tensor(body, name, i, **kw):
    comp(body, name)["tensors"][i].update(kw)


def extra_tree(node):
    def mutate(body):
        comp(body, "extra")["tree"]["count"] = node
    return mutate


CASES = {
    # the JSON itself
    "NaN literal": (set_meta, "NaN", r"literal NaN"),
    "Infinity literal": (set_meta, "-Infinity", r"literal -Infinity"),
    "5000-digit number": (set_meta, "9" * 5000, r"5000-digit number"),
    "1e400": (set_meta, "1e400", r"overflows a float"),
    "nesting 100000 deep": (set_meta, "[" * 100_000 + "]" * 100_000, r"nested too deeply"),
    "nesting 500 deep": (set_meta, "[" * 500 + "]" * 500, r"nested more than 200 levels"),
    "not UTF-8": (set_meta, '"\xff"', None),  # written as latin-1 below
    # fields
    "huge file size": (lambda b: b["files"]["model.bin"].update(size=10**15), None, r"model.bin.*16 TiB"),
    "negative file size": (lambda b: b["files"]["model.bin"].update(size=-1), None, r"model.bin"),
    "created far in the future": (lambda b: b.update(created=1e300), None, r"created = 1e\+300"),
    "step as a string": (lambda b: b.update(step="2"), None, r"step = '2'"),
    "unsafe file name": (lambda b: b["files"].update({"../x": b["files"]["model.bin"]}), None, r"unsafe file name"),
    "hidden file name (only DCP's .metadata is listed)": (
        lambda b: b["files"].update({".metadata.tmp": b["files"]["model.bin"]}), None, r"unsafe file name"),
    "components not a table": (lambda b: b.update(components=[1]), None, r"no components table"),
    "stateful tree not a dict": (lambda b: comp(b, "model").update(tree=[1]), None, r"is not a state dict"),
    # tensor tables
    "unknown dtype": (lambda b: tensor(b, "model", 0, dtype="float128"), None, r"unknown tensor dtype 'float128'"),
    "object array dtype": (lambda b: tensor(b, "extra", 0, dtype="|O"), None, r"unsupported array dtype '\|O'"),
    "10^12 elements in 48 bytes": (lambda b: tensor(b, "model", 0, shape=[10**12]), None,
                                   r"is 48 bytes, but 1000000000000 elements"),
    "nbytes not a multiple of the item size": (lambda b: tensor(b, "model", 0, nbytes=47), None,
                                               r"47 bytes, but 12 elements of float32 take 48"),
    "negative dimension": (lambda b: tensor(b, "model", 0, shape=[-3, -4]), None, r"non-negative integers"),
    "unaligned offset": (lambda b: tensor(b, "model", 1, offset=52), None, r"offset 52.*multiples of 64"),
    "overlapping tensors": (lambda b: tensor(b, "model", 1, offset=0), None, r"overlap in 'model.bin'"),
    "tensor past the end of its file": (lambda b: tensor(b, "model", 1, offset=128), None, r"outside 'model.bin'"),
    "unknown device": (lambda b: tensor(b, "model", 0, device="npu:0"), None, r"unknown device 'npu:0'"),
    # state trees
    "int64 scalar out of range": (extra_tree({"$np": "<i8", "v": 2**63}), None, r"out of range for its dtype"),
    "uint8 scalar negative": (extra_tree({"$np": "|u1", "v": -1}), None, r"out of range for its dtype"),
    "float16 scalar overflows": (extra_tree({"$np": "<f2", "v": 1e10}), None, r"out of range for its dtype"),
    "tensor index out of range": (extra_tree({"$tensor": 99}), None, r"refers to tensor 99"),
    "ndarray index names a tensor": (lambda b: comp(b, "model")["tree"]["$dict"][0].__setitem__(1, {"$ndarray": 0}),
                                     None, r"refers to ndarray 0"),
    "tag with extra keys": (extra_tree({"$tensor": 0, "x": 1}), None, r"malformed node"),
    "unknown tag": (extra_tree({"$bogus": 1}), None, r"malformed node"),
    "tuple not a list": (extra_tree({"$tuple": 5}), None, r"malformed tuple"),
    "dict pair of one": (extra_tree({"$dict": [[1]]}), None, r"malformed dict"),
    "dict as a dict key": (extra_tree({"$dict": [[{"a": 1}, 2]]}), None, r"dict as a dict key"),
    "metadata on a plain dict": (extra_tree({"$dict": [], "meta": {}}), None, r"metadata on a plain dict"),
    "float tag not a special": (extra_tree({"$float": "1e999"}), None, r"malformed float"),
    "dtype tag unknown": (extra_tree({"$dtype": "__class__"}), None, r"unknown dtype '__class__'"),
    "device tag unknown": (extra_tree({"$device": "npu:0"}), None, r"unknown device"),
}


def damage(root, case):
    mutate, raw, _ = CASES[case]
    rewrite(root / NEW, mutate, raw)
    if case == "not UTF-8":
        m = root / NEW / "manifest.json"
        m.write_bytes(m.read_bytes().replace(b'"\xc3\xbf"', b'"\xff"'))


def reason_of(case):
    return CASES[case][2] or r"not UTF-8"


@pytest.mark.parametrize("case", list(CASES))
def test_verify_and_restore_agree_on_a_malformed_manifest(two, case):
    root, old_params = two
    damage(root, case)

    result = CliRunner().invoke(main, ["verify", str(root), "--step", "2"])
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    assert lines[0].startswith(f"INVALID {NEW}") and re.search(reason_of(case), lines[0]), lines
    assert lines[1:] == [f"Error: 1 of 1 checkpoint(s) in {root} are invalid; restore skips them."]
    assert CliRunner().invoke(main, ["verify", str(root), "--step", "1"]).exit_code == 0

    state = make_state(7)
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        with pytest.warns(CheckpointSkippedWarning, match=rf"{NEW} .* is invalid: .*{reason_of(case)}") as rec:
            assert mgr.restore(state) == 1
        assert len([w for w in rec if issubclass(w.category, CheckpointSkippedWarning)]) == 1
        assert "\n" not in str(rec[0].message)
    for k, v in state["model"].state_dict().items():
        assert torch.equal(v, old_params[k]), k
    assert int(state["extra"]["count"]) == 6 and state["extra"]["arr"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_ls_and_inspect_use_the_same_validator(two):
    root, _ = two
    damage(root, "10^12 elements in 48 bytes")
    rows = [json.loads(x) for x in CliRunner().invoke(main, ["ls", str(root), "--json"]).output.splitlines()]
    assert [(r["step"], r["valid"]) for r in rows] == [(1, True), (2, False)]
    assert "1000000000000 elements" in rows[1]["reason"]
    out = CliRunner().invoke(main, ["inspect", str(root), "--step", "2"])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.strip().splitlines() == [
        f"Error: Checkpoint {NEW} in {root} is unreadable: "
        + rows[1]["reason"] + "."]


def test_a_mangled_optimizer_tree_is_skipped(two):
    """Well-formed for the format, malformed for an optimizer: restore skips it, it never raises."""
    root, old_params = two

    def mangle(body):
        comp(body, "opt")["tree"]["param_groups"] = [1]
    rewrite(root / NEW, mangle)
    state = make_state(7)
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        with pytest.warns(CheckpointSkippedWarning, match=NEW):
            assert mgr.restore(state) == 1
    assert torch.equal(state["model"].weight, old_params["weight"])


def test_a_file_too_large_for_memory_is_skipped_before_it_is_allocated(two):
    """A sparse file whose size matches its (re-signed) manifest, larger than this machine's memory."""
    from spotsafe._engine._pipeline import available_memory
    from spotsafe._format._schema import MAX_FILE_BYTES

    root, old_params = two
    avail = available_memory()
    size = None if avail is None else (avail * 2 // 64 + 1) * 64
    if size is None or size > MAX_FILE_BYTES:
        pytest.skip("this machine does not say how much memory it has, or has more than a file may hold")
    with open(root / NEW / "model.bin", "r+b") as f:
        f.truncate(size)  # sparse: takes no disk
    rewrite(root / NEW, lambda b: b["files"]["model.bin"].update(size=size))
    state = make_state(7)
    t0 = time.monotonic()
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        with pytest.warns(CheckpointSkippedWarning, match=rf"{NEW} .* is invalid: .*GiB of memory is available"):
            assert mgr.restore(state) == 1
    assert time.monotonic() - t0 < 20  # nothing of the huge file was read
    assert torch.equal(state["model"].weight, old_params["weight"])


def test_the_writer_refuses_what_the_reader_would_refuse(root):
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        deep: list = []
        node = deep
        for _ in range(60):
            node.append([])
            node = node[0]
        for bad, what in ((deep, "nested more than"), (np.array([1.0], dtype=np.longdouble), "long double"),
                          (torch.device("npu", 0) if hasattr(torch, "npu") else 10**120, "digits")):
            with pytest.raises(spotsafe.UnsupportedStateError, match=what):
                mgr.save(1, {"v": bad})
        mgr.save(1, {"v": {"a": np.int64(-2**63), "b": np.float16(65504), "c": torch.zeros(0, 3)}})
        state = {"v": None}
        assert mgr.restore(state) == 1
    assert state["v"]["a"] == -2**63 and state["v"]["b"] == np.float16(65504) and state["v"]["c"].shape == (0, 3)
    assert state["v"]["a"].dtype == np.int64 and state["v"]["b"].dtype == np.float16  # the extremes, exactly


class _Holder:
    """A stateful object whose state_dict() returns whatever it was given."""

    def __init__(self, sd):
        self.sd = sd

    def state_dict(self):
        return self.sd

    def load_state_dict(self, sd):
        self.sd = sd


@pytest.mark.parametrize("bad, what", [
    ({"h": _Holder([1, 2])}, r"state\['h'\]\.state_dict\(\) returned a list; return a dict"),
    ({"h": _Holder((1, 2))}, r"returned a tuple"),
    ({"v": torch.zeros([1] * 65)}, r"has 65 dimensions, more than the 64"),
])
def test_the_writer_refuses_a_state_the_validator_would_refuse(root, bad, what):
    """Before, each of these saved (and pruned older checkpoints) as a checkpoint restore then skipped."""
    with spotsafe.CheckpointManager(root, rng=False, keep=1) as mgr:
        mgr.save(1, {"v": 1.5, "h": _Holder({"k": 2})})
        with pytest.raises(spotsafe.UnsupportedStateError, match=what):
            mgr.save(2, bad)
        state = {"v": None, "h": _Holder(None)}
        assert mgr.restore(state) == 1
    assert state["v"] == 1.5 and state["h"].sd == {"k": 2}
    assert sorted(p.name for p in root.glob("step-*")) == [OLD]


def test_a_manifest_too_large_to_read_is_never_committed(root):
    """A state whose manifest would pass 128 MiB (a long string in a plain value): the save fails,
    naming the cause, and the older checkpoint stays the newest valid one."""
    from spotsafe._format import ComponentEntry, Manifest
    from spotsafe._format._schema import MAX_JSON_NODES, MAX_MANIFEST_BYTES

    with spotsafe.CheckpointManager(root, rng=False, keep=1) as mgr:
        mgr.save(1, {"v": "small"})
        with pytest.raises(spotsafe.SpotsafeError, match=rf"manifest of step 2 cannot be written: it would be \d+ "
                                                         rf"bytes, and at most {MAX_MANIFEST_BYTES} are read"):
            mgr.save(2, {"v": "x" * MAX_MANIFEST_BYTES})
            mgr.wait()
        state = {"v": None}
        assert mgr.restore(state) == 1 and state["v"] == "small"
    assert sorted(p.name for p in root.glob("step-*")) == [OLD]
    # too many values, in fewer bytes: refused the same way
    m = Manifest(step=3, files={},
                 components={"v": ComponentEntry(kind="value", type="builtins.list", tree=[0] * MAX_JSON_NODES)})
    with pytest.raises(spotsafe.UnsupportedStateError, match=rf"holds more than {MAX_JSON_NODES} values"):
        m.to_json_bytes()


def test_metadata_that_looks_like_a_tag_stays_a_dict(two):
    """A re-signed manifest whose whole metadata is {"$float": "nan"}: still a dict after decoding."""
    from spotsafe._format import read_manifest
    from spotsafe._storage import LocalStorage

    root, _ = two
    rewrite(root / NEW, lambda b: b.update(metadata={"$float": "nan"}))
    assert read_manifest(LocalStorage(root), NEW).metadata == {"$float": "nan"}


# -- links, FIFOs and devices ----------------------------------------------------------
def _bounded(fn, seconds=20.0):
    """Run ``fn`` on a thread; fail (instead of hanging the suite) if it blocks."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for more than {seconds}s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _secret(tmp_path, size):
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(size))
    secret.chmod(0o600)
    return secret


LINKS = {
    "component file links outside": r"model.bin is a symbolic link",
    "step dir is a link": rf"{NEW} is a link or not a directory",
    "component file is a FIFO": r"model.bin is not a regular file",
    "manifest is a FIFO": r"manifest.json is not a regular file",
    "step dir is a FIFO": rf"{NEW} is a link or not a directory",
}


@pytest.mark.parametrize("case", list(LINKS))
def test_links_fifos_are_never_followed_or_read(two, tmp_path, case):
    root, old_params = two
    ckpt = root / NEW
    if case == "component file links outside":
        # the secret has the right size and checksum: only the link itself may refuse it
        data = (ckpt / "model.bin").read_bytes()
        secret = _secret(tmp_path, 0)
        secret.write_bytes(data)
        (ckpt / "model.bin").unlink()
        (ckpt / "model.bin").symlink_to(secret)
    elif case == "step dir is a link":
        outside = tmp_path / "elsewhere"
        ckpt.rename(outside)  # a complete, valid checkpoint outside the root
        ckpt.symlink_to(outside, target_is_directory=True)
    elif case == "step dir is a FIFO":
        import shutil

        shutil.rmtree(ckpt)
        os.mkfifo(ckpt)
    else:
        victim = ckpt / ("model.bin" if "component" in case else "manifest.json")
        victim.unlink()
        os.mkfifo(victim)

    result = _bounded(lambda: CliRunner().invoke(main, ["verify", str(root)]))
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = [x for x in result.output.splitlines() if NEW in x][0]
    assert line.startswith(f"INVALID {NEW}") and re.search(LINKS[case], line), result.output
    assert "ok      step-000000000001" in result.output

    state = make_state(7)

    def restore():
        with spotsafe.CheckpointManager(root, keep=5) as mgr:
            with pytest.warns(CheckpointSkippedWarning, match=LINKS[case]):
                return mgr.restore(state)
    assert _bounded(restore) == 1
    assert torch.equal(state["model"].weight, old_params["weight"])


def test_a_link_is_never_uploaded_or_listed_as_valid(two, tmp_path, caplog):
    """The listing of the format layer reports a linked step invalid and never reads through it;
    the uploader, which checks the newest local step at start, refuses it and puts nothing up."""
    import logging
    import uuid

    from spotsafe._storage import open_storage

    root, _ = two
    outside = tmp_path / "outside"
    (root / NEW).rename(outside)  # a complete, valid checkpoint: only the link is wrong
    (root / NEW).symlink_to(outside, target_is_directory=True)
    url = f"memory://links-{uuid.uuid4().hex[:8]}/run"
    caplog.set_level(logging.INFO)
    with spotsafe.CheckpointManager(root, remote=url, keep=5) as mgr:
        infos = {i.step: i for i in mgr.checkpoints()}
        assert not mgr.wait_uploaded(2, timeout=30) and mgr.remote_watermark is None
    assert infos[1].valid and not infos[2].valid and infos[2].manifest is None
    assert "is a link" in infos[2].reason
    assert f"Not uploading {NEW} to {url}: its local copy" in caplog.text and "is a link" in caplog.text
    remote = open_storage(url)
    assert not [p for p in remote.fs.find(remote.root) if "/step-" in p]  # not one byte of it went up


def test_no_valid_checkpoint_at_all_still_raises_one_sentence(two):
    root, _ = two
    damage(root, "NaN literal")
    (root / OLD / "model.bin").write_bytes(b"short")
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointSkippedWarning)
            with pytest.raises(spotsafe.CorruptCheckpointError, match="all 2 failed verification"):
                mgr.restore(make_state(7))
            with pytest.raises(spotsafe.CorruptCheckpointError, match=f"{NEW} .* is invalid: .*literal NaN"):
                mgr.restore(make_state(7), step=2)


@pytest.mark.slow  # starts the S3 server when no earlier test did
def test_a_malformed_remote_copy_falls_back_to_the_other_tier_and_an_older_step(root, s3_url):
    """Remote step 3 exists only there and is malformed; local step 2 is corrupt, its remote copy valid."""
    from spotsafe._storage import open_storage

    with spotsafe.CheckpointManager(root, remote=s3_url, keep=5) as mgr:
        mgr.save(1, make_state(1))
        s2 = make_state(2)
        mgr.save(2, s2)
        mgr.wait(remote=True)
    step2 = {k: v.clone() for k, v in s2["model"].state_dict().items()}
    remote = open_storage(s3_url)
    body = (root / NEW / "manifest.json").read_text().replace('"step": 2', '"step": 3', 1)
    remote.put_bytes("step-000000000003/manifest.json", body.replace('"metadata": {', '"metadata": {"x": NaN, ', 1)
                     .encode())
    data = bytearray((root / NEW / "model.bin").read_bytes())
    data[5] ^= 0xFF
    (root / NEW / "model.bin").write_bytes(bytes(data))

    state = make_state(7)
    with spotsafe.CheckpointManager(root, remote=s3_url, keep=5) as mgr:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            assert mgr.restore(state) == 2
        assert mgr.restored_tier == "remote"
    skipped = [str(w.message) for w in rec if issubclass(w.category, CheckpointSkippedWarning)]
    assert len(skipped) == 2
    assert "step-000000000003" in skipped[0] and "literal NaN" in skipped[0]
    assert f"{NEW} in {root}" in skipped[1] and "model.bin fails its checksum" in skipped[1]
    for k, v in state["model"].state_dict().items():
        assert torch.equal(v, step2[k]), k


FUZZ_VALUES = [None, True, 0, 1, -1, 2**63, -2**63 - 1, 0.5, 1e308, "", "x", "nan", "float32", "<i8", "|b1", "<f2",
               [], [1], [[1, 2]], {}, {"a": 1}, {"$tensor": 0}, {"$ndarray": 0}, {"$tuple": [[1]]}, {"$dict": []},
               {"$float": "nan"}, {"$np": "<i8", "v": 1}, {"$np": "<f2", "v": 70000}, {"$dtype": "qint8"},
               {"$device": "cuda:3"}, {"$dict": [[[1, [2]], 1]]}, {"$dict": [[{"$tuple": [[1]]}, 1]]},
               {"$dict": [], "ordered": True, "meta": {"a": 1}}, 10**12, 64, 48, 12, -64]


def test_whatever_the_validator_passes_decodes(root):
    """Random edits of a real manifest (re-signed): each is refused with ManifestError or decodes cleanly."""
    import copy
    import random

    from spotsafe._engine._pipeline import decode_components
    from spotsafe._format import ManifestError, parse_manifest

    state = make_state(1)
    state["extra"].update(dt=torch.float16, dev=torch.device("cpu"), k={(1, 2): "x", 3: torch.ones(2)})
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        mgr.save(1, state)
    ckpt = root / OLD
    body0 = json.loads((ckpt / "manifest.json").read_text())
    body0.pop("manifest_checksum")
    data = {f: (ckpt / f).read_bytes() for f in body0["files"]}

    def paths(x, path=()):
        if path:
            yield path
        children = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
        for k, v in children:
            yield from paths(v, path + (k,))

    rng = random.Random(12)
    passed = 0
    for _ in range(400):
        body = copy.deepcopy(body0)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(list(paths({"files": body["files"], "components": body["components"]})))
            parent = body
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = copy.deepcopy(rng.choice(FUZZ_VALUES))
        body["manifest_checksum"] = digest_bytes(_canonical(body))
        try:
            m = parse_manifest(json.dumps(body).encode())
        except ManifestError:
            continue
        if m.total_bytes > 1 << 20:
            continue
        bufs = {f: torch.zeros(e.size, dtype=torch.uint8) for f, e in m.files.items()}
        for f, buf in bufs.items():
            raw = torch.frombuffer(bytearray(data.get(f, b"")), dtype=torch.uint8) if data.get(f) else None
            if raw is not None:
                n = min(len(buf), len(raw))
                buf[:n] = raw[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an overflow warning from numpy would be a miss too
            assert set(dict(decode_components(m, bufs))) == set(body["components"])
        passed += 1
    assert passed > 40  # many edits land somewhere harmless (a learning rate) and must still decode
