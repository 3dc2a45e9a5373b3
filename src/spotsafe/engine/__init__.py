"""Engine layer: the save pipeline, verified restore, retention, replication to a remote."""

from ._manager import CheckpointManager, SaveStats
from ._replicate import UploadStats
from ._retention import select_deletions

__all__ = ["CheckpointManager", "SaveStats", "UploadStats", "select_deletions"]
