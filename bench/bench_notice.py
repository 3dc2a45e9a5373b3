"""Benchmark: how soon after an interruption notice spotsafe's checkpoint is durable, and what
watching for notices costs the training loop.

Everything runs on CPU. Every child process gets ``SPOTSAFE_{AWS,GCP,AZURE}_METADATA_URL=off``
(or a loopback server's URL), so nothing ever contacts a real metadata address.

1. Local notice-to-durable, per size in ``--sizes`` (default ``100M,1G``): ``examples/train.py``
   runs under ``spotsafe.Run`` in a child process (``--notices signals --save-every 1000000
   --workers 0 --ballast-mib SIZE``: no policy save, so nothing is in flight when the notice
   comes; the ballast buffer makes the checkpoint about SIZE). After it has printed 3 ``step``
   lines it gets SIGTERM; it finishes the step, checkpoints it, makes it durable and exits 75.
   The headline is the ``stop`` event's ``notice_to_durable_s`` (from the signal handler's
   ``time.time()`` to the checkpoint durable); also shown: step end -> durable (``stop.ts -
   notice.ts``: the notice event is written once the step has ended) and the checkpoint
   event's ``stage_s`` (copy into staging buffers) and ``persist_s`` (write + fsync + commit).
2. Raw baseline, in the same run: a fresh child process fills a buffer of the checkpoint's
   bytes (untimed), then, on the parent's word, times a plain buffered ``write`` of it in
   64 MiB chunks to a new file in the same directory tree, ``os.fsync`` of the file and of the
   directory. Goal: spotsafe's median notice-to-durable <= 1.2 x the raw median + 100 ms.
3. Remote notice-to-durable (skipped with ``--no-s3``): the same child with ``--remote
   s3://bench/...`` on a SeaweedFS S3 server on 127.0.0.1 (``tests/s3server.py``) and
   ``SPOTSAFE_SIGNAL_GRACE=120``; the stop event's tier should be ``remote``. Compared with
   the local figure and with ``boto3`` ``upload_file`` (``TransferConfig(max_concurrency=8)``,
   as ``bench_upload.py``) of the files of the same repeat's local checkpoint, which spotsafe
   wrote with ``O_DIRECT`` and nothing has read since, so both uploads read from the disk.

Within a repeat the measurements run in an order rotated every repeat (the disk is noisy);
boto3 runs last, as it needs the local run's files. Before each measurement (untimed, just
before the SIGTERM or the "go"): ``sync`` and a page-cache drop where
``/proc/sys/vm/drop_caches`` is writable, a settle sleep (the size at 0.4 GB/s, at most 5 s:
a virtual disk's host-side write-back cache drains), and a pre-fault of about 2.5x the size
(``--no-prefault`` to skip): on this kind of VM the first touch of memory the host took back
costs a host page fault, which would randomly slow the staging copy and the page cache (see
``bench_save_restore.py``). Medians and min..max over ``--repeats`` (default 3), the ratio of
medians and the median of per-repeat (paired) ratios.

4. Watchers' overhead, in this process: a 3-layer MLP (384-768-768-384, 4.5 MiB of float32
   parameters, Adam, batch 64, ``torch.set_num_threads(1)``: about 15 ms a step here) runs
   ``--steps`` steps (default 100) under ``spotsafe.Run(root, state, save_every=None,
   notices=...)``, alternately (ABBA ABBA ..., ``--rounds`` rounds each, after one untimed
   warm-up round of each) with ``notices=None`` (A) and with ``Signals()`` +
   ``AWS``/``GCP``/``Azure`` polling a loopback ``MetadataServer`` + a ``FileTrigger``, all at
   ``interval=0.1`` s, 20x the default rate, to magnify the cost (B). The metadata server runs
   in its own process, as a real one is not in the training process. Step time is the time
   between consecutive iterations of ``run.steps()``, so it includes Run's own per-step check.
   Reported: the median step time, and the mean (the round's wall time / steps: what throughput
   pays, since a poll delays only the step it lands on), and the CPU time of the process's
   other threads per step (``process_time - thread_time`` of the loop: the watcher threads'
   cost, which on a machine with no idle core they would take from training). The goal
   (overhead < 1% of a step) is judged on the mean step time, paired round by round, and marked
   ``?`` where the CPU estimate disagrees. Also timed: one read of ``run.watcher.notice`` (the
   loop's check) and a whole ``run.steps()`` iteration with an empty body, both with all five
   sources running.

Scratch files go under ``bench/results/tmp-notice-<pid>`` (the repository's file system) and
are removed at the end; the results are also written to ``bench/results/notice.json``.

    .venv/bin/python bench/bench_notice.py [--sizes 100M,1G] [--repeats 3] [--no-s3]
    .venv/bin/python bench/bench_notice.py --sizes 64M --repeats 1 --rounds 2 --steps 30 --default-rate-s 3  # quick

This is a benchmark, not a test; the default run takes about 5 minutes on a 2-core VM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    REPO,
    RESULTS,
    build_model,
    med,
    mem_available,
    paired,
    parse_sizes,
    prefault,
    prefault_budget,
    print_goals,
    print_table,
    scratch_dir,
    settle_s,
    setup_torch,
    span,
    try_drop_caches,
    write_fsync,
    write_json,
)

TRAIN = REPO / "examples" / "train.py"
BUCKET = "bench"
STEPS_BEFORE_NOTICE = 3
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = {"local": 60.0, "remote": 240.0}
EXIT_PREEMPTED = 75
LOCAL_FACTOR, LOCAL_SLACK = 1.2, 0.100
OVERHEAD_GOAL = 0.01
POLL_S = 0.1
DEFAULT_POLL_S = 2.0  # spotsafe's default notice poll interval
METADATA_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); from metadata_server import MetadataServer; "
                  "s = MetadataServer().start(); print(s.url, flush=True); sys.stdin.read()")

_children: list[subprocess.Popen] = []  # live children, killed on the way out


# -- processes --------------------------------------------------------------------------------
def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}  # the metadata endpoints are off in os.environ (_common)


def spawn(cmd: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, env=env, cwd=REPO, **kw)
    _children.append(p)
    return p


def reap(p: subprocess.Popen, timeout: float) -> int | None:
    """Wait up to ``timeout`` s for ``p``; kill it past that. Its exit code, None when killed here."""
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        rc = None
    _children.remove(p)
    return rc


def kill_children() -> None:
    for p in list(_children):
        if p.poll() is None:
            p.kill()
        reap(p, 10)


def read_line(p: subprocess.Popen, timeout: float) -> str:
    if not select.select([p.stdout], [], [], timeout)[0]:
        raise TimeoutError(f"no answer from {p.args[:3]} in {timeout:.0f}s")
    return p.stdout.readline().strip()


# -- measurement conditions ---------------------------------------------------------------------
@dataclass
class Setup:
    work: Path
    use_prefault: bool
    can_drop: bool
    prefault_s: list[float] = field(default_factory=list)

    def prepare(self, nbytes: int) -> None:
        """Untimed, right before a measurement: flush (and drop caches), settle, pre-fault."""
        try_drop_caches()
        time.sleep(settle_s(nbytes))
        if self.use_prefault:
            self.prefault_s.append(prefault(prefault_budget(nbytes)))


# -- 1 and 3: spotsafe's notice to durable ---------------------------------------------------
def wait_for_steps(p: subprocess.Popen, log: Path, n: int, timeout: float) -> None:
    t_end = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if p.poll() is not None:
            raise RuntimeError(f"train.py exited {p.returncode} before step {n}:\n{log.read_text()[-2000:]}")
        if sum(line.startswith("step ") for line in log.read_text().splitlines()) >= n:
            return
        if time.monotonic() > t_end:
            break
        time.sleep(0.05)
    raise TimeoutError(f"train.py printed fewer than {n} steps in {timeout:.0f}s")


def parse_events(events_dir: Path) -> dict:
    from spotsafe._telemetry import read_events

    ev = read_events(events_dir)
    stop = next(e for e in reversed(ev) if e["event"] == "stop")
    notice = next(e for e in ev if e["event"] == "notice" and not e.get("advisory"))
    step = stop["checkpoint_step"]
    ckpt = next(e for e in ev if e["event"] == "checkpoint" and e["step"] == step)
    upload = next((e for e in ev if e["event"] == "upload" and e["step"] == step), None)
    return {"notice_to_durable_s": stop["notice_to_durable_s"], "step_end_to_durable_s": stop["ts"] - notice["ts"],
            "tier": stop["tier"], "step": step, "bytes": ckpt["bytes"], "stage_s": ckpt["stage_s"],
            "persist_s": ckpt["persist_s"], "upload_s": upload["upload_s"] if upload else None}


def notice_run(setup: Setup, name: str, mib: float, nbytes: int, remote: str | None = None,
               s3_env: dict[str, str] | None = None) -> dict:
    """train.py under spotsafe.Run, SIGTERM after a few steps; what its events say."""
    root = setup.work / name
    log = setup.work / f"{name}.out"
    cmd = [sys.executable, str(TRAIN), "--root", str(root), "--steps", "100000", "--save-every", "1000000",
           "--workers", "0", "--notices", "signals", "--ballast-mib", f"{mib:g}"]
    env = child_env()
    if remote:
        cmd += ["--remote", remote]
        env = child_env(SPOTSAFE_SIGNAL_GRACE="120", **s3_env)
    with open(log, "wb") as out:
        p = spawn(cmd, env, stdout=out, stderr=subprocess.STDOUT)
    wait_for_steps(p, log, STEPS_BEFORE_NOTICE, START_TIMEOUT_S)
    setup.prepare(nbytes)
    p.send_signal(signal.SIGTERM)
    rc = reap(p, EXIT_TIMEOUT_S["remote" if remote else "local"])
    if rc != EXIT_PREEMPTED:
        raise RuntimeError(f"train.py exited {rc}, not {EXIT_PREEMPTED}:\n{log.read_text()[-2000:]}")
    out = parse_events(root / "events")
    out["root"] = str(root)
    return out


# -- 2: raw write + fsync baseline, in a fresh process -------------------------------------------
def raw_child(path: Path, nbytes: int) -> None:
    """Runs in the child: fill a buffer, wait for "go", time write + fsync of file and directory."""
    buf = memoryview(bytearray(b"\x01") * nbytes)  # touched: every page is backed before the clock
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps({"seconds": write_fsync(path, [buf])}), flush=True)


def raw_run(setup: Setup, nbytes: int) -> float:
    path = setup.work / "raw.bin"
    p = spawn([sys.executable, str(Path(__file__).resolve()), "--_raw", str(path), str(nbytes)], child_env(),
              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if read_line(p, START_TIMEOUT_S) != "ready":
            raise RuntimeError("raw write child did not start")
        setup.prepare(nbytes)
        p.stdin.write("go\n")
        p.stdin.flush()
        line = read_line(p, EXIT_TIMEOUT_S["local"])
    finally:
        reap(p, 10)
        path.unlink(missing_ok=True)
    return json.loads(line)["seconds"]


def boto3_run(setup: Setup, client, ckpt_dir: Path, prefix: str, nbytes: int) -> float:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(max_concurrency=8, use_threads=True)
    files = sorted(ckpt_dir.iterdir())
    setup.prepare(nbytes)
    t0 = time.perf_counter()
    for f in files:
        client.upload_file(str(f), BUCKET, f"{prefix}/{f.name}", Config=config)
    return time.perf_counter() - t0


def measure_size(setup: Setup, label: str, size: int, repeats: int, s3) -> dict:
    """Every measurement of one size, ``repeats`` times, in an order rotated every repeat."""
    from spotsafe._format import step_dir

    mib = size / 2**20
    nbytes = int(mib * 2**20)  # until the first local run gives the checkpoint's bytes
    res: dict = {"raw": [], "local": [], "remote": [], "boto3": []}
    units = ["local", "raw"] + (["remote"] if s3 else [])  # local first: its bytes size the raw write
    for r in range(repeats):
        for unit in units[r % len(units):] + units[:r % len(units)]:
            if unit == "raw":
                res["raw"].append(raw_run(setup, nbytes))
            elif unit == "local":
                res["local"].append(notice_run(setup, f"{label}-local-{r}", mib, nbytes))
                nbytes = res["local"][-1]["bytes"]
            else:
                res["remote"].append(notice_run(setup, f"{label}-remote-{r}", mib, nbytes,
                                                remote=f"s3://{BUCKET}/{label}-remote-{r}", s3_env=s3.env()))
        if s3:
            local = res["local"][-1]
            ckpt = Path(local["root"]) / step_dir(local["step"])
            res["boto3"].append(boto3_run(setup, s3.client(timeout=60.0), ckpt, f"boto3-{label}-{r}", nbytes))
        shutil.rmtree(setup.work / f"{label}-local-{r}", ignore_errors=True)
        shutil.rmtree(setup.work / f"{label}-remote-{r}", ignore_errors=True)
        print(f"  {label} repeat {r + 1}/{repeats}: raw {res['raw'][-1]:.3f}s, local "
              f"{res['local'][-1]['notice_to_durable_s']:.3f}s"
              + (f", remote {res['remote'][-1]['notice_to_durable_s']:.3f}s ({res['remote'][-1]['tier']}), "
                 f"boto3 {res['boto3'][-1]:.3f}s" if s3 else ""), flush=True)
    res["bytes"] = nbytes
    return res


# -- 4: watchers' overhead per step ---------------------------------------------------------------
def make_trainer():
    """A 3-layer MLP (384-768-768-384) with Adam, and one training step of it on a batch of 64."""
    m = build_model(dims=[384, 768, 768, 384], relu=True, lr=1e-4)
    return m.state, m.step_fn(64)


def watcher_sources(url: str | None, trigger: Path) -> list:
    if url is None:
        return []
    from spotsafe import notices

    return [notices.Signals(), notices.AWS(url, interval=POLL_S), notices.GCP(url, interval=POLL_S),
            notices.Azure(url, interval=POLL_S), notices.FileTrigger(trigger, interval=POLL_S)]


def timed_round(root: Path, state: dict, step, sources: list, n: int) -> dict:
    import spotsafe

    with spotsafe.Run(root, state, save_every=None, notices=sources or None) as run:
        active = run.watcher.active
        times = []
        cpu0, main0 = time.process_time(), time.thread_time()
        t_start = t_prev = time.perf_counter()
        for _ in run.steps(n):
            step()
            t = time.perf_counter()
            times.append(t - t_prev)
            t_prev = t
        wall = t_prev - t_start
        others_cpu = (time.process_time() - cpu0) - (time.thread_time() - main0)
    shutil.rmtree(root, ignore_errors=True)
    return {"median_s": med(times), "mean_s": wall / n, "wall_s": wall, "active": active,
            "others_cpu_per_step_s": others_cpu / n, "polls": sum(getattr(s, "polls", 0) for s in sources)}


def check_cost(root: Path, state: dict, url: str, trigger: Path) -> dict:
    """With all five sources running: one ``run.watcher.notice`` read, and one empty ``run.steps()`` iteration."""
    import spotsafe

    reads, loops = [], []
    with spotsafe.Run(root, state, save_every=None, notices=watcher_sources(url, trigger)) as run:
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(40_000):
                run.watcher.notice  # noqa: B018 - the read is what is timed
            reads.append((time.perf_counter() - t0) / 40_000)
        t0 = time.perf_counter()
        for _ in run.steps(20_000):
            pass
        loops.append((time.perf_counter() - t0) / 20_000)
    shutil.rmtree(root, ignore_errors=True)
    return {"notice_read_us": min(reads) * 1e6, "notice_read_us_median": med(reads) * 1e6,
            "empty_step_us": loops[0] * 1e6}


def default_rate_cpu(url: str, trigger: Path, seconds: float = 20.0) -> dict:
    """The watcher threads' CPU at the default poll interval, measured while the main thread sleeps."""
    from spotsafe import notices

    sources = [notices.Signals(), notices.AWS(url), notices.GCP(url), notices.Azure(url), notices.FileTrigger(trigger)]
    with notices.NoticeWatcher(sources):
        time.sleep(1.0)  # past the probes
        cpu0, t0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"cpu_fraction": cpu / wall, "seconds": wall, "interval_s": sources[1].interval,
            "polls": sum(getattr(s, "polls", 0) for s in sources)}


