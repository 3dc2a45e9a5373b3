"""The Hugging Face Trainer through ``spotsafe.hf.attach``: the real Trainer (transformers 5), on CPU.

A tiny GPT-2 built from a config (dropout on), generated data, 2 epochs of 12 optimizer steps
(tests/integration/hf_train.py). Every interrupted run must end with weights, Adam state and
scheduler ``torch.equal`` to an uninterrupted stock Trainer run, and every step's logged loss
equal to the one that run logged.

The stock Trainer on the same interruptions, measured here (transformers 5.24; bench/bench_hf.py
prints them again):

* ``enable_jit_checkpoint=True`` and a SIGTERM at step 3: the handler waits 3 s, saves
  ``checkpoint-11`` at the start of step 12, runs step 12 anyway, and ``train()`` returns: the
  process exits 0 (a scheduler reads "finished") and the step after the checkpoint is lost.
* a half-written newest folder (a SIGKILL during ``_save_checkpoint``) beside good ones:
  ``train(resume_from_checkpoint=True)`` raises ``ValueError: Can't find a valid checkpoint`` (or
  ``FileNotFoundError`` for ``trainer_state.json`` when the weights were written): the job
  cannot restart without a person deleting the folder (test below).
* a byte flipped inside ``optimizer.pt`` of the newest folder: resumed from without a word.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_env, spotsafe_cli
from helpers import assert_same, communicate_or_kill

from spotsafe._format import check_checkpoint, committed_steps, read_manifest, step_dir
from spotsafe._storage import open_storage
from spotsafe._telemetry import read_events

pytestmark = pytest.mark.slow

HF_TRAIN = Path(__file__).with_name("hf_train.py")
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
STEPS, PER_EPOCH = 24, 12


@pytest.fixture(scope="module")
def hf():
    """tests/integration/hf_train.py imported here (transformers with it: 4 s, once)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import hf_train

    return hf_train


@pytest.fixture(scope="module")
def reference(hf, tmp_path_factory) -> dict:
    """The stock Trainer, uninterrupted: its final state and every step's logged loss."""
    torch.set_num_threads(1)  # as in the child processes
    trainer = hf.make_trainer(str(tmp_path_factory.mktemp("reference") / "out"), save_steps=1000)
    losses: dict[int, float] = {}
    trainer.add_callback(hf.Report(losses=losses))
    trainer.train()
    assert sorted(losses) == list(range(1, STEPS + 1))
    return {"state": hf.final_state(trainer), "losses": losses}


def attempts(out: str, rank: int = 0) -> list[dict]:
    """What each attempt's process printed (hf_train.py): where it resumed, each step's loss, whether it finished."""
    runs: list[dict] = []
    for line in out.splitlines():
        if m := re.match(rf"rank {rank} pid (\d+) resumed (\d+)$", line):
            runs.append({"pid": int(m[1]), "resumed": int(m[2]), "losses": {}, "done": None})
        elif m := re.match(rf"rank {rank} loss (\d+) (\S+)$", line):
            runs[-1]["losses"][int(m[1])] = float(m[2])
        elif m := re.match(rf"rank {rank} done (\d+)$", line):
            runs[-1]["done"] = int(m[1])
    return runs


def assert_losses(got: dict[int, float], reference: dict) -> None:
    assert got == {s: reference["losses"][s] for s in got}, "a step's loss differs from the uninterrupted run's"


