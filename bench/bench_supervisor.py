"""How fast `spotsafe run` starts, how much it adds around a command, how fast it restarts.

Peers measured in the same run: the bare interpreter (`python -c pass`), `import torch`
(what the supervisor would cost if it imported torch), and the same command started
directly. The restart latency is read from the supervisor's own events: from a child's
exit to the next child's spawn.

    .venv/bin/python bench/bench_supervisor.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from spotsafe._telemetry import read_events  # noqa: E402

PY = sys.executable
SPOTSAFE = [str(Path(PY).with_name("spotsafe"))] if Path(PY).with_name("spotsafe").exists() else [PY, "-m",
                                                                                                  "spotsafe.cli"]


def wall(cmd: list[str], repeat: int, env: dict | None = None) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=False, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        out.append(time.perf_counter() - t0)
    return out


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}..{max(xs):.3f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    env = {**os.environ, "SPOTSAFE_AWS_METADATA_URL": "off", "SPOTSAFE_GCP_METADATA_URL": "off",
           "SPOTSAFE_AZURE_METADATA_URL": "off"}
    work = Path(tempfile.mkdtemp(prefix="spotsafe-bench-sup-"))
    bare = wall([PY, "-c", "pass"], args.repeat)
    torch_import = wall([PY, "-c", "import torch"], args.repeat)
    help_ = wall([*SPOTSAFE, "run", "--help"], args.repeat)
    direct = wall([PY, "-c", "pass"], args.repeat)
    supervised = []
    for i in range(args.repeat):
        supervised += wall([*SPOTSAFE, "run", "--root", str(work / f"r{i}"), "--", PY, "-c", "pass"], 1, env)
    # restart latency: a child that exits 75 four times, then 0
    root = work / "restarts"
    child = "import os, sys; sys.exit(75 if int(os.environ['SPOTSAFE_ATTEMPT']) < 5 else 0)"
    subprocess.run([*SPOTSAFE, "run", "--root", str(root), "--", PY, "-c", child], check=True, env=env, timeout=300)
    evs = [e for e in read_events(root / "events") if e.get("role") == "supervisor"]
    exits = [e["ts"] for e in evs if e["event"] == "exit"]
    spawns = [e["ts"] for e in evs if e["event"] == "spawn"]
    restart = [s - x for x, s in zip(exits, spawns[1:])]

    print("== spotsafe run: start-up and overhead (seconds, median (min..max)) ==")
    print("| what | wall | vs python -c pass |")
    print("| --- | --- | --- |")
    m = statistics.median(bare)
    print(f"| python -c pass | {fmt(bare)} | 1.00x |")
    print(f"| python -c 'import torch' (peer: a supervisor that imports torch) | {fmt(torch_import)} | "
          f"{statistics.median(torch_import) / m:.2f}x |")
    print(f"| spotsafe run --help (interpreter + click + spotsafe.cli) | {fmt(help_)} | "
          f"{statistics.median(help_) / m:.2f}x |")
    print(f"| command alone: python -c pass | {fmt(direct)} | {statistics.median(direct) / m:.2f}x |")
    print(f"| spotsafe run -- python -c pass (start, supervise, classify, exit) | {fmt(supervised)} | "
          f"{statistics.median(supervised) / m:.2f}x |")
    added = statistics.median(supervised) - statistics.median(direct)
    print(f"supervisor's own cost around a command: {added:.3f} s (start-up, events, 50 ms polling)")
    print(f"restart after exit 75 (child exit -> next spawn, from the events): median {statistics.median(restart) * 1000:.1f}"
          f" ms, max {max(restart) * 1000:.1f} ms over {len(restart)} restarts")
    limit = 1.0
    verdict = "MET" if statistics.median(help_) < limit else "NOT MET"
    print(f"  [{verdict:>7}] supervisor start-up (spotsafe run --help) well under 1 s: {statistics.median(help_):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
