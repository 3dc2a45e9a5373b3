"""One writer per run root, with real processes, real files and the real S3 server.

The failure this prevents: two jobs on one root (a resubmitted SLURM job, a leftover pod,
a second spot VM on the same remote) both wrote, one finished with exit 0 while the root's
final checkpoint held the other's weights, and retention kept 6 checkpoints with keep_last=3.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import pytest
import torch
from conftest import child_env
from helpers import read_remote, remote_sizes, write_remote

import spotsafe
from spotsafe._format import committed_steps, step_dir
from spotsafe._storage import LeaseOptions, open_storage
from spotsafe.errors import LeaseLostError, ReadOnlyRootError, RootLockedError

CHILD = str(Path(__file__).with_name("writer_child.py"))
LOCK = ".spotsafe-writer.lock"
LEASE = ".spotsafe-lease.json"
FAST = LeaseOptions(ttl=3, renew_every=0.5, settle=0.2)


def start_writer(root, value: float, steps: int, hold: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CHILD, str(root), str(value), str(steps), str(hold), *extra],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """The first stdout line of ``proc`` that starts with ``prefix`` (bounded in time)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                return line.strip()
    finally:
        sel.unregister(proc.stdout)
    proc.kill()
    raise AssertionError(f"{prefix!r} never came; stderr: {proc.stderr.read()}")


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime (ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def read_lease(url: str) -> dict:
    return json.loads(read_remote(url, LEASE))


def write_lease(url: str, **fields) -> None:
    now = time.time()
    doc = {"host": "other-node", "pid": 4242, "run_id": "other-run", "attempt": 1, "since": "2030-01-01T00:00:00+00:00",
           "token": "f" * 32, "heartbeat": _iso(now), "expires": _iso(now + 60), "ttl_s": 60}
    doc.update(fields)
    write_remote(url, LEASE, json.dumps(doc).encode())


def _iso(ts: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_first_whose_checkpoints_stay_its_own(tmp_path):
    root, hold = tmp_path / "run", tmp_path / "go"
    first = start_writer(root, 100.0, 6, hold)
    try:
        pid = int(wait_for_line(first, "holding").split()[1])
        wait_for_line(first, "saved 1")
        second = subprocess.run([sys.executable, CHILD, str(root), "200", "6", str(hold)], env=child_env(),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "holding" not in second.stdout
        message = second.stderr.strip().splitlines()[-1]
        assert message.startswith("spotsafe.errors.RootLockedError: Run root ")
        assert f"(host {socket.gethostname()}, pid {pid}, " in message and ", since 20" in message
        assert message.endswith("wait for it to stop, stop it, or use another root (readers need no lock: pass "
                                "read_only=True).")
        hold.touch()
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0 and "done" in out, err
    finally:
        first.kill()
    assert committed_steps(open_storage(root)) == [4, 5, 6]  # keep_last=3 held
    with spotsafe.CheckpointManager(root, read_only=True) as reader:
        state = {"w": None}
        assert reader.restore(state) == 6
    assert torch.equal(state["w"], torch.full((1000,), 106.0))  # the first job's own final weights
    for step in (4, 5):
        with spotsafe.CheckpointManager(root, read_only=True) as reader:
            reader.restore(state, step=step)
        assert torch.equal(state["w"], torch.full((1000,), 100.0 + step))


def test_a_sigkilled_writer_s_lock_is_taken_at_once_even_with_a_forked_worker_alive(tmp_path):
    root, hold = tmp_path / "run", tmp_path / "never"
    first = start_writer(root, 100.0, 3, hold, "--fork-worker")
    worker = None
    try:
        worker = int(wait_for_line(first, "worker").split()[1])
        pid = int(wait_for_line(first, "holding").split()[1])
        wait_for_line(first, "saved 1")
        assert json.loads((root / LOCK).read_text())["pid"] == pid
        with pytest.raises(RootLockedError, match=f"pid {pid},"):
            spotsafe.CheckpointManager(root)
        os.kill(pid, signal.SIGKILL)
        first.wait(timeout=30)
        assert os.path.exists(f"/proc/{worker}")  # the forked worker lives on, and holds no lock
        t0 = time.monotonic()
        with spotsafe.CheckpointManager(root, run_id="next") as mgr:
            took = time.monotonic() - t0
            holder = json.loads((root / LOCK).read_text())
            assert holder["pid"] == os.getpid() and holder["run_id"] == "next"
            state = {"w": None}
            assert mgr.restore(state) == 1 and torch.equal(state["w"], torch.full((1000,), 101.0))
            mgr.save(2, {"w": torch.zeros(3)})
        assert took < 2.0
    finally:
        first.kill()
        try:
            if worker is not None:
                os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_managers_in_one_process_on_one_root_the_second_is_refused_until_the_first_closes(tmp_path):
    first = spotsafe.CheckpointManager(tmp_path / "run")
    with pytest.raises(RootLockedError, match=r"another CheckpointManager in this process \(host .*, pid "
                                              rf"{os.getpid()},.*close that one first"):
        spotsafe.CheckpointManager(tmp_path / "run")
    first.save(1, {"w": torch.ones(2)})
    first.close()
    with spotsafe.CheckpointManager(tmp_path / "run") as second:  # a closed manager released the lock
        second.save(2, {"w": torch.ones(2) * 2})
    assert committed_steps(open_storage(tmp_path / "run")) == [1, 2]


def test_read_only_restore_writes_nothing_and_needs_no_lock(tmp_path):
    root, hold = tmp_path / "run", tmp_path / "go"
    with spotsafe.CheckpointManager(root, keep=5) as mgr:
        for step in (1, 2):
            mgr.save(step, {"w": torch.full((10,), float(step))})
    (root / f"{step_dir(3)}.tmp-0123456789ab").mkdir()  # a leftover a writer would clean
    writer = start_writer(root, 100.0, 3, hold)  # a live writer holds the root meanwhile
    try:
        wait_for_line(writer, "saved 1")  # its step 1 replaced nothing: step 1 was already valid
        before = tree(root)
        time.sleep(0.05)  # an mtime written now would differ
        state = {"w": None}
        with spotsafe.CheckpointManager(root, read_only=True, keep=1) as reader:
            assert reader.restore(state) == 2
            assert [c.step for c in reader.checkpoints()] == [1, 2]
            with pytest.raises(ReadOnlyRootError, match="read_only=True"):
                reader.save(3, state)
        assert torch.equal(state["w"], torch.full((10,), 2.0))
        assert tree(root) == before
    finally:
        hold.touch()
        try:
            out, err = writer.communicate(timeout=120)
        finally:
            writer.kill()
    assert writer.returncode == 0 and "done" in out, err  # the reader did not disturb the writer
    with spotsafe.CheckpointManager(root, read_only=True) as reader:
        reader.restore(state)
    assert torch.equal(state["w"], torch.full((1000,), 103.0))  # and the root's newest is the writer's own
    missing = tmp_path / "nowhere"
    with spotsafe.CheckpointManager(missing, read_only=True) as reader:
        assert reader.restore({"w": None}) is None
    assert not missing.exists()  # not even the directory


def test_read_only_restore_from_a_read_only_mount(tmp_path):
    src, mnt = tmp_path / "src", tmp_path / "ro"
    with spotsafe.CheckpointManager(src) as mgr:
        mgr.save(7, {"w": torch.arange(5.0)})
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True, timeout=10).returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], check=True, capture_output=True, timeout=10)
        with pytest.raises(OSError):
            (mnt / "probe").write_bytes(b"")  # truly read-only, even for root
        with pytest.raises(ReadOnlyRootError, match=rf"Run root {mnt} is not writable here .*pass read_only=True"):
            spotsafe.CheckpointManager(mnt)  # a writer says what to do instead
        state = {"w": None}
        with spotsafe.CheckpointManager(mnt, read_only=True) as reader:
            assert reader.restore(state) == 7
        assert torch.equal(state["w"], torch.arange(5.0))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10)


