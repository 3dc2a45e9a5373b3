"""Exit codes of training processes under spotsafe (read by the supervisor, SkyPilot, SLURM, Kubernetes)."""

EXIT_OK = 0
"""Training finished."""

EXIT_PREEMPTED = 75
"""EX_TEMPFAIL: stopped because of an interruption notice; the checkpoint is durable. Restart me."""

# -- the supervisor's own final exit codes (``spotsafe run``) ----------------------------

EXIT_BUDGET = 3
"""``spotsafe run`` gave up: the retry budget is spent (``max_restarts`` or ``max_total_time``)."""

EXIT_CRASH_LOOP = 4
"""``spotsafe run`` gave up: ``max_crashes_without_progress`` crashes in a row with no new checkpoint."""

EXIT_STOP_UNSAFE = 5
"""``spotsafe run`` was told to stop, and the command did not exit 0 or 75 within the grace period
(it failed, or was killed at the end of it): its newest checkpoint may be older than its last step."""

EXIT_ROOT_LOCKED = 6
"""Another live process holds the run root (:class:`~spotsafe.RootLockedError`): a ``Run`` under
``spotsafe run`` exits with it at start, and the supervisor stops with it instead of restarting."""

EXIT_NOT_FOUND = 127
"""``spotsafe run`` could not start the command (not found or not executable), as a shell would say."""
