"""A framework's own checkpoint folder as a spotsafe checkpoint (save_files / local_copy / read_values),
and Run(root, None), the framework mode the integrations build on."""

import os
import signal

import pytest
import torch

import spotsafe
from spotsafe.errors import CheckpointSkippedWarning, CorruptCheckpointError, StateMismatchError


def write_folder(path, step, *, big=1000):
    """What a framework leaves: a flat folder of files (here: HF-like names)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(bytes([step % 256]) * big)
    (path / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (path / "rng_state.pth").write_bytes(os.urandom(64))
    return path


def files_of(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder)) if n != "manifest.json"}


def test_save_files_commits_the_folder_which_may_be_deleted_at_once(root, tmp_path):
    src = write_folder(tmp_path / "out" / "checkpoint-5", 5)
    expected = files_of(src)
    with spotsafe.CheckpointManager(root) as mgr:
        stats = mgr.save_files(5, src, kind="hf-trainer", epoch=1, metadata={"by": "test"})
        assert stats.bytes == sum(map(len, expected.values())) and stats.total_s is None  # in the background
        for f in src.iterdir():  # the framework's rotation deletes its folder while the commit runs
            f.unlink()
        src.rmdir()
        durable = mgr.wait()
        assert durable.step == 5 and durable.bytes == stats.bytes
        info = mgr.checkpoints()[-1]
    assert info.valid and info.step == 5 and info.manifest.epoch == 1 and info.manifest.metadata == {"by": "test"}
    comp = info.manifest.components["hf-trainer"]
    assert comp.kind == "files" and comp.tree == sorted(expected)
    assert files_of(root / "step-000000000005") == expected


def test_a_folder_rewritten_while_committed_is_refused_not_committed(root, tmp_path):
    src = write_folder(tmp_path / "ck", 3)
    with spotsafe.CheckpointManager(root, async_save=True) as mgr:
        mgr._persist_executor.submit(lambda: __import__("time").sleep(0.3))  # hold the persist thread
        mgr.save_files(3, src, kind="hf-trainer")
        with open(src / "model.safetensors", "r+b") as f:  # the framework writes the same inode again
            f.write(b"\xff" * 10)
        with pytest.raises(spotsafe.SaveFailedError, match="model.safetensors .* was written again"):
            mgr.wait()
    assert not (root / "step-000000000003").exists()


@pytest.mark.parametrize("make, match", [
    (lambda d: (d / "sub").mkdir(), "is a folder; spotsafe commits a flat folder"),
    (lambda d: (d / "manifest.json").write_text("{}"), "has a name a checkpoint cannot hold"),
    (lambda d: os.symlink("/etc/passwd", d / "link"), "is not a regular file"),
])
def test_what_a_checkpoint_cannot_hold_is_named_and_nothing_is_written(root, tmp_path, make, match):
    src = write_folder(tmp_path / "ck", 1)
    make(src)
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.raises(ValueError, match=match):
            mgr.save_files(1, src, kind="hf-trainer")
    assert sorted(os.listdir(root)) == [".spotsafe-writer.lock"]  # no temp folder left


def test_local_copy_skips_a_corrupt_newest_and_restore_refuses_files(root, tmp_path):
    with spotsafe.CheckpointManager(root) as mgr:
        for step in (2, 4):
            mgr.save_files(step, write_folder(tmp_path / f"c{step}", step), kind="hf-trainer")
        mgr.wait()
    blob = root / "step-000000000004" / "model.safetensors"
    blob.write_bytes(b"\x00" + blob.read_bytes()[1:])  # one flipped byte, same size
    with spotsafe.CheckpointManager(root) as mgr:
        with pytest.warns(CheckpointSkippedWarning, match="model.safetensors fails its checksum"):
            info = mgr.local_copy()
        assert info.step == 2 and info.location.endswith("step-000000000002")
        with pytest.raises(StateMismatchError, match="holds the files of a hf-trainer checkpoint"):
            mgr.restore({"model": torch.nn.Linear(2, 2)}, step=2)


def test_local_copy_fetches_from_the_remote_on_a_new_machine(tmp_path, s3_url):
    src = write_folder(tmp_path / "ck", 7, big=300_000)
    expected = files_of(src)
    with spotsafe.CheckpointManager(tmp_path / "a", remote=s3_url) as mgr:
        mgr.save_files(7, src, kind="accelerate")
    new = tmp_path / "b"  # a new machine: nothing local
    with spotsafe.CheckpointManager(new, remote=s3_url) as mgr:
        info = mgr.local_copy()
        assert info.step == 7 and mgr.restored_tier == spotsafe._names.Tier.REMOTE
    assert info.location == f"{new}/step-000000000007" and files_of(new / "step-000000000007") == expected
    with spotsafe.CheckpointManager(tmp_path / "c", remote=s3_url, read_only=True) as mgr:
        assert mgr.local_copy().step == 7  # a reader verifies it on the remote, writes nothing
    assert not (tmp_path / "c").exists()


def test_read_values_returns_what_was_saved_verified(root):
    values = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "loops": {"n": [1, (2, 3)]}}
    with spotsafe.CheckpointManager(root, rng=False) as mgr:
        mgr.save(9, values)
        mgr.wait()
        got = mgr.read_values(9)
    assert torch.equal(got["state_dict"]["w"], values["state_dict"]["w"]) and got["epoch"] == 3
    assert got["loops"] == {"n": [1, (2, 3)]}
    data = root / "step-000000000009"
    victim = next(p for p in data.iterdir() if p.name != "manifest.json" and p.stat().st_size > 0)
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x01")
    with spotsafe.CheckpointManager(root, read_only=True) as mgr:
        with pytest.raises(CorruptCheckpointError, match="cannot be read from .*fails its checksum"):
            mgr.read_values(9)


def test_run_framework_mode_saves_through_the_saver_and_stops_on_a_notice(tmp_path):
    """Run(root, None): the policy and a real SIGTERM go through the integration's saver; exit 75."""
    out = tmp_path / "out"
    calls = []

    def saver(step, reason):
        calls.append((step, reason))
        return run.manager.save_files(step, write_folder(out / f"checkpoint-{step}", step), kind="test")

    with pytest.raises(spotsafe.Preempted) as exc:
        with spotsafe.Run(tmp_path / "run", None, save_every=3, notices="signals") as run:
            assert run.writer and run.resume_path() is None and run.start_step == 0
            run.use_saver(saver)
            for step in run.steps(100):
                if step == 7:
                    os.kill(os.getpid(), signal.SIGTERM)
    assert exc.value.code == 75 and exc.value.step == 7
    assert calls == [(3, "policy"), (6, "policy"), (7, "notice")]
    with spotsafe.Run(tmp_path / "run", None, notices=None) as run:
        path = run.resume_path()
        assert run.start_step == 7 and path == str(tmp_path / "run" / "step-000000000007")
        assert files_of(tmp_path / "run" / "step-000000000007") == files_of(out / "checkpoint-7")
        run.use_saver(saver)
        for _ in run.steps(9):
            pass
    assert calls[-1] == (9, "final") and run.exit_code == 0


def test_run_framework_mode_without_a_saver_names_the_way_out(tmp_path):
    with pytest.raises(RuntimeError, match="none is attached; use spotsafe.lightning"):
        with spotsafe.Run(tmp_path / "run", None, save_every=1, notices=None) as run:
            for _ in run.steps(2):
                pass


@pytest.mark.parametrize("env, writes", [
    ({}, True),
    ({"RANK": "3"}, True),                      # a stray RANK without a job of several processes: a lone process
    ({"LOCAL_RANK": "1"}, True),                # likewise a launcher's per-device variable
    ({"WORLD_SIZE": "2", "RANK": "1"}, False),  # torchrun's second rank reads
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "1"}, True),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, False),  # Lightning's own launcher's child
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, False),
    ({"SLURM_PROCID": "1"}, True),
])
def test_only_rank_0_of_a_job_of_several_writes_a_frameworks_checkpoints(tmp_path, monkeypatch, env, writes):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS",
              "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with spotsafe.Run(tmp_path / "run", None, notices=None) as run:
        assert run.writer is writes and run.manager.read_only is not writes