def test_a_root_that_cannot_be_created_is_one_sentence(tmp_path):
    """A root under a directory nobody may write (or with a file in its way) says so and what to do,
    instead of a bare OSError from mkdir."""
    with pytest.raises(ReadOnlyRootError, match=r"^Run root /sys/spotsafe-nowhere/run cannot be created here \(.+\); "
                                                r"use a writable directory as the root\.$"):
        spotsafe.CheckpointManager("/sys/spotsafe-nowhere/run")
    (tmp_path / "file").write_bytes(b"x")
    for root in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(NotADirectoryError, match=rf"^Run root {root} cannot be created: {tmp_path / 'file'} is a "
                                                     r"file, not a directory; use a directory path as the root\.$"):
            spotsafe.CheckpointManager(root)
    assert (tmp_path / "file").read_bytes() == b"x"


# -- the remote lease ---------------------------------------------------------------------


def test_a_second_writer_on_the_same_remote_is_refused_and_a_dead_one_taken_over(s3_url, tmp_path):
    hold = tmp_path / "never"
    first = start_writer(tmp_path / "node-a", 100.0, 3, hold, "--remote", s3_url)
    try:
        pid = int(wait_for_line(first, "holding").split()[1])
        wait_for_line(first, "saved 1")
        lease = read_lease(s3_url)
        assert (lease["host"], lease["pid"]) == (socket.gethostname(), pid)
        with pytest.raises(RootLockedError, match=rf"Remote {s3_url} is being written by another job \(host "
                                                  rf"{socket.gethostname()}, pid {pid}, since .*last heartbeat \d+s "
                                                  r"ago, lease expires .*\); wait for it to stop, stop it, or use "
                                                  "another remote"):
            spotsafe.CheckpointManager(tmp_path / "node-b", remote=s3_url)
        assert not (tmp_path / "node-b" / LOCK).read_text()  # its local lock was released again
        os.kill(pid, signal.SIGKILL)
        first.wait(timeout=30)
        t0 = time.monotonic()
        with spotsafe.CheckpointManager(tmp_path / "node-b", remote=s3_url) as mgr:  # same host, dead pid
            assert time.monotonic() - t0 < 5
            assert read_lease(s3_url)["pid"] == os.getpid()
            state = {"w": None}
            assert mgr.restore(state) == 1 and torch.equal(state["w"], torch.full((1000,), 101.0))
        with pytest.raises(FileNotFoundError):
            read_lease(s3_url)  # released on close
    finally:
        first.kill()


