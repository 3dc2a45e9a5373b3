"""Distributed training (``torchrun``): the layer between the engine and ``Run``.

One agreed stop step for every rank (:class:`StopAgreement`), and one verified checkpoint for
the job through DCP's planners (``._global``: ``GlobalCheckpointManager``, imported from
there so that ``Run`` imports DCP only for a torchrun job), restored at any world size (the
read side is ``spotsafe._state._sharded``, which a single process uses too).
"""

from ._agree import DEFAULT_POLL, DEFAULT_TIMEOUT, AgreementFailed, StopAgreement

__all__ = ["DEFAULT_POLL", "DEFAULT_TIMEOUT", "AgreementFailed", "StopAgreement"]
