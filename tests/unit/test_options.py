"""One options object for the manager, taken by CheckpointManager and Run alike; ``keep`` spellings."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import spotsafe
from spotsafe.policy import KeepEvery, KeepLast


def steps_on_disk(root) -> list[int]:
    return sorted(int(n.split("-")[1]) for n in os.listdir(root) if n.startswith("step-") and ".tmp-" not in n)


def test_every_manager_setting_can_be_set_from_run(root):
    backoff = spotsafe.Backoff(base=0.01, cap=0.02, attempts=2, max_elapsed=1.0)
    lease = spotsafe.LeaseOptions(ttl=30, renew_every=5)
    settings = dict(keep=2, rng=False, async_save=False, when_busy="skip", max_pending_uploads=5,
                    upload_backoff=backoff, lease=lease)
    with spotsafe.Run(root, {"v": 0}, save_every=1, notices=None, **settings) as run:
        assert run.manager.options == spotsafe.CheckpointOptions(**settings)
        assert run.manager.when_busy == "skip" and run.manager.rng is False
        for _ in run.steps(5):
            pass
    assert steps_on_disk(root) == [4, 5]  # keep=2 reached the manager
    with spotsafe.Run(root, {"v": 0}, notices=None, options=spotsafe.CheckpointOptions(**settings)) as run:
        assert run.start_step == 5 and run.manager.options.upload_backoff is backoff


def test_run_takes_a_ready_manager_and_closes_it_at_the_end(root):
    state = {"w": torch.arange(4.0)}
    with spotsafe.CheckpointManager(root, keep=1) as mgr:
        mgr.save(2, state)
        mgr.wait()
    mgr = spotsafe.CheckpointManager(root, keep=1, when_busy="skip")
    with spotsafe.Run(None, state, save_every=1, notices=None, manager=mgr) as run:
        assert run.manager is mgr and run.root == mgr.root and run.start_step == 2
        for step in run.steps(4):
            state["w"] += step
    assert steps_on_disk(root) == [4]
    with pytest.raises(RuntimeError, match=r"is closed; create a new CheckpointManager"):
        mgr.save(5, state)
    with spotsafe.CheckpointManager(root, read_only=True) as reader:
        loaded = {"w": torch.zeros(4)}
        assert reader.restore(loaded) == 4 and torch.equal(loaded["w"], torch.arange(4.0) + 3 + 4)


def test_a_manager_and_settings_together_are_one_sentence(root, tmp_path):
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(ValueError, match=r"^Run got a ready manager and also keep=, when_busy=; set those on "
                                             r"the CheckpointManager, or pass the settings without a manager\.$"):
            spotsafe.Run(None, {}, manager=mgr, keep=3, when_busy="skip")
        with pytest.raises(ValueError, match=r"also options=;"):
            spotsafe.Run(None, {}, manager=mgr, options=spotsafe.CheckpointOptions())
        with pytest.raises(ValueError, match=r"pass root=None with a manager, or the manager of that root"):
            spotsafe.Run(tmp_path / "elsewhere", {}, manager=mgr)
        run = spotsafe.Run(root, {}, manager=mgr)  # the same root, spelled as given: accepted
        assert run.root == mgr.root
    with pytest.raises(ValueError, match=r"^CheckpointManager got options= and also keep=; put every setting"):
        spotsafe.CheckpointManager(root, options=spotsafe.CheckpointOptions(), keep=3)
    with pytest.raises(ValueError, match=r"Run writes checkpoints, so read_only=True cannot be one of its settings"):
        spotsafe.Run(root, {}, read_only=True)
    with spotsafe.CheckpointManager(root, read_only=True) as reader:
        with pytest.raises(ValueError, match=r"is read-only; pass a manager opened without read_only=True"):
            spotsafe.Run(None, {}, manager=reader)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'keep_lats'; the manager settings are"):
        spotsafe.CheckpointManager(root, keep_lats=3)
    with pytest.raises(ValueError, match=r"when_busy='later' is not one of \('wait', 'skip'\)"):
        spotsafe.CheckpointOptions(when_busy="later")
    with pytest.raises(ValueError, match=r"max_pending_uploads=0 is not a whole number of at least 1"):
        spotsafe.Run(root, {}, max_pending_uploads=0)


def test_keep_takes_a_number_or_a_policy_on_both(root):
    with spotsafe.CheckpointManager(root, keep=KeepLast(2) | KeepEvery(30)) as mgr:
        for s in range(10, 101, 10):
            mgr.save(s, {"v": s})
        mgr.wait()
    assert steps_on_disk(root) == [30, 60, 90, 100]
    with spotsafe.Run(root, {"v": 0}, save_every=1, notices=None, keep=1) as run:
        for _ in run.steps(103):
            pass
    assert steps_on_disk(root) == [103]


@pytest.mark.parametrize("make", [
    lambda root, **kw: spotsafe.CheckpointManager(root, **kw),
    lambda root, **kw: spotsafe.Run(root, {"v": 0}, notices=None, **kw).__enter__(),
], ids=["CheckpointManager", "Run"])
def test_keep_last_and_keep_every_still_work_with_one_warning_naming_keep(root, make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opened = make(root, keep_last=2, keep_every=30)
    assert [str(w.message) for w in caught] == [
        "keep_last=2, keep_every=30 are deprecated; pass keep=KeepLast(2) | KeepEvery(30) (from spotsafe.policy) "
        "instead."]
    assert caught[0].category is DeprecationWarning and caught[0].filename == __file__  # the caller's line
    mgr = opened.manager if isinstance(opened, spotsafe.Run) else opened
    for s in range(10, 101, 10):
        mgr.save(s, {"v": s})
    mgr.wait()
    opened.__exit__(None, None, None)
    assert steps_on_disk(root) == [30, 60, 90, 100]  # the same retention as before
    with pytest.warns(DeprecationWarning, match=r"^keep_last=1 is deprecated; pass keep=1 instead\.$"):
        make(root, keep_last=1).__exit__(None, None, None)
    with pytest.raises(ValueError, match=r"keep=3 replaces keep_last and keep_every, so keep_last=1 would be ignored"):
        make(root, keep=3, keep_last=1)
    with pytest.raises(ValueError, match=r"keep_every=0 is not a whole number of at least 1"):
        make(root, keep_every=0)


def test_when_busy_skip_never_skips_the_final_checkpoint_of_a_run(root):
    # a big state: step 2's policy save still persists when the loop ends at step 3 a moment later
    state = {"w": torch.zeros(24 * 2**20 // 4)}
    with spotsafe.Run(root, state, save_every=2, notices=None, when_busy="skip") as run:
        for step in run.steps(3):
            state["w"][0] = step
    with spotsafe.CheckpointManager(root, read_only=True) as reader:
        loaded = {"w": torch.zeros_like(state["w"])}
        assert reader.restore(loaded) == 3 and loaded["w"][0].item() == 3


def test_a_run_used_outside_its_with_block_says_so(root):
    run = spotsafe.Run(root, {"v": 0}, notices=None)
    with pytest.raises(RuntimeError, match=r"^This Run is not entered; use it as `with spotsafe.Run\(root, state\) as run:`"):
        run.log(loss=1.0)
    with pytest.raises(RuntimeError, match="not entered"):
        run.save()
    assert run.stop_requested is False and run.notice is None  # reading state stays safe
    assert not os.path.exists(os.path.join(root, "events"))  # nothing was written
