"""PyTorch Lightning, spot-safe: ``spotsafe.lightning.SpotSafe(run)``.

A callback and a ``CheckpointIO`` that make the Trainer's checkpoints spotsafe's (checksummed,
committed manifest-last, asynchronous, local and remote, verified on restore, kept by the
run's retention), answer a notice with a checkpoint of the batch just finished and exit 75
(no validation pass), carry every rank's RNG state, and a train loader that resumes exactly
in the middle of an epoch. Imported only by its users (``import spotsafe`` imports neither
this module nor Lightning).
"""

from ._callback import SpotSafe
from ._io import SpotSafeCheckpointIO
from ._loader import ResumableDataLoader

__all__ = ["ResumableDataLoader", "SpotSafe", "SpotSafeCheckpointIO"]
