"""How fast `spotsafe run` starts, how much it adds around a command, how fast it restarts.

Peers measured in the same run: the bare interpreter (`python -c pass`), `import torch`
(what the supervisor would cost if it imported torch), and the same command started
directly. The restart latency is read from the supervisor's own events: from a child's
exit to the next child's spawn. Run roots go under ``bench/results/tmp-supervisor-<pid>``,
removed at the end.

    .venv/bin/python bench/bench_supervisor.py [--repeat 7]
    .venv/bin/python bench/bench_supervisor.py --repeat 3      # quick
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import med, print_goals, print_table, scratch_dir

from spotsafe._telemetry import read_events

PY = sys.executable
SPOTSAFE = [str(Path(PY).with_name("spotsafe"))] if Path(PY).with_name("spotsafe").exists() else [PY, "-m",
                                                                                                  "spotsafe.cli"]
START_LIMIT_S = 1.0


def wall(cmd: list[str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    with scratch_dir("supervisor") as work:
        rows = {
            "python -c pass": wall([PY, "-c", "pass"], args.repeat),
            "python -c 'import torch' (peer: a supervisor that imports torch)": wall([PY, "-c", "import torch"],
                                                                                       args.repeat),
            "spotsafe run --help (interpreter + click + spotsafe.cli)": wall([*SPOTSAFE, "run", "--help"], args.repeat),
            "command alone: python -c pass": wall([PY, "-c", "pass"], args.repeat),
            "spotsafe run -- python -c pass (start, supervise, classify, exit)": [
                x for i in range(args.repeat)
                for x in wall([*SPOTSAFE, "run", "--root", str(work / f"r{i}"), "--", PY, "-c", "pass"], 1)],
        }
        # restart latency: a child that exits 75 four times, then 0
        root = work / "restarts"
        child = "import os, sys; sys.exit(75 if int(os.environ['SPOTSAFE_ATTEMPT']) < 5 else 0)"
        subprocess.run([*SPOTSAFE, "run", "--root", str(root), "--", PY, "-c", child], check=True, timeout=300)
        evs = [e for e in read_events(root / "events") if e.get("role") == "supervisor"]
    exits = [e["ts"] for e in evs if e["event"] == "exit"]
    spawns = [e["ts"] for e in evs if e["event"] == "spawn"]
    restart = [s - x for x, s in zip(exits, spawns[1:])]

    print_table("== spotsafe run: start-up and overhead (seconds) ==", rows, first="what",
                peers=["python -c pass"])
    added = med(rows["spotsafe run -- python -c pass (start, supervise, classify, exit)"]) - med(
        rows["command alone: python -c pass"])
    print(f"supervisor's own cost around a command: {added:.3f} s (start-up, events, 50 ms polling)")
    print(f"restart after exit 75 (child exit -> next spawn, from the events): median {med(restart) * 1000:.1f}"
          f" ms, max {max(restart) * 1000:.1f} ms over {len(restart)} restarts")
    start = med(rows["spotsafe run --help (interpreter + click + spotsafe.cli)"])
    print_goals([{"goal": f"supervisor start-up (spotsafe run --help) well under {START_LIMIT_S:.0f} s",
                  "met": start < START_LIMIT_S, "detail": f"{start:.3f} s"}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
