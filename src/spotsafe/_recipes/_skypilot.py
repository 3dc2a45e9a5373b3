"""SkyPilot managed job: spot capacity across instance types and regions, recovered on exit 75.

Two ways a SkyPilot managed job comes back, and the recipe serves both:

* the spot VM is reclaimed: SkyPilot's controller sees the cluster gone and relaunches the
  job on a new cluster (``job_recovery.strategy``), whatever the exit code; the new cluster's
  disk is empty, so the run resumes from the remote (``--remote``, required);
* the job ends while the cluster is still up (spotsafe stopped early on a cloud's notice
  and exited 75): SkyPilot recovers only exit codes listed in ``recover_on_exit_codes``,
  without using up ``max_restarts_on_errors``.

``any_of`` lists the instance types x regions to diversify over; SkyPilot picks among them
(cheapest available first) at each launch.
"""

from __future__ import annotations

import json
import shlex

from ._options import EXIT_CODE, RecipeOptions

STRATEGY = "EAGER_NEXT_REGION"
"""SkyPilot's recovery strategy: relaunch in the next region at once (the alternative: FAILOVER)."""

ROOT = "~/spotsafe/{name}"
REMOTE_PLACEHOLDER = "s3://YOUR-BUCKET/{name}"


def _q(value: str) -> str:
    """A YAML scalar for ``value`` (a JSON string is one)."""
    return json.dumps(value)


def render(opts: RecipeOptions) -> str:
    """A SkyPilot task YAML for ``sky jobs launch``."""
    root = opts.root or ROOT.format(name=opts.name)
    remote = opts.remote or REMOTE_PLACEHOLDER.format(name=opts.name)
    pools = ([(t, r or "") for t, r in opts.pools] if opts.pools
             else [(t, r) for t in (opts.instance_types or ("",)) for r in (opts.regions or ("",))])
    lines = [
        f"# SkyPilot managed job for {shlex.join(opts.command)}, made by `spotsafe recipe skypilot`.",
        f"#   sky jobs launch -n {opts.name} this.yaml",
        "#",
        "# A reclaimed spot VM: SkyPilot's controller relaunches the job on a new cluster (strategy below),",
        "# whose disk is empty: the run resumes from the remote, which spotsafe verifies before loading.",
        f"# An early stop on a cloud's notice while the cluster is still up: spotsafe exits {EXIT_CODE}, and",
        f"# recover_on_exit_codes: [{EXIT_CODE}] relaunches without counting against max_restarts_on_errors.",
        "# SkyPilot looks at the exit code only while the cluster is up; a vanished VM is recovered anyway.",
        f"# Save budget: {opts.budget_s:.1f} s ({opts.budget_source}); AWS gives 2 min of notice, GCP and Azure",
        "# 30 s: above 30 s, a GCP/Azure reclaim may cut the save short and the run resumes from the previous",
        "# checkpoint (nothing is lost that was durable).",
    ]
    if opts.remote is None:
        lines.append(f"# REQUIRED: replace {remote} with your bucket (spotsafe recipe ... --remote s3://bucket/run).")
    lines += [
        f"name: {_q(opts.name)}",
        "resources:",
        "  use_spot: true",
    ]
    if pools != [("", "")]:
        lines.append("  any_of:  # the pools to diversify over; SkyPilot tries the cheapest available first")
        for t, r in pools:
            fields = ", ".join(f"{k}: {_q(v)}" for k, v in (("instance_type", t), ("region", r)) if v)
            lines.append(f"    - {{{fields}}}")
    lines += [
        "  job_recovery:",
        f"    strategy: {STRATEGY}  # or FAILOVER: retry the same region first",
        f"    max_restarts_on_errors: {opts.max_restarts}  # crashes (exits other than {EXIT_CODE}) it may retry",
        f"    recover_on_exit_codes: [{EXIT_CODE}]  # spotsafe.EXIT_PREEMPTED: stopped on a notice, checkpoint durable",
        "setup: |",
        "  pip install 'spotsafe[s3]'  # and your project's requirements",
        "run: |",
        "  " + opts.shell(root, remote=remote),
        "",
    ]
    return "\n".join(lines)
