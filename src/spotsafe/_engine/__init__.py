"""Engine layer: the save pipeline, verified restore, retention, replication to a remote."""

from ._manager import CheckpointManager, SaveStats
from ._replicate import UploadStats
from ._restore_stats import RestoreStats

__all__ = ["CheckpointManager", "CheckpointOptions", "RestoreStats", "SaveStats", "UploadStats"]
from ._options import CheckpointOptions
