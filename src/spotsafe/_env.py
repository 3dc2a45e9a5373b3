"""Every ``SPOTSAFE_*`` environment variable, named once (no torch, no imports).

Modules refer to these constants, never to the string (a test greps ``src/`` for it), so a
variable cannot be spelled two ways by its writer and its reader. The README lists them all.

Handed by ``spotsafe run`` to the command it supervises (``spotsafe.Run`` reads them, so a
script runs the same with or without the supervisor):

- ``SPOTSAFE_ROOT``, ``SPOTSAFE_REMOTE``, ``SPOTSAFE_SAVE_EVERY``: ``Run``'s defaults for
  ``root``, ``remote`` and ``save_every``;
- ``SPOTSAFE_RUN_ID``, ``SPOTSAFE_ATTEMPT``, ``SPOTSAFE_EVENTS_DIR``: the event log's run id,
  attempt number and directory;
- ``SPOTSAFE_SUPERVISED``, ``SPOTSAFE_SUPERVISOR_ID``, ``SPOTSAFE_SUPERVISOR_DIR``: under a
  supervisor, its id, and where to announce the events directory when it does not know it;
- ``SPOTSAFE_SIGNAL_GRACE``: the seconds a signal leaves (the profile's grace).

Set by the user:

- ``SPOTSAFE_PROFILES`` (the profiles file), ``SPOTSAFE_STATE_DIR`` (the supervisor's own
  records), ``SPOTSAFE_DEBUG`` (CLI tracebacks);
- the SLURM recipe's script: ``SPOTSAFE_NO_REQUEUE`` (set it to leave requeueing to the site's
  ``RequeueExit=75``), ``SPOTSAFE_JOB_ROOT`` (the script's own root variable);
- SageMaker: ``SPOTSAFE_SAGEMAKER_CHECKPOINTS`` (the job's ``checkpoint_local_path`` when it is
  not ``/opt/ml/checkpoints``), ``SPOTSAFE_SAGEMAKER_GRACE`` (the seconds after its SIGTERM);
- notices: ``SPOTSAFE_TERMINATION_GRACE`` (Kubernetes), ``SPOTSAFE_SLURM_GRACE``,
  ``SPOTSAFE_NOTICE_FILE``, ``SPOTSAFE_NOTICE_POLL_S``, ``SPOTSAFE_DMI_DIR``, and the
  metadata base URLs ``SPOTSAFE_AWS_METADATA_URL``, ``SPOTSAFE_GCP_METADATA_URL``,
  ``SPOTSAFE_AZURE_METADATA_URL``;
- ``SPOTSAFE_BACKGROUND_NICE``: the nice increment of the background I/O threads;
- ``SPOTSAFE_CHAOS_KILL``: fault injection for drills and tests, a SIGKILL of this process at
  one point of a multi-rank save (``write:<rank>``, ``commit``).
"""

# -- handed to the supervised command ------------------------------------------------------
ROOT_ENV = "SPOTSAFE_ROOT"
"""The run's checkpoint root: ``Run(root=None)`` uses it."""
REMOTE_ENV = "SPOTSAFE_REMOTE"
"""The object store URL of the profile: ``Run(remote=None)`` uses it."""
SAVE_EVERY_ENV = "SPOTSAFE_SAVE_EVERY"
"""The profile's checkpoint interval: ``Run(save_every=None)`` uses it."""
SUPERVISED_ENV = "SPOTSAFE_SUPERVISED"
"""Set to 1 under ``spotsafe run``: the supervisor copies the events to the remote, not the Run."""
RUN_ID_ENV = "SPOTSAFE_RUN_ID"
"""The run id of the event log (stable across attempts)."""
ATTEMPT_ENV = "SPOTSAFE_ATTEMPT"
"""The attempt number of the event log."""
EVENTS_DIR_ENV = "SPOTSAFE_EVENTS_DIR"
"""Where the events go (default ``<root>/events``)."""
SUPERVISOR_DIR_ENV = "SPOTSAFE_SUPERVISOR_DIR"
"""Set by a supervisor that does not know the run's events directory: announce it here."""
SUPERVISOR_ID_ENV = "SPOTSAFE_SUPERVISOR_ID"
"""The supervisor's own id (on its ``spawn`` events and the command's ``run_start``)."""
SIGNAL_GRACE_ENV = "SPOTSAFE_SIGNAL_GRACE"
"""Seconds a SIGTERM / SIGINT / SIGUSR1 leaves before the kill (the supervisor sets its grace)."""

# -- set by the user -----------------------------------------------------------------------
PROFILES_ENV = "SPOTSAFE_PROFILES"
"""The profiles file of ``spotsafe run`` (default ``./spotsafe.toml``)."""
STATE_DIR_ENV = "SPOTSAFE_STATE_DIR"
"""Where the supervisor keeps records it cannot yet keep beside the checkpoints."""
DEBUG_ENV = "SPOTSAFE_DEBUG"
"""Set to 1: the CLI prints the traceback of an error, not only its sentence."""
TERMINATION_GRACE_ENV = "SPOTSAFE_TERMINATION_GRACE"
"""The pod's ``terminationGracePeriodSeconds`` (Kubernetes notices)."""
SLURM_GRACE_ENV = "SPOTSAFE_SLURM_GRACE"
"""The seconds of SLURM's ``--signal=...@N`` (SLURM notices)."""
NO_REQUEUE_ENV = "SPOTSAFE_NO_REQUEUE"
"""Set in a SLURM recipe's job: exit 75 without ``scontrol requeue`` (the site requeues on 75 itself)."""
JOB_ROOT_ENV = "SPOTSAFE_JOB_ROOT"
"""The SLURM recipe script's variable holding the run's root (expanded by the batch shell)."""
SAGEMAKER_CHECKPOINTS_ENV = "SPOTSAFE_SAGEMAKER_CHECKPOINTS"
"""A SageMaker job's local checkpoint folder (its ``checkpoint_local_path``; default /opt/ml/checkpoints)."""
SAGEMAKER_GRACE_ENV = "SPOTSAFE_SAGEMAKER_GRACE"
"""The seconds a SageMaker job has after its SIGTERM (default 120, StopTrainingJob's)."""
NOTICE_FILE_ENV = "SPOTSAFE_NOTICE_FILE"
"""A file whose appearance is a notice."""
NOTICE_POLL_ENV = "SPOTSAFE_NOTICE_POLL_S"
"""The metadata pollers' period (default 2 s, at most 5 s)."""
DMI_DIR_ENV = "SPOTSAFE_DMI_DIR"
"""Where auto mode reads the DMI facts that tell the cloud (default ``/sys/class/dmi/id``)."""
AWS_METADATA_URL_ENV = "SPOTSAFE_AWS_METADATA_URL"
"""Base URL of the AWS instance metadata service."""
GCP_METADATA_URL_ENV = "SPOTSAFE_GCP_METADATA_URL"
"""Base URL of the GCP metadata server."""
AZURE_METADATA_URL_ENV = "SPOTSAFE_AZURE_METADATA_URL"
"""Base URL of Azure's Scheduled Events."""
BACKGROUND_NICE_ENV = "SPOTSAFE_BACKGROUND_NICE"
"""Added to the nice value of the background I/O threads (default 10)."""
CHAOS_KILL_ENV = "SPOTSAFE_CHAOS_KILL"
"""A SIGKILL of this process at one point of a multi-rank save, for drills and tests:
``write:<rank>`` (that rank, after its first file and before its last) or ``commit`` (rank 0,
once every rank's files arrived and before the manifest is written)."""