def test_an_expired_lease_is_taken_over_a_live_one_of_another_host_refused(s3_url, tmp_path):
    write_lease(s3_url, expires=_iso(time.time() + 60))
    with pytest.raises(RootLockedError, match=r"\(host other-node, pid 4242, run other-run, attempt 1, since 2030"):
        spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url, lease=FAST)
    assert read_lease(s3_url)["host"] == "other-node"  # left alone
    write_lease(s3_url, expires=_iso(time.time() - 1))
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url, lease=FAST, run_id="mine") as mgr:
        lease = read_lease(s3_url)
        assert (lease["host"], lease["pid"], lease["run_id"]) == (socket.gethostname(), os.getpid(), "mine")
        mgr.save(1, {"w": torch.ones(3)})
        mgr.wait(remote=True, timeout=30)
    assert committed_steps(open_storage(s3_url)) == [1]


def test_the_same_run_on_another_host_waits_for_the_lease_to_expire(s3_url, tmp_path):
    write_lease(s3_url, run_id="job-7", heartbeat=_iso(time.time()), expires=_iso(time.time() + 2), ttl_s=3)
    t0 = time.monotonic()
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url, lease=FAST, run_id="job-7", attempt=2):
        took = time.monotonic() - t0
        lease = read_lease(s3_url)
        assert (lease["pid"], lease["run_id"], lease["attempt"]) == (os.getpid(), "job-7", 2)
    assert 1.5 < took < 8


def test_the_heartbeat_renews_and_a_lost_lease_stops_the_writer(s3_url, tmp_path):
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url, lease=FAST) as mgr:
        first = read_lease(s3_url)
        time.sleep(1.5)
        later = read_lease(s3_url)
        assert later["token"] == first["token"] and later["expires"] > first["expires"]  # renewed
        mgr.save(1, {"w": torch.ones(3)})
        mgr.wait(remote=True, timeout=30)
        write_lease(s3_url, host="usurper", pid=99)  # another writer took the lease over
        deadline = time.monotonic() + 10
        with pytest.raises(LeaseLostError, match=r"lost the writer lease on .*\(host usurper, pid 99, .*holds it "
                                                  r"now\).*stop one of the two jobs"):
            while time.monotonic() < deadline:
                mgr.save(2, {"w": torch.ones(3) * 2})
                mgr.wait(timeout=30)
                time.sleep(0.1)
        with pytest.raises(LeaseLostError):
            mgr.close()
    assert committed_steps(open_storage(s3_url)) == [1]  # nothing written there after the loss
    assert read_lease(s3_url)["host"] == "usurper"  # and the other writer's lease left alone