def test_chaos_notice_mid_epoch_and_kill_across_the_epoch_boundary_end_bit_exact(tmp_path, reference):
    root, out = tmp_path / "run", tmp_path / "int.pt"
    # Seed 12 with a 2.4 s mean: a notice 1.55 s into the first attempt's training (step 6 or 7 of epoch 0,
    # at 0.26 s a step), then a SIGKILL 2.64 s into the second (step 16 or 17: epoch 1, past the boundary,
    # before checkpoint 20): its restart resumes from checkpoint 10 in epoch 0 and replays into epoch 1.
    r = subprocess.run([*spotsafe_cli(), "run", "--root", str(root), "--chaos", "2.4s", "--chaos-seed", "12",
                        "--chaos-max", "2", "--chaos-grace", "20s", "--seed", "0", "--",
                        sys.executable, str(HF_TRAIN), "--out", str(out), "--save-steps", "10", "--step-delay", "0.25"],
                       env=child_env(), capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    sup = [e for e in read_events(root / "events") if e.get("role") == "supervisor"]
    assert [e["action"] for e in sup if e["event"] == "chaos"] == ["notice", "kill"]
    assert [(e["cause"], e["exit_code"]) for e in sup if e["event"] == "exit"] == [
        ("preempted", 75), ("chaos_kill", None), ("done", 0)]

    first, second, last = attempts(r.stdout)
    stop = max(first["losses"])
    assert 0 < stop < PER_EPOCH and first["done"] is None  # the notice: mid-epoch 0
    assert second["resumed"] == stop                      # it lost nothing
    killed = max(second["losses"])
    assert PER_EPOCH < killed < 20 and second["done"] is None  # the kill: in epoch 1, before checkpoint 20
    assert last["resumed"] == 10 and last["done"] == STEPS  # back to epoch 0: the replay crosses the boundary
    for attempt in (first, second, last):  # replayed steps included: each step's loss as uninterrupted
        assert_losses(attempt["losses"], reference)
    assert set(first["losses"]) | set(last["losses"]) | set(second["losses"]) == set(range(1, STEPS + 1))
    assert_same(torch.load(out, weights_only=True), reference["state"])
    assert committed_steps(open_storage(str(root)))[-1] == STEPS  # a restart after the end finds the end


def test_a_corrupt_or_half_written_newest_checkpoint_is_skipped_where_stock_resume_fails(tmp_path, hf, reference,
                                                                                          caplog):
    import spotsafe
    import spotsafe.hf

    root, out = tmp_path / "run", tmp_path / "out"
    with spotsafe.Run(root, None, notices=None) as run:  # a run cut short after step 15 (its time ran out)
        trainer = hf.make_trainer(str(out), save_steps=5)
        trainer.add_callback(hf.Report(losses={}, stop_at=15))
        spotsafe.hf.attach(trainer, run)
        trainer.train(resume_from_checkpoint=run.resume_path())
    assert committed_steps(open_storage(str(root))) == [5, 10, 15]

    victim = root / step_dir(15) / "optimizer.pt"  # bit rot in the newest checkpoint: same size, one bit
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    (out / "checkpoint-20").mkdir()  # a SIGKILL during the Trainer's save of step 20: never handed over
    (out / "checkpoint-20" / "config.json").write_text("{}")
    (root / "step-000000000020.tmp-0123abcd").mkdir()  # and the commit it would have begun
    (root / "step-000000000020.tmp-0123abcd" / "model.safetensors").write_bytes(b"\0" * 100)

    stock = hf.make_trainer(str(out), save_steps=5)  # the stock Trainer's own resume picks checkpoint-20
    with pytest.raises(ValueError, match="Can't find a valid checkpoint"):
        stock.train(resume_from_checkpoint=True)

    losses: dict[int, float] = {}
    with pytest.warns(spotsafe.CheckpointSkippedWarning, match=step_dir(15)):
        with spotsafe.Run(root, None, notices=None) as run:
            trainer = hf.make_trainer(str(out), save_steps=5)
            trainer.add_callback(hf.Report(losses=losses))
            spotsafe.hf.attach(trainer, run)
            path = run.resume_path()
            assert path == str(root / step_dir(10))
            assert sorted(os.listdir(path)) == sorted([*os.listdir(out / "checkpoint-10"), "manifest.json"])
            with caplog.at_level(logging.WARNING, logger="spotsafe.hf"):
                trainer.train(resume_from_checkpoint=path)
    # the folders past step 10 are gone before the Trainer could write into them in place (checkpoint-15's
    # files were the corrupt commit's, by hard link)
    assert "Removed checkpoint-15, checkpoint-20 from" in caplog.text
    assert sorted(losses) == list(range(11, STEPS + 1))
    assert_losses(losses, reference)
    assert_same(hf.final_state(trainer), reference["state"])
    restore = [e for e in read_events(root / "events") if e["event"] == "restore"][-1]
    assert restore["step"] == 10 and len(restore["skipped"]) == 1 and step_dir(15) in restore["skipped"][0]
    storage = open_storage(str(root))  # step 15 written again, fresh: the run's checkpoints all verify
    assert committed_steps(storage) == [15, 20, 24]
    assert all(check_checkpoint(storage, s, deep=True).valid for s in (15, 20, 24))


def test_a_notice_exits_75_and_a_new_machine_resumes_from_s3_bit_exact(tmp_path, hf, reference, s3_url, caplog):
    import spotsafe
    import spotsafe.hf

    class Rotate(hf.TrainerCallback):
        """After spotsafe's callback: deletes each ``checkpoint-N`` the moment it is handed over, while the
        commit's checksums, fsync and upload still run on the links."""

        def on_save(self, args, state, control, **kw):
            shutil.rmtree(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    root, out = tmp_path / "run", tmp_path / "out"
    losses: dict[int, float] = {}
    with pytest.raises(SystemExit) as stopped:
        with spotsafe.Run(root, None, remote=s3_url, notices="signals") as run:
            # enable_jit_checkpoint=True: its SIGTERM handler would hide the notice (and exit 0); attach turns it off
            trainer = hf.make_trainer(str(out), save_steps=2, save_total_limit=1, jit=True)
            trainer.add_callback(hf.Report(losses=losses, sigterm_at=9))
            with caplog.at_level(logging.WARNING, logger="spotsafe.hf"):
                spotsafe.hf.attach(trainer, run)
            assert "enable_jit_checkpoint=True) is turned off" in caplog.text
            assert not any(type(cb).__name__ == "JITCheckpointCallback" for cb in trainer.callback_handler.callbacks)
            trainer.add_callback(Rotate())
            trainer.train(resume_from_checkpoint=run.resume_path())
    assert isinstance(stopped.value, spotsafe.Preempted) and stopped.value.code == 75
    assert sorted(losses) == list(range(1, 10))  # step 9's loss is logged before the exit, as every step's
    assert_losses(losses, reference)
    stop = [e for e in read_events(root / "events") if e["event"] == "stop"][-1]
    assert (stop["step"], stop["exit_code"], stop["tier"]) == (9, 75, "remote")
    # every folder the Trainer's save_steps wrote was deleted right after it was handed over (the notice's
    # own checkpoint-9 passes no on_save)...
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-9"]
    local, remote = open_storage(str(root)), open_storage(s3_url)
    # ...and every commit is whole, here and on S3 (where an upload with newer ones queued behind it may be
    # skipped, and retention may keep one more here until its upload is settled)
    assert committed_steps(local)[-3:] == [6, 8, 9] and committed_steps(remote)[-1] == 9
    for storage in (local, remote):
        assert all(check_checkpoint(storage, s, deep=True).valid for s in committed_steps(storage))

    shutil.rmtree(root)  # a new machine: nothing local
    losses.clear()
    with spotsafe.Run(tmp_path / "new", None, remote=s3_url, notices="signals") as run:
        trainer = hf.make_trainer(str(tmp_path / "new-out"), save_steps=2, save_total_limit=1)
        trainer.add_callback(hf.Report(losses=losses))
        spotsafe.hf.attach(trainer, run)
        path = run.resume_path()
        assert path == str(tmp_path / "new" / step_dir(9))
        trainer.train(resume_from_checkpoint=path)
    assert sorted(losses) == list(range(10, STEPS + 1))
    assert_losses(losses, reference)
    assert_same(hf.final_state(trainer), reference["state"])
    restore = [e for e in read_events(tmp_path / "new" / "events") if e["event"] == "restore"][-1]
    assert (restore["step"], restore["tier"]) == (9, "remote")
    assert committed_steps(remote)[-1] == STEPS


def test_save_only_model_is_refused(tmp_path, hf):
    import spotsafe
    import spotsafe.hf

    with spotsafe.Run(tmp_path / "run", None, notices=None) as run:
        trainer = hf.make_trainer(str(tmp_path / "out"), save_only_model=True)
        with pytest.raises(ValueError, match=r"save_only_model=True\) leaves the optimizer, scheduler and RNG"):
            spotsafe.hf.attach(trainer, run)
        with pytest.raises(ValueError, match=r"Run\(root, None\)"):
            with spotsafe.Run(tmp_path / "other", {}, notices=None) as stateful:
                spotsafe.hf.attach(hf.make_trainer(str(tmp_path / "out")), stateful)


def last_stops(root: Path) -> dict[int, dict]:
    stops: dict[int, dict] = {}
    for e in read_events(root / "events"):
        if e["event"] == "stop":
            stops[e["rank"]] = e
    return stops


def torchrun(root: Path, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([TORCHRUN, "--nproc-per-node", "2", "--standalone", "--monitor-interval", "0.1",
                             str(HF_TRAIN), "--root", str(root), "--out", str(out), *args],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_two_ranks_stop_on_the_same_step_after_a_sigterm_to_one_then_resume(tmp_path):
    root, out = tmp_path / "run", tmp_path / "int.pt"
    p = torchrun(root, out, "--step-delay", "0.2")  # 6 steps an epoch at 2 ranks: checkpoints 5 and 10
    seen = []
    try:
        pid = None
        for line in p.stdout:  # bounded: the job ends by itself after 12 steps
            seen.append(line)
            if m := re.match(r"rank 1 pid (\d+) resumed", line):
                pid = int(m[1])
            if line.startswith("rank 1 loss 6 "):  # in epoch 1, past checkpoint 5
                break
        assert pid is not None
        os.kill(pid, signal.SIGTERM)  # rank 1 only: rank 0 hears of it through spotsafe's agreement
        rest, err = communicate_or_kill(p, 90)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    stops = last_stops(root)
    assert {r: s["exit_code"] for r, s in stops.items()} == {0: 75, 1: 75}, err[-3000:]
    stop = stops[0]["step"]
    assert stops[1]["step"] == stop and 6 < stop < 10
    for rank in (0, 1):  # each rank's last step (its loss logged) is the stop step
        (ran,) = attempts("".join(seen) + rest, rank)
        assert max(ran["losses"]) == stop and ran["done"] is None
    storage = open_storage(str(root))
    assert committed_steps(storage) == [5, stop]  # one checkpoint of the stop step, holding both ranks' RNG files
    manifest = read_manifest(storage, step_dir(stop))
    assert manifest.world_size == 2 and {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest.files)

    p = torchrun(root, out)
    rest, err = communicate_or_kill(p, 90)
    assert p.returncode == 0, err[-3000:]
    for rank in (0, 1):
        (again,) = attempts(rest, rank)
        assert again["resumed"] == stop and again["done"] == 12 and sorted(again["losses"]) == list(range(stop + 1, 13))
    assert attempts(rest, 0)[0]["losses"] == attempts(rest, 1)[0]["losses"]


def test_public_names(hf):
    import inspect

    import spotsafe.hf

    public = sorted(n for n, v in vars(spotsafe.hf).items() if not n.startswith("_") and not inspect.ismodule(v))
    assert spotsafe.hf.__all__ == public == ["SpotSafeCallback", "attach"]
