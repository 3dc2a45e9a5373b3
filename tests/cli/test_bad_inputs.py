"""Every bad input gets one sentence: usage errors exit 2, invalid data and failures exit 1,
never a traceback; every network wait is bounded; text from files is printed escaped.

The commands run as real processes of the installed entry point; S3 is the real SeaweedFS
server, and the silent endpoint a real loopback socket that accepts and never answers.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import child_env, run_cli

import spotsafe
from spotsafe._storage import open_storage
from spotsafe.errors import RemoteAccessError, SpotsafeError, UnsupportedURLError
from spotsafe.policy import plan, simulate

PLAN = ["plan", "--hours", "10", "--on-demand-price", "3", "--spot-price", "1", "--mtbf", "6h",
        "--checkpoint-cost", "30s", "--restart-cost", "10m"]


cli = run_cli


def one_sentence(out: subprocess.CompletedProcess, code: int) -> str:
    """The one ``Error:`` line of a failed command, after checking the exit code and that nothing else
    but click's usage hint (usage errors only) is on stderr."""
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out.stderr
    others = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("Error:")]
    if code == 2:  # click's own hint may stand before it
        assert all(line.startswith(("Usage:", "Try ")) for line in others), out.stderr
    else:
        assert others == [], out.stderr
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-inputs")
    root = d / "run"
    with spotsafe.CheckpointManager(root) as mgr:
        mgr.save(7, {"w": torch.ones(4)})
    profiles = {
        "extends_list": '[profiles.x]\nextends = ["experiment"]\n',
        "nan_price": "[profiles.x]\nspot_price = nan\n",
        "inf_grace": "[profiles.x]\ngrace = inf\n",
        "not_utf8": None,
    }
    out = {"root": root, "dir": d, "missing": d / "nope"}
    for name, body in profiles.items():
        f = d / f"{name}.toml"
        if body is None:
            f.write_bytes(b"\xff\xfe[profiles.x]\n")
        else:
            f.write_text(body)
        out[name] = f
    return out


USAGE = [  # (arguments, a piece of the sentence); each exits 2
    (["ls", "foo://x"], "unknown scheme 'foo'"),
    (["verify", "foo://bucket/run"], "unknown scheme 'foo'"),
    (["ls", "s3:/bucket/run"], "one slash"),
    (["verify", "{root}", "--step", "-1"], "--step"),
    (["inspect", "{root}", "--step", "-1"], "--step"),
    (["verify", "{root}", "--step", "1000000000000"], "--step"),
    (["inspect", "{root}", "--step", "9" * 40], "--step"),
    ([*PLAN[:-1], "100000000h"], "would never finish"),
    ([*PLAN[:-1], "1000000h"], "would never finish"),
    ([*PLAN[:4], "nan", *PLAN[5:]], "not a finite number"),
    ([*PLAN[:6], "inf", *PLAN[7:]], "--spot-price"),
    (["plan", "--hours", "nan", *PLAN[3:]], "not a finite number"),
    (["plan", "--hours", "-3", *PLAN[3:]], "--hours"),
    ([*PLAN[:8], "nan", *PLAN[9:]], "Cannot read --mtbf='nan'"),
    ([*PLAN[:7], "--rate", "inf", *PLAN[9:]], "--rate"),
    (["run", "--profiles", "{dir}", "--", "true"], "is a directory"),
    (["run", "--profiles", "{extends_list}", "--profile", "x", "--", "true"], "extends"),
    (["run", "--profiles", "{nan_price}", "--profile", "x", "--", "true"], "finite number"),
    (["run", "--profiles", "{inf_grace}", "--profile", "x", "--", "true"], "grace"),
    (["run", "--profiles", "{not_utf8}", "--profile", "x", "--", "true"], "not UTF-8"),
    (["run", "--spot-price", "nan", "--", "true"], "not a finite number"),
    (["run", "--root", "{dir}/r", "--remote", "foo://bucket/run", "--", "true"], "unknown scheme 'foo'"),
    (["run", "--root", "s3:/bucket/run", "--", "true"], "one slash"),
    (["report", "{root}", "--on-demand-price", "inf"], "not a finite number"),
]


@pytest.mark.parametrize("args,message", USAGE, ids=[" ".join(a)[:60] for a, _ in USAGE])
def test_usage_errors_exit_2_with_one_sentence(files, tmp_path, args, message):
    out = cli(*[a.format(**files) for a in args], env={**child_env(), "HOME": str(tmp_path)}, cwd=tmp_path)
    line = one_sentence(out, 2)
    assert message in line
    assert not list(tmp_path.iterdir()), "a refused command wrote files"


