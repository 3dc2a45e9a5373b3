"""ls / verify / inspect print text from checkpoints escaped: no rich markup, no terminal escapes.

Names, types, metadata and reasons come from files anyone with write access to a root
can fill. Through the installed entry point, each command must print them literally (a
``[/bogus]`` tag is not an error, a ``[link=...]`` is not a link) with every control
character shown as an escape, and must never print a raw ESC.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import child_env, run_cli
from helpers import resign_manifest

import spotsafe

BOGUS = "[/bogus]"
LINK = "[link=https://evil.example]click[/link]"
ESC = "\x1b[2J\x1b]8;;https://evil.example\x1b\\"
NAMES = [BOGUS, LINK, "esc" + ESC]


def cli(*args) -> subprocess.CompletedProcess:
    return run_cli(*args, env={**child_env(), "COLUMNS": "1000"})  # a wide table: each reason on one line


@pytest.fixture
def hostile_root(root):
    state = {name: {"w": torch.full((4,), float(i))} for i, name in enumerate(NAMES)}
    with spotsafe.CheckpointManager(root, keep=5, rng=False) as mgr:
        mgr.save(1, state, metadata={BOGUS: LINK + ESC})
        mgr.save(2, state)
    # step 2: a type and a version naming markup and escapes (re-signed), and a bad dtype in
    # the component called "[/bogus]", so that the reason names it
    def edit(body):
        body["components"][LINK]["type"] = "evil." + LINK + ESC
        body["versions"][BOGUS] = ESC
        body["components"][BOGUS]["tensors"][0]["dtype"] = "float32" + ESC
    resign_manifest(root / "step-000000000002", edit)
    return root


def assert_safe(out: subprocess.CompletedProcess) -> None:
    both = out.stdout + out.stderr
    assert "\x1b" not in both and "Traceback" not in both and "MarkupError" not in both


def test_inspect_prints_names_metadata_and_types_literally(hostile_root):
    out = cli("inspect", hostile_root, "--step", 1)
    assert out.returncode == 0, out.stderr
    assert_safe(out)
    assert BOGUS in out.stdout and "[link=https://evil.example]click" in out.stdout
    assert "esc\\x1b[2J" in out.stdout
    meta = [line for line in out.stdout.splitlines() if line.startswith("metadata: ")][0]
    assert json.loads(meta.removeprefix("metadata: ")) == {BOGUS: LINK + ESC}
    raw = cli("inspect", hostile_root, "--step", 1, "--json")
    assert_safe(raw)
    assert json.loads(raw.stdout)["metadata"] == {BOGUS: LINK + ESC}


def test_ls_verify_and_inspect_print_a_hostile_reason_escaped(hostile_root):
    ls = cli("ls", hostile_root)
    assert ls.returncode == 0 and "invalid" in ls.stdout
    assert_safe(ls)
    assert "component '[/bogus]' has unknown tensor dtype 'float32\\x1b[2J" in ls.stdout

    verify = cli("verify", hostile_root)
    assert verify.returncode == 1
    assert_safe(verify)
    line = [x for x in verify.stdout.splitlines() if "step-000000000002" in x][0]
    assert line.startswith("INVALID step-000000000002") and "component '[/bogus]'" in line
    assert verify.stderr.count("\n") == 1 and verify.stderr.startswith("Error: 1 of 2 checkpoint(s)")

    inspect = cli("inspect", hostile_root, "--step", 2)
    assert inspect.returncode == 1
    assert_safe(inspect)
    assert "Error: Checkpoint step-000000000002" in inspect.stderr and "'[/bogus]'" in inspect.stderr


def test_a_hostile_root_name_is_printed_escaped(tmp_path):
    """The reasons above are escaped where they are made (repr); the root's own name is not: every
    command prints it as it is given, so only the CLI's escaping stands between it and the terminal."""
    root = tmp_path / ("run" + BOGUS + "\x1b[2J\x07")
    shown = f"{tmp_path}/run{BOGUS}\\x1b[2J\\x07"
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        mgr.save(1, {"w": torch.ones(2)})
    for command in ("verify", "inspect"):
        out = cli(command, root, "--step", 9)
        assert out.returncode == 1 and "\x07" not in out.stderr
        assert_safe(out)
        assert out.stderr == (f"Error: Checkpoint step-000000000009 does not exist in {shown}; "
                              f"run `spotsafe ls {shown}`.\n")
    for command, args in (("ls", ()), ("inspect", ("--step", 1))):
        out = cli(command, root, *args)
        assert out.returncode == 0, out.stderr
        assert_safe(out)
        assert "\x07" not in out.stdout and shown in out.stdout.splitlines()[0]
