"""What every platform's recipe is made from: the user's options and the supervised command.

A recipe wraps the user's command in ``spotsafe run`` (restarts inside one allocation,
classification, the exit code 75 the platform retries on) and sizes the platform's grace
period from the *save budget*: the time from a notice to a durable checkpoint (the save
and, with a remote, its upload), measured from a run's own events when one is given.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._exitcodes import EXIT_PREEMPTED

DEFAULT_BUDGET_S = 30.0
"""The save budget when none is given or measured: SIGTERM to exit 75 (a checkpoint of a few GB)."""

MARGIN_S = 15.0
"""Added to the budget for a platform's grace period: process start-up of the stop, the supervisor's exit."""


@dataclass(frozen=True, kw_only=True)
class RecipeOptions:
    """One recipe's inputs (``spotsafe recipe PLATFORM [options] -- COMMAND``).

    Attributes:
        command: The training command, as argv (``python train.py --lr 3e-4``).
        name: The job's name (Kubernetes object, SLURM job, SkyPilot task, ...).
        root: The run's local checkpoint root inside the job (None: the platform's default).
        remote: The object store URL the checkpoints are replicated to (None: none, or the
            platform's own sync, as SageMaker's).
        profile: A ``spotsafe run`` profile (production, experiment, ...).
        budget_s: Seconds from a notice to a durable checkpoint (save + upload).
        budget_source: Where ``budget_s`` came from, for the recipe's comments.
        image: The container image (Kubernetes, the batch services, SageMaker).
        instance_types: Instance types to diversify over, cheapest first (SkyPilot, the batch services).
        regions: Regions to diversify over (SkyPilot).
        max_restarts: How many platform-level retries a preemption may use (where the platform counts).
        pools: Exact (instance type, region or None) pairs to diversify over (SkyPilot's ``any_of``), as
            ``spotsafe plan --pool`` priced them; without them, every instance type in every region.
    """

    command: tuple[str, ...]
    name: str = "spotsafe-job"
    root: str | None = None
    remote: str | None = None
    profile: str | None = None
    budget_s: float = DEFAULT_BUDGET_S
    budget_source: str = f"the default ({DEFAULT_BUDGET_S:.0f} s): pass --budget or --from ROOT to measure it"
    image: str | None = None
    instance_types: tuple[str, ...] = field(default_factory=tuple)
    regions: tuple[str, ...] = field(default_factory=tuple)
    max_restarts: int = 10
    pools: tuple[tuple[str, str | None], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("A recipe needs the training command after `--`, e.g. `spotsafe recipe slurm -- python "
                             "train.py`.")
        bad = next((w for w in (*self.command, self.name, self.root or "", self.remote or "", self.profile or "",
                                self.image or "") if "\n" in w or "\r" in w), None)
        if bad is not None:
            raise ValueError(f"A recipe's command and options are single lines, and {bad!r} holds a line break; put "
                             "a multi-line script in a file and pass the file.")
        if not self.budget_s > 0:
            raise ValueError(f"The save budget must be more than 0 seconds, got {self.budget_s}.")

    def grace_s(self) -> int:
        """The grace period a platform should give: the budget plus a margin, whole seconds."""
        return math.ceil(self.budget_s + MARGIN_S)

    def supervised(self, root: str, *, remote: str | None = None, extra: Sequence[str] = ()) -> list[str]:
        """``spotsafe run`` around the command: the root, remote, profile and grace it runs with."""
        argv = ["spotsafe", "run", "--root", root]
        if remote:
            argv += ["--remote", remote]
        if self.profile:
            argv += ["--profile", self.profile]
        argv += ["--grace", f"{math.ceil(self.budget_s)}s", *extra, "--", *self.command]
        return argv

    def shell(self, root: str, *, remote: str | None = None, extra: Sequence[str] = ()) -> str:
        """:meth:`supervised` as one shell line, quoted; a root of ``~/...`` or with ``$VAR`` is expanded
        by the shell (the user's command is quoted as given)."""
        argv = self.supervised(root, remote=remote, extra=extra)
        return " ".join(shell_word(w, expand=(i == 3)) for i, w in enumerate(argv))


def shell_word(word: str, *, expand: bool = False) -> str:
    """``word`` quoted for a POSIX shell; with ``expand``, a leading ``~/`` and ``$VAR`` still expand."""
    if not expand:
        return shlex.quote(word)
    if word.startswith("~/"):
        return "~/" + shlex.quote(word[2:]) if word[2:] else "~/"
    if "$" in word:
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'
    return shlex.quote(word)


EXIT_CODE = EXIT_PREEMPTED
"""The exit code every recipe retries on: ``spotsafe.EXIT_PREEMPTED``."""


def budget_from_events(events: list[dict]) -> tuple[float, str] | None:
    """The save budget a run's events show, and how it was found; None when they show none.

    The worst notice-to-durable time of its stops for a notice, when it had any; else the
    worst checkpoint (its ``total_s``, write and commit) plus the worst upload, which is what
    an emergency save must fit.
    """
    stops = [e["notice_to_durable_s"] for e in events
             if e.get("event") == "stop" and isinstance(e.get("notice_to_durable_s"), (int, float))]
    if stops:
        return float(max(stops)), f"the slowest notice-to-durable of the run's {len(stops)} notice(s)"
    saves = [e["total_s"] for e in events if e.get("event") == "checkpoint" and isinstance(e.get("total_s"),
                                                                                           (int, float))]
    if not saves:
        return None
    ups = [e["upload_s"] for e in events if e.get("event") == "upload" and isinstance(e.get("upload_s"), (int, float))]
    worst = max(saves) + (max(ups) if ups else 0.0)
    how = f"the slowest of the run's {len(saves)} checkpoint(s)" + (" plus its slowest upload" if ups else "")
    return worst, how