def test_a_renewal_whose_answer_was_lost_keeps_the_lease(s3_url, tmp_path):
    """A renewal PUT lands but its answer is lost (a read timeout; botocore resends the request):
    the lease's ETag moved, so the next conditional renewal is refused. The lease still holds
    this writer's token, so the writer keeps it instead of stopping as if another job took it."""
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url, lease=FAST) as mgr:
        ours = read_lease(s3_url)
        landed = {**ours, "heartbeat": _iso(time.time())}  # the renewal whose answer never came
        write_remote(s3_url, LEASE, json.dumps(landed).encode())
        time.sleep(1.5)  # three heartbeats
        mgr.save(1, {"w": torch.ones(3)})
        mgr.wait(remote=True, timeout=30)
        assert read_lease(s3_url)["token"] == ours["token"]
    assert committed_steps(open_storage(s3_url)) == [1]


def test_close_releases_the_lease_after_a_renewal_whose_answer_was_lost(s3_url, tmp_path):
    """The same lost answer just before close: the lease's ETag moved, it still holds our token, and
    it is deleted, so the next writer need not wait for it to expire."""
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url, lease=LeaseOptions(ttl=60, renew_every=20)):
        ours = read_lease(s3_url)
        write_remote(s3_url, LEASE, json.dumps({**ours, "heartbeat": _iso(time.time())}).encode())
    with pytest.raises(FileNotFoundError):
        read_lease(s3_url)


def test_a_lease_still_pending_at_close_is_never_taken_afterwards(s3_url, tmp_path):
    """A remote unreachable at start leaves the lease pending, and the heartbeat keeps trying to take
    it (here: waiting for the same run's lease from another host to expire). Once closed, it gives up:
    it must not take the lease later and leave it held, with no heartbeat, against the next writer."""
    from spotsafe._storage import Owner, RemoteLease

    write_lease(s3_url, run_id="job-9", heartbeat=_iso(time.time()), expires=_iso(time.time() + 3), ttl_s=3)
    lease = RemoteLease(open_storage(s3_url), LEASE, Owner.this_process("job-9"), FAST)
    lease.defer(ConnectionRefusedError(111, "Connection refused"))  # as the manager does at start
    lease.start()
    time.sleep(1.0)  # the heartbeat is now waiting for the other host's lease to expire
    lease.release()
    time.sleep(5.0)  # past that expiry
    assert lease.state == "released"
    assert read_lease(s3_url)["host"] == "other-node"  # left as it was: expired, for the next writer to take


def test_a_url_root_taken_over_during_a_save_raises_the_lease_sentence_itself(s3_url):
    """The background save of a URL root finds, at its commit, that another writer took the lease: the
    caller gets that LeaseLostError as it is, not wrapped in 'fix that cause, then save again'."""
    with spotsafe.CheckpointManager(s3_url, lease=LeaseOptions(ttl=60, renew_every=20)) as mgr:
        mgr.save(1, {"w": torch.ones(3)})
        mgr.wait()
        write_lease(s3_url, host="usurper", pid=99)  # no heartbeat will notice before the next commit
        mgr.save(2, {"w": torch.ones(3) * 2})
        with pytest.raises(LeaseLostError, match=r"^This process lost the writer lease on .*\(host usurper, pid 99, "
                                                  r".*holds it now\), so it stopped writing there; stop one of the two "
                                                  r"jobs, then restart this one \(.*\)\.$"):
            mgr.wait()
        with pytest.raises(LeaseLostError):
            mgr.close()
    assert committed_steps(open_storage(s3_url)) == [1]
    assert read_lease(s3_url)["host"] == "usurper"


def test_read_only_restore_from_the_remote_takes_no_lease_and_writes_nothing(s3_url, tmp_path):
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url) as mgr:
        mgr.save(5, {"w": torch.arange(4.0)})
        mgr.wait(remote=True, timeout=30)
    write_lease(s3_url)  # a live writer elsewhere
    before = remote_sizes(s3_url)
    state = {"w": None}
    with spotsafe.CheckpointManager(tmp_path / "reader", remote=s3_url, read_only=True) as reader:
        assert reader.restore(state) == 5 and reader.restored_tier == "remote"
    assert torch.equal(state["w"], torch.arange(4.0))
    assert remote_sizes(s3_url) == before
    assert not (tmp_path / "reader").exists()


