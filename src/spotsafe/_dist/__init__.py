"""Distributed training (``torchrun``): the layer between the engine and ``Run``.

Built so far: one agreed stop step for every rank (:class:`StopAgreement`), and one verified
checkpoint for the job through DCP's planners (``._global``: ``GlobalCheckpointManager``,
imported from there so that ``Run`` imports DCP only for a multi-rank job).
"""

from ._agree import DEFAULT_POLL, DEFAULT_TIMEOUT, AgreementFailed, StopAgreement

__all__ = ["DEFAULT_POLL", "DEFAULT_TIMEOUT", "AgreementFailed", "StopAgreement"]
