"""Remote durability against a real S3 server (SeaweedFS on 127.0.0.1).

Checkpoints are committed locally, replicated in the background, and restorable from the
remote alone; faults (server down, corruption, a killed uploader) lose nothing.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import child_env
from helpers import (
    assert_same_tensors,
    fresh_training,
    incomplete_uploads,
    make_training,
    remote_objects,
    snapshot,
    write_remote,
)

import spotsafe
from spotsafe import Backoff
from spotsafe._format import committed_steps, step_dir
from spotsafe._storage import _obstore, open_storage
from spotsafe.errors import RemoteError, RemoteUnavailableError, RemoteUnavailableWarning

pytestmark = pytest.mark.slow
FAST = Backoff(base=0.2, cap=1.0, attempts=3, max_elapsed=10)


def train(model, opt, n: int) -> None:
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(6, 4)).pow(2).sum().backward()
        opt.step()


def test_round_trip_and_a_new_machine_restores_from_the_remote_bit_exact(s3_url, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    model, opt, sched = make_training()
    local = tmp_path / "node-a"
    with spotsafe.CheckpointManager(local, remote=s3_url, keep=2) as mgr:
        for step in (10, 20, 30):
            train(model, opt, 2)
            mgr.save(step, {"model": model, "optimizer": opt, "scheduler": sched})
        assert mgr.wait(remote=True, timeout=60).step == 30
        assert mgr.remote_watermark == 30
        remote = mgr.checkpoints(remote=True)
        assert [(c.step, c.valid) for c in remote] == [(20, True), (30, True)]  # retention on the remote too
        assert mgr.uploads[-1].step == 30 and mgr.uploads[-1].bytes == remote[-1].size
    expected, expected_opt = snapshot(model), opt.state_dict()
    shutil.rmtree(local)  # the node is gone
    model2, opt2, sched2 = fresh_training()
    with spotsafe.CheckpointManager(tmp_path / "node-b", remote=s3_url) as mgr:
        assert mgr.restore({"model": model2, "optimizer": opt2, "scheduler": sched2}) == 30
        assert mgr.restored.location == f"{s3_url}/{step_dir(30)}"
    assert_same_tensors(snapshot(model2), expected)
    for k, v in opt2.state_dict()["state"].items():
        for n, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(expected_opt["state"][k][n]))
    assert sched2.state_dict() == sched.state_dict()


def test_explicit_storage_options_work_and_credentials_never_reach_logs_or_reprs(s3_server, tmp_path, caplog,
                                                                                 monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    bucket = f"opt-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    options = s3_server.storage_options()
    secret = options["secret"]
    caplog.set_level(logging.DEBUG)
    with spotsafe.CheckpointManager(tmp_path / "run", remote=f"s3://{bucket}/run", storage_options=options) as mgr:
        mgr.save(1, {"w": torch.arange(1000)})
        mgr.wait(remote=True, timeout=60)
        text = repr(mgr) + repr(mgr.remote) + str(mgr.checkpoints(remote=True))
    assert mgr.remote_watermark == 1
    assert secret not in text and secret not in caplog.text


def test_a_file_corrupted_on_the_remote_is_detected_and_an_older_step_used(s3_url, tmp_path):
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url) as mgr:
        for step in (1, 2):
            mgr.save(step, {"w": torch.full((4096,), float(step))})
    st = open_storage(s3_url)
    rel = f"{step_dir(2)}/w.bin"
    data = bytearray(st.read_bytes(rel))
    data[17] ^= 0x40
    write_remote(s3_url, rel, bytes(data))
    state = {"w": None}
    with spotsafe.CheckpointManager(tmp_path / "b", remote=s3_url) as mgr:
        with pytest.warns(spotsafe.CheckpointSkippedWarning, match=rf"{step_dir(2)} in {s3_url} .* fails its checksum"):
            assert mgr.restore(state) == 1
    assert torch.equal(state["w"], torch.full((4096,), 1.0))


def test_a_valid_local_copy_wins_over_a_corrupt_remote_one_and_vice_versa(s3_url, tmp_path):
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url) as mgr:
        mgr.save(5, {"w": torch.full((100,), 5.0)})
    (tmp_path / "a" / step_dir(5) / "w.bin").write_bytes(b"\0" * 400)  # local copy damaged, same size
    state = {"w": None}
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url) as mgr:
        with pytest.warns(spotsafe.CheckpointSkippedWarning, match="fails its checksum"):
            assert mgr.restore(state) == 5  # the remote copy of the same step
        assert mgr.restored.location.startswith("s3://")
    assert torch.equal(state["w"], torch.full((100,), 5.0))


def test_server_down_mid_upload_then_back_completes_the_upload(s3_private, tmp_path, monkeypatch):
    server = s3_private
    server.make_bucket("bkt")
    url = "s3://bkt/run"
    real_parts = _obstore._verified_parts
    stopped = threading.Event()

    def stop_after_two_parts(fd, size, checksum, rel):
        for i, part in enumerate(real_parts(fd, size, checksum, rel)):
            if i == 2 and step_dir(2) in rel and not stopped.is_set():
                time.sleep(1.0)  # two parts of step 2's model.bin are stored, the rest is not
                server.stop()
                stopped.set()
            yield part

    monkeypatch.setattr(_obstore, "_verified_parts", stop_after_two_parts)
    state1 = {"model": {"w": torch.randn(3 << 20)}, "optimizer": {"m": torch.randn(1 << 20)}}
    state2 = {"model": {"w": torch.randn(20 << 20)}, "optimizer": {"m": torch.randn(1 << 20)}}  # 80 MiB: multipart
    with spotsafe.CheckpointManager(tmp_path / "run", remote=url, storage_options=server.storage_options(),
                                    upload_backoff=Backoff(base=0.5, cap=4.0, attempts=10, max_elapsed=60)) as mgr:
        mgr.save(1, state1)
        mgr.wait(remote=True, timeout=60)
        mgr.save(2, state2)
        mgr.wait()
        assert stopped.wait(60)
        time.sleep(1.0)  # the uploader meets a dead server and backs off
        assert mgr.remote_watermark == 1  # step 2 is not on the remote while the server is down
        server.start()  # from this thread: the server dies with the thread that started it
        mgr.wait(remote=True, timeout=90)
        assert mgr.remote_watermark == 2
        assert mgr.uploads[-1].step == 2 and mgr.uploads[-1].upload_s >= 1.0  # it rode out the outage
        assert [(c.step, c.valid) for c in mgr.checkpoints(remote=True)] == [(1, True), (2, True)]
        assert incomplete_uploads(url, server.client()) == []  # parts sent before the outage were not left behind
    restored = {"model": None, "optimizer": None}
    with spotsafe.CheckpointManager(tmp_path / "new", remote=url, storage_options=server.storage_options()) as mgr:
        assert mgr.restore(restored) == 2
    assert torch.equal(restored["model"]["w"], state2["model"]["w"])


def test_remote_unreachable_at_restore_uses_local_and_never_starts_fresh_silently(s3_private, tmp_path):
    server = s3_private
    server.make_bucket("bkt")
    url, opts = "s3://bkt/run", server.storage_options()
    with spotsafe.CheckpointManager(tmp_path / "run", remote=url, storage_options=opts) as mgr:
        mgr.save(3, {"w": torch.ones(10)})
    server.stop()
    state = {"w": None}
    mgr = spotsafe.CheckpointManager(tmp_path / "run", remote=url, storage_options=opts, upload_backoff=FAST)
    with pytest.warns(RemoteUnavailableWarning, match=r"Cannot reach the remote s3://bkt/run .*restoring from the local"):
        assert mgr.restore(state) == 3
    assert torch.equal(state["w"], torch.ones(10))
    with pytest.raises(RemoteError, match="Cannot reach the remote s3://bkt/run"):
        mgr.close()  # the background uploader could not reach it either: raised, not only logged

    empty = spotsafe.CheckpointManager(tmp_path / "new-node", remote=url, storage_options=opts, upload_backoff=FAST)
    with pytest.warns(RemoteUnavailableWarning):
        with pytest.raises(RemoteUnavailableError, match="fresh_if_unreachable=True"):
            empty.restore({"w": None})
    with pytest.warns(RemoteUnavailableWarning):
        assert empty.restore({"w": None}, fresh_if_unreachable=True) is None
    with pytest.raises(RemoteError):
        empty.close()


def test_sigkill_during_an_upload_the_next_process_resumes_and_cleans_up(s3_url, tmp_path):
    local = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("upload_child.py")), str(local), s3_url],
                          env=child_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert "remote 1" in proc.stdout
    st = open_storage(s3_url)
    leftover = [o for o in remote_objects(s3_url) if o.startswith(step_dir(2))]
    assert leftover and f"{step_dir(2)}/manifest.json" not in leftover  # partial, uncommitted
    assert committed_steps(st) == [1]  # and invisible to readers
    assert incomplete_uploads(s3_url) == [f"run/{step_dir(2)}/optimizer.bin"]

    # A new machine (no local disk) sees step 1 only, with no warning about the partial step 2.
    state = {"model": None, "optimizer": None, "step": None}
    with spotsafe.CheckpointManager(tmp_path / "other", remote=s3_url) as mgr:
        assert mgr.restore(state) == 1
        mgr.close(wait_remote=False)
    # The same machine resumes from its newest valid local checkpoint, cleans the remote and re-uploads.
    state = {"model": None, "optimizer": None, "step": None}
    with spotsafe.CheckpointManager(local, remote=s3_url) as mgr:
        assert mgr.restore(state) == 2 and state["step"] == 2
        mgr._replicator.wait(timeout=120)
        assert mgr.remote_watermark == 2
        assert [(c.step, c.valid) for c in mgr.checkpoints(remote=True)] == [(1, True), (2, True)]
    assert incomplete_uploads(s3_url) == []
    objs = remote_objects(s3_url)
    assert all(o.split("/")[0] in (step_dir(1), step_dir(2)) for o in objs)
    assert f"{step_dir(2)}/manifest.json" in objs


def test_a_hung_server_fails_the_upload_instead_of_hanging_it_and_later_saves_land(s3_private, tmp_path,
                                                                                     monkeypatch):
    """A server that accepts connections but never answers (SIGSTOP), hit in the middle of a PUT."""
    import os
    import signal

    server = s3_private
    server.make_bucket("bkt")
    # 3 s for a whole request (the body of a part the frozen server stops reading), one try
    opts = dict(server.storage_options(), client_options={"timeout": "3s", "read_timeout": "2s",
                                                          "connect_timeout": "2s"}, retry_config={"max_retries": 0})
    real_parts = _obstore._verified_parts
    frozen = threading.Event()

    def freeze_during_the_first_part(fd, size, checksum, rel):
        for i, part in enumerate(real_parts(fd, size, checksum, rel)):
            if i == 1 and step_dir(2) in rel and not frozen.is_set():  # the first part's body is going out
                os.killpg(server.proc.pid, signal.SIGSTOP)
                frozen.set()
            yield part

    monkeypatch.setattr(_obstore, "_verified_parts", freeze_during_the_first_part)
    try:
        with spotsafe.CheckpointManager(tmp_path / "run", remote="s3://bkt/run", storage_options=opts,
                                        upload_backoff=Backoff(base=0.2, cap=0.5, attempts=2, max_elapsed=20)) as mgr:
            mgr.save(1, {"w": torch.ones(1 << 20)})
            mgr.wait(remote=True, timeout=60)
            mgr.save(2, {"w": torch.ones(8 << 20) * 2})  # 32 MiB: more than the socket buffers hold
            started = time.monotonic()
            try:
                with pytest.raises(RemoteError, match=r"Uploading step-000000000002 .* failed"):
                    mgr.wait(remote=True, timeout=120)  # a TimeoutError here would mean the upload hung
            finally:
                os.killpg(server.proc.pid, signal.SIGCONT)
            assert frozen.is_set() and time.monotonic() - started < 120
            assert mgr.remote_watermark == 1
            mgr.save(3, {"w": torch.ones(1 << 20) * 3})
            mgr.wait(remote=True, timeout=60)
            assert mgr.remote_watermark == 3
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