def test_a_store_without_conditional_writes_gets_write_then_read_back(tmp_path):
    """memory:// has no If-Match: the lease is written, then read back to see who won."""
    import uuid

    url = f"memory://lease-{uuid.uuid4().hex[:8]}/run"
    with spotsafe.CheckpointManager(tmp_path / "a", remote=url, lease=FAST) as mgr:
        assert read_lease(url)["pid"] == os.getpid()
        with pytest.raises(RootLockedError, match=rf"Remote {url} is being written by another job \(host "):
            spotsafe.CheckpointManager(tmp_path / "b", remote=url)
        mgr.save(1, {"w": torch.ones(3)})
        mgr.wait(remote=True, timeout=30)
    with pytest.raises(FileNotFoundError):
        read_lease(url)
    with spotsafe.CheckpointManager(tmp_path / "b", remote=url) as mgr:  # free again
        assert mgr.restore({"w": None}) == 1


@pytest.mark.slow
def test_a_remote_unreachable_at_start_is_leased_once_it_is_back_then_uploaded_to(s3_private, tmp_path):
    from spotsafe import Backoff

    server = s3_private
    server.make_bucket("bkt")
    url, opts = "s3://bkt/run", server.storage_options()
    server.stop()
    with spotsafe.CheckpointManager(tmp_path / "run", remote=url, storage_options=opts, lease=FAST,
                                    upload_backoff=Backoff(base=0.5, cap=2.0, attempts=40, max_elapsed=90)) as mgr:
        mgr.save(1, {"w": torch.ones(3)})  # local disk works meanwhile
        mgr.wait()
        server.start()  # from this thread: the server dies with the thread that started it
        mgr.wait(remote=True, timeout=90)
        assert json.loads(read_remote(url, LEASE, server.client()))["pid"] == os.getpid()
    assert committed_steps(open_storage(url, opts)) == [1]


@pytest.mark.slow
def test_a_url_root_unreachable_at_start_is_one_sentence(s3_private):
    """A URL root whose store does not answer cannot be written or restored from: refused at once in
    one sentence (it was a bare botocore EndpointConnectionError), and no lease is left behind."""
    from spotsafe.errors import RemoteUnavailableError

    s3_private.make_bucket("bkt")
    url, opts = "s3://bkt/run", s3_private.storage_options()
    s3_private.stop()
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailableError, match=r"^Cannot reach the run root s3://bkt/run \(.*\); check the URL, "
                                                     r"the endpoint and the network, then start again\.$"):
        spotsafe.CheckpointManager(url, storage_options=opts)
    assert time.monotonic() - t0 < 30
    s3_private.start()
    with spotsafe.CheckpointManager(url, storage_options=opts) as mgr:  # nothing held: free to take
        mgr.save(1, {"w": torch.ones(2)})
    assert committed_steps(open_storage(url, opts)) == [1]


def test_a_refused_run_leaves_nothing_in_the_holder_s_root(tmp_path):
    root = tmp_path / "run"
    with spotsafe.CheckpointManager(root) as holder:
        holder.save(1, {"w": torch.ones(4)})
        holder.wait()
        before = tree(root)
        script = ("import spotsafe, torch\n"
                  f"with spotsafe.Run({str(root)!r}, {{'w': torch.zeros(4)}}, notices=None) as run:\n"
                  "    for step in run.steps(3):\n"
                  "        pass\n")
        proc = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1 and "RootLockedError" in proc.stderr
        assert f"pid {os.getpid()}," in proc.stderr.strip().splitlines()[-1]
        assert tree(root) == before  # no event file, no checkpoint, nothing touched
    assert committed_steps(open_storage(root)) == [1]


def test_the_same_run_s_wait_is_bounded_whatever_the_lease_document_claims():
    """A lease of the same run from another host claiming a TTL of 30 years is waited for at most
    10 minutes (on an injected clock), then taken over: its heartbeat never moved."""
    import uuid

    from spotsafe._storage import Owner, RemoteLease

    url = f"memory://lease-{uuid.uuid4().hex[:8]}/run"
    write_lease(url, run_id="same-run", ttl_s=1e9, expires=_iso(time.time() + 1e9))
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    owner = Owner.this_process("same-run", 2)
    lease = RemoteLease(open_storage(url), LEASE, owner, LeaseOptions(ttl=60, renew_every=15, settle=0.0),
                        clock=lambda: now[0], wall=lambda: 1.9e9 + now[0], sleep=sleep)
    lease.acquire()
    try:
        assert lease.state == "held" and read_lease(url)["token"] != "f" * 32   # ours now
        assert 600 <= now[0] <= 603                                            # waited the cap, not 30 years
    finally:
        lease.release()
