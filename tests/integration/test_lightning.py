"""PyTorch Lightning through spotsafe.lightning: the real Trainer, real processes and signals, real S3.

examples/lightning_train.py (dropout, Adam, a per-step one-cycle LR, shuffled batches with
random augmentation from spotsafe.lightning.ResumableDataLoader, a shuffled validation loader
that draws from torch's RNG, validation at each epoch's end) runs 2 epochs of 16 steps:

* under ``spotsafe run --chaos`` (a SIGKILL in epoch 1, so the resume starts from a checkpoint
  in the middle of epoch 0 and crosses the epoch boundary again, then a SIGTERM notice in the
  middle of epoch 1): exit 75 after the notice with no validation batch after it, 0 at the end,
  weights, Adam state, scheduler and every step's loss and samples equal to an uninterrupted run;
* on a new machine (local root gone) whose remote's newest checkpoint is half-written and the
  one before it corrupt: resumed from the one before those, from S3, equal at the end;
* as 2 DDP ranks under torchrun (gloo): a SIGTERM to one rank stops both after the same step,
  with validation due after every batch and none run, one checkpoint, exit 75, then a resume.

What stock Lightning 2.6.6 does on the same notice (bench/bench_lightning.py part 3 measures it
beside spotsafe; a SIGTERM during step 7 of 32, ModelCheckpoint every 5 steps, a shuffled
DataLoader): the process exits 0 (its SIGTERMException), so a scheduler sees success; a
validation that is due at that batch still runs first (and a callback that stops "gracefully"
with ``trainer.should_stop`` runs the whole validation pass: 2 batches here); the resume starts
from step 5 (steps 6-7 are lost) and replays the epoch from its first batch, so 20 of epoch 0's
64 samples are trained twice and 20 never, and the end differs from an uninterrupted run.
spotsafe: exit 75, no validation, resumed at 7, 0 and 0, equal.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, child_env, spotsafe_cli

from spotsafe._format import committed_steps, read_manifest, step_dir
from spotsafe._storage import open_storage
from spotsafe._telemetry import read_events

pytestmark = pytest.mark.slow

SCRIPT = [sys.executable, str(EXAMPLES / "lightning_train.py"), "--notices", "signals"]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
EPOCH = 16                       # steps per epoch: 64 samples in batches of 4
STEPS = 2 * EPOCH
SAVE_EVERY = 14                  # checkpoints at 14 (mid-epoch 0) and 28 (mid-epoch 1), plus notices and the end
CHAOS = ["--chaos", "2s", "--chaos-seed", "1252", "--chaos-max", "2"]  # seed 1252 draws: a kill 3.1 s into
#                                  attempt 1 (about step 21), a notice 1.3 s into attempt 2 (about 8 steps in)
STEP_DELAY = "0.15"


def attempts(out: str) -> list[dict]:
    """What each process printed: where it resumed, its step lines, validation batches after its last step."""
    runs: list[dict] = []
    for line in out.splitlines():
        if m := re.match(r"resumed (\d+)$", line):
            runs.append({"resumed": int(m[1]), "steps": {}, "vals": 0, "vals_after_last_step": 0,
                         "preempted": None, "done": None})
        elif m := re.match(r"step (\d+) ", line):
            runs[-1]["steps"][int(m[1])] = line
            runs[-1]["vals_after_last_step"] = 0
        elif line.startswith("val "):
            runs[-1]["vals"] += 1
            runs[-1]["vals_after_last_step"] += 1
        elif m := re.match(r"preempted (\d+) rank 0", line):
            runs[-1]["preempted"] = int(m[1])
        elif m := re.match(r"done (\d+)", line):
            runs[-1]["done"] = int(m[1])
    return runs


def step_lines(out: str) -> dict[int, str]:
    return {int(m[1]): m[0] for m in re.finditer(r"^step (\d+) .*$", out, re.M)}


def assert_same_training(ref: Path, got: Path) -> None:
    a, b = torch.load(ref), torch.load(got)
    assert a["step"] == b["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and a["scheduler"] == b["scheduler"]
    assert all(torch.equal(v, ob["state"][p][k]) for p in oa["state"] for k, v in oa["state"][p].items())


REFUSED = r'''
import lightning as L, torch, spotsafe, spotsafe.lightning
class Odd:  # an arbitrary object: no plain value
    pass
class M(L.LightningModule):
    def __init__(self, tokenizer):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(2, 1)
    def training_step(self, batch, i):
        return self.net(batch[0]).sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
with spotsafe.Run(ROOT, None, notices=None) as run:
    spot = spotsafe.lightning.SpotSafe(run)
    trainer = L.Trainer(max_steps=2, callbacks=[spot], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    try:
        trainer.fit(M(Odd()), train_dataloaders=data, ckpt_path=spot.resume_path())
    except spotsafe.UnsupportedStateError as e:
        print("refused:", e)
'''


class Background:
    """A process started now and collected later (its stdout), bounded in time and killed at the end."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: str | None = None

    def stdout(self) -> str:
        if self.out is None:
            out, err = self.proc.communicate(timeout=120)
            assert self.proc.returncode == 0, err[-3000:]
            self.out = out
        return self.out


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The uninterrupted run and the refusal check, started at once: they overlap the chaos run, whose processes
    mostly wait between steps."""
    d = tmp_path_factory.mktemp("pl-ref")
    procs = {"reference": Background([*SCRIPT, "--root", str(d / "root"), "--save-every", str(SAVE_EVERY),
                                      "--out", str(d / "ref.pt")]),
             "refusal": Background([sys.executable, "-c", REFUSED.replace("ROOT", repr(str(d / "refused")))]),
             "dir": d}
    yield procs
    for p in (procs["reference"], procs["refusal"]):
        p.proc.kill()


@pytest.fixture(scope="module")
def reference(started):
    """The uninterrupted run's final state and step lines (waited for on first use)."""
    out = started["reference"].stdout()
    return started["dir"] / "ref.pt", step_lines(out)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, s3_server, started):
    """The run under ``spotsafe run --chaos`` with an S3 remote: what it printed and recorded."""
    d = tmp_path_factory.mktemp("pl-chaos")
    bucket = s3_server.make_bucket(f"pl-{uuid.uuid4().hex[:12]}")
    env = {**child_env(), **s3_server.env()}
    remote = f"s3://{bucket}/run"
    r = subprocess.run([*spotsafe_cli(), "run", "--root", str(d / "root"), *CHAOS, "--chaos-grace", "20s",
                        "--seed", "0", "--", *SCRIPT, "--remote", remote, "--save-every", str(SAVE_EVERY),
                        "--step-delay", STEP_DELAY, "--out", str(d / "int.pt")],
                       env=env, capture_output=True, text=True, timeout=180)
    return {"run": r, "dir": d, "remote": remote, "env": env, "events": list(read_events(d / "root" / "events"))}


