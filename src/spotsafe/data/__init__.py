"""Resumable, deterministic data loading: exact mid-epoch resume, worker-independent randomness."""

from ._loader import ResumableDataLoader, SeededDataset, sample_seed
from ._sampler import ResumableSampler, epoch_order, grad_accum

__all__ = ["ResumableDataLoader", "ResumableSampler", "SeededDataset", "epoch_order", "grad_accum", "sample_seed"]
