"""Shared fixtures. Everything runs on this machine: real files, real processes, no network."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
GUARD = Path(__file__).resolve().parent / "_guard"
sys.path.insert(0, str(EXAMPLES))

# ---------------------------------------------------------------------------------------
# Never the real cloud metadata addresses. Every process of the suite (this one and every
# child, which inherit the environment) points the three metadata URLs at a closed
# loopback port unless a test sets its own, and loads tests/_guard/sitecustomize.py,
# which refuses and records any connection to 169.254.169.254 or metadata.google.internal.
# ---------------------------------------------------------------------------------------
_GUARD_LOG = Path(os.environ.setdefault(
    "SPOTSAFE_TEST_GUARD_LOG", os.path.join(__import__("tempfile").mkdtemp(prefix="spotsafe-guard-"), "log")))
_GUARD_LOG.touch()
for _name in ("SPOTSAFE_AWS_METADATA_URL", "SPOTSAFE_GCP_METADATA_URL", "SPOTSAFE_AZURE_METADATA_URL"):
    os.environ[_name] = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
# The S3 clients' own instance-role lookups too: botocore's (also off) and obstore's, whose Rust
# client the socket guard below cannot see. Tests that clear AWS_* put these back (AWS_LOOPBACK).
AWS_LOOPBACK = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
                "AWS_METADATA_ENDPOINT": "http://127.0.0.1:9"}
os.environ.update(AWS_LOOPBACK)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(GUARD), os.environ.get("PYTHONPATH", "")) if p)
# The supervisor's per-user state (records kept until it learns the run's root) and the DMI
# facts the notice sources read ("on which cloud am I") point into a temp dir: the suite
# writes nothing into the home directory and behaves the same on a cloud VM.
os.environ["SPOTSAFE_STATE_DIR"] = __import__("tempfile").mkdtemp(prefix="spotsafe-state-")
os.environ["SPOTSAFE_DMI_DIR"] = __import__("tempfile").mkdtemp(prefix="spotsafe-dmi-")
# Nor on the platform the suite happens to run on (a CI runner in a pod, a SLURM job): the marks that
# spotsafe.Run and spotsafe run take defaults from (spotsafe._platforms) are set by the tests that want them.
for _name in ("KUBERNETES_SERVICE_HOST", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TRAINING_JOB_NAME", "SM_TRAINING_ENV",
              "SM_CURRENT_HOST"):
    os.environ.pop(_name, None)
# Loaded by its path: an image's own sitecustomize may already be imported under that name.
_spec = importlib.util.spec_from_file_location("_spotsafe_test_guard", GUARD / "sitecustomize.py")
_guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_guard)

_guard.install()


@pytest.fixture(autouse=True)
def _no_metadata_contact():
    """Fail the test if it (or any child process) tried to reach a real metadata address."""
    before = _GUARD_LOG.stat().st_size
    yield
    with open(_GUARD_LOG) as f:
        f.seek(before)
        tried = f.read().strip()
    if tried:
        pytest.fail(f"contacted a real cloud metadata address: {tried}", pytrace=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh run root on the same file system as the tests' temp dir."""
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spotsafe_cli() -> list[str]:
    """The installed ``spotsafe`` entry point next to this interpreter."""
    exe = Path(sys.executable).with_name("spotsafe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "spotsafe.cli"]


@pytest.fixture
def metadata():
    """A loopback server speaking AWS IMDSv2, GCP metadata and Azure Scheduled Events."""
    from metadata_server import MetadataServer

    server = MetadataServer().start()
    try:
        yield server
    finally:
        server.stop()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def run_cli(*args, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``spotsafe ARGS...`` as a real process of the installed entry point, bounded in time,
    with its stdout and stderr captured as text."""
    return subprocess.run([*spotsafe_cli(), *map(str, args)], capture_output=True, text=True,
                          env=env or child_env(), timeout=timeout, cwd=cwd)


# ---------------------------------------------------------------------------------------
# S3: a real SeaweedFS server on 127.0.0.1 (see tests/s3server.py)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS S3 server for the whole session. Don't stop it in a test: use s3_private."""
    from s3server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("s3-session"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_url(s3_server, monkeypatch) -> str:
    """``s3://<fresh bucket>/run`` on the session server, with AWS_ENDPOINT_URL and keys in
    the environment (so spotsafe, boto3 and child processes find the server by themselves)."""
    import uuid

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    bucket = s3_server.make_bucket(f"t-{uuid.uuid4().hex[:16]}")
    yield f"s3://{bucket}/run"


@pytest.fixture
def s3_private(tmp_path):
    """A separate SeaweedFS server of this test's own, free to stop()/restart(); it is
    killed afterwards. The environment is left alone: use ``.env()`` / ``.storage_options()``."""
    from s3server import SeaweedS3

    server = SeaweedS3(tmp_path / "s3-private")
    try:
        server.start()
        yield server
    finally:
        server.close()