def measure_watchers(work: Path, rounds: int, steps: int, default_rate_s: float) -> dict:
    state, step = make_trainer()
    trigger = work / "notice-trigger-never-created"
    server = spawn([sys.executable, "-c", METADATA_CHILD, str(REPO / "tests")], child_env(),
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = read_line(server, 30.0)
        configs = {"off": None, "on": url}
        for name, u in configs.items():  # warm-up, untimed
            timed_round(work / f"watch-warm-{name}", state, step, watcher_sources(u, trigger), steps)
        res: dict = {"off": [], "on": []}
        for r in range(rounds):  # ABBA...: a linear drift of the machine hits both alike
            for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                res[name].append(timed_round(work / f"watch-{name}-{r}", state, step,
                                             watcher_sources(configs[name], trigger), steps))
            print(f"  watchers round {r + 1}/{rounds}: mean step off {res['off'][-1]['mean_s'] * 1e3:.2f} ms, "
                  f"on {res['on'][-1]['mean_s'] * 1e3:.2f} ms ({res['on'][-1]['polls']} polls)", flush=True)
        res["check"] = check_cost(work / "watch-check", state, url, trigger)
        res["default_rate"] = default_rate_cpu(url, trigger, default_rate_s)
    finally:
        server.stdin.close()
        reap(server, 5)
    res["steps"] = steps
    return res


# -- report -------------------------------------------------------------------------------------
def report_local(sizes: dict[str, dict]) -> list[dict]:
    goals = []
    for label, res in sizes.items():
        raw, loc = res["raw"], [x["notice_to_durable_s"] for x in res["local"]]
        col = {k: span([x[k] for x in res["local"]]) for k in ("step_end_to_durable_s", "stage_s", "persist_s")}
        print_table(f"== Local notice-to-durable, {label} ({res['bytes'] / 2**20:.0f} MiB checkpoint; SIGTERM -> "
                    "checkpoint durable on local disk) ==",
                    {"raw write+fsync": raw, "spotsafe notice->durable": loc}, peers=["raw write+fsync"],
                    extra={"spotsafe notice->durable": {"step end->durable": col["step_end_to_durable_s"],
                                                        "stage": col["stage_s"], "persist": col["persist_s"]}})
        limit = LOCAL_FACTOR * med(raw) + LOCAL_SLACK
        pair = med([x / (LOCAL_FACTOR * y + LOCAL_SLACK) for x, y in zip(loc, raw)])
        goals.append({"goal": f"local notice-to-durable <= {LOCAL_FACTOR}x raw write+fsync + "
                              f"{LOCAL_SLACK * 1e3:.0f} ms ({label})",
                      "met": med(loc) <= limit, "estimates_agree": (med(loc) <= limit) == (pair <= 1.0),
                      "detail": f"{med(loc):.3f} s vs limit {limit:.3f} s on medians ({med(loc) / limit:.2f} of the "
                                f"limit; paired {pair:.2f}); tiers {sorted({str(x['tier']) for x in res['local']})}"})
    return goals


def report_remote(sizes: dict[str, dict]) -> None:
    for label, res in sizes.items():
        tiers = "/".join(sorted({str(x["tier"]) for x in res["remote"]}))
        rows = {"spotsafe notice->durable, remote": [x["notice_to_durable_s"] for x in res["remote"]],
                "spotsafe notice->durable, local": [x["notice_to_durable_s"] for x in res["local"]],
                "spotsafe upload_s": [x["upload_s"] for x in res["remote"] if x["upload_s"] is not None],
                "boto3 upload_file": res["boto3"],
                "raw write+fsync + boto3": [a + b for a, b in zip(res["raw"], res["boto3"])]}
        print_table(f"== Remote notice-to-durable, {label} (SIGTERM -> checkpoint durable in SeaweedFS S3 on "
                    f"127.0.0.1; tier {tiers}) ==", rows,
                    peers=["spotsafe notice->durable, local", "boto3 upload_file", "raw write+fsync + boto3"])


def report_watchers(w: dict) -> dict:
    off, on = w["off"], w["on"]
    configs = {"None": off, f"signals+aws+gcp+azure+file @ {POLL_S:g}s": on}
    print_table(f"== Watchers' overhead per step ({len(off)} rounds x {w['steps']} steps each, ABBA; MLP "
                "384-768-768-384, batch 64, 1 thread): mean step (a round's wall / steps) ==",
                {name: [x["mean_s"] for x in rounds] for name, rounds in configs.items()}, first="notices",
                peers=["None"], unit=("ms", 1e3, 3),
                extra={name: {"median step ms": span([x["median_s"] for x in rounds], 1e3),
                              "CPU of other threads per step ms": span([x["others_cpu_per_step_s"] for x in rounds],
                                                                       1e3),
                              "sources active": str(len(rounds[0]["active"])),
                              "polls/s": f"{sum(x['polls'] for x in rounds) / sum(x['wall_s'] for x in rounds):.0f}"}
                       for name, rounds in configs.items()})
    ratios = [a["mean_s"] / b["mean_s"] - 1 for a, b in zip(on, off)]
    mean_pair = med(ratios)
    med_pair = paired([x["median_s"] for x in on], [x["median_s"] for x in off]) - 1
    step_s = med([x["mean_s"] for x in off])
    cpu = (med([x["others_cpu_per_step_s"] for x in on]) - med([x["others_cpu_per_step_s"] for x in off])) / step_s
    scale = POLL_S / DEFAULT_POLL_S
    c = w["check"]
    print(f"overhead (wall): mean step {mean_pair * 100:+.2f}% paired (per pair {min(ratios) * 100:+.1f}%.."
          f"{max(ratios) * 100:+.1f}%: the machine's noise); median step {med_pair * 100:+.2f}% paired")
    d = w["default_rate"]
    print(f"overhead (CPU): at {POLL_S:g} s polling the watcher threads ran {cpu * 100:.2f}% of a step's time on "
          f"the other core (what they would take from training with no idle core); at the default "
          f"{d['interval_s']:g} s interval, measured over {d['seconds']:.0f} s with the main thread idle: "
          f"{d['cpu_fraction'] * 100:.3f}% of one core ({d['polls']} polls)")
    print(f"loop's check: run.watcher.notice read {c['notice_read_us']:.3f} us per call (best of 5 x 40k; median "
          f"{c['notice_read_us_median']:.3f}); a whole run.steps() iteration with an empty body "
          f"{c['empty_step_us']:.2f} us ({c['empty_step_us'] / (step_s * 1e6) * 100:.3f}% of a step)")
    return {"goal": f"watchers' overhead < {OVERHEAD_GOAL * 100:.0f}% of a step (default {d['interval_s']:g} s "
                    "polling, CPU)", "met": d["cpu_fraction"] < OVERHEAD_GOAL,
            "detail": f"{d['cpu_fraction'] * 100:.3f}% of a core at the default interval; stressed at "
                      f"{POLL_S:g} s polling ({1 / scale:.0f}x the default rate): CPU {cpu * 100:.2f}% of a step, "
                      f"wall {mean_pair * 100:+.2f}% of a {step_s * 1e3:.1f} ms step (paired, noisy)"}


# -- main -----------------------------------------------------------------------------------------
def filesystem(path: Path) -> str:
    best = ("", "?", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[0]):
                best = (mnt, fstype, dev)
    return f"{best[1]} on {best[2]} (mounted at {best[0]})"


def print_env(setup: Setup, args: argparse.Namespace) -> dict:
    line = setup_torch(1)  # the watchers' trainer runs on one thread; train.py children set their own
    env = {"line": line, "mem_available_gib": round(mem_available() / 2**30, 1), "scratch": str(setup.work),
           "filesystem": filesystem(setup.work), "drop_caches": setup.can_drop, "prefault": setup.use_prefault}
    print(f"{line}, {env['mem_available_gib']} GiB available, CPU only")
    print(f"scratch dir {setup.work}: {env['filesystem']}; drop_caches permitted: {setup.can_drop}; "
          f"prefault: {setup.use_prefault}; sizes {','.join(label for label, _ in args.sizes)}, {args.repeats} "
          f"repeats, S3: {not args.no_s3}")
    return env


def run_parts(setup: Setup, args: argparse.Namespace) -> tuple[dict, dict]:
    print("part 4: watchers' overhead per step", flush=True)
    watchers = measure_watchers(setup.work, args.rounds, args.steps, args.default_rate_s)
    s3 = None
    if not args.no_s3:
        from s3server import SeaweedS3

        s3 = SeaweedS3(setup.work / "weed", volume_size_mb=1024)
        s3.start()  # from the main thread, which stays alive until close()
    try:
        if s3:
            s3.make_bucket(BUCKET)
        print("parts 1-3: notice to durable", flush=True)
        sizes = {label: measure_size(setup, label, size, args.repeats, s3) for label, size in args.sizes}
    finally:
        if s3:
            s3.close()
    return sizes, watchers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_sizes, default="100M,1G",
                    help="checkpoint sizes (train.py's ballast), default 100M,1G")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of parts 1-3 (default 3)")
    ap.add_argument("--no-s3", action="store_true", help="skip the remote (SeaweedFS S3) measurements")
    ap.add_argument("--rounds", type=int, default=10, help="rounds of each watcher configuration (default 10)")
    ap.add_argument("--steps", type=int, default=100, help="training steps per watcher round (default 100)")
    ap.add_argument("--default-rate-s", type=float, default=20.0,
                    help="seconds to measure the watchers' CPU at the default poll interval (default 20)")
    ap.add_argument("--no-prefault", dest="prefault", action="store_false", help="no pre-fault before measurements")
    ap.add_argument("--json", type=Path, default=RESULTS / "notice.json", help="default bench/results/notice.json")
    ap.add_argument("--_raw", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._raw:
        raw_child(Path(args._raw[0]), int(args._raw[1]))
        return 0

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    with scratch_dir("notice") as work:
        setup = Setup(work, args.prefault, try_drop_caches())
        try:
            env = print_env(setup, args)
            sizes, watchers = run_parts(setup, args)
        finally:
            kill_children()
    goals = report_local(sizes)
    if not args.no_s3:
        report_remote(sizes)
    goals.append(report_watchers(watchers))
    print_goals(goals)
    elapsed = time.perf_counter() - t0
    print(f"\nprefault median {med(setup.prefault_s):.2f}s (untimed); total benchmark time {elapsed:.0f}s")
    write_json(args.json, {"env": env, "args": vars(args), "sizes": sizes, "watchers": watchers, "goals": goals,
                           "elapsed_s": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
