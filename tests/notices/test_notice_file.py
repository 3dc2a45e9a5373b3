"""The notice file is read like a checkpoint member: a regular file, a few bytes, never blocking."""

from __future__ import annotations

import os
import time

from helpers import wait_for

from spotsafe.notices import FileTrigger, NoticeWatcher


def test_a_fifo_at_the_notice_path_is_a_notice_and_never_hangs_the_poller(tmp_path):
    path = tmp_path / "preempt-now"
    src = FileTrigger(path, interval=0.05, grace=12)
    with NoticeWatcher([src]) as w:
        time.sleep(0.15)
        assert w.notice is None
        os.mkfifo(path)  # nobody ever writes to it: a blocking open or read would hang forever
        assert wait_for(lambda: w.notice is not None)
        assert wait_for(lambda: not src.active, 2.0)  # the poller finished; it is not stuck in a read
    assert w.notice.source == "file" and 11 <= w.notice.seconds_left() <= 12.01  # the default grace


def test_a_symlink_at_the_notice_path_is_not_followed(tmp_path):
    target = tmp_path / "secret"
    target.write_text("5")
    target.chmod(0o600)
    path = tmp_path / "preempt-now"
    src = FileTrigger(path, interval=0.05, grace=12)
    with NoticeWatcher([src]) as w:
        path.symlink_to(target)
        assert wait_for(lambda: w.notice is not None)
    assert 11 <= w.notice.seconds_left() <= 12.01  # the link's target ("5") was not read


def test_only_the_first_bytes_of_a_large_notice_file_are_read(tmp_path):
    path = tmp_path / "preempt-now"
    path.write_text("45" + " " * 62 + "9" * (1 << 20))  # 45 in the first 64 bytes, then a megabyte never read
    src = FileTrigger(path, interval=0.05, grace=12)
    with NoticeWatcher([src]) as w:
        assert wait_for(lambda: w.notice is not None)
    assert 44 <= w.notice.seconds_left() <= 45.01
