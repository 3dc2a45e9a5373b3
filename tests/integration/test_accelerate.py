"""spotsafe.accelerate with the real Accelerate: exact resume through its own save_state/load_state.

examples/accelerate_train.py (dropout, AdamW, one-cycle LR, augmented data through
spotsafe's ResumableDataLoader registered with ``register_for_checkpointing``; an epoch is
12 steps) runs under ``spotsafe run --chaos``, from a corrupt newest checkpoint, on a new
machine from the real S3 server, and as two ranks under torchrun. Every interrupted run must
end with weights and AdamW state ``torch.equal`` to the uninterrupted run, and print the
same loss at every step it ran.

What stock Accelerate does on the same interruptions, measured with accelerate 1.15 by
bench/bench_accelerate.py: with ``ProjectConfiguration(automatic_checkpoint_naming=True,
total_limit=2)``, a restart's ``load_state()`` leaves the save counter at 0, so its next save
overwrites ``checkpoint_0`` with the newest state while ``checkpoint_1`` keeps an older one,
and the next ``load_state()`` picks ``checkpoint_1``: a stale resume (accelerate#3306); a
SIGTERM is not handled (the process dies of the signal, nothing saved); a folder with a
flipped byte loads without complaint.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import EXAMPLES, child_env, spotsafe_cli
from preemption_demo import compare

from spotsafe._telemetry import read_events

pytestmark = pytest.mark.slow

SCRIPT = [sys.executable, str(EXAMPLES / "accelerate_train.py")]
STEPS, EPOCH = 30, 12  # 192 samples / 16 per batch = 12 steps an epoch
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
            "--monitor-interval", "0.1"]


def env() -> dict[str, str]:
    e = child_env()
    e.update(HF_HUB_OFFLINE="1", ACCELERATE_DISABLE_RICH="1", OMP_NUM_THREADS="1")
    return e


def train(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SCRIPT, "--steps", str(STEPS), *map(str, args)], env=env(), capture_output=True,
                          text=True, timeout=timeout)


def losses(out: str) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for m in re.finditer(r"^step (\d+) epoch \d+ loss (\S+)$", out, re.M)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its final state and the loss of every step."""
    d = tmp_path_factory.mktemp("acc-ref")
    r = train("--root", d / "run", "--out", d / "ref.pt")
    assert r.returncode == 0, r.stderr[-3000:]
    ref = dict(losses(r.stdout))
    assert sorted(ref) == list(range(1, STEPS + 1))
    return d / "ref.pt", ref


def same_losses(out: str, ref: dict[int, str]) -> list[int]:
    """Every step the output printed, replays included, with the reference's loss (the steps that differ)."""
    got = losses(out)
    assert got, out[-2000:]
    return [s for s, loss in got if loss != ref[s]]


