import pytest

from spotsafe.policy import KeepEvery, KeepLast, as_retention, select_deletions


def at_zero(steps):
    """``(step, created)`` pairs for rules that do not look at times."""
    return [(s, 0.0) for s in steps]


def test_keeps_last_n():
    assert select_deletions(as_retention(2), at_zero([10, 20, 30, 40]), 40) == [10, 20]


def test_keep_every_keeps_multiples_forever():
    policy = as_retention(KeepLast(2) | KeepEvery(50))
    assert select_deletions(policy, at_zero(range(10, 101, 10)), 100) == [10, 20, 30, 40, 60, 70, 80]


def test_never_deletes_newer_than_committed_nor_the_newest():
    # a newer step from an abandoned timeline stays; only older ones are pruned
    assert select_deletions(as_retention(1), at_zero([10, 20, 30, 90]), 30) == [10, 20]


def test_rejects_keep_zero():
    with pytest.raises(ValueError, match="keep=0"):
        as_retention(0)
