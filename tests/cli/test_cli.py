"""spotsafe ls / verify / inspect, through the installed entry point."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import child_env, spotsafe_cli
from helpers import write_remote

import spotsafe


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*spotsafe_cli(), *map(str, args)], capture_output=True, text=True, env=child_env(),
                          timeout=60)


@pytest.fixture
def run_root(root):
    model = torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        for s in (100, 200, 300):
            mgr.save(s, {"model": model, "optimizer": opt}, epoch=s // 100, metadata={"loss": 1.0 / s})
    return root


def test_ls_lists_steps_sizes_and_validity(run_root):
    (run_root / "step-000000000200" / "model.bin").write_bytes(b"short")
    out = cli("ls", run_root)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "│" in line and "step" not in line]
    assert [line.split("│")[1].strip() for line in lines] == ["100", "200", "300"]
    assert "valid" in lines[0] and "invalid" in lines[1] and "model.bin is 5 bytes" in out.stdout
    rows = [json.loads(x) for x in cli("ls", run_root, "--json").stdout.splitlines()]
    assert [(r["step"], r["valid"]) for r in rows] == [(100, True), (200, False), (300, True)]
    assert rows[0]["bytes"] > 16 * 4 * 4


def test_verify_exit_codes(run_root):
    ok = cli("verify", run_root)
    assert ok.returncode == 0 and ok.stdout.count("ok") == 3
    data = bytearray((run_root / "step-000000000300" / "model.bin").read_bytes())
    data[3] ^= 0xFF
    (run_root / "step-000000000300" / "model.bin").write_bytes(bytes(data))
    bad = cli("verify", run_root)
    assert bad.returncode == 1
    assert "INVALID step-000000000300" in bad.stdout and "fails its checksum" in bad.stdout
    assert bad.stderr.startswith("Error: 1 of 3 checkpoint(s)")
    assert cli("verify", run_root, "--step", 200).returncode == 0
    assert cli("verify", run_root, "--step", 300).returncode == 1
    missing = cli("verify", run_root, "--step", 7)
    assert missing.returncode == 1 and "step-000000000007 does not exist" in missing.stderr


def test_verify_on_an_empty_or_missing_root_fails(tmp_path):
    assert cli("verify", tmp_path).returncode == 1
    gone = cli("verify", tmp_path / "nope")
    assert gone.returncode == 1 and "does not exist" in gone.stderr


def test_inspect_shows_components_tensors_and_metadata(run_root):
    out = cli("inspect", run_root, "--step", 200)
    assert out.returncode == 0, out.stderr
    assert "step-000000000200" in out.stdout and "valid" in out.stdout
    assert "epoch 2" in out.stdout and '"loss": 0.005' in out.stdout
    assert "model" in out.stdout and "[4, 16]" in out.stdout and "float32" in out.stdout
    body = json.loads(cli("inspect", run_root, "--json").stdout)
    assert body["step"] == 300 and set(body["components"]) == {"model", "optimizer", "__rng__"}


def test_usage_error_exits_2():
    assert cli("verify").returncode == 2


def test_ls_quick_checks_sizes_but_not_content(run_root):
    path = run_root / "step-000000000300" / "model.bin"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01  # same size, different content
    path.write_bytes(bytes(data))
    quick = [json.loads(x) for x in cli("ls", run_root, "--quick", "--json").stdout.splitlines()]
    deep = [json.loads(x) for x in cli("ls", run_root, "--json").stdout.splitlines()]
    assert [r["valid"] for r in quick] == [True, True, True]
    assert [r["valid"] for r in deep] == [True, True, False]
    assert "model.bin fails its checksum" in deep[2]["reason"]


def test_inspect_of_a_damaged_checkpoint_says_why(run_root):
    (run_root / "step-000000000300" / "manifest.json").write_text("{")
    out = cli("inspect", run_root, "--step", 300)
    assert out.returncode == 1 and "is unreadable: manifest.json is not valid JSON" in out.stderr


def test_ls_and_verify_read_a_remote_root_from_the_usual_environment(s3_url, tmp_path):
    with spotsafe.CheckpointManager(tmp_path / "local", remote=s3_url, keep=5) as mgr:
        for s in (1, 2):
            mgr.save(s, {"w": torch.full((64,), float(s))})
    rows = [json.loads(x) for x in cli("ls", s3_url, "--json").stdout.splitlines()]
    assert [(r["step"], r["valid"]) for r in rows] == [(1, True), (2, True)]
    assert cli("verify", s3_url).returncode == 0
    write_remote(s3_url, "step-000000000002/w.bin", b"\0" * 256)  # same size, wrong bytes
    bad = cli("verify", s3_url)
    assert bad.returncode == 1 and "w.bin fails its checksum" in bad.stdout + bad.stderr


def test_inspect_and_verify_a_frameworks_folder(root, tmp_path):
    """A checkpoint of kind "files" (spotsafe.hf, spotsafe.accelerate): its files and their bytes; a bad one named."""
    src = tmp_path / "checkpoint-4"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w" * 3000)
    (src / "optimizer.pt").write_bytes(b"o" * 1000)
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save_files(4, src, kind="hf-trainer")
    out = cli("inspect", root)
    assert out.returncode == 0, out.stderr
    assert "hf-trainer" in out.stdout and "files" in out.stdout and "3.9 KiB" in out.stdout
    assert "model.safetensors" in out.stdout and "optimizer.pt" in out.stdout
    (root / "step-000000000004" / "optimizer.pt").write_bytes(b"x" * 1000)
    out = cli("verify", root)
    assert out.returncode != 0 and "optimizer.pt fails its checksum" in out.stdout + out.stderr