def test_profiles_env_pointing_at_a_directory_exits_2(files, tmp_path):
    env = {**child_env(), "SPOTSAFE_PROFILES": str(files["dir"])}
    line = one_sentence(cli("run", "--", "true", env=env), 2)
    assert f"Profiles file {files['dir']} is a directory" in line and "$SPOTSAFE_PROFILES" in line


DATA = [  # (arguments, a piece of the sentence); each exits 1
    (["verify", "{missing}"], "does not exist"),
    (["ls", "{missing}"], "does not exist"),
    (["verify", "{root}", "--step", "8"], "step-000000000008 does not exist"),
    (["report", "{root}", "--events", "{missing}"], "No events"),
]


@pytest.mark.parametrize("args,message", DATA, ids=[" ".join(a)[:60] for a, _ in DATA])
def test_invalid_data_exits_1_with_one_sentence(files, args, message):
    line = one_sentence(cli(*[a.format(**files) for a in args]), 1)
    assert message in line


@pytest.mark.parametrize("url, package, extra", [("gs://bucket/run", "gcsfs", "gcs"),
                                                 ("az://container/run", "adlfs", "azure")])
def test_a_missing_filesystem_package_names_the_extra(url, package, extra, tmp_path):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here: the other URL checks the sentence")
    for command in (("ls", url), ("run", "--root", tmp_path / "r", "--remote", url, "--", "true")):
        line = one_sentence(cli(*command), 1)  # not a usage error: this machine lacks a package
        assert f"Storage URL {url} needs a file-system package" in line and f"pip install spotsafe[{extra}]" in line
    assert not (tmp_path / "r").exists()  # refused before the command ran or anything was written


def test_the_library_names_an_unknown_scheme(tmp_path):
    with pytest.raises(UnsupportedURLError) as e:
        spotsafe.CheckpointManager("foo://x")
    assert isinstance(e.value, ValueError) and "'foo'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnsupportedURLError, match="foo"):
        spotsafe.CheckpointManager(tmp_path / "local", remote="foo://bucket/run")
    assert not (tmp_path / "local").exists() or not any((tmp_path / "local").iterdir())


# -- credentials ---------------------------------------------------------------------------


@pytest.fixture
def no_credentials(s3_server, monkeypatch, tmp_path):
    """The real server's endpoint, but no credentials anywhere the AWS tools look (and no IMDS probe)."""
    import uuid

    bucket = s3_server.make_bucket(f"c-{uuid.uuid4().hex[:16]}")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.env()["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield f"s3://{bucket}/run"


def test_no_credentials_is_one_sentence_in_the_library_and_the_cli(no_credentials, tmp_path):
    with pytest.raises(RemoteAccessError) as e:
        spotsafe.CheckpointManager(tmp_path / "local", remote=no_credentials)
    msg = str(e.value)
    assert isinstance(e.value, PermissionError) and "\n" not in msg
    assert f"No AWS credentials found for {no_credentials}" in msg and "AWS_ACCESS_KEY_ID" in msg
    with pytest.raises(RemoteAccessError, match="No AWS credentials"):
        spotsafe.CheckpointManager(no_credentials)
    for command in ("ls", "verify", "inspect"):
        line = one_sentence(cli(command, no_credentials), 1)
        assert "No AWS credentials found" in line and "AWS_SECRET_ACCESS_KEY" in line


def test_wrong_credentials_are_one_sentence(s3_url, monkeypatch, tmp_path):
    with spotsafe.CheckpointManager(tmp_path / "local", remote=s3_url) as mgr:
        mgr.save(3, {"w": torch.ones(2)})
        mgr.wait(remote=True)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(RemoteAccessError) as e:
        open_storage(s3_url).listdir()
    assert f"{s3_url} refused access" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SpotsafeError) as e:  # the writer lease or the restore: either says it in one line
        with spotsafe.CheckpointManager(tmp_path / "other", remote=s3_url) as mgr:
            mgr.restore({"w": torch.zeros(2)})
    msg = str(e.value)
    assert "\n" not in msg and s3_url in msg and "credentials" in msg, msg  # names the remote and the way out
    assert not (tmp_path / "other").exists() or not [p for p in (tmp_path / "other").iterdir()
                                                    if p.name.startswith("step-")]
    line = one_sentence(cli("ls", s3_url), 1)
    assert "refused access" in line