def test_chaos_notice_and_kill_resume_bit_exact_mid_epoch_and_across_the_boundary(tmp_path, reference):
    ref_out, ref = reference
    # seed 12 draws a notice ~0.5 s into the first attempt, then a SIGKILL ~0.9 s into the second
    r = subprocess.run([*spotsafe_cli(), "run", "--root", str(tmp_path / "run"), "--chaos", "0.8s", "--chaos-seed",
                        "12", "--chaos-max", "2", "--chaos-grace", "20s", "--seed", "0", "--",
                        *SCRIPT, "--steps", str(STEPS), "--step-delay", "0.08", "--out", str(tmp_path / "out.pt")],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    attempts = re.split(r"^(?=resumed )", r.stdout, flags=re.M)[1:]
    assert len(attempts) == 3, r.stdout[-3000:]
    first, second, third = attempts
    stopped = int(re.search(r"^preempted (\d+) rank 0 source (\S+)", first, re.M)[1])
    assert stopped % EPOCH != 0, "the notice should land mid-epoch"
    assert second.startswith(f"resumed {stopped} ")  # exit 75 with the step durable, resumed from it
    ran = [s for s, _ in losses(second)]
    assert ran[0] == stopped + 1 and any(s % EPOCH == 1 for s in ran[1:]), "the second attempt should cross an epoch"
    assert "preempted" not in second and "done" not in second  # SIGKILLed: no goodbye
    assert "chaos_kill" in r.stderr and "preempted (exit 75" in r.stderr
    resumed = int(re.match(r"resumed (\d+)", third)[1])
    assert stopped < resumed <= ran[-1] and f"done {STEPS}" in third
    assert same_losses(r.stdout, ref) == []  # every step, the replayed ones after the kill too
    assert compare(str(ref_out), str(tmp_path / "out.pt")) == []


def test_corrupt_newest_is_skipped_and_a_new_machine_resumes_from_s3(tmp_path, reference, s3_url):
    ref_out, ref = reference
    root = tmp_path / "run"
    r = train("--root", root, "--stop-at", 17)
    assert r.returncode == 75 and "preempted 17 rank 0" in r.stdout, r.stderr[-3000:]
    assert sorted(os.listdir(root / "step-000000000017")) == [
        "custom_checkpoint_0.pkl", "manifest.json", "model.safetensors", "optimizer.bin", "random_states_0.pkl",
        "scheduler.bin"]
    blob = root / "step-000000000017" / "optimizer.bin"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flip in the middle: a torn write or a bad disk, which Accelerate loads
    blob.write_bytes(data)
    r = train("--root", root, "--out", tmp_path / "out.pt")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed 15 " in r.stdout and "optimizer.bin fails its checksum" in r.stderr
    assert same_losses(r.stdout, ref) == [] and compare(str(ref_out), str(tmp_path / "out.pt")) == []

    r = train("--root", tmp_path / "a", "--remote", s3_url, "--stop-at", 9)
    assert r.returncode == 75, r.stderr[-3000:]
    r = train("--root", tmp_path / "b", "--remote", s3_url, "--out", tmp_path / "new.pt")  # nothing local
    assert r.returncode == 0, r.stderr[-3000:]
    restore = next(e for e in read_events(tmp_path / "b" / "events") if e["event"] == "restore")
    assert "resumed 9 " in r.stdout and (restore["step"], restore["tier"]) == (9, "remote")
    assert same_losses(r.stdout, ref) == [] and compare(str(ref_out), str(tmp_path / "new.pt")) == []


def test_two_ranks_stop_on_the_same_step_and_resume_under_spotsafe_run(tmp_path):
    """torchrun exits 1 when its workers exit 75; spotsafe run reads the records, restarts, and ends 0."""
    root = tmp_path / "run"
    r = subprocess.run([*spotsafe_cli(), "run", "--root", str(root), "--", *TORCHRUN, SCRIPT[1], "--steps", "14",
                        "--stop-at", "5", "--stop-rank", "1"],
                       env=env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    # rank 1 got the SIGTERM during step 5; the ranks agree on the first step both can still stop after
    stops = {int(m[2]): int(m[1]) for m in re.finditer(r"^preempted (\d+) rank (\d) source", out, re.M)}
    assert stops.keys() == {0, 1} and stops[0] == stops[1] and 5 <= stops[0] <= 7, out[-2000:]
    at = stops[0]
    assert "attempt 1 ended: preempted (exit 1, but every process recorded a stop" in r.stderr  # torchrun's 1
    assert re.search(rf"^resumed {at} epoch \d position \d+$", out, re.M)
    assert "done 14" in out and sorted({s for s, _ in losses(out)}) == list(range(1, 15))
    names = sorted(os.listdir(root / f"step-{at:012d}"))
    assert "random_states_0.pkl" in names and "random_states_1.pkl" in names  # both ranks' RNG, one checkpoint


def test_automatic_checkpoint_naming_is_refused_with_the_reason(tmp_path):
    code = ("import spotsafe, spotsafe.accelerate\n"
            "from accelerate import Accelerator\n"
            "from accelerate.utils import ProjectConfiguration\n"
            f"acc = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir={str(tmp_path)!r}, "
            "automatic_checkpoint_naming=True))\n"
            f"with spotsafe.Run({str(tmp_path / 'run')!r}, None, notices=None) as run:\n"
            "    spotsafe.accelerate.load_state(acc, run)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "automatic_checkpoint_naming=True), whose counter load_state forgets" in r.stderr
