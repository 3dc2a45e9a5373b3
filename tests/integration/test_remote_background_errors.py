"""An upload that fails for real (the S3 server stopped) reaches the caller once, as a RemoteError.

The local twins (a full disk, an undeletable file) are in tests/unit/test_background_errors.py.
"""

from __future__ import annotations

import logging

import pytest
import torch

import spotsafe
from spotsafe import Backoff
from spotsafe._format import committed_steps, step_dir
from spotsafe._storage import open_storage
from spotsafe.errors import RemoteError

pytestmark = pytest.mark.slow


def test_an_upload_to_a_stopped_server_is_raised_once_and_the_next_one_lands(s3_private, tmp_path, caplog):
    server = s3_private
    server.make_bucket("bkt")
    url, opts, root = "s3://bkt/run", server.storage_options(), tmp_path / "run"
    fast = Backoff(base=0.1, cap=0.3, attempts=3, max_elapsed=10)
    with spotsafe.CheckpointManager(root, remote=url, storage_options=opts, upload_backoff=fast, rng=False) as mgr:
        mgr.save(1, {"w": torch.ones(1000)})
        mgr.wait(remote=True, timeout=60)
        server.stop()
        mgr.save(2, {"w": torch.full((1000,), 2.0)})  # durable locally; its upload meets a dead server
        with pytest.raises(RemoteError, match=rf"^Uploading {step_dir(2)} to {url} failed after 2 retries \(.*\); "
                                              rf"the newest step confirmed on the remote is still {step_dir(1)}\.$"):
            mgr.wait(remote=True, timeout=60)
        assert "retry 1" in caplog.text  # retried with backoff before it was given up
        assert mgr.wait().step == 2  # raised once: the next calls are clean
        assert mgr.wait_uploaded(2, timeout=0) is False and mgr.remote_watermark == 1
        assert committed_steps(open_storage(root)) == [1, 2]  # nothing lost locally
        server.start()  # from this thread: the server dies with the thread that started it
        mgr.save(3, {"w": torch.full((1000,), 3.0)})
        assert mgr.wait(remote=True, timeout=60).step == 3  # the uploads go on
        assert mgr.remote_watermark == 3
    assert committed_steps(open_storage(url, opts)) == [1, 3]  # step 2 never reached it, nothing half there
    state = {"w": None}
    with spotsafe.CheckpointManager(tmp_path / "new-node", remote=url, storage_options=opts, rng=False) as mgr:
        assert mgr.restore(state) == 3
    assert torch.equal(state["w"], torch.full((1000,), 3.0))


@pytest.fixture(autouse=True)
def _log_retries(caplog):
    caplog.set_level(logging.WARNING, logger="spotsafe")
