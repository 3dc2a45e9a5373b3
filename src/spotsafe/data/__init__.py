"""Resumable, deterministic data loading: exact mid-epoch resume, worker-independent randomness."""

from ._loader import ResumableDataLoader, SeededDataset, sample_seed
from ._sampler import ResumableSampler, epoch_order

__all__ = ["ResumableDataLoader", "ResumableSampler", "SeededDataset", "epoch_order", "sample_seed"]