def test_chaos_kill_and_notice_end_bit_exact_with_75_then_0_and_no_validation_after_the_notice(chaos, reference):
    r = chaos["run"]
    assert r.returncode == 0, r.stderr[-3000:]
    sup = [e for e in chaos["events"] if e.get("role") == "supervisor"]
    assert [e["action"] for e in sup if e["event"] == "chaos"] == ["kill", "notice"]
    exits = [e for e in sup if e["event"] == "exit"]
    assert [e["cause"] for e in exits] == ["chaos_kill", "preempted", "done"]
    assert [e["exit_code"] for e in exits[1:]] == [75, 0]

    runs = attempts(r.stdout)
    assert len(runs) == 3 and runs[-1]["done"] == STEPS
    killed, noticed, last = runs
    # the kill landed in epoch 1 and the newest checkpoint then was mid-epoch 0: the resume crossed the boundary
    assert killed["resumed"] == 0 and EPOCH < max(killed["steps"]) < 2 * SAVE_EVERY
    assert noticed["resumed"] == SAVE_EVERY and {SAVE_EVERY + 1, EPOCH, EPOCH + 1} <= noticed["steps"].keys()
    # the notice: mid-epoch 1, the step it stopped on is where the next attempt resumed, no validation after it
    p = noticed["preempted"]
    assert p == max(noticed["steps"]) == last["resumed"] and EPOCH < p < STEPS and p % EPOCH
    assert noticed["vals_after_last_step"] == 0
    assert noticed["vals"] == 2 and last["vals"] == 2  # epoch 0's validation (2 batches) after the crossing; epoch 1's

    ref_pt, ref_steps = reference
    assert_same_training(ref_pt, chaos["dir"] / "int.pt")
    for run in runs:  # every step any attempt ran (the replayed ones too): same loss, same samples
        assert all(line == ref_steps[s] for s, line in run["steps"].items())
    assert set().union(*(run["steps"] for run in runs)) == set(ref_steps) == set(range(1, STEPS + 1))


