"""Where the job runs, from the marks platforms leave in the environment (no torch, no network).

``Run`` and ``spotsafe run`` take their defaults from it and say once which they took:

* SageMaker (``TRAINING_JOB_NAME``, or the training toolkit's ``SM_TRAINING_ENV`` /
  ``SM_CURRENT_HOST``): the checkpoint root defaults to the job's local checkpoint folder
  (``/opt/ml/checkpoints``, or ``$SPOTSAFE_SAGEMAKER_CHECKPOINTS``), which SageMaker itself
  copies to the job's ``checkpoint_s3_uri`` and back on a restart, so no remote is needed;
  a SIGTERM leaves 120 s (``StopTrainingJob``'s; ``$SPOTSAFE_SAGEMAKER_GRACE``).
* Kubernetes (``KUBERNETES_SERVICE_HOST``): a SIGTERM leaves the pod's grace period
  (``$SPOTSAFE_TERMINATION_GRACE``, else Kubernetes' default 30 s).
* SLURM (``SLURM_JOB_ID``): SIGUSR1 and SIGTERM are notices (``$SPOTSAFE_SLURM_GRACE``, else
  30 s); ``SLURM_RESTART_COUNT`` says how often the job was requeued.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ._env import SAGEMAKER_CHECKPOINTS_ENV, SAGEMAKER_GRACE_ENV, SLURM_GRACE_ENV, TERMINATION_GRACE_ENV

SAGEMAKER_CHECKPOINTS = "/opt/ml/checkpoints"
SAGEMAKER_MARKS = ("TRAINING_JOB_NAME", "SM_TRAINING_ENV", "SM_CURRENT_HOST")

_said: set[str] = set()


@dataclass(frozen=True)
class Platform:
    """A platform the environment shows, and the defaults it implies."""

    name: str
    root: str | None = None  # a checkpoint root the platform provides (and copies to object storage itself)
    note: str = ""  # one sentence: what was detected and what that sets

    @property
    def syncs_root(self) -> bool:
        """Whether the platform copies the root to object storage itself (SageMaker)."""
        return self.name == "sagemaker"


def detect() -> Platform | None:
    """The platform of this process, or None (a plain machine)."""
    env = os.environ
    if any(env.get(k) for k in SAGEMAKER_MARKS):
        root = env.get(SAGEMAKER_CHECKPOINTS_ENV) or SAGEMAKER_CHECKPOINTS
        job = env.get("TRAINING_JOB_NAME") or env.get("SM_CURRENT_HOST") or "?"
        grace = env.get(SAGEMAKER_GRACE_ENV) or "120"
        return Platform("sagemaker", root=root, note=(
            f"SageMaker training job {job}: checkpoints default to {root}, which SageMaker copies to the job's "
            f"checkpoint_s3_uri and restores on a restart (no remote needed); a SIGTERM leaves {grace} s"))
    if env.get("KUBERNETES_SERVICE_HOST"):
        grace = env.get(TERMINATION_GRACE_ENV) or "30"
        return Platform("kubernetes", note=(
            f"Kubernetes pod: a SIGTERM leaves {grace} s (set {TERMINATION_GRACE_ENV} to the pod's "
            "terminationGracePeriodSeconds)"))
    if env.get("SLURM_JOB_ID"):
        grace = env.get(SLURM_GRACE_ENV) or "30"
        return Platform("slurm", note=(
            f"SLURM job {env['SLURM_JOB_ID']} (requeued {env.get('SLURM_RESTART_COUNT') or 0} times): SIGUSR1 and "
            f"SIGTERM are notices leaving {grace} s ({SLURM_GRACE_ENV}; the slurm recipe sets it to its budget)"))
    return None


def say_once(logger: logging.Logger, platform: Platform | None, extra: str = "", *, chose: bool = False) -> None:
    """Log what was detected, once per process and platform: a warning when it ``chose`` a setting the
    user did not give (the root), else at info level."""
    if platform is None or platform.name in _said:
        return
    _said.add(platform.name)
    logger.log(logging.WARNING if chose else logging.INFO, "%s%s.", platform.note, extra)
