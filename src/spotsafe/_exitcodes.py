"""Exit codes of training processes under spotsafe (read by the supervisor, SkyPilot, SLURM, Kubernetes)."""

EXIT_OK = 0
"""Training finished."""

EXIT_PREEMPTED = 75
"""EX_TEMPFAIL: stopped because of an interruption notice; the checkpoint is durable. Restart me."""