def test_new_machine_skips_a_half_written_and_a_corrupt_newest_and_resumes_from_s3_bit_exact(chaos, reference):
    assert chaos["run"].returncode == 0, "the chaos run this test resumes from failed (see the test above)"
    remote, env = chaos["remote"], chaos["env"]
    bucket, prefix = remote.removeprefix("s3://").split("/", 1)
    client = s3_client(env)
    steps = sorted(int(k["Key"].split("/")[1].removeprefix("step-")) for k in
                   client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/step-")["Contents"]
                   if k["Key"].endswith("/manifest.json"))
    assert len(steps) == 3 and steps[-1] == STEPS
    older, corrupt, half = steps
    # the newest: its files are there, its manifest is not (an upload cut before its commit)
    client.delete_object(Bucket=bucket, Key=f"{prefix}/{step_dir(half)}/manifest.json")
    # the one before: one byte of its largest file flipped (same size: only the checksum tells)
    objs = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{step_dir(corrupt)}/")["Contents"]
    key = max((o for o in objs if not o["Key"].endswith(".json")), key=lambda o: o["Size"])["Key"]
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    root = chaos["dir"] / "new-machine"  # nothing local
    r = subprocess.run([*SCRIPT, "--root", str(root), "--remote", remote, "--save-every", str(SAVE_EVERY),
                        "--out", str(chaos["dir"] / "new.pt")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = attempts(r.stdout)
    assert run["resumed"] == older and run["done"] == STEPS
    restore = next(e for e in read_events(root / "events") if e["event"] == "restore")
    assert restore["step"] == older and restore["tier"] == "remote"
    assert len(restore["skipped"]) == 1 and step_dir(corrupt) in restore["skipped"][0]
    ref_pt, ref_steps = reference
    assert_same_training(ref_pt, chaos["dir"] / "new.pt")
    assert all(line == ref_steps[s] for s, line in run["steps"].items())


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_REGION"])


def test_two_ddp_ranks_stop_on_the_same_step_without_validation_exit_75_and_resume(tmp_path):
    """torchrun, 2 ranks, gloo: 32 samples, 4 steps an epoch, validation due after every batch."""
    root = tmp_path / "root"
    env = child_env()
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--standalone", "--monitor-interval", "0.1", *SCRIPT[1:],
           "--root", str(root), "--samples", "32", "--save-every", "100", "--val-every", "1"]
    first = subprocess.run([*cmd, "--stop-at", "3", "--stop-rank", "1"], env=env, capture_output=True, text=True,
                           timeout=120, start_new_session=True)
    stops = {e["rank"]: e for e in read_events(root / "events") if e["event"] == "stop"}
    assert stops.keys() == {0, 1}, first.stderr[-3000:]
    step = stops[0]["step"]
    assert stops[1]["step"] == step and step in (3, 4)  # the step rank 1's SIGTERM came in, or the next
    assert stops[0]["exit_code"] == stops[1]["exit_code"] == 75 and stops[1]["source"] == "signal"
    assert stops[0]["source"] == "signal on rank 1"
    assert sorted(re.findall(r"preempted (\d+) rank (\d)", first.stdout)) == [(str(step), "0"), (str(step), "1")]
    assert first.returncode == 1 and set(re.findall(r"exitcode\s*: (\d+)", first.stderr)) == {"75"}  # torchrun's 1
    (run,) = attempts(first.stdout)
    # validation ran after every step before the stop step (1 batch a rank: its DistributedSampler's half) and not
    # after it: stock Lightning would validate after it too (its SIGTERM check comes after the validation check)
    assert max(run["steps"]) == step and run["vals"] == step - 1 and run["vals_after_last_step"] == 0

    storage = open_storage(str(root))
    assert committed_steps(storage) == [step]  # one checkpoint: rank 0 wrote Lightning's dict
    manifest = read_manifest(storage, step_dir(step))
    assert {"state_dict", "optimizer_states", "loops", "callbacks"} <= manifest.components.keys()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert second.returncode == 0, second.stderr[-3000:]
    (run,) = attempts(second.stdout)
    assert run["resumed"] == step and sorted(run["steps"]) == list(range(step + 1, 9)) and run["done"] == 8


def test_a_hyperparameter_the_manifest_cannot_hold_is_refused_naming_the_key(started):
    assert ("refused: Lightning's checkpoint entry 'hyper_parameters' holds a __main__.Odd at "
            "['hyper_parameters']['tokenizer'], which spotsafe cannot store without pickle; make it a plain value "
            "(a number, string, list, dict or tensor) or leave it out of the checkpoint "
            "(self.save_hyperparameters(ignore=['tokenizer'])).") in started["refusal"].stdout()
    assert not list((started["dir"] / "refused").glob("step-*"))  # refused before any step ran
