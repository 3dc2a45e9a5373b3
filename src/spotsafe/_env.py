"""Environment variables ``spotsafe run`` hands to the command it supervises (no torch).

``spotsafe.Run`` reads them, so a script runs the same with or without the supervisor.
(``SPOTSAFE_RUN_ID``, ``SPOTSAFE_ATTEMPT`` and ``SPOTSAFE_EVENTS_DIR`` are in spotsafe._telemetry.)
"""

ROOT_ENV = "SPOTSAFE_ROOT"
"""The run's checkpoint root: ``Run(root=None)`` uses it."""
REMOTE_ENV = "SPOTSAFE_REMOTE"
"""The object store URL of the profile: ``Run(remote=None)`` uses it."""
SAVE_EVERY_ENV = "SPOTSAFE_SAVE_EVERY"
"""The profile's checkpoint interval: ``Run(save_every=None)`` uses it."""
SUPERVISED_ENV = "SPOTSAFE_SUPERVISED"
"""Set to 1 under ``spotsafe run``: the supervisor copies the events to the remote, not the Run."""
