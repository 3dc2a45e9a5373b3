"""Retention policies combined with ``|``, the safety rules no policy overrides, and the manager
pruning its root under them. Creation times are given by hand (or by a fake clock), never slept."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest

import spotsafe
from spotsafe._engine import _pipeline
from spotsafe._engine import _retention as engine_retention
from spotsafe._engine._retention import StoreRetention
from spotsafe._format import MANIFEST, FileEntry, Manifest, step_dir
from spotsafe._storage import open_storage
from spotsafe.policy import EverySteps
from spotsafe.policy._retention import (
    KeepAny,
    KeepEvery,
    KeepEveryDuration,
    KeepLast,
    as_retention,
    select_deletions,
)

HOUR = 1_700_002_800.0  # a whole hour since the epoch, so 10-minute windows start on it


def at_zero(steps):
    """``(step, created)`` pairs for rules that do not look at times."""
    return [(s, 0.0) for s in steps]


def ten_minutes_apart(steps):
    """``(step, created)`` pairs, one checkpoint every 10 minutes from ``HOUR``."""
    return [(s, HOUR + 600.0 * i) for i, s in enumerate(steps)]


# -- each rule alone -----------------------------------------------------------------------
def test_keep_last_keeps_the_n_newest():
    assert KeepLast(2).keep(at_zero([10, 20, 30, 40])) == {30, 40}
    assert KeepLast(9).keep(at_zero([10, 20])) == {10, 20}
    assert select_deletions(KeepLast(2), at_zero([10, 20, 30, 40]), 40) == [10, 20]


def test_keep_every_keeps_the_multiples_of_k():
    assert KeepEvery(25).keep(at_zero(range(10, 101, 10))) == {50, 100}
    assert select_deletions(KeepEvery(25), at_zero(range(10, 101, 10)), 100) == [10, 20, 30, 40, 60, 70, 80, 90]


def test_keep_every_duration_keeps_the_oldest_checkpoint_of_each_window():
    # 30-minute windows from HOUR: [1, 2, 3], [4, 5, 6], [7]
    checkpoints = ten_minutes_apart(range(1, 8))
    assert KeepEveryDuration("30m").keep(checkpoints) == {1, 4, 7}
    assert select_deletions(KeepEveryDuration("30m"), checkpoints, 7) == [2, 3, 5, 6]


def test_keep_every_duration_windows_follow_the_clock_not_the_first_checkpoint():
    # a run that starts 20 minutes into the hour: its first window ends 10 minutes later
    checkpoints = [(s, HOUR + 1200.0 + 600.0 * i) for i, s in enumerate(range(1, 6))]
    assert KeepEveryDuration("30m").keep(checkpoints) == {1, 2, 5}


def test_keep_every_duration_goes_by_creation_time_within_a_window():
    # step 12 was written before step 11 (clocks of two writers): it is the older one
    assert KeepEveryDuration("1h").keep([(11, HOUR + 60.0), (12, HOUR + 30.0), (13, HOUR + 3600.0)]) == {12, 13}


@pytest.mark.parametrize("interval", ["1h", "60m", 3600, 3600.0, timedelta(hours=1)])
def test_keep_every_duration_reads_every_form_of_a_duration(interval):
    assert KeepEveryDuration(interval).seconds == 3600.0


# -- combinations ----------------------------------------------------------------------------
def test_or_keeps_what_any_part_keeps():
    policy = KeepLast(2) | KeepEvery(10)
    assert isinstance(policy, KeepAny)
    assert policy.keep(at_zero(range(1, 26))) == {10, 20, 24, 25}
    assert select_deletions(policy, at_zero(range(1, 26)), 25) == [s for s in range(1, 24) if s not in (10, 20)]


def test_or_with_a_duration_keeps_recent_ones_and_one_per_window():
    policy = KeepLast(2) | KeepEveryDuration("30m")
    assert select_deletions(policy, ten_minutes_apart(range(1, 9)), 8) == [2, 3, 5, 6]


def test_or_flattens_and_reads_back_as_written():
    policy = (KeepLast(2) | KeepEvery(10)) | (KeepEvery(1000) | KeepEveryDuration("10m"))
    assert [type(p) for p in policy.policies] == [KeepLast, KeepEvery, KeepEvery, KeepEveryDuration]
    assert repr(policy) == "KeepLast(2) | KeepEvery(10) | KeepEvery(1000) | KeepEveryDuration('10m')"


def test_only_time_based_rules_need_creation_times():
    assert not KeepLast(1).needs_times and not KeepEvery(5).needs_times
    assert not (KeepLast(1) | KeepEvery(5)).needs_times
    assert KeepEveryDuration("1h").needs_times
    assert (KeepLast(1) | KeepEvery(5) | KeepEveryDuration("1h")).needs_times


def test_as_retention_builds_the_manager_defaults_or_passes_keep_through():
    assert repr(as_retention()) == "KeepLast(3)"
    assert repr(as_retention(2)) == "KeepLast(2)"
    policy = KeepLast(1) | KeepEveryDuration("1h")
    assert as_retention(keep=policy) is policy


# -- the safety rules, for every rule --------------------------------------------------------
EVERY_RULE = [KeepLast(1), KeepEvery(1000), KeepEveryDuration("1h"), KeepLast(1) | KeepEvery(1000), KeepAny()]


@pytest.mark.parametrize("policy", EVERY_RULE, ids=repr)
def test_the_newest_checkpoint_is_always_kept(policy):
    # all in one window, none a multiple of 1000: each rule on its own would keep at most one
    checkpoints = [(s, HOUR + s) for s in (10, 20, 30, 40)]
    doomed = select_deletions(policy, checkpoints, 40)
    assert 40 not in doomed
    assert doomed == [s for s in (10, 20, 30) if s not in policy.keep(checkpoints)]


@pytest.mark.parametrize("policy", EVERY_RULE, ids=repr)
def test_the_committed_step_and_newer_ones_are_kept(policy):
    # 90 is from an abandoned timeline (the run resumed from 30): it stays, and so does 30
    checkpoints = [(s, HOUR + s) for s in (10, 20, 30, 90)]
    doomed = select_deletions(policy, checkpoints, 30)
    assert 30 not in doomed and 90 not in doomed
    assert doomed == [s for s in (10, 20) if s not in policy.keep([c for c in checkpoints if c[0] <= 30])]


@pytest.mark.parametrize("policy", EVERY_RULE, ids=repr)
def test_nothing_is_deleted_without_older_checkpoints(policy):
    assert select_deletions(policy, [], 5) == []
    assert select_deletions(policy, [(7, HOUR)], 5) == []


def test_keep_last_counts_only_the_steps_up_to_the_committed_one():
    assert select_deletions(KeepLast(2), at_zero([10, 20, 30, 90]), 30) == [10]


# -- validity decides, never the name -----------------------------------------------------------
@pytest.mark.parametrize("policy", EVERY_RULE, ids=repr)
def test_an_invalid_checkpoint_takes_no_slot_and_is_deleted_once_older(policy):
    # 30 fails its checksum: KeepLast(2) keeps 40 and 20, not 40 and 30
    checkpoints = [(s, HOUR + s) for s in (10, 20, 30, 40)]
    doomed = select_deletions(policy, checkpoints, 40, valid={10, 20, 40}, invalid={30})
    assert 30 in doomed and 40 not in doomed
    assert doomed == sorted({10, 20, 30} - policy.keep([c for c in checkpoints if c[0] != 30]))


def test_keep_last_one_keeps_the_newest_valid_when_the_newer_one_is_invalid():
    # the original data loss: 5 uploaded and valid, 9 corrupt; 5 must survive any prune
    assert select_deletions(KeepLast(1), at_zero([5, 9]), 5, valid={5}, invalid={9}) == []
    assert select_deletions(KeepLast(1), at_zero([1, 5, 9]), 5, valid={1, 5}, invalid={9}) == [1]


def test_a_higher_invalid_step_from_another_run_is_neither_kept_by_slot_nor_deleted():
    # step 900 is a garbage manifest: above the committed step, so never deleted; not valid, so
    # the newest valid checkpoint (30) is kept as the newest, and 20 by KeepLast(2)
    checkpoints = at_zero([10, 20, 30, 900])
    assert select_deletions(KeepLast(2), checkpoints, 30, valid={10, 20, 30}, invalid={900}) == [10]
    assert select_deletions(KeepLast(1), checkpoints, 30, valid={10, 20, 30}, invalid={900}) == [10, 20]


def test_an_unknown_verdict_keeps_the_checkpoint_without_a_slot():
    # 20 could not be read (neither valid nor invalid): kept, and KeepLast(2) still keeps 30 and 10
    checkpoints = at_zero([10, 20, 30])
    assert select_deletions(KeepLast(2), checkpoints, 30, valid={10, 30}) == []
    assert select_deletions(KeepLast(1), checkpoints, 30, valid={10, 30}) == [10]


def test_the_committed_step_is_valid_whatever_the_sets_say():
    assert select_deletions(KeepLast(1), at_zero([10, 20]), 20, valid={10}, invalid={20}) == [10]
    assert select_deletions(KeepLast(1), at_zero([10, 20]), 20, valid=set(), invalid=set()) == []


# -- bad arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda: KeepLast(0), r"KeepLast\(0\) is not a whole number of at least 1; use KeepLast\(1\)"),
    (lambda: KeepLast(2.5), r"KeepLast\(2.5\) is not a whole number"),
    (lambda: KeepLast(True), r"KeepLast\(True\) is not a whole number"),
    (lambda: KeepEvery(-10), r"KeepEvery\(-10\) is not a whole number of at least 1; use KeepEvery\(k\)"),
    (lambda: KeepEveryDuration(0), r"KeepEveryDuration\(0\) must be longer than 0 seconds; use e.g. '1h'"),
    (lambda: KeepEveryDuration("soon"), r"KeepEveryDuration='soon'.*15m"),
    (lambda: KeepEveryDuration(-60), r"KeepEveryDuration=-60 must be a finite duration"),
    (lambda: as_retention(0), r"keep=0 is not a whole number of at least 1; use keep=1 or more"),
    (lambda: spotsafe.CheckpointOptions(keep=-2), r"keep=-2 is not a whole number of at least 1"),
])
def test_bad_arguments_name_the_value_and_the_way_out(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_keep_must_be_a_number_or_a_retention_policy():
    with pytest.raises(TypeError, match=r"keep='5' is not a number or a retention policy; use keep=3, KeepLast\(n\)"):
        as_retention(keep="5")
    with pytest.raises(TypeError, match="keep=True is not a number"):
        as_retention(keep=True)
    with pytest.raises(TypeError):
        KeepLast(1) | EverySteps(5)  # a save policy says when to save, not what to keep


# -- one store: creation times read only when needed, and only once --------------------------
def write_checkpoint(root, step: int, created: float) -> None:
    """A committed (empty) checkpoint of ``step`` whose manifest says it was made at ``created``."""
    os.makedirs(root / step_dir(step))
    manifest = Manifest(step=step, files={}, components={}, created=created)
    (root / step_dir(step) / MANIFEST).write_bytes(manifest.to_json_bytes())


@pytest.fixture
def reads(monkeypatch):
    """The steps whose manifest the retention code parsed, in order."""
    seen: list[int] = []
    real = engine_retention.parse_manifest

    def counting(raw):
        manifest = real(raw)
        seen.append(manifest.step)
        return manifest

    monkeypatch.setattr(engine_retention, "parse_manifest", counting)
    return seen


def test_each_step_is_judged_once_and_vouched_or_committed_ones_never(root, reads):
    for i, s in enumerate(range(1, 7)):
        write_checkpoint(root, s, HOUR + 600.0 * i)
    retention = StoreRetention(open_storage(root), KeepLast(2) | KeepEvery(2))
    retention.vouch(4)  # this manager wrote it
    assert retention.deletions(5) == [1, 3]
    assert reads == [1, 2, 3]  # 4 vouched, 5 just committed, 6 newer: none of them read
    assert retention.deletions(5) == [1, 3]
    assert reads == [1, 2, 3]  # verdicts are cached per step


def test_creation_times_are_read_once_per_step(root, reads):
    storage = open_storage(root)
    retention = StoreRetention(storage, KeepEveryDuration("30m"))
    for i, s in enumerate(range(1, 5)):
        write_checkpoint(root, s, HOUR + 600.0 * i)
    assert retention.deletions(4) == [2, 3]
    assert reads == [1, 2, 3, 4]
    assert retention.deletions(4) == [2, 3]
    assert reads == [1, 2, 3, 4]
    write_checkpoint(root, 5, HOUR + 2400.0)
    assert retention.deletions(5) == [2, 3]  # nothing deleted them: the caller does that
    assert reads == [1, 2, 3, 4, 5]
    manifest = Manifest(step=6, files={}, components={}, created=HOUR + 3000.0)
    write_checkpoint(root, 6, manifest.created)
    retention.vouch(6, manifest)  # the manager hands over the time of what it commits
    assert retention.deletions(6) == [2, 3, 5]
    assert reads == [1, 2, 3, 4, 5]


def test_an_invalid_checkpoint_takes_no_slot_and_goes_an_unreadable_one_stays(root, reads):
    for s in range(1, 6):
        write_checkpoint(root, s, HOUR)
    (root / step_dir(4) / MANIFEST).write_bytes(b"{not json")  # garbage: invalid
    (root / step_dir(3) / "model.bin").write_bytes(b"x")  # a file its manifest does not list is harmless...
    manifest = Manifest(step=2, files={"model.bin": FileEntry(size=8, checksum="0" * 16)}, components={}, created=HOUR)
    (root / step_dir(2) / MANIFEST).write_bytes(manifest.to_json_bytes())  # ...a listed one missing is invalid
    (root / step_dir(1) / MANIFEST).unlink()
    (root / step_dir(1) / MANIFEST).mkdir()  # cannot be read at all: no verdict
    retention = StoreRetention(open_storage(root), KeepLast(2))
    # KeepLast(2) keeps 5 and 3, the two newest *valid* ones; 4 and 2 are invalid; 1 is unknown
    assert retention.deletions(5) == [2, 4]
    assert retention.verdict(4).valid is False and "not valid JSON" in retention.verdict(4).reason
    assert retention.verdict(2).reason == "model.bin is missing"
    assert retention.verdict(1) is None


# -- the manager on a real root --------------------------------------------------------------
def remaining_steps(root) -> list[int]:
    return sorted(int(n.split("-")[1]) for n in os.listdir(root) if n.startswith("step-"))


def test_manager_prunes_its_root_under_a_combined_policy(root):
    with spotsafe.CheckpointManager(root, keep=KeepLast(2) | KeepEvery(10)) as mgr:
        assert repr(mgr) == f"CheckpointManager({mgr.root!r}, keep=KeepLast(2) | KeepEvery(10))"
        for step in range(1, 26):
            mgr.save(step, {"v": step})
            mgr.wait()
        assert [c.step for c in mgr.checkpoints()] == [10, 20, 24, 25]
        assert all(c.valid for c in mgr.checkpoints())
    assert remaining_steps(root) == [10, 20, 24, 25]


def test_manager_default_retention_reads_no_manifest_to_prune(root, reads):
    with spotsafe.CheckpointManager(root, keep=2, async_save=False) as mgr:
        assert repr(mgr.keep) == "KeepLast(2)" and mgr.options.keep == 2
        for step in range(1, 6):
            mgr.save(step, {"v": step})
    assert remaining_steps(root) == [4, 5]
    assert reads == []


@pytest.fixture
def clock(monkeypatch):
    """Every manifest the manager writes says it was created 10 minutes after the previous one."""
    times = iter(HOUR + 600.0 * i for i in range(1000))

    def manifest(**fields):
        return Manifest(created=next(times), **fields)

    monkeypatch.setattr(_pipeline, "Manifest", manifest)


def test_manager_keeps_the_oldest_checkpoint_of_every_half_hour(root, clock):
    with spotsafe.CheckpointManager(root, keep=KeepEveryDuration("30m")) as mgr:
        for step in range(1, 13):
            mgr.save(step, {"v": step})
            mgr.wait()
        kept = mgr.checkpoints()
    # steps 1..12 made at HOUR + 0, 10, ..., 110 minutes: windows start at 0, 30, 60 and 90
    assert [c.step for c in kept] == [1, 4, 7, 10, 12]
    assert [c.manifest.created - HOUR for c in kept] == [0.0, 1800.0, 3600.0, 5400.0, 6600.0]
    assert remaining_steps(root) == [1, 4, 7, 10, 12]


def test_manager_combines_duration_with_keep_last(root, clock):
    with spotsafe.CheckpointManager(root, keep=KeepLast(2) | KeepEveryDuration("1h"), async_save=False) as mgr:
        for step in range(100, 1300, 100):
            mgr.save(step, {"v": step})
    # made every 10 minutes: 100 opens the first hour, 700 the second; 1100 and 1200 are the last two
    assert remaining_steps(root) == [100, 700, 1100, 1200]


def test_retention_policies_import_no_torch():
    code = "import sys, spotsafe.policy._retention; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_the_remote_is_pruned_under_the_same_policy(root, clock):
    remote = f"memory://retention-{uuid.uuid4().hex[:8]}/run"
    with spotsafe.CheckpointManager(root, remote=remote, keep=KeepLast(1) | KeepEveryDuration("30m")) as mgr:
        for step in range(1, 8):
            mgr.save(step, {"v": step})
            mgr.wait(remote=True, timeout=30)
        assert [c.step for c in mgr.checkpoints(remote=True)] == [1, 4, 7]
        assert all(c.valid for c in mgr.checkpoints(remote=True))
    assert remaining_steps(root) == [1, 4, 7]
