"""Engine layer: the save pipeline, verified restore, retention, replication to a remote."""

from ._manager import CheckpointManager, SaveStats
from ._replicate import UploadStats

__all__ = ["CheckpointManager", "SaveStats", "UploadStats"]