# -- bounded waits ---------------------------------------------------------------------------


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers: a wedged gateway, a frozen VM."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


@pytest.mark.slow
def test_a_silent_remote_costs_seconds_before_restore_falls_back_to_local(tmp_path, monkeypatch):
    local = tmp_path / "local"
    with spotsafe.CheckpointManager(local) as mgr:
        mgr.save(5, {"w": torch.full((3,), 5.0)})
    server = SilentServer()
    try:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        state = {"w": torch.zeros(3)}
        t0 = time.monotonic()
        with pytest.warns(spotsafe.RemoteUnavailableWarning):
            mgr = spotsafe.CheckpointManager(local, remote="s3://bucket/run")
            step = mgr.restore(state)
        took = time.monotonic() - t0
        print(f"silent endpoint: opened and restored from local in {took:.1f} s "
              f"({len(server.accepted)} connections accepted)")
        assert step == 5 and torch.equal(state["w"], torch.full((3,), 5.0))
        assert server.accepted, "the remote was never tried"
        # one bounded wait (the writer lease's request, 2 tries x 5 s; the restore does not ask again); it was 95 s
        assert took < 30, f"a silent endpoint cost {took:.0f} s before restore fell back"
        t0 = time.monotonic()
        try:  # the uploader gave up on the remote: close may re-raise that (in one sentence), but must not hang
            mgr.close(wait_remote=False, timeout=5)
        except SpotsafeError as e:
            assert "\n" not in str(e) and "Traceback" not in str(e), str(e)
        assert time.monotonic() - t0 < 30
        assert (local / "step-000000000005").is_dir() and not [p for p in local.iterdir() if ".tmp-" in p.name]
    finally:
        server.close()


@pytest.mark.slow  # about 11 s: the bounded waits themselves
def test_the_cli_on_a_silent_remote_ends_with_one_sentence(tmp_path):
    server = SilentServer()
    try:
        env = {k: v for k, v in child_env().items() if not k.startswith("AWS_")}
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{server.port}", AWS_ACCESS_KEY_ID="k",
                   AWS_SECRET_ACCESS_KEY="s", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        t0 = time.monotonic()
        out = cli("ls", "s3://bucket/run", env=env, timeout=60)
        took = time.monotonic() - t0
        print(f"spotsafe ls on a silent endpoint: exit {out.returncode} after {took:.1f} s")
        line = one_sentence(out, 1)
        # it names the store that did not answer, the endpoint, why, and the way out
        assert line.startswith("Error: s3://bucket/run did not answer (") and "timeout" in line.lower(), line
        assert f"127.0.0.1:{server.port}" in line and line.endswith("check the endpoint (AWS_ENDPOINT_URL for S3) "
                                                                   "and the network, then retry."), line
        assert server.accepted, "the endpoint was never tried"
        assert took < 30
    finally:
        server.close()


# -- the plan and its simulation -------------------------------------------------------------


@pytest.mark.slow
def test_plan_simulate_with_a_short_mtbf_ends_and_says_it_was_cut_short():
    t0 = time.monotonic()
    out = cli("plan", "--hours", "10", "--on-demand-price", "3", "--spot-price", "1", "--mtbf", "1m",
              "--checkpoint-cost", "30s", "--restart-cost", "10m", "--simulate", "10", "--json", timeout=120)
    took = time.monotonic() - t0
    print(f"plan --simulate with MTBF 1m, restart 10m: {took:.1f} s")
    assert out.returncode == 0, out.stderr
    sim = json.loads(out.stdout)["simulation"]
    assert sim["truncated"] is True and sim["finished"] < sim["runs"] == 10
    text = cli("plan", "--hours", "10", "--on-demand-price", "3", "--spot-price", "1", "--mtbf", "1m",
               "--checkpoint-cost", "30s", "--restart-cost", "10m", "--simulate", "10", timeout=120)
    assert text.returncode == 0 and "Simulation cut short" in " ".join(text.stdout.split())


