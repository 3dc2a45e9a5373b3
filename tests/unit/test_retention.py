import pytest

from spotsafe.engine import select_deletions


def test_keeps_last_n():
    assert select_deletions([10, 20, 30, 40], committed=40, keep_last=2) == [10, 20]


def test_keep_every_keeps_multiples_forever():
    assert select_deletions(range(10, 101, 10), committed=100, keep_last=2, keep_every=50) == [10, 20, 30, 40, 60, 70, 80]


def test_never_deletes_newer_than_committed_nor_the_newest():
    # a newer step from an abandoned timeline stays; only older ones are pruned
    assert select_deletions([10, 20, 30, 90], committed=30, keep_last=1) == [10, 20]


def test_rejects_keep_last_zero():
    with pytest.raises(ValueError, match="keep_last"):
        select_deletions([1], committed=1, keep_last=0)
