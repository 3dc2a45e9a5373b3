"""Engine layer: the save pipeline, verified restore, retention."""

from ._manager import CheckpointManager, SaveStats
from ._retention import select_deletions

__all__ = ["CheckpointManager", "SaveStats", "select_deletions"]