def test_simulate_is_bounded_in_draws_and_in_time():
    hopeless = {"checkpoint_cost": 30.0, "mtbf": 60.0, "restart_cost": 600.0}  # a restart completes with p = e^-10
    assert simulate(10 * 3600.0, 60.0, **hopeless, runs=5, max_draws=50_000) == []
    ticks = iter(range(10**9))
    assert simulate(10 * 3600.0, 60.0, **hopeless, runs=5, time_limit=3, clock=lambda: float(next(ticks))) == []
    costs = {"checkpoint_cost": 10.0, "mtbf": 6 * 3600.0, "restart_cost": 60.0}
    full = simulate(3600.0, 600.0, **costs, runs=50, max_draws=50_000)
    assert len(full) == 50 and min(full) >= 3600.0
    cut = simulate(3600.0, 600.0, **costs, runs=10_000, max_draws=50_000)
    assert 0 < len(cut) < 10_000 and cut[:50] == full  # the jobs it finished, the same as before


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_plan_refuses_non_finite_figures(bad):
    with pytest.raises(ValueError, match="finite"):
        plan(3600.0, mtbf=6 * 3600.0, checkpoint_cost=30.0, restart_cost=bad, spot_price=1.0, on_demand_price=3.0)
    with pytest.raises(ValueError, match="finite"):
        plan(3600.0, mtbf=6 * 3600.0, checkpoint_cost=30.0, restart_cost=60.0, spot_price=bad, on_demand_price=3.0)


def test_a_restart_longer_than_a_float_can_price_is_a_sentence_not_an_overflow():
    with pytest.raises(ValueError, match="would never finish"):
        plan(36000.0, mtbf=21600.0, checkpoint_cost=30.0, restart_cost=3.6e11, spot_price=1.0, on_demand_price=3.0)
    # restarts > 12 min overflowed the break-even search
    p = plan(36000.0, mtbf=21600.0, checkpoint_cost=30.0, restart_cost=1200.0, spot_price=1.0, on_demand_price=3.0)
    assert p.break_even_mtbf_s is not None and math.isfinite(p.expected_wall_time_s)


# -- escaping ------------------------------------------------------------------------------

HOSTILE = "[link=http://127.0.0.1:9/x]click[/link][/bogus]\x1b[2J\x1b]0;owned\x07\u202e"


def test_report_prints_names_from_the_events_escaped(tmp_path):
    root = tmp_path / "run"
    (root / "events").mkdir(parents=True)
    t = 1_700_000_000.0
    base = {"run_id": "r1", "rank": 0, "host": "h" + HOSTILE, "pid": 1}
    rows = [
        {**base, "ts": t, "event": "run_start", "attempt": 1},
        {**base, "ts": t + 1, "event": "restore", "attempt": 1, "step": 0, "tier": "local", "seconds": 0.1,
         "bytes": 1},
        {**base, "ts": t + 2, "event": "metrics", "attempt": 1, "step": 5, "values": {"loss" + HOSTILE: 1.0}},
        {**base, "ts": t + 3, "event": "checkpoint", "attempt": 1, "step": 5, "reason": "notice", "stall_s": 0.1,
         "persist_s": 0.2, "upload_s": None, "bytes": 10},
        {**base, "ts": t + 4, "event": "notice", "attempt": 1, "source": "cloud" + HOSTILE, "seconds_left": 30},
        {**base, "ts": t + 5, "event": "stop", "attempt": 1, "reason": "notice", "exit_code": 75, "step": 5},
        {**base, "ts": t + 6, "event": "run_start", "attempt": 2},
        {**base, "ts": t + 7, "event": "restore", "attempt": 2, "step": 5, "tier": "local", "seconds": 0.1,
         "bytes": 1},
        {**base, "ts": t + 8, "event": "metrics", "attempt": 2, "step": 5, "values": {"loss" + HOSTILE: 2.0}},
        {**base, "ts": t + 9, "event": "stop", "attempt": 2, "reason": "completed", "exit_code": 0, "step": 6},
    ]
    (root / "events" / "h-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cli("report", root, "--spot-price", "1", "--on-demand-price", "3")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[2J" in text and "\\u202e" in text      # shown, as escapes
    assert "[/bogus]" in text and "[link=http" in text   # printed as text, not read as markup
    assert "cloud[link=" in " ".join(text.split())       # the interruption's source, in its table


def test_an_os_error_without_a_message_still_says_what_failed():
    """A bare TimeoutError() (an asyncio timeout in a store's client has no text) was "Error: " and nothing."""
    from spotsafe.cli._errors import as_command_error

    assert as_command_error(TimeoutError()).message == "TimeoutError; check the path or the store, and retry."
    assert as_command_error(ConnectionResetError(104, "Connection reset by peer")).message == \
        "[Errno 104] Connection reset by peer."
